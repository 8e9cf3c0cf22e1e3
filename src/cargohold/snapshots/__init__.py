"""Incremental, content-addressed snapshots of volumes in a local folder or on S3."""

from cargohold.snapshots.repository import (
    Repository,
    RepositoryError,
    default_repo_url,
    open_repository,
)
from cargohold.snapshots.snapshot import (
    SnapshotInfo,
    list_snapshots,
    resolve_snapshot,
    restore_snapshot,
    snapshot_volume,
)

__all__ = [
    "Repository",
    "RepositoryError",
    "SnapshotInfo",
    "default_repo_url",
    "list_snapshots",
    "open_repository",
    "resolve_snapshot",
    "restore_snapshot",
    "snapshot_volume",
]
