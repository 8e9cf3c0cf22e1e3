"""Atomic commit and removal of checkpoint folders, in the manner of orbax's ``atomicity.py``.

A folder is written under a temporary name in the same parent, every file and the folder itself
are fsynced, then one ``rename`` publishes it and an fsync of the parent makes the rename
durable. A deletion is the same in reverse: rename to a trash name first (atomic: the checkpoint
disappears whole), then remove at leisure. A kill at any instant leaves the old state or the new
one; the debris it can leave carries a prefix that only cargohold uses, so it is found and removed
without touching anything else.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cargohold.checkpoint._format import TRASH_PREFIX, sha256_file

__all__ = ["fsync_and_hash", "fsync_dir", "remove_atomically"]


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


def fsync_and_hash(paths: Iterable[Path]) -> dict[Path, str]:
    """Make files durable and return their sha256 digests.

    The fsync (disk-bound) runs in a thread while this one re-reads the files from the page cache
    and hashes them (CPU-bound, and hashlib releases the GIL), so the checksum costs next to no
    wall time on top of the flush.
    """
    files = list(paths)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cargohold-fsync") as pool:
        flushed = pool.submit(_fsync_files, files)
        digests = {path: sha256_file(path) for path in files}
        flushed.result()
    return digests


def remove_atomically(folder: Path) -> None:
    """Make ``folder`` vanish in one step, then delete its content."""
    trash = folder.with_name(f"{TRASH_PREFIX}{secrets.token_hex(4)}-{folder.name}")
    os.rename(folder, trash)
    fsync_dir(folder.parent)
    shutil.rmtree(trash, ignore_errors=True)
