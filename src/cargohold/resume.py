"""Find the newest whole checkpoint in a store's folder on this host, treating it as hostile.

``cargohold run`` (usually as root) looks into a checkpoint volume that containers write: a
manifest may name ``../../etc/shadow``, a file may be a symlink to ``/dev/zero`` (a read that
never ends) or a FIFO (a read that never starts), an entry may be a number instead of a table.
So this lookup applies the checkpoint format's rules (``checkpoint._format``: a manifest written
last, every file's size and checksum) through directory file descriptors opened with
``O_NOFOLLOW``, to regular files only, and any surprise makes that checkpoint not whole, never an
exception. The in-container library keeps the plain version: inside the container nothing of the
host can be reached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import zlib
from collections.abc import Iterator
from typing import Any

from cargohold.checkpoint import _format

__all__ = ["latest_whole_checkpoint"]

_MAX_MANIFEST = 16 << 20
_CHUNK = 4 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class _NotWhole(Exception):
    """This checkpoint cannot be trusted (the reason does not matter to the caller)."""


@contextlib.contextmanager
def _fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _open_file(dir_fd: int, relative: str) -> int:
    """A regular file under ``dir_fd``, reached without following any link; the caller closes."""
    parts = relative.split("/")
    if relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise _NotWhole(relative)
    opened: list[int] = []
    try:
        current = dir_fd
        for part in parts[:-1]:
            current = os.open(part, _DIR_FLAGS, dir_fd=current)
            opened.append(current)
        fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=current)
    except OSError:
        raise _NotWhole(relative) from None
    finally:
        for folder in opened:
            os.close(folder)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _NotWhole(relative)
    return fd


def _checksum(fd: int, algorithm: str) -> str:
    digest = hashlib.sha256() if algorithm == "sha256" else None
    crc = 0
    while chunk := os.read(fd, _CHUNK):
        if digest is not None:
            digest.update(chunk)
        else:
            crc = zlib.crc32(chunk, crc)
    return digest.hexdigest() if digest is not None else f"{crc:08x}"


def _manifest(step_fd: int) -> dict[str, Any]:
    with _fd(_open_file(step_fd, _format.MANIFEST)) as fd:
        if os.fstat(fd).st_size > _MAX_MANIFEST:
            raise _NotWhole("manifest too large")
        raw = b"".join(iter(lambda: os.read(fd, _CHUNK), b""))
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise _NotWhole("manifest") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != _format.FORMAT_NAME
        or manifest.get("version") != _format.FORMAT_VERSION
        or not isinstance(manifest.get("files"), dict)
        or not isinstance(manifest.get("step"), int)
    ):
        raise _NotWhole("manifest")
    return manifest


def _check(step_fd: int) -> None:
    for name, entry in _manifest(step_fd)["files"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("size"), int):
            raise _NotWhole(name)
        algorithm = next((a for a in _format.CHECKSUMS if isinstance(entry.get(a), str)), None)
        if algorithm is None:
            raise _NotWhole(name)
        with _fd(_open_file(step_fd, str(name))) as fd:
            if (
                os.fstat(fd).st_size != entry["size"]
                or _checksum(fd, algorithm) != entry[algorithm]
            ):
                raise _NotWhole(name)


def latest_whole_checkpoint(directory: str) -> str | None:
    """The name of the newest ``step-…`` folder whose manifest, sizes and checksums hold, or None.

    Never raises for what the folder holds; an unreadable ``directory`` counts as empty.
    """
    try:
        root = os.open(directory, _DIR_FLAGS)
    except OSError:
        return None
    with _fd(root):
        steps = []
        with os.scandir(root) as entries:
            for entry in entries:
                match = _format.STEP_DIR_RE.match(entry.name)
                if match and entry.is_dir(follow_symlinks=False):
                    steps.append((int(match.group(1)), entry.name))
        for _, name in sorted(steps, reverse=True):
            try:
                with _fd(os.open(name, _DIR_FLAGS, dir_fd=root)) as step_fd:
                    _check(step_fd)
            except (_NotWhole, OSError):
                continue
            return name
    return None
