"""Trees of files as streams of entries: read from a folder or a tar stream, written to a folder
or a tar stream.

Every way data moves (ingest, export, clone, snapshot, restore) is a reader feeding a writer:

    FolderReader ─┐                   ┌─ TreeWriter   (a host folder: a local volume, a DEST)
    TarReader ────┼── (Entry, data) ──┼─ TarWriter    (an archive, or put_archive to the engine)
    snapshot  ────┘                   └─ snapshot

so the rules that keep a transfer safe live in two places only: ``TarReader`` refuses names that
are absolute, climb with ``..``, or are devices, and ``TreeWriter`` -- the only code that writes
into a host folder -- refuses any member whose path would pass through a symlink or a hardlink
out of its target. Everything streams: a file's bytes go from reader to writer in 1 MiB chunks.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

from cargohold.errors import TransferError, UnsafeArchive

__all__ = [
    "CHUNK",
    "Entry",
    "FolderReader",
    "Progress",
    "TarReader",
    "TarWriter",
    "TreeWriter",
    "data_stamp",
    "open_archive_for_reading",
]

CHUNK = 1 << 20
Kind = Literal["dir", "file", "symlink", "hardlink"]
Opener = Callable[[], IO[bytes]]
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Entry:
    """One node of a tree. ``path`` is relative and POSIX; ``""`` is the tree's root folder."""

    path: str
    kind: Kind
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    target: str = ""  # a symlink's target, or the path a hardlink shares its data with


def _no_progress(_: int) -> None:
    pass


def data_stamp(entry: Entry, st: os.stat_result | None) -> int:
    """When this entry last changed: mtime and ctime when its stat is at hand (ctime catches
    renames, chmods and deletions inside a folder), else the mtime an archive carries.

    Snapshots record the newest stamp of a volume and prune compares it with the volume's
    current one, so both must compute it here, the same way.
    """
    return entry.mtime_ns if st is None else max(st.st_mtime_ns, st.st_ctime_ns)


def clean_member_name(name: str, *, what: str = "member") -> str:
    """Normalise an archive name to a relative POSIX path, refusing anything that escapes.

    Raises:
        UnsafeArchive: an absolute name, or one with ``..``.
    """
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(
            f"Refused {what} {name!r}: an absolute path would be written outside the target.",
            hint="Only extract archives you trust; re-create it with relative names (tar -C DIR).",
        )
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(
            f"Refused {what} {name!r}: '..' would climb out of the target.",
            hint="Only extract archives you trust; re-create it without '..' in names.",
        )
    return "/".join(parts)


# -- readers -------------------------------------------------------------------------------


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

    def __iter__(self) -> Iterator[tuple[Entry, Opener | None]]:
        for entry, _ in self.stats():
            yield entry, (self.opener(entry) if entry.kind == "file" else None)

    def opener(self, entry: Entry) -> Opener:
        path = (
            self.root / entry.path
            if entry.path != self.root.name or self.root.is_dir()
            else self.root
        )
        return lambda: open(path, "rb")


