"""Snapshot commands: snapshot, snapshots, restore, forget, and ``repo init|check|gc|stats``.

Exit codes beyond the common ones: 4 -- a snapshot completed but some paths changed or vanished
while they were read (they are listed); 5 -- an encrypted repository's password is missing or
wrong.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cargohold.cli._commands import app, emit_json, err, out
from cargohold.cli._data import JsonOption, RepoOption, _progress, _size
from cargohold.errors import UsageError

if TYPE_CHECKING:
    from cargohold.snapshots.forget import Policy

log = logging.getLogger(__name__)

repo_app = typer.Typer(
    help="Create, check, clean and measure a snapshot repository.", no_args_is_help=True
)
app.add_typer(repo_app, name="repo")

PasswordFile = Annotated[
    str | None,
    typer.Option(
        "--password-file",
        help="First line: the repository's password (default: $CARGOHOLD_PASSWORD).",
        show_default=False,
    ),
]


def _repo(url: str | None, password_file: str | None, *, create: bool = False):  # type: ignore[no-untyped-def]
    from cargohold.snapshots import open_repository, read_password

    return open_repository(url, create=create, password=read_password(password_file))


def _is_path(source: str) -> bool:
    """Volume names never contain a slash; anything with one (or ``.``) is a host folder."""
    return "/" in source or source in (".", "..")


def _print_snapshot(info, as_json: bool) -> int:  # type: ignore[no-untyped-def]
    from cargohold.snapshots import EXIT_CHANGED

    if as_json:
        emit_json(asdict(info))
    else:
        out.print(
            f"snapshot {info.id} of {info.volume}: {info.files} files, {_size(info.bytes)}; "
            f"{info.new_objects} new blobs ({_size(info.new_bytes_stored)} stored) in "
            f"{info.seconds:.1f} s → {info.repo}"
        )
    if info.changed:
        err.print(
            f"warning: {len(info.changed)} path(s) changed or vanished while being read; the "
            "snapshot holds what could be read consistently:",
            markup=False,
        )
        for path in info.changed[:20]:
            err.print(f"  {path}", markup=False)
        return EXIT_CHANGED
    return 0


def _take(  # type: ignore[no-untyped-def]
    source: str,
    repo: str | None,
    password_file: str | None,
    tag: str | None,
    pause: bool,
    as_volume: str | None = None,
):
    from cargohold.snapshots import snapshot_path, snapshot_volume

    if _is_path(source):
        if pause:
            raise UsageError("--pause applies to volumes only.", hint="Drop --pause.")
        repository = _repo(repo, password_file, create=True)
        with _progress(f"snapshot {source}") as progress:
            return snapshot_path(
                Path(source), repository, tag=tag, as_volume=as_volume, progress=progress
            )
    from cargohold.engine import connect

    engine = connect()
    engine.volume(source)  # a missing volume must not leave a new, empty repository behind
    repository = _repo(repo, password_file, create=True)
    from cargohold.snapshots.schedule import paused_users

    with paused_users(engine, source, enabled=pause), _progress(f"snapshot {source}") as progress:
        return snapshot_volume(engine, source, repository, tag=tag, progress=progress)


@app.command("snapshot")
def snapshot_command(
    source: Annotated[str, typer.Argument(help="A volume, or a folder (a path with a '/').")],
    repo: RepoOption = None,
    tag: Annotated[str | None, typer.Option(help="A name to find it by.")] = None,
    every: Annotated[
        str | None,
        typer.Option(
            help="Keep running: a snapshot every DURATION (30s, 15m, 1h, 1d).", show_default=False
        ),
    ] = None,
    pause: Annotated[
        bool, typer.Option(help="docker pause the volume's running users during the read.")
    ] = False,
    as_volume: Annotated[
        str | None,
        typer.Option(
            "--as-volume",
            metavar="VOLUME",
            help="The folder is where VOLUME is mounted (a sidecar without the Docker socket): "
            "record the snapshots, and apply --keep-…, as VOLUME's, so that `restore "
            "VOLUME@latest` on the host finds them.",
            show_default=False,
        ),
    ] = None,
    keep_last: Annotated[
        int, typer.Option(min=0, help="With --every: forget all but the last N.")
    ] = 0,
    keep_hourly: Annotated[int, typer.Option(min=0, help="With --every: keep N hourly.")] = 0,
    keep_daily: Annotated[int, typer.Option(min=0, help="With --every: keep N daily.")] = 0,
    keep_weekly: Annotated[int, typer.Option(min=0, help="With --every: keep N weekly.")] = 0,
    keep_monthly: Annotated[int, typer.Option(min=0, help="With --every: keep N monthly.")] = 0,
    until_pod_done: Annotated[
        bool,
        typer.Option(
            "--until-pod-done",
            help="With --every, as a Kubernetes sidecar: take a last snapshot and stop when the "
            "pod's other processes have ended.",
        ),
    ] = False,
    password_file: PasswordFile = None,
    as_json: JsonOption = False,
) -> int:
    """An incremental, deduplicated snapshot of a volume or a folder: unchanged files and
    folders cost nothing. Exit 4: done, but some paths changed while being read. With --every
    it keeps running until SIGTERM (or Ctrl-C), which ends it after the run under way."""
    if as_volume is not None:
        _check_as_volume(source, as_volume)
    keeps = keep_last or keep_hourly or keep_daily or keep_weekly or keep_monthly
    if every is None:
        if keeps or until_pod_done:
            raise UsageError(
                "--keep-… and --until-pod-done go with --every.",
                hint="Add --every 1h, or use `cargohold forget` for one retention pass.",
            )
        return _print_snapshot(_take(source, repo, password_file, tag, pause, as_volume), as_json)
    from cargohold.snapshots.forget import Policy
    from cargohold.snapshots.schedule import parse_duration

    interval = parse_duration(every)
    policy = Policy(
        last=keep_last,
        hourly=keep_hourly,
        daily=keep_daily,
        weekly=keep_weekly,
        monthly=keep_monthly,
    )
    stop = _stop_on_sigterm()
    if until_pod_done:
        _stop_when_pod_done(stop)
    run = 0
    while not stop.is_set():
        run += 1
        began = time.monotonic()
        _scheduled_run(run, source, repo, password_file, tag, pause, as_volume, policy, as_json)
        stop.wait(max(0.0, interval - (time.monotonic() - began)))
    if until_pod_done:  # the job has ended: what it wrote last is in no snapshot yet
        run += 1
        _scheduled_run(run, source, repo, password_file, tag, pause, as_volume, policy, as_json)
    out.print(f"stopped after {run} run(s)", markup=False)
    return 0


def _check_as_volume(source: str, volume: str) -> None:
    import re

    if not _is_path(source):
        raise UsageError(
            "--as-volume names the volume mounted at a folder; the source is a volume already.",
            hint=f"Give the folder where the volume is mounted, e.g. cargohold snapshot /data "
            f"--as-volume {volume}.",
        )
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", volume):
        raise UsageError(
            f"{volume!r} is not a Docker volume name.",
            hint="Volume names are letters, digits, '_', '.' and '-'.",
        )


def _stop_on_sigterm() -> threading.Event:
    """An event set by SIGTERM: ``docker stop`` (PID 1 in a container ignores an unhandled
    SIGTERM, so without a handler every stop would wait for the SIGKILL)."""
    import signal

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return stop


def _stop_when_pod_done(stop: threading.Event) -> None:
    """Set ``stop`` once the pod's other processes have ended (``mirror.stop_when_pod_done``)."""
    from cargohold.mirror import stop_when_pod_done

    stop_when_pod_done(
        stop,
        lambda: err.print(
            "cargohold snapshot: --until-pod-done needs shareProcessNamespace; "
            "snapshotting until stopped",
            markup=False,
        ),
    )


