"""How much a volume holds and when it last changed, in one walk."""

from __future__ import annotations

from dataclasses import dataclass

from cargohold.archive import data_stamp
from cargohold.volumes._access import VolumeAccess

__all__ = ["VolumeUsage", "volume_usage"]


@dataclass(frozen=True)
class VolumeUsage:
    """Sizes of a volume (or of a folder in it).

    ``data_version`` is the newest mtime or ctime in the tree: it changes whenever anything in
    the volume changes (on the direct path; through the engine only mtimes are seen).
    """

    by_entry: dict[str, int]  # bytes under each top-level entry
    files: int
    data_version: int

    @property
    def bytes(self) -> int:
        return sum(self.by_entry.values())


def volume_usage(files: VolumeAccess, path: str = "") -> VolumeUsage:
    """Walk a volume (or ``path`` in it) once and sum it up.

    Raises:
        TransferError: ``path`` does not exist.
    """
    sizes: dict[str, int] = {}
    count = version = 0
    with files.entries(path) as entries:
        for entry, _, st in entries.walk():
            version = max(version, data_stamp(entry, st))
            top = entry.path.split("/", 1)[0]
            if not top:
                continue
            sizes[top] = sizes.get(top, 0) + entry.size
            count += entry.kind == "file"
    return VolumeUsage(sizes, count, version)
