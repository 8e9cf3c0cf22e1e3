"""Commands that guard against loss: scan, rescue, rm, watch, doctor, ps."""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated

import typer
from rich.text import Text

from cargohold.cli._commands import SpecOption, app, emit_json, out
from cargohold.cli._data import JsonOption, _progress
from cargohold.engine import connect
from cargohold.errors import CargoholdError
from cargohold.kinds import format_size as _size

if TYPE_CHECKING:
    from cargohold.guard import ContainerScan, RescueTarget

RescueTo = Annotated[
    str | None,
    typer.Option(
        "--to",
        help="A host folder, or volume:NAME (a bare name is a folder; default: a "
        "per-container folder under ~/.local/share/cargohold/rescued).",
        show_default=False,
    ),
]


def _target(to: str | None) -> RescueTarget | None:
    """``--to`` parsed once: ``volume:NAME`` or a folder (the library never guesses)."""
    from cargohold.guard import RescueTarget

    return None if to is None else RescueTarget.parse(to)


def _emit_scans(scans: list[ContainerScan]) -> None:
    """The scans as JSON, written file by file: a layer of a million files would otherwise be
    copied into a million dicts and one string before the first byte is printed."""
    write = sys.stdout.write
    write("[")
    for i, scan in enumerate(scans):
        head = json.dumps({"container": scan.container, "id": scan.id, "status": scan.status})
        write(("," if i else "") + "\n  " + head[:-1] + ', "files": [')
        for j, f in enumerate(scan.files):
            item = {"path": f.path, "category": f.category, "size": f.size, "reason": f.reason}
            write(("," if j else "") + "\n    " + json.dumps(item))
        write(f'], "worth_keeping": {scan.keeping}, "bytes_at_risk": {scan.bytes_at_risk}}}')
    write("\n]\n")
    sys.stdout.flush()


@app.command("scan")
def scan_command(
    containers: Annotated[
        list[str] | None, typer.Argument(help="Containers (default: all).")
    ] = None,
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option(help="Files shown per container.")] = 20,
) -> int:
    """Files in containers' writable layers that `docker rm` would delete, ML data first.
    Exit 1 when checkpoints, weights or datasets are at risk."""
    from cargohold.guard import scan_containers, shown

    # (text shows the first --limit files: only they are kept, whatever the layer's size)
    scans = scan_containers(connect(), containers or None, keep=None if as_json else limit)
    at_risk = any(s.keeping for s in scans)
    if as_json:
        _emit_scans(scans)
        return 1 if at_risk else 0
    for scan in scans:
        if not scan.count:
            out.print(Text.assemble((scan.container, "green"), f" ({scan.status}): clean"))
            continue
        head = ("AT RISK", "red") if scan.keeping else ("layer written", "yellow")
        out.print(
            Text.assemble(
                head,
                f" {scan.container} ({scan.status}): {scan.keeping} ML files, "
                f"{_size(scan.bytes_at_risk)} would be lost with the container",
            )
        )
        for item in itertools.islice(scan.files, limit):
            out.print(
                Text.assemble(
                    f"  {item.category:<10} {_size(item.size):>9}  {shown(item.path)}  ",
                    (f"({item.reason})", "dim"),
                )
            )
        if scan.count > limit:
            out.print(f"  … and {scan.count - limit} more (--limit)")
        if scan.keeping:
            out.print(f"  save it: cargohold rescue {scan.container}")
    return 1 if at_risk else 0


@app.command("rescue")
def rescue_command(
    container: str,
    to: RescueTo = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Every file of the layer, not only ML data.")
    ] = False,
) -> None:
    """Copy a container's at-risk files out, paths kept, checksums verified (works on stopped
    containers)."""
    from cargohold.guard import rescue_container

    with _progress(f"rescue {container}") as progress:
        result = rescue_container(
            connect(), container, to=_target(to), everything=everything, progress=progress
        )
    if not result.files:
        out.print(
            f"{result.container}: nothing to rescue"
            + ("" if everything else " (--all takes every file of the layer)")
        )
        return
    out.print(
        f"rescued {result.files} files ({_size(result.bytes)}) from {result.container} "
        f"to {result.destination}, checksums verified"
    )


