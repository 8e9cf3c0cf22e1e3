"""The lint command: ML data-loss risks in compose files and docker run lines."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cargohold.cli._commands import app, emit_json, out
from cargohold.cli._data import JsonOption

RuleList = Annotated[
    list[str] | None,
    typer.Option(help="Rule ids or names, comma-separated or repeated.", show_default=False),
]


@app.command("lint")
def lint_command(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Compose files (or scripts with docker run lines).", show_default=False
        ),
    ] = None,
    docker_run: Annotated[
        list[str] | None,
        typer.Option(
            "--docker-run", help="A docker run line to check (repeatable).", show_default=False
        ),
    ] = None,
    as_json: JsonOption = False,
    as_sarif: Annotated[bool, typer.Option("--sarif", help="Print SARIF 2.1.0.")] = False,
    select: RuleList = None,
    ignore: RuleList = None,
    merge: Annotated[
        bool,
        typer.Option("--merge", help="Lint the compose files as one project (like -f a -f b)."),
    ] = False,
    list_rules: Annotated[
        bool, typer.Option("--rules", help="List the rules (with --json: as JSON) and exit.")
    ] = False,
) -> int:
    """ML data-loss and safety risks in compose files or docker run lines, on the model Compose
    would run. Exit 1 on any warning or error. Silence one finding with
    `# cargohold: ignore CH004` on its line or on its service."""
    from cargohold import __version__
    from cargohold.lint import REGISTRY, lint, sarif_log

    if list_rules:
        rules = sorted(REGISTRY.values(), key=lambda r: r.id)
        if as_json:
            emit_json(
                [
                    {"id": r.id, "name": r.name, "severity": r.severity, "summary": r.summary,
                     "description": r.description, "help": r.anchor}
                    for r in rules
                ]
            )  # fmt: skip
        else:
            for r in rules:
                out.print(f"{r.id}  {r.severity:<7}  {r.name:<22}  {r.summary}", highlight=False)
        return 0

    report = lint(files or [], docker_run or [], select=select, ignore=ignore, merge=merge)
    bad = any(f.severity in ("error", "warning") for f in report.findings)
    if as_sarif:
        emit_json(sarif_log(report.findings, report.notes, __version__))
    elif as_json:
        emit_json(
            {
                "findings": [asdict(f) for f in report.findings],
                "notes": report.notes,
                "suppressed": report.suppressed,
            }
        )
    else:
        colour = {"error": "red", "warning": "yellow", "note": "blue"}
        for f in report.findings:
            out.print(
                f"{escape(f.file)}:{f.line}: [{colour[f.severity]}]{f.severity}[/] {f.rule} "
                f"{f.name} ({escape(f.service)})",
                markup=True,
                highlight=False,
            )
            out.print(f"    {f.message}", highlight=False)
            for why in f.evidence:
                out.print(f"    evidence: {why}", highlight=False)
            out.print(f"    fix: {f.fix}", highlight=False)
        for note in report.notes:
            out.print(f"note: {note}", highlight=False)
        count = len(report.findings)
        tail = f", {report.suppressed} suppressed" if report.suppressed else ""
        out.print(
            f"{count} finding{'s' if count != 1 else ''} in {report.inputs} input(s){tail}"
            if count
            else f"no findings in {report.inputs} input(s){tail}",
            highlight=False,
        )
    return 1 if bad else 0
