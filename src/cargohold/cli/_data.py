"""Commands that move and inspect data: ingest, export, clone, volume …, prune."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from cargohold.cli._commands import app, emit_json, err, out
from cargohold.cli._progress import Meter, progress_on
from cargohold.engine import connect
from cargohold.errors import UsageError
from cargohold.kinds import format_size
from cargohold.volumes import TransferResult, open_volume, split_volume_path

_size = format_size  # the name the other command modules use

volume_app = typer.Typer(
    help="Browse and size volumes without writing a helper container.", no_args_is_help=True
)
app.add_typer(volume_app, name="volume")

RepoOption = Annotated[
    str | None,
    typer.Option(
        "--repo",
        help="Snapshot repository: a folder or an fsspec URL such as "
        "s3://bucket/prefix (default: $CARGOHOLD_REPO, else a per-user folder).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _volume_and_path(volume: str, path: str) -> tuple[str, str]:
    """``VOLUME[:PATH]`` and an optional PATH argument → (volume, path inside it)."""
    name, inner = split_volume_path(volume)
    extra = split_volume_path(f"{name}:{path}")[1] if path else ""
    return name, "/".join(p for p in (inner, extra) if p)


def _say_recovered(result: TransferResult) -> None:
    if result.recovered is not None:
        what = "finished" if result.recovered.outcome == "completed" else "cleaned up after"
        err.print(f"{what} an interrupted `cargohold {result.recovered.operation}`", markup=False)


@contextlib.contextmanager
def _progress(description: str) -> Iterator[Meter]:
    """Files and bytes, rates and (when a total is known) an ETA, on stderr (``_progress``)."""
    with progress_on(err, description) as meter:
        yield meter


def _is_folder(text: str) -> bool:
    """A host folder, not ``VOLUME[:PATH]``: what comes before the first ``:`` is no volume
    name (volume names have no ``/`` and do not start with ``.`` or ``~``)."""
    from cargohold.volumes import check_volume_name

    if text.startswith(":"):
        return False  # ":PATH" names no volume: split_volume_path says so
    try:
        check_volume_name(text.partition(":")[0])
    except UsageError:
        return True
    return False


@app.command("ingest")
def ingest_command(
    source: Annotated[
        str,
        typer.Argument(
            help="A host folder, a file, an archive (.tar, .tar.gz, .tar.zst, …) or an fsspec URL."
        ),
    ],
    destination: Annotated[
        str,
        typer.Argument(help="VOLUME or VOLUME:PATH, or a host folder (a path: ./x, /x, x/y)."),
    ],
    verify: Annotated[
        bool, typer.Option(help="Compare every file's sha256 after the copy.")
    ] = False,
) -> None:
    """Copy host data into a volume (created if missing), or into a folder without Docker."""
    from cargohold.volumes import ingest, ingest_folder

    if _is_folder(destination):
        with _progress(f"ingest → {destination}") as progress:
            result = ingest_folder(source, Path(destination), verify=verify, progress=progress)
        _say_recovered(result)
        out.print(
            f"{result.files} files, {_size(result.bytes)} into {destination}"
            f"{', verified' if result.verified else ''}",
            markup=False,
        )
        return
    engine = connect()
    with _progress(f"ingest → {destination}") as progress:
        result = ingest(engine, source, destination, verify=verify, progress=progress)
    _say_recovered(result)
    out.print(
        f"{result.files} files, {_size(result.bytes)} into {destination}"
        f"{' (new volume)' if result.created_volume else ''}"
        f"{', verified' if result.verified else ''} (via {result.access} access)",
        markup=False,
    )


@app.command("export")
def export_command(
    source: Annotated[
        str, typer.Argument(help="VOLUME or VOLUME:PATH, or a host folder (a path: ./x, /x, x/y).")
    ],
    destination: Annotated[
        Path, typer.Argument(help="A folder, or an archive by extension (.tar, .tar.gz, .tar.zst).")
    ],
    force: Annotated[bool, typer.Option(help="Write into a folder that has content.")] = False,
) -> None:
    """Copy a volume (or a folder in it) to the host; a host folder's export needs no Docker."""
    from cargohold.volumes import export_folder, export_volume

    if _is_folder(source):
        with _progress(f"export {source}") as progress:
            result = export_folder(Path(source), destination, force=force, progress=progress)
        _say_recovered(result)
        out.print(f"{result.files} files, {_size(result.bytes)} to {destination}", markup=False)
        return
    engine = connect()
    with _progress(f"export {source}") as progress:
        result = export_volume(engine, source, destination, force=force, progress=progress)
    _say_recovered(result)
    out.print(
        f"{result.files} files, {_size(result.bytes)} to {destination} "
        f"(via {result.access} access)",
        markup=False,
    )


@app.command("clone")
def clone_command(
    source: Annotated[str, typer.Argument(help="The volume to copy.")],
    destination: Annotated[str, typer.Argument(help="A new (or empty) volume.")],
) -> None:
    """Copy a volume into a new one, labels included."""
    from cargohold.volumes import clone_volume

    engine = connect()
    with _progress(f"clone {source} → {destination}") as progress:
        result = clone_volume(engine, source, destination, progress=progress)
    _say_recovered(result)
    if result.recovered is not None and result.recovered.outcome == "completed":
        out.print(f"{destination} is a complete clone of {source}", markup=False)
        return
    out.print(
        f"{result.files} files, {_size(result.bytes)} from {source} to {destination}", markup=False
    )


