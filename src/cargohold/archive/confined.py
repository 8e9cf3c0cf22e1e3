"""The one confinement rule: every host-side read or write inside a volume or an export target
goes through a directory file descriptor, one name at a time, with ``O_NOFOLLOW``.

Why not paths: anything inside a volume was written by a container, and a container can plant a
symlink (``data -> /``) or swap a folder for one between our check and our use. A path string
such as ``/var/lib/docker/volumes/v/_data/data/x`` is resolved by the kernel through whatever
is there *now*; a ``realpath`` check before the ``open`` proves nothing. So, as CPython's
``shutil.rmtree`` does (``_rmtree_safe_fd``), we hold the root open and reach everything below it
with ``openat(dir_fd, name, O_NOFOLLOW)`` -- ``os.open(..., dir_fd=)``, ``os.mkdir(dir_fd=)``,
``os.unlink(dir_fd=)``, ``os.rename(src_dir_fd=, dst_dir_fd=)``, ``os.scandir(fd)``,
``os.stat(follow_symlinks=False, dir_fd=)``. A symlink met on the way is never followed: it is
read as a symlink, or the operation is refused. The root itself is never replaced, whatever an
archive or a manifest says about ``.``.

Readers stream: a walk keeps the names of the folders on its current path and a bounded number
of open folders, never a per-file record (hardlinked files excepted: their first path is kept
so later links can name it).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import stat
import threading
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cargohold.archive._entries import CHUNK, Entry, Kind, Opener, Progress, Walked, no_progress
from cargohold.archive._fs import flushing
from cargohold.errors import TransferError, UnsafeArchive

__all__ = ["ConfinedDir", "ConfinedReader", "ConfinedWriter", "RegularFile", "Share", "TwinSource"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_OPEN_DIRS = 32  # folder descriptors a walk or a writer keeps open at once
# Files smaller than this are written by the calling thread: handing a 1 KB file to the pool
# cost more than writing it (an ingest of 50,000 such files made 6 million futex calls and took
# twice as long as cp -a); the pool pays for itself on files big enough to overlap I/O.
_INLINE_BELOW = 256 << 10


def _parts(rel: str) -> list[str]:
    return [p for p in rel.split("/") if p] if rel else []


def _is_link(parent: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _refuse_through(
    rel: str, exc: OSError, parent: int | None = None, name: str = ""
) -> TransferError:
    # O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR on Linux, not ELOOP: look.
    if exc.errno in (errno.ELOOP, errno.EMLINK) or (
        exc.errno == errno.ENOTDIR and parent is not None and _is_link(parent, name)
    ):
        return UnsafeArchive(
            f"Refused {rel!r}: it passes through a symlink, and links inside a volume or a "
            "target are never followed.",
            hint="Write to the link's real location instead, or remove the link first.",
        )
    if exc.errno == errno.ENOTDIR:
        return TransferError(
            f"Refused {rel!r}: a part of its path is not a folder.",
            hint="Remove the file that stands where a folder is expected.",
        )
    if exc.errno == errno.ENOENT:
        return TransferError(f"{rel} does not exist.", hint="Check the path.")
    return TransferError(
        f"Cannot reach {rel!r}: {exc.strerror or exc}.", hint="Check permissions and free space."
    )


class ConfinedDir:
    """A folder held open by a file descriptor; everything below it is reached name by name.

    Make one with ``ConfinedDir.open`` (a path the user gave) or ``sub`` (a folder below one).
    """

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path
        self._finalizer = weakref.finalize(self, os.close, fd)

    @classmethod
    def open(cls, path: Path, *, follow: bool = False, create: bool = False) -> ConfinedDir:
        """Open a folder.

        Args:
            path: the folder. Its own path is resolved once, as the caller gave it.
            follow: follow a symlink at ``path`` itself (a user's own export target may be
                one; a volume's folder never is).
            create: make the folder (and its parents) when missing.

        Raises:
            TransferError: ``path`` is missing (without ``create``), or not a folder.
        """
        if create:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise TransferError(
                    f"Cannot create {path}: {exc.strerror or exc}.",
                    hint="Check the path and its permissions.",
                ) from None
        flags = _DIR_FLAGS if not follow else _DIR_FLAGS & ~os.O_NOFOLLOW
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise TransferError(f"{path} does not exist.", hint="Check the path.") from None
            raise TransferError(
                f"{path} is not a folder that can be opened ({exc.strerror or exc}).",
                hint="A volume's or a target's root must be a real folder, never a link.",
            ) from None
        return cls(fd, path)

    def sub(self, rel: str, *, create: bool = False) -> ConfinedDir:
        """The folder at ``rel`` below this one, reached without following any link.

        Raises:
            UnsafeArchive: a part of ``rel`` is a symlink.
            TransferError: a part is missing (without ``create``) or not a folder.
        """
        return ConfinedDir(self.open_dir(rel, create=create), self.path / rel if rel else self.path)

    def close(self) -> None:
        """Close the folder; later use fails (EBADF) instead of reaching a reused number."""
        self._finalizer()
        self.fd = -1

    def __enter__(self) -> ConfinedDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reaching things ------------------------------------------------------------------

    def open_dir(self, rel: str, *, create: bool = False, mode: int = 0o755) -> int:
        """A new descriptor of the folder at ``rel`` (``""``: a duplicate of the root's).

        Raises:
            UnsafeArchive: a part of ``rel`` is a symlink.
            TransferError: a part is missing (without ``create``) or not a folder.
        """
        fd = os.dup(self.fd)
        try:
            for name in _parts(rel):
                child = _step(fd, name, create=create, mode=mode, rel=rel)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def parent_and_name(self, rel: str) -> tuple[int, str]:
        """A descriptor of ``rel``'s parent folder (the caller closes it) and its last name."""
        parts = _parts(rel)
        if not parts:
            raise TransferError("The root itself has no parent here.", hint="Name a path.")
        return self.open_dir("/".join(parts[:-1])), parts[-1]

    def lstat(self, rel: str) -> os.stat_result | None:
        """``rel``'s own stat (a symlink is not followed), None when it is missing."""
        if not _parts(rel):
            return os.fstat(self.fd)
        try:
            parent, name = self.parent_and_name(rel)
        except TransferError:
            return None
        try:
            return os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(parent)

    def open_file(self, rel: str) -> RegularFile:
        """A regular file's bytes; never through a link, never a FIFO or a device.

        Raises:
            TransferError: it is missing or not a regular file.
        """
        parent, name = self.parent_and_name(rel)
        try:
            return _open_regular(parent, name, rel)
        finally:
            os.close(parent)

    def remove(self, rel: str) -> None:
        """Remove ``rel`` (a whole folder, or one file or link), never following a link."""
        parent, name = self.parent_and_name(rel)
        try:
            _remove_at(parent, name)
        finally:
            os.close(parent)

    def names(self, rel: str = "") -> list[str]:
        """The names in the folder at ``rel``, sorted."""
        fd = self.open_dir(rel)
        try:
            return _sorted_names(fd)
        finally:
            os.close(fd)


def _step(fd: int, name: str, *, create: bool, mode: int, rel: str) -> int:
    """From an open folder to its child ``name`` (``fd`` stays open)."""
    try:
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):  # made meanwhile: open it like any other
                os.mkdir(name, mode, dir_fd=fd)
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        raise _refuse_through(rel, exc, fd, name) from None
    return child


class RegularFile(io.FileIO):
    """A regular file opened for reading inside a confined folder (unbuffered: its readers
    read large blocks, and ``ConfinedWriter`` copies it with ``copy_file_range``)."""


def _open_regular(parent: int, name: str, rel: str) -> RegularFile:
    """``name`` in the open folder ``parent``, for reading, if it is a regular file."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=parent)
    except OSError as exc:
        raise TransferError(
            f"{rel} is not a regular file here ({exc.strerror or exc}).",
            hint="Links inside a volume are never followed; list it with `cargohold volume files`.",
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TransferError(
                f"{rel} is not a regular file.",
                hint="Only regular files can be read; list it with `cargohold volume files`.",
            )
        return RegularFile(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _Held:
    """A folder a walk has open, for the openers it hands out: they open their file through it
    while the walk holds it, and from the confined root once the walk has closed it (the lock
    keeps a closing walk and an opening reader apart, so a reused descriptor number is never
    mistaken for the folder)."""

    __slots__ = ("fd", "lock")

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None


def _sorted_names(fd: int) -> list[str]:
    with os.scandir(fd) as it:
        return sorted(e.name for e in it)


def _remove_at(parent: int, name: str) -> None:
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=parent)  # walks with descriptors and O_NOFOLLOW itself
    else:
        os.unlink(name, dir_fd=parent)


# -- reading -------------------------------------------------------------------------------


def _entry(rel: str, st: os.stat_result, kind: Kind, *, size: int = 0, target: str = "") -> Entry:
    return Entry(
        path=rel,
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        size=size,
        target=target,
    )


class Share:
    """Which files of a walk this process copies while a twin process copies the others
    (``archive._twin``). Up to the folder ``start`` (walk-relative) the files are the first
    process's (``before``); after it, the files and links of a folder belong to the process
    whose ``index`` is crc32 of the folder's path modulo ``count``, and a hardlink goes with
    the file it links to. Folders are every process's: each makes them as it needs them.

    "After" is a position, not a name: a walk visits paths in the order of their names, part
    by part (names sorted in every folder, parents first), so the twin starts sharing at the
    first path that sorts after ``start`` -- whether or not ``start`` itself is still there
    when its own walk gets that far (a folder renamed meanwhile must not leave half the files
    to nobody)."""

    __slots__ = ("_after", "active", "before", "count", "index", "start")

    def __init__(
        self, index: int, *, before: bool, start: str | None = None, count: int = 2
    ) -> None:
        self.index = index
        self.count = count
        self.before = before
        self.start = start
        self._after = start.split("/") if start is not None else None
        self.active = False

    def reach(self, rel: str) -> None:
        """The walk is at ``rel``: from a path past ``start`` on, the files are shared."""
        if self._after is not None and rel.split("/") > self._after:
            self.active = True

    def owns(self, folder: str) -> bool:
        """Are the files in ``folder`` this process's (as things stand in the walk)?"""
        if not self.active:
            return self.before
        return zlib.crc32(folder.encode("utf-8", "surrogateescape")) % self.count == self.index


@dataclass(frozen=True)
class TwinSource:
    """What a twin process needs to walk the same tree as a ``ConfinedReader``."""

    base: ConfinedDir
    rel: str
    share: Share
    visible: bool = False  # behind ``staging.Visible``


class ConfinedReader:
    """The entries at ``rel`` under a confined folder: parents before children, names sorted.

    A folder is walked; a file or a symlink at ``rel`` is the one entry (named by its last
    name). Hardlinked files are reported once as files and then as ``hardlink`` entries; sockets,
    FIFOs and devices are skipped and counted in ``skipped``; what vanishes or is replaced while
    the walk reaches it is passed to ``on_vanished`` (a snapshot lists such paths). Openers stay
    valid as long as the ``ConfinedDir`` is open, from any thread (``random_access``).
    """

    random_access = True

    def __init__(
        self,
        base: ConfinedDir,
        rel: str = "",
        *,
        name: str | None = None,
        on_vanished: Callable[[str], None] | None = None,
        share: Share | None = None,
    ) -> None:
        self._base = base
        self._rel = "/".join(_parts(rel))
        self._name = name
        self._on_vanished = on_vanished
        self._vanished = on_vanished or (lambda _: None)
        self.share = share
        self.skipped = 0

    def twin_source(self) -> TwinSource | None:
        """Let a twin process copy part of this walk (None: this walk cannot be split); from
        now on this walk yields only its own share once the share is started."""
        if self.share is not None or self._name is not None or self._on_vanished is not None:
            return None
        self.share = Share(0, before=True)
        return TwinSource(self._base, self._rel, self.share)

    def __iter__(self) -> Iterator[tuple[Entry, Opener | None]]:
        for entry, opener, _ in self.walk():
            yield entry, opener

    def _opener(self, rel: str, held: _Held | None = None, name: str = "") -> Opener:
        base = self._base

        def open_file() -> RegularFile:
            if held is not None:
                with held.lock:
                    if held.fd is not None:
                        return _open_regular(held.fd, name, rel)
            return base.open_file(rel)

        return open_file

    def walk(self) -> Iterator[Walked]:
        root_st = self._base.lstat(self._rel)
        if root_st is None:
            raise TransferError(
                f"{self._rel or self._base.path} does not exist.",
                hint="Check the path (`cargohold volume files` lists a volume).",
            )
        name = self._name or self._rel.rsplit("/", 1)[-1]
        if stat.S_ISREG(root_st.st_mode):
            entry = _entry(name, root_st, "file", size=root_st.st_size)
            yield entry, self._opener(self._rel), root_st
            return
        if stat.S_ISLNK(root_st.st_mode):
            parent, last = self._base.parent_and_name(self._rel)
            try:
                target = os.readlink(last, dir_fd=parent)
            finally:
                os.close(parent)
            yield _entry(name, root_st, "symlink", target=target), None, root_st
            return
        if not stat.S_ISDIR(root_st.st_mode):
            raise TransferError(
                f"{self._rel} is neither a file, a folder nor a link.",
                hint="Only files, folders and links are copied.",
            )
        yield _entry("", root_st, "dir"), None, root_st
        yield from self._walk_folder()

    def _walk_folder(self) -> Iterator[Walked]:
        seen_inodes: dict[tuple[int, int], tuple[str, bool]] = {}  # -> first path, ours?
        share = self.share
        # Each frame: (path relative to the walk, its folder -- closed to keep the number of
        # open folders bounded, reopened when the walk returns to it -- the names to visit).
        root_fd = self._base.open_dir(self._rel)
        stack: list[tuple[str, _Held, Iterator[str]]] = [
            ("", _Held(root_fd), iter(_sorted_names(root_fd)))
        ]
        try:
            while stack:
                rel_dir, held, names = stack[-1]
                name = next(names, None)
                if name is None:
                    stack.pop()
                    held.close()
                    continue
                fd = held.fd
                if fd is None:
                    held = _Held(self._base.open_dir(self._join(rel_dir)))
                    stack[-1] = (rel_dir, held, names)
                    fd = held.fd
                assert fd is not None
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if share is not None and not share.active:
                    share.reach(rel)
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    self._vanished(rel)  # removed while we walked: it is simply not there
                    continue
                if stat.S_ISDIR(st.st_mode):
                    try:
                        child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    except OSError:
                        self._vanished(rel)  # replaced while we walked
                        continue
                    if share is None or share.active or share.before:
                        yield _entry(rel, st, "dir"), None, st
                    self._bound_open(stack)
                    stack.append((rel, _Held(child), iter(_sorted_names(child))))
                elif stat.S_ISLNK(st.st_mode):
                    if share is not None and not share.owns(rel_dir):
                        continue
                    try:
                        target = os.readlink(name, dir_fd=fd)
                    except OSError:
                        self._vanished(rel)
                        continue
                    yield _entry(rel, st, "symlink", target=target), None, st
                elif stat.S_ISREG(st.st_mode):
                    mine = share is None or share.owns(rel_dir)
                    key = (st.st_dev, st.st_ino)
                    if st.st_nlink > 1 and key in seen_inodes:
                        first, first_mine = seen_inodes[key]
                        if first_mine:  # (the process that wrote the file makes its links)
                            yield _entry(rel, st, "hardlink", target=first), None, st
                        continue
                    if st.st_nlink > 1:
                        seen_inodes[key] = (rel, mine)
                    if mine:
                        entry = _entry(rel, st, "file", size=st.st_size)
                        yield entry, self._opener(self._join(rel), held, name), st
                else:
                    self.skipped += 1
        finally:
            for _, held, _ in stack:
                held.close()

    def _join(self, rel: str) -> str:
        return f"{self._rel}/{rel}" if self._rel and rel else self._rel or rel

    @staticmethod
    def _bound_open(stack: list[tuple[str, _Held, Iterator[str]]]) -> None:
        """Close the shallowest open folder of the walk when too many are open (it is reopened,
        confined, when the walk returns to it)."""
        open_frames = [frame for frame in stack if frame[1].fd is not None]
        if len(open_frames) >= _MAX_OPEN_DIRS:
            open_frames[0][1].close()


# -- writing -------------------------------------------------------------------------------


_COPY_RANGE = getattr(os, "copy_file_range", None)
# What copy_file_range says when it cannot copy between these two files (another file system,
# an old kernel, a file system without it): the copy goes on with read and write.
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP}


