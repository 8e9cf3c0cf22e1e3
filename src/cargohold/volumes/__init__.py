"""Volumes: how to reach their files (``VolumeAccess``, directly or through the Engine API) and
the moves between them and the host (ingest, export, clone).

Layering: ``volumes`` uses ``engine`` and ``archive`` and nothing above them; snapshots, guard,
inventory, jobs and the CLI use ``volumes``.
"""

from cargohold.volumes._access import (
    ACCESS_ENV,
    Recovery,
    VolumeAccess,
    Written,
    check_volume_name,
    engine_is_local,
    split_volume_path,
)
from cargohold.volumes._open import open_volume
from cargohold.volumes._remote import fsspec_filesystem
from cargohold.volumes._transfer import (
    ARCHIVE_SUFFIXES,
    TransferResult,
    clone_volume,
    export_folder,
    export_volume,
    ingest,
    ingest_folder,
)
from cargohold.volumes._usage import VolumeUsage, volume_usage

__all__ = [
    "ACCESS_ENV",
    "ARCHIVE_SUFFIXES",
    "Recovery",
    "TransferResult",
    "VolumeAccess",
    "VolumeUsage",
    "Written",
    "check_volume_name",
    "clone_volume",
    "engine_is_local",
    "export_folder",
    "export_volume",
    "fsspec_filesystem",
    "ingest",
    "ingest_folder",
    "open_volume",
    "split_volume_path",
    "volume_usage",
]