@volume_app.command("ls")
def volume_ls(
    repo: RepoOption = None,
    all_volumes: Annotated[
        bool, typer.Option("--all", help="Not only cargohold's volumes.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Volumes with size, kind and project, users, and last snapshot."""
    from cargohold.inventory import volume_summaries

    rows = volume_summaries(connect(), repo, only_cargohold=not all_volumes)
    if as_json:
        emit_json([asdict(r) for r in rows])
        return
    if not rows:
        out.print("no volumes" + ("" if all_volumes else " labelled by cargohold (--all)"))
    for r in rows:
        users = ", ".join(r.used_by) or "-"
        snap = r.last_snapshot or "never snapshotted"
        out.print(
            f"{r.name:<32} {_size(r.bytes):>9}  {r.kind or '-':<11} {r.project or '-':<14}"
            f" used by: {users:<20} snapshot: {snap}{'  PROTECTED' if r.protected else ''}"
        )


@volume_app.command("inspect")
def volume_inspect(volume: str, repo: RepoOption = None) -> None:
    """Everything cargohold knows about one volume, as JSON."""
    from cargohold.inventory import volume_summaries

    engine = connect()
    rows = [r for r in volume_summaries(engine, repo, only_cargohold=False, names=[volume])]
    if not rows:
        engine.volume(volume)  # raises VolumeNotFound with a hint
    emit_json(asdict(rows[0]))


@volume_app.command("du")
def volume_du(
    volume: str,
    path: Annotated[str, typer.Argument(help="A folder inside the volume.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Sizes of the top-level entries of a volume (or of a folder in it)."""
    from cargohold.volumes import volume_usage

    name, rel = _volume_and_path(volume, path)
    usage = volume_usage(open_volume(connect(), name), rel)
    if as_json:
        emit_json({"entries": usage.by_entry, "files": usage.files, "bytes": usage.bytes})
        return
    for name, size in sorted(usage.by_entry.items(), key=lambda kv: -kv[1]):
        out.print(f"{_size(size):>10}  {name}", markup=False)
    out.print(f"{_size(usage.bytes):>10}  total ({usage.files} files)")


def _shown(name: str) -> str:
    """A name from a volume as a terminal may print it: control characters (a container can
    name a file with escape sequences) shown as \\x escapes."""
    if name.isprintable():
        return name
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


@volume_app.command("files")
def volume_files(
    volume: str,
    path: Annotated[str, typer.Argument(help="A folder inside the volume.")] = "",
    as_json: JsonOption = False,
) -> None:
    """List the files in a volume (recursively, folders before what they hold), like ls -l."""
    name, rel = _volume_and_path(volume, path)
    files = open_volume(connect(), name)
    # Streamed as the walk finds them (names sorted within each folder): a volume of millions
    # of files is listed in the memory of one folder, not of the whole listing.
    with files.entries(rel) as entries:
        first = True
        for entry, _ in entries:
            if not entry.path:
                continue
            if as_json:
                row = {
                    "path": entry.path,
                    "kind": entry.kind,
                    "mode": oct(entry.mode),
                    "uid": entry.uid,
                    "gid": entry.gid,
                    "size": entry.size,
                    "mtime_ns": entry.mtime_ns,
                    "target": entry.target or None,
                }
                sys.stdout.write(("[\n  " if first else ",\n  ") + json.dumps(row))
            else:
                link = f" -> {_shown(entry.target)}" if entry.target else ""
                sys.stdout.write(
                    f"{entry.kind[0]} {oct(entry.mode)[2:]:>4} {entry.uid:>5}:{entry.gid:<5} "
                    f"{entry.size:>12}  {_shown(entry.path)}{link}\n"
                )
            first = False
        if as_json:
            sys.stdout.write("[]\n" if first else "\n]\n")
    sys.stdout.flush()


@volume_app.command("cat")
def volume_cat(
    volume: str,
    path: Annotated[str, typer.Argument(help="The file inside the volume.")] = "",
) -> None:
    """Write one file of a volume to stdout (`VOLUME PATH` or `VOLUME:PATH`)."""
    name, rel = _volume_and_path(volume, path)
    with open_volume(connect(), name).open_file(rel) as f:
        shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
    sys.stdout.buffer.flush()


@volume_app.command("rm")
def volume_rm(
    volume: str,
    repo: RepoOption = None,
    force: Annotated[
        bool, typer.Option(help="Remove even if never snapshotted or protected.")
    ] = False,
) -> None:
    """Remove a volume; refuses while a container uses it, and (without --force) when its data
    is not in a snapshot or it is protected."""
    from cargohold.inventory import removal_decision_for
    from cargohold.volumes import check_volume_name

    engine = connect()
    decision = removal_decision_for(engine, check_volume_name(volume), repo)
    if decision.used_by:
        raise UsageError(
            f"Volume {volume} is {decision.reason}.",
            hint="Remove those containers first (`docker rm`).",
        )
    if not decision.remove and not force:
        raise UsageError(
            f"Refusing to remove {volume}: {decision.reason}.",
            hint=f"`cargohold snapshot {volume}` first, or pass --force.",
        )
    engine.remove_volume(volume)
    out.print(f"removed {volume}", markup=False)


@app.command("prune")
def prune_command(
    repo: RepoOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would go; remove nothing.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove cargohold volumes that are unused, unprotected, and safely snapshotted."""
    from cargohold.inventory import prune_volumes

    decisions = prune_volumes(connect(), repo, dry_run=dry_run)
    if as_json:
        emit_json([asdict(d) for d in decisions])
        return
    if not decisions:
        out.print("no cargohold volumes")
    for d in decisions:
        verb = ("would remove" if dry_run else "removed") if d.remove else "kept"
        out.print(f"{verb:<12} {d.volume:<32} {d.reason}")