def _scheduled_run(
    run: int,
    source: str,
    repo: str | None,
    password_file: str | None,
    tag: str | None,
    pause: bool,
    as_volume: str | None,
    policy: Policy,
    as_json: bool,
) -> None:
    """One snapshot and its retention; a failure is said and the schedule goes on."""
    from cargohold.errors import CargoholdError
    from cargohold.snapshots.forget import forget_snapshots

    try:
        info = _take(source, repo, password_file, tag, pause, as_volume)
        _print_snapshot(info, as_json)
        if not policy.empty:
            result = forget_snapshots(
                _repo(repo, password_file), policy, source=info.volume, dry_run=False
            )
            out.print(
                f"run {run}: kept {len(result.keep)}, forgot {len(result.remove)} "
                f"(snapshots of {info.volume})",
                markup=False,
            )
    except CargoholdError as exc:
        err.print(f"run {run} failed: {exc.message} {exc.hint or ''}".rstrip(), markup=False)
    except Exception as exc:  # one failed run must not stop the schedule
        err.print(f"run {run} failed: {exc}", markup=False)


@app.command("snapshots")
def snapshots_command(
    source: Annotated[str | None, typer.Argument(help="Only this volume's (or folder's).")] = None,
    repo: RepoOption = None,
    password_file: PasswordFile = None,
    as_json: JsonOption = False,
) -> None:
    """List the snapshots in a repository."""
    import os

    from cargohold.snapshots import list_snapshots

    repository = _repo(repo, password_file)
    if source is not None and _is_path(source):
        source = os.path.abspath(source)
    snaps = list_snapshots(repository, source)
    if as_json:
        emit_json([asdict(s) for s in snaps])
        return
    if not snaps:
        out.print("no snapshots")
    for s in snaps:
        out.print(
            f"{s.id}  {s.created}  {s.volume:<24} {s.files:>8} files  {_size(s.bytes):>9}"
            f"{'  tag ' + s.tag if s.tag else ''}",
            markup=False,
        )