class _ChunkStream(io.RawIOBase):
    """A readable file over an iterator of byte chunks (the engine's archive stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__()
        self._chunks = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buffer))
        b[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n


def open_archive_for_reading(source: IO[bytes] | Iterable[bytes]) -> IO[bytes]:
    """A readable stream of an uncompressed tar: zstd is unwrapped here, gzip/bz2/xz by
    tarfile itself."""
    raw: Any = source if hasattr(source, "read") else _ChunkStream(source)
    buffered: Any = raw if hasattr(raw, "peek") else io.BufferedReader(raw, CHUNK)
    if buffered.peek(4)[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(buffered, read_size=CHUNK)
        return reader
    stream: IO[bytes] = buffered
    return stream


class TarReader:
    """The entries of a tar stream, validated one by one as they arrive.

    Args:
        stream: the archive (tar, tar.gz, tar.bz2, tar.xz, tar.zst) or an iterator of chunks.
        strip: how many leading name components to drop (the engine's archives of a folder
            start with the folder's own name).
        prefix: a folder to put every entry under.
    """

    def __init__(
        self, stream: IO[bytes] | Iterable[bytes], *, strip: int = 0, prefix: str = ""
    ) -> None:
        self._stream = open_archive_for_reading(stream)
        self._strip = strip
        self._prefix = clean_member_name(prefix, what="target path") if prefix else ""

    def _name(self, raw: str) -> str | None:
        name = clean_member_name(raw)
        parts = name.split("/") if name else []
        if self._strip:
            if len(parts) < self._strip:
                return "" if not self._prefix else None
            parts = parts[self._strip :]
        name = "/".join(parts)
        if self._prefix:
            name = f"{self._prefix}/{name}" if name else self._prefix
        return name

    def __iter__(self) -> Iterator[tuple[Entry, Opener | None]]:
        try:
            archive = tarfile.open(fileobj=self._stream, mode="r|*")  # noqa: SIM115 - closed below
        except tarfile.TarError as exc:
            raise TransferError(
                f"Not a readable archive: {exc}.",
                hint="ingest reads .tar, .tar.gz, .tar.bz2, .tar.xz and .tar.zst.",
            ) from None
        with archive:
            try:
                for member in archive:
                    yield from self._member(archive, member)
            except (tarfile.TarError, EOFError, OSError) as exc:
                if isinstance(exc, OSError) and not isinstance(exc, EOFError) and exc.errno:
                    raise
                raise TransferError(
                    f"The archive is damaged or truncated: {exc}.",
                    hint="Check that the archive is complete.",
                ) from None

    def _member(
        self, archive: tarfile.TarFile, member: tarfile.TarInfo
    ) -> Iterator[tuple[Entry, Opener | None]]:
        name = self._name(member.name)
        if name is None:
            return
        if member.isdev() or member.isfifo():
            kind = "device node" if member.isdev() else "FIFO"
            raise UnsafeArchive(
                f"Refused member {member.name!r}: a {kind}.",
                hint="Volumes hold data; remove special files from the archive.",
            )
        common = dict(
            path=name,
            mode=member.mode & 0o7777,
            uid=member.uid,
            gid=member.gid,
            mtime_ns=_mtime_ns(member),
        )
        if member.isdir():
            yield Entry(kind="dir", **common), None  # type: ignore[arg-type]
        elif member.issym():
            yield Entry(kind="symlink", target=member.linkname, **common), None  # type: ignore[arg-type]
        elif member.islnk():
            try:
                target = self._name(member.linkname)
            except UnsafeArchive:
                target = None
            if not target:
                raise UnsafeArchive(
                    f"Refused member {member.name!r}: a hardlink to "
                    f"{member.linkname!r}, outside what is extracted.",
                    hint="Only extract archives you trust.",
                )
            yield Entry(kind="hardlink", target=target, **common), None  # type: ignore[arg-type]
        elif member.isreg():
            data = archive.extractfile(member)
            assert data is not None
            yield Entry(kind="file", size=member.size, **common), lambda: data  # type: ignore[arg-type]
        else:
            raise UnsafeArchive(
                f"Refused member {member.name!r}: unsupported type.",
                hint="Only files, folders and links can be extracted.",
            )


def _mtime_ns(member: tarfile.TarInfo) -> int:
    # tarfile parses a PAX mtime with float(), which keeps ~0.1 us: read the digits ourselves.
    text = member.pax_headers.get("mtime")
    if text:
        seconds, _, fraction = text.partition(".")
        try:
            return int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])
        except ValueError:
            pass
    return round(float(member.mtime) * 1e9)


# -- writers -------------------------------------------------------------------------------


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

    def __init__(self, root: Path, *, progress: Progress = _no_progress, workers: int = 1) -> None:
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
            import shutil

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


class TarWriter:
    """Writes entries as a PAX tar stream to ``sink`` (optionally gzip- or zstd-compressed)."""

    def __init__(
        self, sink: IO[bytes], *, compression: str = "", progress: Progress = _no_progress
    ) -> None:
        self._zstd: Any = None
        if compression == "zst":
            import zstandard

            self._zstd = zstandard.ZstdCompressor(level=3, threads=-1).stream_writer(
                sink, closefd=False
            )
            sink = self._zstd
        # Closed by close(), which write_all calls.
        self._tar = tarfile.open(  # noqa: SIM115
            fileobj=sink,
            mode="w|gz" if compression == "gz" else "w|",
            format=tarfile.PAX_FORMAT,
            bufsize=CHUNK,
        )
        self._progress = progress
        self.files = 0
        self.bytes = 0

    def add(self, entry: Entry, data: Opener | None) -> None:
        info = tarfile.TarInfo(entry.path or ".")
        info.mode = entry.mode
        info.uid, info.gid = entry.uid, entry.gid
        info.uname = info.gname = ""
        seconds, nanos = divmod(entry.mtime_ns, 1_000_000_000)
        info.mtime = seconds
        if nanos:  # exact to the nanosecond, which a float in tarfile's own PAX field is not
            info.pax_headers = {"mtime": f"{seconds}.{nanos:09d}"}
        if entry.kind == "dir":
            info.type = tarfile.DIRTYPE
            self._tar.addfile(info)
        elif entry.kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, entry.target
            self._tar.addfile(info)
        elif entry.kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, entry.target
            self._tar.addfile(info)
        else:
            assert data is not None
            info.size = entry.size
            with data() as src:
                self._tar.addfile(info, _Counting(src, self._count))
            self.files += 1

    def _count(self, n: int) -> None:
        self.bytes += n
        self._progress(n)

    def write_all(self, entries: Iterable[tuple[Entry, Opener | None]]) -> None:
        try:
            for entry, data in entries:
                self.add(entry, data)
        except BaseException:
            # Abandon the stream: without this, tarfile flushes its buffer again when the
            # object is collected, into a sink that has failed or been closed.
            self._tar.fileobj.closed = True  # type: ignore[attr-defined]
            self._tar.closed = True  # type: ignore[attr-defined]
            raise
        self.close()

    def close(self) -> None:
        self._tar.close()
        if self._zstd is not None:
            self._zstd.flush(1)  # FLUSH_FRAME
            self._zstd.close()


class _Counting(io.RawIOBase):
    def __init__(self, inner: IO[bytes], count: Progress) -> None:
        super().__init__()
        self._inner = inner
        self._count = count

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        if data:
            self._count(len(data))
        return data
