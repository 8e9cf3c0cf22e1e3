"""What volumes exist, what they hold, who uses them, whether they are safe -- and prune.

One removal rule, ``removal_decision``, serves ``prune`` and ``volume rm``: a volume may go only
when no container (running or stopped) mounts it, it is not protected (label
``cargohold.protect=true``), and its current content is *proven* to be in its latest snapshot.
The proof is cheap when the volume is read directly: the newest mtime/ctime in it is no newer
than the one the snapshot recorded (a ctime cannot be set back by ``cp -p``, ``tar x`` or
``touch -d``). Through the Engine API only mtimes are visible, and those can be set back, so
there -- and whenever the stamp does not prove it -- the content is compared with the
snapshot's manifest file by file (paths, types, sizes, link targets, sha256). When neither
proves it, the volume stays. ``prune`` touches only volumes with cargohold's labels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cargohold.archive import CHUNK, Entry, Opener
from cargohold.engine import Engine
from cargohold.errors import CargoholdError
from cargohold.plan import LABEL_KIND, LABEL_PROJECT, LABEL_STORE
from cargohold.snapshots import SnapshotInfo, list_snapshots, open_repository, resolve_snapshot
from cargohold.snapshots._format import SnapshotRecord
from cargohold.snapshots.repository import Repository
from cargohold.snapshots.restore import snapshot_entries
from cargohold.volumes import VolumeAccess, open_volume, volume_usage

__all__ = [
    "LABEL_PROTECT",
    "PruneDecision",
    "VolumeSummary",
    "prune_volumes",
    "removal_decision",
    "removal_decision_for",
    "volume_summaries",
]

log = logging.getLogger(__name__)

LABEL_PROTECT = "cargohold.protect"


@dataclass(frozen=True)
class VolumeSummary:
    name: str
    project: str | None
    store: str | None
    kind: str | None
    bytes: int
    files: int
    used_by: list[str]
    protected: bool
    last_snapshot: str | None
    snapshot_current: bool
    access: str


@dataclass(frozen=True)
class PruneDecision:
    volume: str
    remove: bool
    reason: str
    used_by: tuple[str, ...] = ()  # containers that mount it: nothing may remove it


def _latest_snapshots(repo_url: str | None) -> tuple[Repository | None, dict[str, SnapshotInfo]]:
    try:
        repo = open_repository(repo_url)
    except CargoholdError as exc:
        log.info("no snapshot repository: %s", exc)
        return None, {}
    latest: dict[str, SnapshotInfo] = {}
    for snap in list_snapshots(repo):
        latest[snap.volume] = snap
    return repo, latest


def volume_summaries(
    engine: Engine,
    repo_url: str | None,
    *,
    only_cargohold: bool = True,
    names: list[str] | None = None,
) -> list[VolumeSummary]:
    """One summary per volume (cargohold's, or all), with its size and snapshot state."""
    volumes = engine.volumes(LABEL_PROJECT if only_cargohold else None)
    if names is not None:
        volumes = [v for v in volumes if v.name in names]
    users = engine.volume_users()
    _, snapshots = _latest_snapshots(repo_url)
    summaries = []
    for info in volumes:
        files = open_volume(engine, info.name)
        usage = volume_usage(files)
        snap = snapshots.get(info.name)
        summaries.append(
            VolumeSummary(
                name=info.name,
                project=info.labels.get(LABEL_PROJECT),
                store=info.labels.get(LABEL_STORE),
                kind=info.labels.get(LABEL_KIND),
                bytes=usage.bytes,
                files=usage.files,
                used_by=sorted(users.get(info.name, [])),
                protected=info.labels.get(LABEL_PROTECT, "").lower() == "true",
                last_snapshot=snap.id if snap else None,
                snapshot_current=bool(
                    snap and files.keeps_stats and snap.data_version >= usage.data_version
                ),
                access=files.access,
            )
        )
    return summaries


def _same_bytes(a: Opener, b: Opener) -> bool:
    with a() as left, b() as right:
        while True:
            chunk = left.read(CHUNK)
            other = right.read(len(chunk)) if chunk else right.read(1)
            if chunk != other:
                return False
            if not chunk:
                return True


def content_difference(files: VolumeAccess, repo: Repository, record: SnapshotRecord) -> str | None:
    """The first difference between a volume's content and a snapshot, None when the snapshot
    holds exactly what the volume holds (paths, types, sizes, link targets, every byte).

    Every file is read on both sides: this is the proof of last resort, for when a stamp
    cannot prove anything. A snapshot that cannot be read counts as a difference.
    """
    if record.root is None:
        return "its snapshot has no tree"
    expected: dict[str, tuple[Entry, Opener | None]] = {}
    try:
        for entry, opener in snapshot_entries(repo, record.id, record.root):
            expected[entry.path] = (entry, opener)
        with files.entries() as entries:
            for entry, opener in entries:
                found = expected.pop(entry.path, None)
                where = entry.path or "the root"
                if found is None:
                    return f"{where} is not in the snapshot"
                theirs, their_opener = found
                if theirs.kind != entry.kind:
                    return f"{where} is a {entry.kind}, the snapshot has a {theirs.kind}"
                if entry.kind == "symlink" and theirs.target != entry.target:
                    return f"{where} points elsewhere"
                if entry.kind == "file":
                    if theirs.size != entry.size:
                        return f"{where} changed size"
                    if opener is None or their_opener is None:
                        return f"{where} cannot be compared"
                    if not _same_bytes(opener, their_opener):
                        return f"{where} changed"
    except CargoholdError as exc:
        return f"the comparison failed ({exc})"
    if expected:
        return f"{next(iter(expected))} was removed"
    return None


def removal_decision(
    engine: Engine, summary: VolumeSummary, repo: Repository | None
) -> PruneDecision:
    """May this volume be removed? The one rule behind ``prune`` and ``volume rm``."""
    name = summary.name
    if summary.used_by:
        return PruneDecision(
            name, False, f"used by {', '.join(summary.used_by)}", tuple(summary.used_by)
        )
    if summary.protected:
        return PruneDecision(name, False, f"protected ({LABEL_PROTECT}=true)")
    if summary.last_snapshot is None or repo is None:
        return PruneDecision(name, False, "never snapshotted (its data is not in any snapshot)")
    if summary.snapshot_current:
        return PruneDecision(name, True, f"unused; data is in snapshot {summary.last_snapshot}")
    try:
        manifest = resolve_snapshot(repo, summary.last_snapshot)
    except CargoholdError as exc:
        return PruneDecision(name, False, f"its snapshot cannot be read ({exc})")
    difference = content_difference(open_volume(engine, name), repo, manifest)
    if difference is not None:
        return PruneDecision(
            name, False, f"changed since snapshot {summary.last_snapshot}: {difference}"
        )
    return PruneDecision(
        name, True, f"unused; content compared equal to snapshot {summary.last_snapshot}"
    )


def removal_decision_for(engine: Engine, volume: str, repo_url: str | None) -> PruneDecision:
    """``removal_decision`` for one volume, cargohold's or not.

    Raises:
        VolumeNotFound: no such volume.
    """
    rows = volume_summaries(engine, repo_url, only_cargohold=False, names=[volume])
    if not rows:
        engine.volume(volume)  # raises VolumeNotFound with a hint
    repo, _ = _latest_snapshots(repo_url)
    return removal_decision(engine, rows[0], repo)


def prune_volumes(engine: Engine, repo_url: str | None, *, dry_run: bool) -> list[PruneDecision]:
    """Remove the cargohold volumes that are unused, unprotected and provably snapshotted.

    Returns:
        A decision with its reason for every cargohold volume.
    """
    repo, _ = _latest_snapshots(repo_url)
    decisions = []
    for summary in volume_summaries(engine, repo_url):
        decision = removal_decision(engine, summary, repo)
        if decision.remove and not dry_run:
            engine.remove_volume(summary.name)
        decisions.append(decision)
    return decisions
