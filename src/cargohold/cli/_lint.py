"""The lint command: ML data-loss risks in compose files and docker run lines."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from cargohold.cli._commands import app, emit_json, out
from cargohold.cli._data import JsonOption
from cargohold.errors import UsageError


@app.command("lint")
def lint_command(
    files: Annotated[list[Path] | None, typer.Argument(help="Compose files.")] = None,
    docker_run: Annotated[
        str | None, typer.Option("--docker-run", help="A docker run line to check.")
    ] = None,
    as_json: JsonOption = False,
    as_sarif: Annotated[bool, typer.Option("--sarif", help="Print SARIF 2.1.0.")] = False,
) -> int:
    """ML data-loss and safety risks in compose files or a docker run line. Exit 1 on any
    warning or error."""
    from cargohold.lint import Finding, lint_compose_file, lint_docker_run, sarif

    if not files and not docker_run:
        raise UsageError(
            "Nothing to lint.", hint='Give compose files, or --docker-run "docker run …".'
        )
    findings: list[Finding] = []
    for path in files or []:
        findings += lint_compose_file(path)
    if docker_run:
        findings += lint_docker_run(docker_run)
    bad = any(f.severity in ("error", "warning") for f in findings)
    if as_sarif:
        emit_json(sarif(findings))
    elif as_json:
        emit_json([asdict(f) for f in findings])
    else:
        colour = {"error": "red", "warning": "yellow", "note": "blue"}
        for f in findings:
            out.print(
                f"{f.file}:{f.line}: [{colour[f.severity]}]{f.severity}[/] {f.rule} "
                f"{f.name} ({f.service}): {f.message}",
                markup=True,
                highlight=False,
            )
            out.print(f"    fix: {f.fix}", highlight=False)
        checked = len(files or []) + (1 if docker_run else 0)
        out.print(
            f"{len(findings)} findings in {checked} input(s)"
            if findings
            else f"no findings in {checked} input(s)"
        )
    return 1 if bad else 0
