"""Is this folder on storage that outlives the container?

Read from ``/proc/self/mountinfo``: the mount that holds the folder is the one with the longest
mount point that is a prefix of the folder's real path. A folder on the container's own root
(an overlay file system) or on a tmpfs dies with the container; a bind mount or a named volume
shows up as its own mount with a real file system type and survives.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EphemeralStorageWarning", "StorageReport", "storage_report", "warn_if_ephemeral"]

# File systems whose content is gone when the container (or the machine) goes.
_MEMORY_FS = {"tmpfs", "ramfs"}
# File systems Docker uses for a container's writable layer.
_LAYER_FS = {"overlay", "overlayfs", "aufs", "fuse-overlayfs"}

_warned: set[str] = set()


class EphemeralStorageWarning(UserWarning):
    """Checkpoints are being written where they will not survive the container."""


@dataclass(frozen=True)
class StorageReport:
    path: str
    mount_point: str
    fstype: str
    source: str
    ephemeral: bool
    reason: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _parse_mountinfo(text: str) -> list[tuple[str, str, str]]:
    """(mount point, fstype, source) for every line of a mountinfo file."""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if "-" not in parts:
            continue
        sep = parts.index("-")
        if sep < 5 or len(parts) < sep + 3:
            continue
        mounts.append((_unescape(parts[4]), parts[sep + 1], _unescape(parts[sep + 2])))
    return mounts


def storage_report(path: str | os.PathLike[str], *, mountinfo: str | None = None) -> StorageReport:
    """Describe the storage that holds ``path`` (or its nearest existing parent).

    Args:
        path: a folder, existing or not.
        mountinfo: the text of a mountinfo file; read from ``/proc/self/mountinfo`` when None.

    Returns:
        What holds the folder, whether it is ephemeral, and why.
    """
    real = Path(os.path.abspath(path)).resolve()  # symlinks resolved as far as they exist
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                mountinfo = f.read()
        except OSError:
            return StorageReport(
                str(path), "", "unknown", "", False, "mount table unreadable; cannot tell"
            )
    best: tuple[str, str, str] | None = None
    # Later lines are mounted on top of earlier ones, so on equal mount points the last wins.
    for mount_point, fstype, source in _parse_mountinfo(mountinfo):
        prefix = mount_point.rstrip("/") + "/"
        if (str(real) == mount_point or str(real).startswith(prefix) or mount_point == "/") and (
            best is None or len(mount_point) >= len(best[0])
        ):
            best = (mount_point, fstype, source)
    if best is None:
        return StorageReport(str(path), "", "unknown", "", False, "no mount holds it")
    mount_point, fstype, source = best
    if fstype in _MEMORY_FS:
        return StorageReport(
            str(path),
            mount_point,
            fstype,
            source,
            True,
            f"{mount_point} is a {fstype} in memory: gone when the container stops",
        )
    if fstype in _LAYER_FS and mount_point == "/":
        return StorageReport(
            str(path),
            mount_point,
            fstype,
            source,
            True,
            "the container's own writable layer: deleted with the container",
        )
    return StorageReport(
        str(path),
        mount_point,
        fstype,
        source,
        False,
        f"a {fstype} mount at {mount_point}: survives the container",
    )


def warn_if_ephemeral(path: str | os.PathLike[str]) -> StorageReport:
    """Warn once per folder when checkpoints there would die with the container."""
    report = storage_report(path)
    key = str(Path(os.path.abspath(path)))
    if report.ephemeral and key not in _warned:
        _warned.add(key)
        warnings.warn(
            f"Checkpoints in {key} are NOT persistent: {report.reason}. Hours of training "
            f"will be lost with the container. Mount a volume at {key} (e.g. `docker run "
            f"--mount type=volume,source=NAME,target={key}` or a checkpoints store in "
            "cargohold.toml).",
            EphemeralStorageWarning,
            stacklevel=3,
        )
    return report
