"""Retention: which snapshots a ``--keep-…`` policy keeps, with restic's semantics.

Per source (a volume or a folder), snapshots are taken newest first. Each rule has a count and a
bucket function (``last``: every snapshot its own bucket; ``hourly``: the hour; ``daily``: the
day; ``weekly``: the ISO week; ``monthly``: the month). Walking the list, a snapshot is kept by a
rule when its bucket differs from the bucket the rule last saw and the rule still has count left;
the rule then remembers this bucket and counts one down. So ``--keep-daily 7`` keeps the newest
snapshot of each of the 7 most recent days that have snapshots (not of the last 7 calendar days).
``--keep-tag T`` keeps every snapshot tagged T, without counting. Buckets use UTC.

A snapshot is forgotten only after every kept one is known (the CLI lists them first); forgetting
deletes the snapshot record only -- its data goes with the next ``repo gc``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cargohold.snapshots.maintenance import ensure_modern
from cargohold.snapshots.repository import Repository
from cargohold.snapshots.snapshot import SnapshotInfo, list_snapshots

__all__ = ["ForgetResult", "Policy", "apply_policy", "forget_snapshots"]


@dataclass(frozen=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    tags: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (
            self.last or self.hourly or self.daily or self.weekly or self.monthly or self.tags
        )


@dataclass(frozen=True)
class ForgetResult:
    keep: list[tuple[SnapshotInfo, list[str]]]
    remove: list[SnapshotInfo]


def _when(info: SnapshotInfo) -> datetime:
    return datetime.fromisoformat(info.created)


_BUCKETS: list[tuple[str, str, Callable[[datetime, int], object]]] = [
    ("last", "last snapshot", lambda t, nr: nr),
    ("hourly", "hourly snapshot", lambda t, nr: (t.year, t.month, t.day, t.hour)),
    ("daily", "daily snapshot", lambda t, nr: (t.year, t.month, t.day)),
    ("weekly", "weekly snapshot", lambda t, nr: tuple(t.isocalendar())[:2]),
    ("monthly", "monthly snapshot", lambda t, nr: (t.year, t.month)),
]


def apply_policy(
    snapshots: list[SnapshotInfo], policy: Policy
) -> tuple[list[tuple[SnapshotInfo, list[str]]], list[SnapshotInfo]]:
    """Split the snapshots of ONE source into (kept with reasons, forgotten), newest first."""
    ordered = sorted(snapshots, key=lambda s: (s.created, s.id), reverse=True)
    counts = {name: getattr(policy, name) for name, _, _ in _BUCKETS}
    last_seen: dict[str, object] = {}
    keep: list[tuple[SnapshotInfo, list[str]]] = []
    remove: list[SnapshotInfo] = []
    for nr, snap in enumerate(ordered):
        reasons: list[str] = []
        if snap.tag is not None and snap.tag in policy.tags:
            reasons.append(f"tag {snap.tag}")
        when = _when(snap)
        for name, reason, bucket in _BUCKETS:
            if counts[name] == 0:
                continue
            value = bucket(when, nr)
            if last_seen.get(name, object()) != value:
                last_seen[name] = value
                counts[name] -= 1
                reasons.append(reason)
        if reasons:
            keep.append((snap, reasons))
        else:
            remove.append(snap)
    return keep, remove


def forget_snapshots(
    repo: Repository, policy: Policy, *, source: str | None = None, dry_run: bool = False
) -> ForgetResult:
    """Apply ``policy`` to every source's snapshots (or one source's) and delete the records
    of those it does not keep (unless ``dry_run``)."""
    ensure_modern(repo)
    by_source: dict[str, list[SnapshotInfo]] = {}
    for snap in list_snapshots(repo, source):
        by_source.setdefault(snap.volume, []).append(snap)
    keep: list[tuple[SnapshotInfo, list[str]]] = []
    remove: list[SnapshotInfo] = []
    for snaps in by_source.values():
        kept, gone = apply_policy(snaps, policy)
        keep += kept
        remove += gone
    if not dry_run:
        for snap in remove:
            repo.delete_snapshot(snap.id)
    return ForgetResult(keep, remove)
