"""Who is still writing? Liveness by ``fcntl`` locks, never by PIDs.

A trainer and an evaluator in two containers that share a checkpoint volume are both PID 1 in
their own PID namespace, so a PID written into a folder name says nothing about the writer. A
POSIX record lock does: the kernel (or the NFS lock manager) holds it exactly as long as the
process that took it lives, whatever namespace either process is in. So every writer holds an
exclusive lock on a small file named after its work (``.lock-<token>`` beside ``.tmp-…-<token>``)
for as long as that work is in flight, and a cleaner deletes a folder only after taking the same
lock itself.

Two traps of POSIX locks are handled here and only here:
- Locks never conflict inside one process, and closing *any* descriptor of a file drops the
  process's locks on it. So a process never probes a lock it holds itself: ``held_here`` lists them.
- A lock file is created and locked before the folder it guards exists, so a cleaner that sees
  the folder always finds the lock already taken (or the writer dead). A cleaner removes a lock
  file only while holding its lock, and a writer checks after locking that the name still
  leads to the file it locked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from pathlib import Path

__all__ = ["LOCK_PREFIX", "LivenessLock", "is_alive", "is_dead", "lock_path", "remove_if_dead"]

LOCK_PREFIX = ".lock-"

_held_here: set[str] = set()  # absolute paths of the lock files this process holds
_registry_lock = threading.Lock()


def lock_path(directory: Path, token: str) -> Path:
    return directory / f"{LOCK_PREFIX}{token}"


class LivenessLock:
    """An exclusive lock held on ``path`` until ``release()`` or the process dies.

    Raises:
        OSError: the file cannot be created, or another live process holds it (``EAGAIN``).
    """

    def __init__(self, path: Path, *, wait: float = 2.0) -> None:
        self.path = path
        deadline = time.monotonic() + wait
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                # A prober holds a shared lock for a moment; retry until `wait` is spent.
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)
                continue
            # A cleaner may have removed the file between our open and our lock (it does that
            # only to files whose lock it holds): then we locked a nameless inode; start over.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        with _registry_lock:
            _held_here.add(str(path.absolute()))

    def release(self, *, unlink: bool = True) -> None:
        if self._fd < 0:
            return
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        with _registry_lock:
            _held_here.discard(str(self.path.absolute()))
        os.close(self._fd)  # drops the lock
        self._fd = -1


def _take_if_free(path: Path, *, exclusive: bool) -> int | None:
    """A descriptor holding the lock on ``path`` when no live process holds it, else None.

    Raises:
        FileNotFoundError: there is no such lock file.
    """
    with _registry_lock:
        if str(path.absolute()) in _held_here:
            return None
    fd = os.open(path, os.O_RDWR if exclusive else os.O_RDONLY)
    try:
        fcntl.lockf(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def _probe(path: Path) -> bool | None:
    """Is ``path`` held by a live process (True), there but held by nobody (False), or not
    there at all (None)? The probe's own shared lock is dropped at once."""
    try:
        fd = _take_if_free(path, exclusive=False)
    except FileNotFoundError:
        return None
    if fd is None:
        return True
    os.close(fd)
    return False


def is_alive(path: Path) -> bool:
    """Does a live process (any container, any host sharing the lock manager) hold ``path``?

    A missing lock file means nobody holds it.
    """
    return _probe(path) is True


def is_dead(path: Path) -> bool:
    """Was ``path`` held by a process that is gone? True only when the lock file is there and
    nobody holds it: a holder that ended cleanly removed its file (``release``), one that
    died could not."""
    return _probe(path) is False


def remove_if_dead(path: Path) -> bool:
    """Remove the lock file ``path`` if no live process holds it; True if it is gone."""
    try:
        fd = _take_if_free(path, exclusive=True)
    except FileNotFoundError:
        return True
    if fd is None:
        return False
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while we hold its lock: see the module docstring
    finally:
        os.close(fd)
    return True
