"""Snapshots of volumes and folders in a chunked, packed, optionally encrypted repository
(a local folder or s3://…), and their restore, retention, garbage collection and checking."""

from cargohold.snapshots._format import PasswordError
from cargohold.snapshots.repository import (
    Repository,
    RepositoryError,
    default_repo_url,
    init_repository,
    open_repository,
    read_password,
)
from cargohold.snapshots.restore import RestoreResult, restore_to_path, restore_volume
from cargohold.snapshots.snapshot import (
    EXIT_CHANGED,
    SnapshotInfo,
    list_snapshots,
    resolve_snapshot,
    snapshot_path,
    snapshot_volume,
)

__all__ = [
    "EXIT_CHANGED",
    "PasswordError",
    "Repository",
    "RepositoryError",
    "RestoreResult",
    "SnapshotInfo",
    "default_repo_url",
    "init_repository",
    "list_snapshots",
    "open_repository",
    "read_password",
    "resolve_snapshot",
    "restore_to_path",
    "restore_volume",
    "snapshot_path",
    "snapshot_volume",
]
