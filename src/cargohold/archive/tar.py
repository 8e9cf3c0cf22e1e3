"""Tar streams in and out, one member at a time, in constant memory.

``TarReader`` judges every member as it arrives (names through ``clean_member_name``; devices,
FIFOs and unknown types refused; hardlinks only to what is extracted with them) and hands out
file openers that are valid only until the next member: it says so with ``random_access =
False``. ``TarWriter`` writes PAX tar with exact nanosecond mtimes, optionally gzip or zstd.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from cargohold.archive._entries import CHUNK, Entry, Kind, Opener, Progress, Walked, no_progress
from cargohold.archive._names import clean_member_name
from cargohold.errors import TransferError, UnsafeArchive

__all__ = ["TarReader", "TarWriter", "open_archive_for_reading"]


class _ChunkStream(io.RawIOBase):
    """A readable file over an iterator of byte chunks (the engine's archive stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__()
        self._chunks = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
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
        skip_special: pass over device nodes and FIFOs (counted in ``skipped``) instead of
            refusing the archive -- for reading what a container holds, where such a file
            is no data, rather than for extracting an archive into a volume.
    """

    random_access = False

    def __init__(
        self,
        stream: IO[bytes] | Iterable[bytes],
        *,
        strip: int = 0,
        prefix: str = "",
        skip_special: bool = False,
    ) -> None:
        self._stream = open_archive_for_reading(stream)
        self._skip_special = skip_special
        self.skipped = 0
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

    def walk(self) -> Iterator[Walked]:
        for entry, opener in self:
            yield entry, opener, None

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
        if not name and self._strip and not member.isdir():
            # The engine's archive of a single file or link: its one member keeps its name
            # (it is not the root of anything, and must not be taken for one).
            name = clean_member_name(member.name).rsplit("/", 1)[-1]
        if member.isdev() or member.isfifo():
            if self._skip_special:
                self.skipped += 1
                return
            kind = "device node" if member.isdev() else "FIFO"
            raise UnsafeArchive(
                f"Refused member {member.name!r}: a {kind}.",
                hint="Volumes hold data; remove special files from the archive.",
            )

        def entry(kind: Kind, *, size: int = 0, target: str = "") -> Entry:
            return Entry(
                path=name or "",
                kind=kind,
                mode=member.mode & 0o7777,
                uid=member.uid,
                gid=member.gid,
                mtime_ns=_mtime_ns(member),
                size=size,
                target=target,
            )

        if member.isdir():
            yield entry("dir"), None
        elif member.issym():
            yield entry("symlink", target=member.linkname), None
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
            yield entry("hardlink", target=target), None
        elif member.isreg():
            data = archive.extractfile(member)
            assert data is not None
            yield entry("file", size=member.size), lambda: data
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


class TarWriter:
    """Writes entries as a PAX tar stream to ``sink`` (optionally gzip- or zstd-compressed)."""

    def __init__(
        self, sink: IO[bytes], *, compression: str = "", progress: Progress = no_progress
    ) -> None:
        self._zstd: Any = None
        if compression == "zst":
            import zstandard

            self._zstd = zstandard.ZstdCompressor(level=3, threads=-1).stream_writer(
                sink, closefd=False
            )
            sink = self._zstd
        # Closed by close(), which write_all calls.
        self._tar: Any = tarfile.open(  # noqa: SIM115
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
            self._progress(0, files=1)

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
            self._tar.fileobj.closed = True
            self._tar.closed = True
            raise
        self.close()

    def close(self) -> None:
        self._tar.close()
        if self._zstd is not None:
            self._zstd.flush(1)  # FLUSH_FRAME
            self._zstd.close()


class _Counting(io.RawIOBase):
    def __init__(self, inner: IO[bytes], count: Callable[[int], None]) -> None:
        super().__init__()
        self._inner = inner
        self._count = count

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        # tarfile takes a short read for the end of the file: fill it (a snapshot's file
        # streams blob by blob, a network file returns what arrived).
        data = self._inner.read(size)
        if data and size is not None and size > 0 and len(data) < size:
            parts = [data]
            have = len(data)
            while have < size and (more := self._inner.read(size - have)):
                parts.append(more)
                have += len(more)
            data = b"".join(parts)
        if data:
            self._count(len(data))
        return data
