"""Host folders in and out: ``FolderReader`` walks one, ``TreeWriter`` writes into one and never
outside it.

``TreeWriter`` is the only code that writes into a host folder: before each entry the real path
of its parent must lie inside the target, and anything already at the entry's own path is
removed rather than followed. Folder times are set last, after their content.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from cargohold.archive._entries import CHUNK, Entry, Kind, Opener, Progress, Walked, no_progress
from cargohold.errors import TransferError, UnsafeArchive

__all__ = ["FolderReader", "TreeWriter"]


class FolderReader:
    """The entries under a host folder, parents before children, names sorted.

    Hardlinked files are reported once as files and then as ``hardlink`` entries; sockets and
    devices are skipped and counted in ``skipped``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.skipped: list[str] = []

    def _entry(
        self, rel: str, st: os.stat_result, kind: Kind, *, size: int = 0, target: str = ""
    ) -> Entry:
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

    def stats(self) -> Iterator[tuple[Entry, os.stat_result]]:
        """Entries with their stat results (for caches keyed by inode and ctime)."""
        seen_inodes: dict[tuple[int, int], str] = {}
        try:
            root_st = os.lstat(self.root)
        except FileNotFoundError:
            raise TransferError(
                f"{self.root} does not exist.",
                hint="Check the path (`cargohold volume files` lists a volume).",
            ) from None
        if stat.S_ISREG(root_st.st_mode):
            yield self._entry(self.root.name, root_st, "file", size=root_st.st_size), root_st
            return
        yield self._entry("", root_st, "dir"), root_st
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            folder = self.root / rel_dir if rel_dir else self.root
            with os.scandir(folder) as it:
                names = sorted((e.name, e) for e in it)
            subdirs = []
            for name, dirent in names:
                rel = f"{rel_dir}/{name}" if rel_dir else name
                st = dirent.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    yield self._entry(rel, st, "dir"), st
                    subdirs.append(rel)
                elif stat.S_ISLNK(st.st_mode):
                    yield self._entry(rel, st, "symlink", target=os.readlink(dirent.path)), st
                elif stat.S_ISREG(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if st.st_nlink > 1 and key in seen_inodes:
                        yield self._entry(rel, st, "hardlink", target=seen_inodes[key]), st
                        continue
                    if st.st_nlink > 1:
                        seen_inodes[key] = rel
                    yield self._entry(rel, st, "file", size=st.st_size), st
                else:
                    self.skipped.append(rel)
            stack.extend(reversed(subdirs))

    random_access = True

    def __iter__(self) -> Iterator[tuple[Entry, Opener | None]]:
        for entry, opener, _ in self.walk():
            yield entry, opener

    def walk(self) -> Iterator[Walked]:
        for entry, st in self.stats():
            yield entry, (self.opener(entry) if entry.kind == "file" else None), st

    def opener(self, entry: Entry) -> Opener:
        path = (
            self.root / entry.path
            if entry.path != self.root.name or self.root.is_dir()
            else self.root
        )
        return lambda: open(path, "rb")


class TreeWriter:
    """Writes entries into a host folder, never outside it.

    Before each entry, the real path of its parent folder must lie inside the target (this is
    what stops a member from passing through a symlink that an earlier member planted), and
    anything already at the entry's own path is removed rather than followed. Owners are kept
    when running as root; folder times are set last, after their content.

    With ``workers`` > 1, file contents are written by a thread pool (for sources that can be
    opened in any order: folders, snapshots -- not a tar stream); the checks above still run
    in order, on the calling thread, before a file is handed to the pool.
    """

    _MAX_PENDING = 64

    def __init__(self, root: Path, *, progress: Progress = no_progress, workers: int = 1) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self._real_root = os.path.realpath(root)
        self._as_root = os.geteuid() == 0
        self._dirs: list[tuple[str, Entry]] = []
        self._progress = progress
        self._pool = ThreadPoolExecutor(workers, "cargohold-write") if workers > 1 else None
        self._pending: dict[str, Future[None]] = {}
        self._lock = threading.Lock()
        # Folders whose real path is known to lie inside the root: checking each parent once,
        # not once per file, saves a dozen lstat calls per entry.
        self._safe_dirs: set[str] = set()
        self.files = 0
        self.bytes = 0

    def _inside(self, path: str) -> bool:
        return path == self._real_root or path.startswith(self._real_root + os.sep)

    def _target(self, entry: Entry) -> str:
        if not entry.path:
            return str(self.root)
        target = os.path.join(self.root, entry.path)
        parent = os.path.dirname(target)
        if parent not in self._safe_dirs:
            if not self._inside(os.path.realpath(parent)):
                raise UnsafeArchive(
                    f"Refused {entry.path!r}: it passes through a symlink that points outside "
                    "the target.",
                    hint="Only extract archives you trust.",
                )
            self._safe_dirs.add(parent)
        return target

    def _forget(self, target: str) -> None:
        """``target`` stops being a known real folder (a symlink or a file replaces it)."""
        prefix = target + os.sep
        self._safe_dirs = {d for d in self._safe_dirs if d != target and not d.startswith(prefix)}

    def _clear(self, target: str, keep_dir: bool) -> None:
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            shutil.rmtree(target)
            self._forget(target)
        else:
            os.unlink(target)

    def _attrs(self, target: str, entry: Entry, *, follow: bool = True) -> None:
        if self._as_root:
            os.lchown(target, entry.uid, entry.gid)
        if follow:
            os.chmod(target, entry.mode)
        os.utime(target, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=follow)

    def _write_file(self, target: str, entry: Entry, data: Opener) -> None:
        with data() as src, open(target, "wb") as dst:
            while chunk := src.read(CHUNK):
                dst.write(chunk)
                with self._lock:
                    self.bytes += len(chunk)
                self._progress(len(chunk))
        with self._lock:
            self.files += 1
        self._attrs(target, entry)

    def _wait(self, target: str | None = None) -> None:
        """Finish the pending write of ``target`` (None: of every file), raising its error."""
        if target is None:
            futures = list(self._pending.values())
            self._pending.clear()
        else:
            pending = self._pending.pop(target, None)
            futures = [pending] if pending is not None else []
        for future in futures:
            future.result()

    def add(self, entry: Entry, data: Opener | None) -> None:
        target = self._target(entry)
        self._wait(target)
        if entry.kind == "dir":
            self._clear(target, keep_dir=True)
            os.makedirs(target, exist_ok=True)
            self._dirs.append((target, entry))
            if os.path.dirname(target) in self._safe_dirs or target == str(self.root):
                self._safe_dirs.add(target)  # made here, or kept only if a real folder
            return
        self._clear(target, keep_dir=False)
        if entry.kind == "symlink":
            self._forget(target)
        if entry.kind == "file":
            assert data is not None
            if self._pool is None:
                self._write_file(target, entry, data)
                return
            if len(self._pending) >= self._MAX_PENDING:
                self._wait(next(iter(self._pending)))
            self._pending[target] = self._pool.submit(self._write_file, target, entry, data)
        elif entry.kind == "symlink":
            os.symlink(entry.target, target)
            self._attrs(target, entry, follow=False)
        else:  # hardlink
            source = os.path.join(self.root, entry.target)
            self._wait(source)  # its data may still be on the way
            if not self._inside(os.path.realpath(source)) or os.path.islink(source):
                raise UnsafeArchive(
                    f"Refused {entry.path!r}: a hardlink to {entry.target!r}, which lies "
                    "outside the target.",
                    hint="Only extract archives you trust.",
                )
            if not os.path.isfile(source):
                raise UnsafeArchive(
                    f"Refused {entry.path!r}: a hardlink to {entry.target!r}, which was not "
                    "extracted before it.",
                    hint="The archive is malformed; re-create it.",
                )
            os.link(source, target)

    def write_all(self, entries: Iterable[tuple[Entry, Opener | None]]) -> None:
        try:
            for entry, data in entries:
                self.add(entry, data)
            self.finish()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)

    def finish(self) -> None:
        self._wait()
        # Deepest first, so that setting a folder's time is not undone by its children.
        for target, entry in sorted(self._dirs, key=lambda d: d[0].count(os.sep), reverse=True):
            self._attrs(target, entry)
        self._dirs.clear()
