"""What volumes exist, what they hold, who uses them, whether they are safe -- and prune.

A cargohold volume may be pruned only when all three hold: no container (running or stopped)
mounts it, it is not protected (label ``cargohold.protect=true``), and its latest snapshot is
current -- the newest mtime/ctime in the volume is no newer than the one the snapshot recorded.
Volumes without cargohold's labels are never touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cargohold.engine import Engine
from cargohold.errors import CargoholdError
from cargohold.plan import LABEL_KIND, LABEL_PROJECT, LABEL_STORE
from cargohold.snapshots import SnapshotInfo, list_snapshots, open_repository
from cargohold.volumes import open_volume, volume_usage

__all__ = ["LABEL_PROTECT", "PruneDecision", "VolumeSummary", "prune_volumes", "volume_summaries"]

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


def _latest_snapshots(repo_url: str | None) -> dict[str, SnapshotInfo]:
    try:
        repo = open_repository(repo_url)
    except CargoholdError as exc:
        log.info("no snapshot repository: %s", exc)
        return {}
    latest: dict[str, SnapshotInfo] = {}
    for snap in list_snapshots(repo):
        latest[snap.volume] = snap
    return latest


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
    snapshots = _latest_snapshots(repo_url)
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
                snapshot_current=bool(snap and snap.data_version >= usage.data_version),
                access=files.access,
            )
        )
    return summaries


def prune_volumes(engine: Engine, repo_url: str | None, *, dry_run: bool) -> list[PruneDecision]:
    """Remove the cargohold volumes that are unused, unprotected and snapshotted.

    Returns:
        A decision with its reason for every cargohold volume.
    """
    decisions = []
    for summary in volume_summaries(engine, repo_url):
        if summary.used_by:
            decision = PruneDecision(summary.name, False, f"used by {', '.join(summary.used_by)}")
        elif summary.protected:
            decision = PruneDecision(summary.name, False, f"protected ({LABEL_PROTECT}=true)")
        elif summary.last_snapshot is None:
            decision = PruneDecision(summary.name, False, "never snapshotted")
        elif not summary.snapshot_current:
            decision = PruneDecision(
                summary.name, False, f"changed since snapshot {summary.last_snapshot}"
            )
        else:
            decision = PruneDecision(
                summary.name, True, f"unused; data is in snapshot {summary.last_snapshot}"
            )
        if decision.remove and not dry_run:
            engine.remove_volume(summary.name)
        decisions.append(decision)
    return decisions
