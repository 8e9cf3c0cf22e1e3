"""Snapshot commands: snapshot, snapshots, restore."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from cargohold.cli._commands import app, emit_json, out
from cargohold.cli._data import JsonOption, RepoOption, _progress, _size
from cargohold.engine import connect


@app.command("snapshot")
def snapshot_command(
    volume: Annotated[str, typer.Argument(help="The volume to snapshot.")],
    repo: RepoOption = None,
    tag: Annotated[str | None, typer.Option(help="A name to find it by.")] = None,
    as_json: JsonOption = False,
) -> None:
    """An incremental, content-addressed snapshot: unchanged files cost nothing."""
    from cargohold.snapshots import open_repository, snapshot_volume

    engine = connect()
    engine.volume(volume)  # a missing volume must not leave a new, empty repository behind
    repository = open_repository(repo, create=True)
    with _progress(f"snapshot {volume}") as progress:
        info = snapshot_volume(engine, volume, repository, tag=tag, progress=progress)
    if as_json:
        emit_json(asdict(info))
        return
    out.print(
        f"snapshot {info.id} of {volume}: {info.files} files, {_size(info.bytes)}; "
        f"{info.new_objects} new objects ({_size(info.new_bytes_stored)} stored) in "
        f"{info.seconds:.1f} s → {info.repo}"
    )


@app.command("snapshots")
def snapshots_command(
    volume: Annotated[str | None, typer.Argument(help="Only this volume's.")] = None,
    repo: RepoOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the snapshots in a repository."""
    from cargohold.snapshots import list_snapshots, open_repository

    snaps = list_snapshots(open_repository(repo), volume)
    if as_json:
        emit_json([asdict(s) for s in snaps])
        return
    if not snaps:
        out.print("no snapshots")
    for s in snaps:
        out.print(
            f"{s.id}  {s.created}  {s.volume:<24} {s.files:>8} files  {_size(s.bytes):>9}"
            f"{'  tag ' + s.tag if s.tag else ''}"
        )


@app.command("restore")
def restore_command(
    snapshot: Annotated[
        str, typer.Argument(help="A snapshot id (or unique prefix), a tag, or VOLUME@latest.")
    ],
    volume: Annotated[str, typer.Argument(help="A new or empty volume to restore into.")],
    repo: RepoOption = None,
    force: Annotated[
        bool, typer.Option(help="Replace the content of a volume that has data.")
    ] = False,
) -> None:
    """Restore a snapshot into a volume, verifying every file's checksum."""
    from cargohold.snapshots import open_repository, restore_snapshot

    engine = connect()
    repository = open_repository(repo)
    with _progress(f"restore → {volume}") as progress:
        manifest, files = restore_snapshot(
            engine, repository, snapshot, volume, force=force, progress=progress
        )
    out.print(
        f"restored {manifest['id']} ({manifest['files']} files, "
        f"{_size(manifest['bytes'])}) into {volume}, checksums verified "
        f"(via {files.access} access)"
    )