@app.command("rm")
def rm_command(
    container: str,
    force: Annotated[bool, typer.Option(help="Remove even with ML data inside.")] = False,
    rescue: Annotated[bool, typer.Option(help="Rescue the ML data first, then remove.")] = False,
    to: RescueTo = None,
) -> None:
    """Remove a container, refusing while its own layer holds unsaved ML data."""
    from cargohold.guard import remove_container

    scan, rescued = remove_container(
        connect(), container, force=force, rescue=rescue, to=_target(to)
    )
    if rescued is not None and rescued.files:
        out.print(f"rescued {rescued.files} files to {rescued.destination}")
    lost = f" ({scan.keeping} ML files discarded)" if force and scan.keeping else ""
    out.print(f"removed {scan.container}{lost}")


@app.command("watch")
def watch_command(
    to: RescueTo = None,
    seconds: Annotated[
        float | None, typer.Option(help="Stop after this long (default: until interrupted).")
    ] = None,
) -> None:
    """Follow the engine: when a container stops with ML data in its layer, rescue it before
    it can be removed. Cannot catch `--rm` containers (the engine deletes them as they stop)."""
    from cargohold.guard import watch

    engine = connect()
    out.print("watching for containers that stop with ML data in their layer (Ctrl-C stops)")
    for _ in watch(
        engine,
        on_event=lambda m: out.print(m, highlight=False),
        to=_target(to),
        stop_after=seconds,
    ):
        pass


_STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "red"}


@app.command("doctor")
def doctor_command(file: SpecOption = None, as_json: JsonOption = False) -> int:
    """Engine, storage driver, GPU runtime, free space, shm, uid mapping, and whether each
    store is writable by the job's user. Exit 1 when a check fails."""
    from cargohold.doctor import doctor, worst

    checks = doctor(connect(), file)
    if as_json:
        emit_json([{"check": c.name, "status": c.status, "detail": c.detail} for c in checks])
    else:
        for c in checks:
            out.print(
                Text.assemble((f"{c.status:>4}", _STATUS_STYLE[c.status]), f"  {c.name:<22} ")
                + Text(c.detail)
            )
    return 1 if worst(checks) == "fail" else 0


@app.command("ps")
def ps_command(file: SpecOption = None, as_json: JsonOption = False) -> int:
    """The project's containers and volumes, their sizes, and the data at risk."""
    from cargohold.doctor import project_status
    from cargohold.sidecar import mirror_states
    from cargohold.spec import load_spec

    project = None
    try:
        project = load_spec(file).project.name
    except CargoholdError:
        if file:
            raise
    engine = connect()
    status = project_status(engine, project)
    mirrors = mirror_states(engine, project)
    if as_json:
        emit_json(
            {
                "project": status.project,
                "containers": [asdict(c) for c in status.containers],
                "volumes": [asdict(v) for v in status.volumes],
                "mirrors": [asdict(m) for m in mirrors],
            }
        )
        return 1 if status.at_risk else 0
    out.print(Text(project or "all cargohold projects", style="bold"))
    for c in status.containers:
        risk = (
            Text(f"{c.ml_files_at_risk} ML files ({_size(c.bytes_at_risk)}) at risk", "red")
            if c.ml_files_at_risk
            else Text("nothing at risk", "green")
        )
        out.print(Text(f"  container {c.name:<28} {c.status:<24} ") + risk)
    for m in mirrors:
        line = f"  mirror    {m.name:<28} {m.state}: {m.message}"
        out.print(Text(line, "green" if m.state == "ok" else "bold red"))
    for v in status.volumes:
        snap = (
            "snapshot current"
            if v.snapshot_current
            else ("changed since last snapshot" if v.last_snapshot else "never snapshotted")
        )
        out.print(Text(f"  volume    {v.name:<28} {_size(v.bytes):>9}  {v.kind or '-':<11} {snap}"))
    if not status.containers and not status.volumes:
        out.print(Text("  no containers or volumes"))
    return 1 if status.at_risk else 0