def _copy_range(src: int, dst: int) -> int | None:
    """Up to a chunk from ``src`` to ``dst`` at their offsets, in the kernel: the bytes copied
    (0 at the end), or None when this pair of files cannot be copied so."""
    assert _COPY_RANGE is not None
    try:
        return int(_COPY_RANGE(src, dst, CHUNK))
    except OSError as exc:
        if exc.errno in _NO_COPY_RANGE:
            return None
        raise


class ConfinedWriter:
    """Writes entries into a confined folder, never outside it and never over its root.

    Each entry's parent folder is reached name by name with ``O_NOFOLLOW`` (missing folders are
    made, as tar does); a symlink on the way refuses the entry. Whatever already stands at the
    entry's own name is removed, never followed. Owners are kept when running as root; folder
    times are set last, after their content.

    With ``workers`` > 1, file contents are written by a thread pool (for sources with
    ``random_access``); the checks above still run in order, on the calling thread, and the pool
    only fills a file the calling thread already created. (Small files are written by the
    calling thread: Python threads taking turns with the GIL around every system call made an
    ingest of 100,000 small files slower, handed over one by one or in batches of a folder.)
    ``durable``: the caller ends with a ``syncfs``, and ``write_all`` starts the writeback while
    it writes (``flushing``).
    """

    _MAX_PENDING = 64

    def __init__(
        self,
        root: ConfinedDir,
        *,
        progress: Progress = no_progress,
        workers: int = 1,
        durable: bool = False,
        folder_attrs: bool = True,
    ) -> None:
        self.root = root
        self.workers = workers
        self._durable = durable
        self._folder_attrs = folder_attrs  # (a twin leaves them to the first process)
        self._as_root = os.geteuid() == 0
        self._dirs: list[tuple[str, Entry]] = []
        self._progress = progress
        self._pool = ThreadPoolExecutor(workers, "cargohold-write") if workers > 1 else None
        self._pending: dict[str, Future[None]] = {}
        self._lock = threading.Lock()
        self._open: OrderedDict[str, int] = OrderedDict()  # folder descriptors, most recent last
        # Folders made only because an entry needed a parent (no entry of their own): their
        # attributes mean nothing, and a staged merge must not copy them over real ones.
        self.implicit: set[str] = {""}
        self.files = 0
        self.bytes = 0

    # -- folder descriptors ---------------------------------------------------------------

    def _dir(self, rel: str) -> int:
        """The descriptor of folder ``rel``, made if missing; kept in a small cache."""
        fd = self._open.get(rel)
        if fd is not None:
            self._open.move_to_end(rel)
            return fd
        if not rel:
            fd = os.dup(self.root.fd)
        else:
            parent_rel, _, name = rel.rpartition("/")
            parent = self._dir(parent_rel)
            try:
                try:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
                except FileNotFoundError:
                    try:
                        os.mkdir(name, 0o755, dir_fd=parent)
                        self.implicit.add(rel)
                    except FileExistsError:  # made meanwhile (by a twin): opened like any
                        pass
                    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except OSError as exc:
                raise _refuse_through(rel, exc, parent, name) from None
        self._open[rel] = fd
        while len(self._open) > _MAX_OPEN_DIRS:
            _, old = self._open.popitem(last=False)
            os.close(old)
        return fd

    def _forget(self, rel: str) -> None:
        """``rel`` stops being a folder we know (a file or a link replaces it)."""
        prefix = rel + "/"
        for key in [k for k in self._open if k == rel or k.startswith(prefix)]:
            os.close(self._open.pop(key))

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()

    # -- entries --------------------------------------------------------------------------

    def _wait(self, rel: str | None = None) -> None:
        """Finish the pending write of ``rel`` (None: of every file), raising its error."""
        if rel is None:
            futures = list(self._pending.values())
            self._pending.clear()
        else:
            pending = self._pending.pop(rel, None)
            futures = [pending] if pending is not None else []
        for future in futures:
            future.result()

    def _clear(self, parent: int, name: str, rel: str, *, keep_dir: bool) -> None:
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            prefix = rel + "/"
            for key in [k for k in self._pending if k.startswith(prefix)]:
                self._wait(key)
            self._forget(rel)
            shutil.rmtree(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)

    def add(self, entry: Entry, data: Opener | None) -> None:
        rel = entry.path
        if not rel:
            if entry.kind != "dir":
                raise UnsafeArchive(
                    f"Refused a {entry.kind} as the root ('.') of the target: the root of a "
                    "volume or a target is never replaced.",
                    hint="Only extract archives you trust.",
                )
            if self._folder_attrs:
                self._dirs.append(("", entry))
            self.implicit.discard("")
            return
        self._wait(rel)
        parent_rel, _, name = rel.rpartition("/")
        parent = self._dir(parent_rel)
        if entry.kind == "dir":
            self._clear(parent, name, rel, keep_dir=True)
            self._dir(rel)
            self.implicit.discard(rel)
            if self._folder_attrs:
                self._dirs.append((rel, entry))
            return
        if entry.kind == "file":
            assert data is not None
            try:  # (into a new folder nothing is there: create first, clear only on a clash)
                fd = os.open(name, _CREATE_FLAGS, 0o600, dir_fd=parent)
            except FileExistsError:
                self._clear(parent, name, rel, keep_dir=False)
                self._forget(rel)
                fd = os.open(name, _CREATE_FLAGS, 0o600, dir_fd=parent)
            if self._pool is None or entry.size < _INLINE_BELOW:
                self._fill(fd, entry, data)
                return
            if len(self._pending) >= self._MAX_PENDING:
                self._wait(next(iter(self._pending)))
            self._pending[rel] = self._pool.submit(self._fill, fd, entry, data)
            return
        self._clear(parent, name, rel, keep_dir=False)
        self._forget(rel)
        if entry.kind == "symlink":
            if not entry.target or "\0" in entry.target:
                raise UnsafeArchive(
                    f"Refused {rel!r}: a symlink with an empty or invalid target.",
                    hint="The archive is malformed; re-create it.",
                )
            os.symlink(entry.target, name, dir_fd=parent)
            if self._as_root:
                os.chown(name, entry.uid, entry.gid, dir_fd=parent, follow_symlinks=False)
            ns = (entry.mtime_ns, entry.mtime_ns)
            os.utime(name, ns=ns, dir_fd=parent, follow_symlinks=False)
        else:
            self._link(entry, parent, name)

    def _link(self, entry: Entry, parent: int, name: str) -> None:
        self._wait(entry.target)  # its data may still be on the way
        refused = UnsafeArchive(
            f"Refused {entry.path!r}: a hardlink to {entry.target!r}, which is not a regular "
            "file written before it.",
            hint="Only extract archives you trust.",
        )
        source_parent_rel, _, source_name = entry.target.rpartition("/")
        if not source_name:
            raise refused
        try:
            source_parent = self.root.open_dir(source_parent_rel)
        except TransferError:
            raise refused from None
        try:
            try:
                st = os.stat(source_name, dir_fd=source_parent, follow_symlinks=False)
            except FileNotFoundError:
                raise refused from None
            if not stat.S_ISREG(st.st_mode):
                raise refused
            os.link(
                source_name,
                name,
                src_dir_fd=source_parent,
                dst_dir_fd=parent,
                follow_symlinks=False,
            )
        finally:
            os.close(source_parent)

    def _fill(self, fd: int, entry: Entry, data: Opener) -> None:
        """Write a created file's bytes and attributes, then close ``fd`` (always)."""
        told = 0  # bytes already reported (a file of less than a chunk reports once, at its end)
        written = 0
        try:
            with data() as src:
                # A regular file is copied by the kernel, as cp does; a stream (or a file
                # system that cannot) is read and written.
                kernel = isinstance(src, RegularFile) and _COPY_RANGE is not None
                while True:
                    if kernel:
                        n = _copy_range(src.fileno(), fd)
                        if n is None:
                            kernel = False
                            continue
                    else:
                        chunk = src.read(CHUNK)
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view) :]
                        n = len(chunk)
                    if not n:
                        break
                    written += n
                    if entry.size >= CHUNK:
                        self._progress(written - told)
                        told = written
            self._attrs(fd, entry)
        finally:
            os.close(fd)
        with self._lock:
            self.bytes += written
            self.files += 1
        self._progress(written - told, files=1)

    def _attrs(self, fd: int, entry: Entry) -> None:
        if self._as_root:
            os.fchown(fd, entry.uid, entry.gid)
        os.fchmod(fd, entry.mode)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))

    def write_all(self, entries: Iterable[tuple[Entry, Opener | None]]) -> None:
        """Write every entry, then the folders' attributes. A walk of a local folder with
        ``workers`` > 1, on two cores or more, is shared with a twin process once
        ``TWIN_AFTER`` files are written (``archive._twin``)."""
        from cargohold.archive import _twin

        source = _twin.source_of(entries) if self._pool is not None else None
        twin: _twin.Twin | None = None
        try:
            with flushing(self.root.fd) if self._durable else contextlib.nullcontext():
                for entry, data in entries:
                    self.add(entry, data)
                    if twin is not None and twin.failed:
                        twin.wait()  # (raises its error now, not after our own half)
                    if (
                        source is not None
                        and entry.kind == "dir"
                        and entry.path
                        and self.files + len(self._pending) >= _twin.TWIN_AFTER
                    ):
                        twin = _twin.Twin.start(source, entry.path, self, self._progress)
                        source = None  # (one twin; none at all if it could not start)
                self._wait()
                if twin is not None:
                    files, nbytes = twin.wait()
                    self.files += files
                    self.bytes += nbytes
                self.finish()
        finally:
            if twin is not None:
                twin.stop()
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
            self.close()

    def finish(self) -> None:
        self._wait()
        # Deepest first, so that setting a folder's time is not undone by its children.
        for rel, entry in sorted(self._dirs, key=lambda d: d[0].count("/"), reverse=True):
            if rel:
                try:
                    fd = self.root.open_dir(rel)
                except TransferError:
                    continue  # replaced by a later entry
            else:
                fd = os.dup(self.root.fd)
            try:
                self._attrs(fd, entry)
            finally:
                os.close(fd)
        self._dirs.clear()
