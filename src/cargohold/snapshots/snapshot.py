"""Snapshots of volumes and folders into a repository, and their listing.

A snapshot walks the source once, parents before children, and turns it into tree objects
bottom-up: when the walk leaves a folder, that folder's nodes become one tree blob (or several,
``TREE_NODES`` each, for a huge folder) whose id goes into its parent's node. Memory therefore
holds the folders on the current path, never the whole tree, and a folder whose listing did not
change produces the same tree blob as last time -- stored once, at no cost.

File contents: a file of at most the repository's ``inline_max`` (4 KiB) is kept in its
folder's tree (``_format``: *Small files*); one up to the chunker's minimum is one blob; a
bigger one is cut by FastCDC
(``_format.ChunkerParams``: 256 KiB min, 1 MiB average, 4 MiB max -- about 1,000 blobs per GB,
so the index stays ~40 kB per GB, and a 10 MB append to a 200 MB file stores ~2 new chunks
plus the appended bytes, not the whole file again). Files are read by a pool of threads; blobs
go into packs (``repository.py``).

Incremental: where the source gives each entry's stat (``VolumeAccess.keeps_stats``: the
direct path, and folders), each file is compared with the same path in the previous
snapshot of the same source (size, mtime, inode, ctime): unchanged files are not even opened;
their blob ids are reused from the parent's tree, read one folder at a time alongside the walk.

Files that vanish or change while being read do not fail the snapshot (a training job rotating
checkpoints must still be backed up): the snapshot completes with what it could read
consistently, records the paths in ``changed``, and the CLI exits with ``EXIT_CHANGED`` (4).

Volumes and folders are walked by ``archive.confined`` (folder descriptors, ``O_NOFOLLOW``): a
symlink a container swaps in during the walk is never followed to read host files into a
snapshot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from pyfastcdc import FastCDC

from cargohold.archive import Entry, Opener, Progress, Walked, data_stamp, no_progress
from cargohold.archive.confined import ConfinedDir, ConfinedReader
from cargohold.engine import Engine
from cargohold.errors import TransferError, UsageError
from cargohold.snapshots._format import INLINE_PER_FOLDER, TREE_NODES, Node, SnapshotRecord
from cargohold.snapshots.repository import Repository, RepositoryError, new_snapshot_id
from cargohold.volumes import open_volume

__all__ = [
    "EXIT_CHANGED",
    "SnapshotInfo",
    "list_snapshots",
    "resolve_snapshot",
    "snapshot_path",
    "snapshot_volume",
]

log = logging.getLogger(__name__)

EXIT_CHANGED = 4  # the snapshot completed, but some paths changed or vanished while read
_WORKERS = max(2, min(4, os.cpu_count() or 2))
# Files smaller than this are read on the walking thread: handing a 1 KB file to the pool cost
# more than reading it (33 futex calls a file; hashing so little does not release the GIL).
_ON_WALKER_BELOW = 64 << 10
_PENDING = 128  # files being read at once (each holds an open descriptor)
_CHANGED_LISTED = 1000  # changed paths recorded by name; more are counted


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    volume: str  # the source: a volume's name or a folder's path
    kind: str
    created: str
    tag: str | None
    files: int
    bytes: int
    new_objects: int
    new_bytes_stored: int
    data_version: int
    repo: str
    seconds: float = 0.0
    changed: tuple[str, ...] = ()

    @classmethod
    def from_record(cls, record: SnapshotRecord, repo: str) -> SnapshotInfo:
        return cls(
            id=record.id,
            volume=record.source,
            kind=record.kind,
            created=record.created,
            tag=record.tag,
            files=record.files,
            bytes=record.bytes,
            new_objects=record.new_blobs,
            new_bytes_stored=record.new_bytes_stored,
            data_version=record.data_version,
            repo=repo,
            changed=tuple(record.changed),
        )


# -- reading files -----------------------------------------------------------------------


@dataclass
class _Stats:
    files: int = 0
    bytes: int = 0
    new_blobs: int = 0
    new_bytes: int = 0
    changed: list[str] = field(default_factory=list)
    changed_count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note_changed(self, path: str) -> None:
        with self.lock:
            self.changed_count += 1
            if len(self.changed) < _CHANGED_LISTED:
                self.changed.append(path)


class _Chunker:
    """Files into blobs. A large file is read in blocks that are never reused, cut there, and
    each chunk's hashing, sealing and packing runs on ``sealers`` while the next chunks are
    cut: one big file (a model's weights) keeps every core busy instead of one."""

    _BLOCK = 4 << 20  # at least the largest chunk; a block holds _BLOCK + max bytes

    def __init__(
        self,
        repo: Repository,
        stats: _Stats,
        progress: Progress,
        sealers: ThreadPoolExecutor,
    ) -> None:
        params = repo.config.chunker
        self._params = params
        self._repo = repo
        self._stats = stats
        self._progress = progress
        self._sealers = sealers

    def _blob(self, data: bytes | memoryview) -> str:
        blob = self._repo.keys.blob_id(data)
        added = self._repo.add_blob("d", blob, data)
        if added:
            with self._stats.lock:
                self._stats.new_blobs += 1
                self._stats.new_bytes += added
        self._progress(len(data))
        return blob

    def store(
        self, source: IO[bytes], size_hint: int, *, inline_max: int = 0
    ) -> tuple[list[str], int, bytes | None]:
        """Cut a stream into blobs; returns their ids, the bytes read, and -- for a file of at
        most ``inline_max`` bytes -- the bytes themselves instead of a blob (they go into the
        folder's tree).

        A small file is read with one exactly-sized read: over-sized buffers shrunk afterwards
        fragment the heap, and at a million files that alone costs hundreds of MB.
        """
        head = b""
        if size_hint <= self._params.min:
            data = source.read(size_hint + 1) or b""
            while len(data) <= self._params.min:
                more = source.read(self._params.min + 1 - len(data))
                if not more:
                    if 0 < len(data) <= inline_max:
                        self._progress(len(data))
                        return [], len(data), data
                    return ([self._blob(data)] if data else []), len(data), None
                data += more
            head = data
        refs, total = self._store_blocks(source, head, self._sealers)
        return refs, total, None

    def _cdc(self) -> FastCDC:
        return FastCDC(
            self._params.avg - self._params.min,
            min_size=self._params.min,
            max_size=self._params.max,
            seed=self._params.seed,
        )

    def _store_blocks(
        self, source: IO[bytes], head: bytes, sealers: ThreadPoolExecutor
    ) -> tuple[list[str], int]:
        """The same cut points as ``cut_stream`` (so that snapshots deduplicate against each
        other): a chunk is taken from a block only when at least ``max`` bytes follow its start
        there, as the stream chunker guarantees; the rest is carried into the next block.

        Two blocks take turns: one is cut and read into while the chunks of the other are
        sealed; a block is refilled only when every chunk pointing into it is done. (Fresh
        buffers cost more: a bytearray is zeroed holding the GIL, an mmap faults every page.)
        """
        cdc = self._cdc()
        reader = _Prefixed([head] if head else [], source)
        size = max(self._BLOCK, self._params.max)  # every block cuts at least one chunk
        blocks = [bytearray(size + self._params.max) for _ in range(2)]
        sealing: list[list[Future[str]]] = [[], []]
        refs: list[Future[str]] = []
        total = 0
        carry = last_filled = 0  # bytes at the end of the previous block not yet cut
        turn = 0
        eof = False
        try:
            while not eof:
                previous, block = blocks[1 - turn], memoryview(blocks[turn])
                for future in sealing[turn]:
                    future.result()
                sealing[turn] = []
                if carry:
                    block[:carry] = memoryview(previous)[last_filled - carry : last_filled]
                filled = carry
                while filled < carry + size:
                    n = reader.readinto(block[filled : carry + size])
                    if not n:
                        eof = True
                        break
                    filled += n
                if not filled:
                    break
                view = block[:filled]
                rest = filled
                for chunk in cdc.cut_buf(view):
                    if not eof and filled - chunk.offset < self._params.max:
                        rest = chunk.offset
                        break
                    future = sealers.submit(self._blob, chunk.data)
                    refs.append(future)
                    sealing[turn].append(future)
                    total += chunk.length
                carry, last_filled = filled - rest, filled
                turn = 1 - turn
            return [f.result() for f in refs], total
        finally:
            for future in refs:
                future.cancel()


class _Prefixed:
    """A reader that first returns some bytes already read, then the rest of a stream."""

    def __init__(self, head: Iterable[bytes], source: IO[bytes]) -> None:
        self._head = list(head)
        self._source = source

    def readinto(self, buffer: memoryview) -> int:
        """Straight into the chunker's block."""
        if self._head:
            data = self._head.pop(0)
            if len(data) > len(buffer):
                self._head.insert(0, data[len(buffer) :])
                data = data[: len(buffer)]
            buffer[: len(data)] = data
            return len(data)
        readinto = getattr(self._source, "readinto", None)
        if readinto is None:
            data = self._source.read(len(buffer)) or b""
            buffer[: len(data)] = data
            return len(data)
        return int(readinto(buffer) or 0)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (
        b.st_ino,
        b.st_size,
        b.st_mtime_ns,
        b.st_ctime_ns,
    )


# -- the tree builder ---------------------------------------------------------------------


@dataclass
class _Folder:
    path: str
    entry: Entry
    st: os.stat_result | None
    items: list[Any] = field(default_factory=list)  # Node | Future[Node | None] | _Folder
    parent: dict[str, Node] | None = None  # the previous snapshot's nodes of this folder
    previous: Node | None = None  # the previous snapshot's node of this folder
    result: Node | None = None
    inline_left: int = INLINE_PER_FOLDER  # bytes of small files its trees may still hold


def _node(entry: Entry, name: str, st: os.stat_result | None, **extra: Any) -> Node:
    return Node(
        name=name,
        kind=entry.kind,
        mode=entry.mode,
        uid=entry.uid,
        gid=entry.gid,
        mtime_ns=entry.mtime_ns,
        size=extra.pop("size", 0),
        target=entry.target,
        ino=st.st_ino if st is not None else 0,
        ctime_ns=st.st_ctime_ns if st is not None else 0,
        **extra,
    )


class _Builder:
    """Consumes a tree's entries in walk order and stores it as tree objects, bottom-up."""

    def __init__(
        self,
        repo: Repository,
        parent_root: Node | None,
        pool: ThreadPoolExecutor,
        progress: Progress,
        sealers: ThreadPoolExecutor,
    ) -> None:
        self.repo = repo
        self.stats = _Stats()
        self.chunker = _Chunker(repo, self.stats, progress, sealers)
        self.pool = pool
        self.progress = progress
        self.stack: list[_Folder] = []
        self.pending: deque[Future[Node | None]] = deque()
        self.parent_root = parent_root
        self.data_version = 0
        self.root: Node | None = None
        self.inline_max = repo.config.inline_max

    # A folder's nodes in the previous snapshot: read when the walk enters the folder.
    def _parent_nodes(self, node: Node | None) -> dict[str, Node] | None:
        if node is None or node.kind != "dir":
            return None
        nodes: dict[str, Node] = {}
        try:
            for ref in node.refs:
                for child in self.repo.read_tree(ref, "the previous snapshot"):
                    if child.name in nodes:  # (across tree blobs: one blob checks its own)
                        raise RepositoryError(f"{child.name!r} is in it twice")
                    nodes[child.name] = child
        except RepositoryError as exc:
            log.warning("previous snapshot unreadable, reading everything: %s", exc)
            return None
        return nodes

    def _close(self) -> None:
        folder = self.stack.pop()
        children: list[Node] = []
        for item in folder.items:
            if isinstance(item, Future):
                node = item.result()
            elif isinstance(item, _Folder):
                node = item.result
            else:
                node = item
            if node is not None:
                children.append(node)
        refs: list[str]
        if (
            folder.parent is not None
            and folder.previous is not None
            and len(children) == len(folder.parent)
            and list(folder.parent.values()) == children
            and all(self.repo.has_blob(ref) for ref in folder.previous.refs)
        ):
            # Unchanged: the previous snapshot's trees are this folder's (encoding and hashing
            # every folder again was a quarter of an unchanged snapshot of small files).
            refs = list(folder.previous.refs)
        else:
            refs = [
                self._store_tree(children[start : start + TREE_NODES])
                for start in range(0, len(children), TREE_NODES)
            ] or [self._store_tree([])]
        name = folder.path.rsplit("/", 1)[-1] if folder.path else "root"
        folder.result = _node(folder.entry, name, folder.st, refs=tuple(refs))
        # Only the result outlives the folder: its nodes (and their futures) must not stay
        # reachable from the parent, or memory would grow with the number of files.
        folder.items = []
        folder.parent = None
        if not self.stack:
            self.root = folder.result

    def _store_tree(self, nodes: list[Node]) -> str:
        blob, added = self.repo.store_tree(nodes)
        if added:
            with self.stats.lock:
                self.stats.new_blobs += 1
                self.stats.new_bytes += added
        return blob

    def _inline(self, folder: _Folder, size: int) -> int:
        """``inline_max`` if a file of ``size`` bytes may live in ``folder``'s tree (taking
        its share of the folder's allowance), else 0."""
        if size > self.inline_max or size > folder.inline_left:
            return 0
        folder.inline_left -= size
        return self.inline_max

    def _wait_some(self) -> None:
        while len(self.pending) >= _PENDING or (self.pending and self.pending[0].done()):
            self.pending.popleft().result()

    def add(self, entry: Entry, st: os.stat_result | None, opener: Opener | None) -> None:
        self.data_version = max(self.data_version, data_stamp(entry, st))
        parent_path, _, name = entry.path.rpartition("/")
        if entry.path:
            while self.stack and self.stack[-1].path != parent_path:
                self._close()
            if not self.stack:
                raise RepositoryError(
                    f"The source listed {entry.path!r} outside the folder being read.",
                    hint="This is a bug in the walk; report it with the source's layout.",
                )
        elif self.stack:
            raise RepositoryError("The source listed its root twice.", hint="Report this bug.")
        top = self.stack[-1] if self.stack else None
        previous = top.parent.get(name) if top is not None and top.parent is not None else None
        if entry.kind == "dir":
            folder = _Folder(entry.path, entry, st)
            if top is None:
                folder.previous = self.parent_root
            elif st is not None:
                folder.previous = previous
            folder.parent = self._parent_nodes(folder.previous)
            if top is not None:
                top.items.append(folder)
            self.stack.append(folder)
            return
        assert top is not None
        if entry.kind != "file":
            top.items.append(_node(entry, name, st))
            return
        with self.stats.lock:
            self.stats.files += 1
            self.stats.bytes += entry.size
        if (
            st is not None
            and previous is not None
            and previous.kind == "file"
            and (previous.size, previous.mtime_ns, previous.ino, previous.ctime_ns)
            == (entry.size, entry.mtime_ns, st.st_ino, st.st_ctime_ns)
            and all(self.repo.has_blob(ref) for ref in previous.refs)
            # (a small file kept in the tree is reused only within the folder's allowance, so
            # new files sorting before it cannot push the folder past it)
            and (previous.data is None or len(previous.data) <= top.inline_left)
        ):
            same = (previous.mode, previous.uid, previous.gid) == (entry.mode, entry.uid, entry.gid)
            if previous.data is not None:
                top.inline_left -= len(previous.data)
            # (the previous node itself when nothing differs: making a frozen node per
            # unchanged file was a fifth of an unchanged snapshot of small files)
            top.items.append(
                previous
                if same
                else _node(entry, name, st, size=entry.size, refs=previous.refs, data=previous.data)
            )
            self.progress(entry.size, files=1)
            return
        assert opener is not None
        inline = self._inline(top, entry.size)
        if st is not None and entry.size < _ON_WALKER_BELOW:
            node = self._read_walked(entry, name, st, opener, inline)
            if node is not None:
                top.items.append(node)
            return
        if st is not None:  # a source that stats what it walks hands out lasting openers
            self._wait_some()
            future = self.pool.submit(self._read_walked, entry, name, st, opener, inline)
            self.pending.append(future)
            top.items.append(future)
            return
        # An archive stream must be read in order, here and now.
        with opener() as source:
            refs, size, data = self.chunker.store(source, entry.size, inline_max=inline)
        top.items.append(_node(entry, name, None, size=size, refs=tuple(refs), data=data))
        self.progress(0, files=1)

    def _read_walked(
        self, entry: Entry, name: str, st: os.stat_result, opener: Opener, inline: int
    ) -> Node | None:
        try:
            return self._read_file(entry, name, st, opener, inline)
        finally:  # counted like the record counts it: vanished files too
            self.progress(0, files=1)

    def _read_file(
        self, entry: Entry, name: str, st: os.stat_result, opener: Opener, inline: int
    ) -> Node | None:
        try:
            source = opener()
        except TransferError:  # gone, or no longer a regular file: not data any more
            self.stats.note_changed(entry.path)
            return None
        with source:
            before = os.fstat(source.fileno())
            if before.st_ino != st.st_ino:
                self.stats.note_changed(entry.path)
            refs, size, data = self.chunker.store(source, before.st_size, inline_max=inline)
            after = os.fstat(source.fileno())
        if not _same(before, after) or size != before.st_size:
            self.stats.note_changed(entry.path)
        moved = dataclasses.replace(entry, size=size, mtime_ns=before.st_mtime_ns)
        return _node(moved, name, before, size=size, refs=tuple(refs), data=data)

    def finish(self) -> Node:
        while self.pending:
            self.pending.popleft().result()
        while self.stack:
            self._close()
        assert self.root is not None
        return self.root


# -- snapshot -----------------------------------------------------------------------------


def _previous(repo: Repository, source: str, kind: str) -> SnapshotRecord | None:
    """The newest readable snapshot of the same source: the parent of an incremental one, and
    an estimate of this one's size for its progress."""
    for info in reversed(list_snapshots(repo, source)):
        if info.kind != kind:
            continue
        try:
            return repo.load_snapshot(info.id)
        except RepositoryError as exc:
            log.warning("previous snapshot %s unreadable: %s", info.id, exc)
    return None


def _snapshot(
    repo: Repository,
    source: str,
    kind: str,
    walk: Callable[[Callable[[str], None]], contextlib.AbstractContextManager[Iterator[Walked]]],
    *,
    tag: str | None,
    labels: dict[str, str],
    progress: Progress,
    incremental: bool,
) -> SnapshotInfo:
    if repo.legacy:
        raise RepositoryError(
            f"{repo.url} is a format-1 repository: it can be restored from, not written to.",
            hint="Snapshot into a new repository (`cargohold repo init --repo NEW`); this one "
            "stays readable for restores.",
        )
    began = time.monotonic()
    repo.begin_session()
    stack = contextlib.ExitStack()
    try:
        # Looked up even when not incremental (the Engine-API path): one listing of the
        # records is small beside reading a whole volume, and it gives the progress an ETA.
        previous = _previous(repo, source, kind)
        if previous is not None:
            progress.expect(files=previous.files, nbytes=previous.bytes, exact=False)
        parent = previous.root if incremental and previous is not None else None
        with (
            ThreadPoolExecutor(_WORKERS, thread_name_prefix="cargohold-snap") as pool,
            ThreadPoolExecutor(_WORKERS, thread_name_prefix="cargohold-seal") as sealers,
        ):
            builder = _Builder(repo, parent, pool, progress, sealers)
            entries = stack.enter_context(walk(builder.stats.note_changed))
            for entry, opener, st in entries:
                builder.add(entry, st, opener)
            root = builder.finish()
        repo.flush()
        stats = builder.stats
        changed = list(stats.changed)
        if stats.changed_count > len(changed):
            changed.append(f"… and {stats.changed_count - len(changed)} more")
        now = datetime.now(UTC)
        record = SnapshotRecord(
            id=new_snapshot_id(now),
            source=source,
            kind="volume" if kind == "volume" else "path",
            created=now.isoformat(timespec="microseconds"),
            hostname=socket.gethostname(),
            tag=tag,
            labels=labels,
            files=stats.files,
            bytes=stats.bytes,
            new_blobs=stats.new_blobs,
            new_bytes_stored=stats.new_bytes,
            data_version=builder.data_version,
            root=root,
            changed=changed,
        )
        repo.save_snapshot(record)
    except OSError as exc:
        raise RepositoryError(
            f"Snapshot of {source} failed: {exc.strerror or exc}"
            f"{f' ({exc.filename})' if exc.filename else ''}. Nothing was published.",
            hint="Check free space and permissions where the repository lives.",
        ) from None
    finally:
        stack.close()
        repo.end_session()
    info = SnapshotInfo.from_record(record, repo.url)
    return dataclasses.replace(info, seconds=time.monotonic() - began)


def _kind_of(st: os.stat_result) -> str | None:
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    return None  # sockets, fifos, devices: not data


def _entry(path: str, st: os.stat_result, kind: Any, target: str = "") -> Entry:
    return Entry(
        path=path,
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        size=st.st_size if kind == "file" else 0,
        target=target,
    )


def snapshot_volume(
    engine: Engine,
    volume: str,
    repo: Repository,
    *,
    tag: str | None = None,
    progress: Progress = no_progress,
) -> SnapshotInfo:
    """Snapshot a volume (directly when its folder is reachable, else through the Engine API).

    Raises:
        VolumeNotFound: no such volume.
        RepositoryError: the repository cannot be written.
    """
    files = open_volume(engine, volume)

    @contextlib.contextmanager
    def walk(changed: Callable[[str], None]) -> Iterator[Iterator[Walked]]:
        with files.entries(on_vanished=changed) as source:
            yield source.walk()

    return _snapshot(
        repo,
        volume,
        "volume",
        walk,
        tag=tag,
        labels=dict(files.info.labels),
        progress=progress,
        incremental=files.keeps_stats,
    )


def snapshot_path(
    path: Path,
    repo: Repository,
    *,
    tag: str | None = None,
    as_volume: str | None = None,
    progress: Progress = no_progress,
) -> SnapshotInfo:
    """Snapshot a plain folder (no Docker needed). The source is its absolute path.

    Args:
        path: the folder.
        repo: the repository to write.
        tag: a name to find the snapshot by.
        as_volume: the folder is where volume ``as_volume`` is mounted (a sidecar with no
            Docker socket): record the snapshot as that volume's, so that ``VOLUME@latest``,
            ``forget VOLUME``, ``prune`` and the next snapshot of the volume find it.
        progress: called with the bytes read so far.

    Raises:
        UsageError: it is not a folder.
        RepositoryError: the repository cannot be written.
    """
    absolute = Path(os.path.abspath(path))
    if not absolute.is_dir() or absolute.is_symlink():
        raise UsageError(f"{path} is not a folder.", hint="Snapshot a folder or a volume.")

    @contextlib.contextmanager
    def walk(changed: Callable[[str], None]) -> Iterator[Iterator[Walked]]:
        with ConfinedDir.open(absolute) as root:
            yield ConfinedReader(root, on_vanished=changed).walk()

    return _snapshot(
        repo,
        str(absolute) if as_volume is None else as_volume,
        "path" if as_volume is None else "volume",
        walk,
        tag=tag,
        labels={},
        progress=progress,
        incremental=True,
    )


# -- listing ------------------------------------------------------------------------------


def list_snapshots(repo: Repository, source: str | None = None) -> list[SnapshotInfo]:
    """Every snapshot in the repository (of one source), oldest first."""
    found = []
    for snapshot_id in repo.snapshot_ids():
        try:
            record = repo.load_snapshot(snapshot_id)
        except RepositoryError as exc:
            log.warning("skipping %s: %s", snapshot_id, exc)
            continue
        if source is None or record.source == source:
            found.append(SnapshotInfo.from_record(record, repo.url))
    return sorted(found, key=lambda s: (s.created, s.id))


def resolve_snapshot(repo: Repository, ref: str) -> SnapshotRecord:
    """A snapshot by id, unique id prefix, tag, or ``SOURCE@latest``.

    Raises:
        RepositoryError: nothing or several match.
    """
    ids = repo.snapshot_ids()
    if ref in ids:
        return repo.load_snapshot(ref)
    if ref.endswith("@latest"):
        source = ref.removesuffix("@latest")
        snaps = list_snapshots(repo, source) or list_snapshots(repo, os.path.abspath(source))
        if snaps:
            return repo.load_snapshot(snaps[-1].id)
    matches = [i for i in ids if i.startswith(ref)]
    if not matches:
        matches = [s.id for s in list_snapshots(repo) if s.tag == ref]
    if len(matches) == 1:
        return repo.load_snapshot(matches[0])
    if not matches:
        raise RepositoryError(
            f"No snapshot {ref!r} in {repo.url}.",
            hint="`cargohold snapshots` lists ids and tags; VOLUME@latest names a volume's newest.",
        )
    raise RepositoryError(f"{ref!r} matches {len(matches)} snapshots.", hint="Give more of the id.")