@app.command("restore")
def restore_command(
    snapshot: Annotated[
        str, typer.Argument(help="A snapshot id (or unique prefix), a tag, or SOURCE@latest.")
    ],
    volume: Annotated[
        str | None, typer.Argument(help="A new or empty volume to restore into.")
    ] = None,
    to: Annotated[
        Path | None, typer.Option("--to", help="Restore into this host folder instead.")
    ] = None,
    repo: RepoOption = None,
    force: Annotated[
        bool, typer.Option(help="Replace the content of a target that has data.")
    ] = False,
    password_file: PasswordFile = None,
) -> None:
    """Restore a snapshot into a volume or a folder, verified, staged and swapped in whole."""
    from cargohold.snapshots import restore_to_path, restore_volume

    if (volume is None) == (to is None):
        raise UsageError(
            "Name a volume or --to DIR (one of them).",
            hint="cargohold restore SNAP VOLUME, or cargohold restore SNAP --to DIR",
        )
    repository = _repo(repo, password_file)
    if to is not None:
        with _progress(f"restore → {to}") as progress:
            result = restore_to_path(repository, snapshot, to, force=force, progress=progress)
    else:
        from cargohold.engine import connect

        assert volume is not None
        engine = connect()
        with _progress(f"restore → {volume}") as progress:
            result = restore_volume(
                engine, repository, snapshot, volume, force=force, progress=progress
            )
    if result.finished_interrupted:
        err.print(f"note: finished an interrupted restore into {result.target} first", markup=False)
    out.print(
        f"restored {result.id} ({result.files} files, {_size(result.bytes)}) into "
        f"{result.target}, checksums verified (via {result.access} access)",
        markup=False,
    )


