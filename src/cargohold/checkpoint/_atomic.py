"""Atomic commit and removal of checkpoint folders, in the manner of orbax's ``atomicity.py``.

A folder is written under a temporary name in the same parent, every file and the folder itself
are fsynced, then one ``rename`` publishes it and an fsync of the parent makes the rename
durable. A deletion is the same in reverse: rename to a trash name first (atomic: the checkpoint
disappears whole), then remove at leisure. A kill at any instant leaves the old state or the new
one; the debris it can leave carries a prefix that only cargohold uses, so it is found and removed
without touching anything else.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import shutil
import threading
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cargohold.checkpoint._format import TRASH_PREFIX, checksum_file

__all__ = ["ChecksumWriter", "fsync_and_checksum", "fsync_dir", "remove_atomically"]

_PARALLEL_FROM = 1 << 20  # below this, checksumming inline is cheaper than a thread hand-off


class ChecksumWriter(io.RawIOBase):
    """A write-only stream that checksums what passes through it, in parallel with the write.

    Each large buffer is checksummed by a helper thread while this thread copies it into the
    page cache (zlib and hashlib release the GIL), and the call returns only when both are done:
    the buffer may be a memoryview that the caller reuses right after. So the checksum costs
    next to nothing on top of the write, and the file is never read back.
    """

    def __init__(self, raw: io.FileIO, algorithm: str, pool: ThreadPoolExecutor) -> None:
        super().__init__()
        self._raw = raw
        self._pool = pool
        self._sha = hashlib.sha256() if algorithm == "sha256" else None
        self._crc = 0
        self._position = 0

    def _update(self, view: memoryview) -> None:
        if self._sha is not None:
            self._sha.update(view)
        else:
            self._crc = zlib.crc32(view, self._crc)

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def write(self, data: object) -> int:
        view = memoryview(data).cast("B")  # type: ignore[arg-type]
        pending = self._pool.submit(self._update, view) if len(view) >= _PARALLEL_FROM else None
        if pending is None:
            self._update(view)
        written = 0
        try:
            while written < len(view):
                written += self._raw.write(view[written:]) or 0
        finally:
            if pending is not None:
                pending.result()
        self._position += written
        return written

    def hexdigest(self) -> str:
        return self._sha.hexdigest() if self._sha is not None else f"{self._crc:08x}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_files(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_and_checksum(
    paths: Iterable[Path], algorithm: str, known: dict[Path, str]
) -> dict[Path, str]:
    """Make files durable and return their checksums (``known`` ones are not recomputed).

    The fsync (disk-bound) runs in a thread while this one re-reads the files whose checksum is
    not known yet from the page cache (CPU-bound; zlib and hashlib release the GIL).
    """
    files = list(paths)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cargohold-fsync") as pool:
        flushed = pool.submit(_fsync_files, files)
        digests = {path: known.get(path) or checksum_file(path, algorithm) for path in files}
        flushed.result()
    return digests


def remove_atomically(folder: Path, *, background: bool = False) -> threading.Thread | None:
    """Make ``folder`` vanish in one step, then delete its content.

    With ``background``, the content is deleted by a daemon thread: freeing a multi-GB checkpoint
    takes a while and the training loop need not wait for it. If the process ends first, the
    trash folder is debris that the next manager removes.
    """
    trash = folder.with_name(f"{TRASH_PREFIX}{secrets.token_hex(4)}-{folder.name}")
    os.rename(folder, trash)
    fsync_dir(folder.parent)
    if background:
        thread = threading.Thread(
            target=shutil.rmtree, args=(trash, True), daemon=True, name="cargohold-rm"
        )
        thread.start()
        return thread
    shutil.rmtree(trash, ignore_errors=True)
    return None