@app.command("forget")
def forget_command(
    source: Annotated[str | None, typer.Argument(help="Only this volume's (or folder's).")] = None,
    keep_last: Annotated[int, typer.Option(min=0, help="Keep the N newest.")] = 0,
    keep_hourly: Annotated[
        int, typer.Option(min=0, help="Keep the newest of each of N hours.")
    ] = 0,
    keep_daily: Annotated[int, typer.Option(min=0, help="Keep the newest of each of N days.")] = 0,
    keep_weekly: Annotated[
        int, typer.Option(min=0, help="Keep the newest of each of N weeks.")
    ] = 0,
    keep_monthly: Annotated[
        int, typer.Option(min=0, help="Keep the newest of each of N months.")
    ] = 0,
    keep_tag: Annotated[
        list[str] | None, typer.Option(help="Keep every snapshot with tag T.")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Only show what would be forgotten.")] = False,
    repo: RepoOption = None,
    password_file: PasswordFile = None,
    as_json: JsonOption = False,
) -> None:
    """Forget snapshots by a retention policy (restic's rules, per source). The data goes with
    the next `cargohold repo gc`."""
    import os

    from cargohold.snapshots.forget import Policy, forget_snapshots

    policy = Policy(
        last=keep_last,
        hourly=keep_hourly,
        daily=keep_daily,
        weekly=keep_weekly,
        monthly=keep_monthly,
        tags=tuple(keep_tag or ()),
    )
    if policy.empty:
        raise UsageError(
            "No --keep-… option: that would forget every snapshot.",
            hint="Say what to keep, e.g. --keep-last 7 --keep-daily 30.",
        )
    if source is not None and _is_path(source):
        source = os.path.abspath(source)
    result = forget_snapshots(_repo(repo, password_file), policy, source=source, dry_run=dry_run)
    if as_json:
        emit_json(
            {
                "keep": [{"id": s.id, "source": s.volume, "reasons": r} for s, r in result.keep],
                "remove": [s.id for s in result.remove],
                "dry_run": dry_run,
            }
        )
        return
    for s, reasons in result.keep:
        out.print(f"keep    {s.id}  {s.volume}  ({', '.join(reasons)})", markup=False)
    for s in result.remove:
        out.print(f"{'would forget' if dry_run else 'forget'}  {s.id}  {s.volume}", markup=False)


@repo_app.command("init")
def repo_init(
    repo: RepoOption = None,
    encrypt: Annotated[
        bool, typer.Option(help="Encrypt everything (AES-256-GCM, scrypt).")
    ] = False,
    password_file: PasswordFile = None,
) -> None:
    """Create a repository (format 2)."""
    from cargohold.snapshots import init_repository, read_password

    repository = init_repository(repo, encrypt=encrypt, password=read_password(password_file))
    out.print(
        f"created {'an encrypted' if encrypt else 'a'} repository at {repository.url}", markup=False
    )


@repo_app.command("check")
def repo_check(
    repo: RepoOption = None,
    read_data: Annotated[bool, typer.Option(help="Also read and verify every byte.")] = False,
    password_file: PasswordFile = None,
    as_json: JsonOption = False,
) -> int:
    """Verify the structure (every snapshot's trees and blobs are there); exit 1 on problems."""
    from cargohold.snapshots.maintenance import check_repository

    result = check_repository(_repo(repo, password_file), read_data=read_data)
    if as_json:
        emit_json(asdict(result))
    else:
        for problem in result.problems:
            out.print(f"problem: {problem}", markup=False)
        out.print(
            f"{result.snapshots} snapshots, {result.packs} packs, {result.blobs} blobs checked"
            f"{' (every byte read)' if read_data else ''}: "
            f"{'no problems' if not result.problems else f'{len(result.problems)} problem(s)'}",
            markup=False,
        )
    return 1 if result.problems else 0


@repo_app.command("gc")
def repo_gc(
    repo: RepoOption = None,
    password_file: PasswordFile = None,
    as_json: JsonOption = False,
) -> int:
    """Delete data no snapshot references; safe while snapshots are being written. Exit 1 when
    a pack had to stay because a blob it holds for a snapshot is damaged."""
    from cargohold.snapshots.maintenance import collect_garbage

    result = collect_garbage(_repo(repo, password_file))
    if as_json:
        emit_json(asdict(result))
        return 1 if result.damaged else 0
    for problem in result.damaged:
        err.print(f"kept (damaged): {problem}", markup=False)
    out.print(
        f"deleted {result.deleted_packs} packs ({_size(result.deleted_bytes)}); "
        f"{result.condemned_packs} more waiting for {result.waiting_sessions} running "
        f"snapshot(s); {result.kept_packs} packs in use",
        markup=False,
    )
    if result.damaged:
        err.print(
            f"hint: {len(result.damaged)} pack(s) kept: a snapshot still needs a damaged blob "
            "in them. `cargohold repo check --read-data` lists what is damaged; forget the "
            "snapshots that use it, and the next gc removes the packs.",
            markup=False,
        )
    return 1 if result.damaged else 0


@repo_app.command("stats")
def repo_stats(
    repo: RepoOption = None,
    password_file: PasswordFile = None,
    as_json: JsonOption = False,
) -> None:
    """Sizes and deduplication: what the snapshots hold against what the repository stores."""
    from cargohold.snapshots.maintenance import repository_stats

    stats = repository_stats(_repo(repo, password_file))
    if as_json:
        emit_json(asdict(stats))
        return
    out.print(
        f"{stats.snapshots} snapshots of {stats.logical_bytes and _size(stats.logical_bytes)} "
        f"in all; stored {_size(stats.stored_bytes)} in {stats.packs} packs "
        f"({stats.blobs} blobs, {_size(stats.metadata_bytes)} of index and records); "
        f"deduplication ratio {stats.dedup_ratio:.2f}",
        markup=False,
    )
