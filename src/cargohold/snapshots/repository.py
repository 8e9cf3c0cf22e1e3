"""A snapshot repository (format 2): packs of sealed blobs, indexes, trees, snapshot records.

    <repo>/repository.json      format version, chunker, pack size, encryption (``_format.py``)
    <repo>/packs/ab/<random>    ~16 MiB of blobs back to back; 256 random bits name it (every
                                blob in it is checked against its own id when read, so a
                                hash of the whole pack -- 0.6 s of CPU per GB -- adds nothing)
    <repo>/index/<random>       which blobs each pack holds, one file per writing session
    <repo>/snapshots/<id>       one record per snapshot, written last
    <repo>/sessions/<id>        one per live writer (snapshot) -- what makes gc safe, below
    <repo>/condemned/<id>       packs a gc found unreferenced, waiting to be deleted
    <repo>/tmp/<session>-…      packs being written locally (debris if their writer died)

Why packs: a snapshot of 200,000 small files must not create 200,000 files (inode allocation
dominated the old format's time, and it made 200,000 PUTs on S3). Blobs are appended to a pack
until it reaches ``pack_size`` (16 MiB, restic's default: big enough that S3 requests scale with
bytes, not files -- about 64 PUTs per GB -- small enough that one unlucky pack costs little to
rewrite), then the pack is published whole: renamed into place locally, uploaded by a pool of
threads on S3 while the snapshot goes on.

Order of publication, which every reader relies on: packs, then the session's index, then the
snapshot record. A crash at any point leaves only unreferenced packs (cleaned by gc) or debris in
``tmp/`` (cleaned by the next writer, which can tell its writer is dead -- see below), never a
record that points at something missing.

**Concurrency without a global lock.** Any number of snapshots may write at once: nothing is
modified in place, and two writers of the same blob just store it twice (gc keeps one copy's
pack or the other). ``gc`` must never delete a pack that a snapshot still being written is about
to reference -- a writer decides "already stored" from the index it loaded when it started. So:

1. Every writer first publishes ``sessions/<id>`` and only then loads the index and the list of
   condemned packs. Locally the session file is held with ``flock`` for the writer's lifetime
   (the kernel drops it when the process dies, even by SIGKILL); on object stores, where no lock
   survives a crash, the writer rewrites it every ``HEARTBEAT`` seconds and a session not
   refreshed for ``SESSION_TTL`` is dead. Nothing can be locked for ever.
2. ``gc`` *condemns* unreferenced packs: it writes ``condemned/<id>`` naming them, with its time.
   Writers that start afterwards never reuse a blob that lives only in a condemned pack.
3. A later step (the same ``gc`` run, or the next) deletes a condemned pack only when no session
   that started before the condemnation is still alive, and only after recomputing references
   from every snapshot then present: a writer that started before the condemnation either
   finished (its snapshot is listed, so its packs are referenced and rescued) or died.
4. Writers check, before publishing their snapshot, that their session is still live (a writer
   paused for longer than the TTL on S3 aborts instead of publishing).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cargohold._atomic import write_bytes_atomic
from cargohold.snapshots._backend import (
    Backend,
    FsspecBackend,
    LocalBackend,
    RepositoryError,
    fsspec_filesystem,
)
from cargohold.snapshots._format import (
    INLINE_MAX,
    ChunkerParams,
    Keys,
    Node,
    PasswordError,
    RepoConfig,
    SnapshotRecord,
    chunker_seed,
    damaged,
    decode_snapshot,
    decode_tree,
    encode_index,
    encode_snapshot,
    encode_tree,
    index_entries,
    index_packs,
    new_encryption,
    parse_config,
    unwrap_key,
)
from cargohold.snapshots._lookup import BlobTable
from cargohold.snapshots._s3 import S3Backend, s3_backend

__all__ = [
    "PASSWORD_ENV",
    "REPO_ENV",
    "PasswordError",
    "Repository",
    "RepositoryError",
    "default_repo_url",
    "fsspec_filesystem",
    "init_repository",
    "open_repository",
    "read_password",
]

log = logging.getLogger(__name__)

REPO_ENV = "CARGOHOLD_REPO"
PASSWORD_ENV = "CARGOHOLD_PASSWORD"
CONFIG = "repository.json"
LEGACY_MARKER = "cargohold-repository.json"
SESSION_TTL = float(os.environ.get("CARGOHOLD_SESSION_TTL", "600"))
HEARTBEAT = SESSION_TTL / 5
_UPLOADS = 4  # packs uploaded at once to an object store
_PACKS_KEPT = 4  # whole packs kept when reading from an object store: one per restore writer


def default_repo_url() -> str:
    """``$CARGOHOLD_REPO``, else ``$XDG_DATA_HOME/cargohold/snapshots`` (per user)."""
    if os.environ.get(REPO_ENV):
        return os.environ[REPO_ENV]
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(data, "cargohold", "snapshots")


def read_password(password_file: str | None = None) -> bytes | None:
    """The password from ``--password-file`` (first line), else ``$CARGOHOLD_PASSWORD``."""
    if password_file:
        try:
            with open(password_file, "rb") as f:
                return f.readline().rstrip(b"\r\n")
        except OSError as exc:
            raise PasswordError(
                f"Cannot read the password file {password_file}: {exc.strerror}.",
                hint="Check the path given to --password-file.",
            ) from None
    value = os.environ.get(PASSWORD_ENV)
    return value.encode() if value else None


def _backend(url: str) -> Backend:
    backend: Backend | None
    if url.startswith("s3://"):
        # S3 with keys from the environment or ~/.aws/credentials: our own small client
        # (importing s3fs and making its client was half of an unchanged snapshot's time);
        # other credentials (roles, SSO) and other schemes go through fsspec.
        backend = s3_backend(url)
        if backend is not None:
            return backend
    if "://" in url and not url.startswith("file://"):
        return FsspecBackend(url)
    return LocalBackend(Path(url.removeprefix("file://")).expanduser())


def _local_dirs(root: Path) -> None:
    for sub in ("packs", "index", "snapshots", "sessions", "condemned", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)


def _publish_once(path: Path, data: bytes) -> bool:
    """Write ``path`` whole, unless it exists: False when another writer was first."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    write_bytes_atomic(tmp, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def init_repository(
    url: str | None, *, encrypt: bool = False, password: bytes | None = None, exist_ok: bool = False
) -> Repository:
    """Create a repository (format 2) at ``url``.

    Raises:
        RepositoryError: something else is there, or it cannot be written.
        PasswordError: ``encrypt`` without a password.
    """
    url = url or default_repo_url()
    backend = _backend(url)
    try:
        if isinstance(backend, LocalBackend):
            root = backend.root
            if (root / CONFIG).exists() or (root / LEGACY_MARKER).exists():
                if exist_ok:
                    return open_repository(url, password=password)
                raise RepositoryError(
                    f"{url} is already a repository.", hint="Use it, or pick another --repo."
                )
            if root.exists() and any(not p.name.startswith(".") for p in root.iterdir()):
                # (another process may be creating it right now: its folders, the hidden
                # temporary file of its config and the config it has just published are no
                # reason to refuse; _publish_once then finds the config there)
                ours = {"packs", "index", "snapshots", "sessions", "condemned", "tmp", CONFIG}
                names = {p.name for p in root.iterdir() if not p.name.startswith(".")}
                if not names <= ours:
                    raise RepositoryError(
                        f"{root} is not empty and is not a cargohold repository.",
                        hint="Pick an empty or new folder for --repo.",
                    )
            _local_dirs(root)
        else:
            assert isinstance(backend, FsspecBackend | S3Backend)
            backend.ensure_bucket()
            if backend.exists(CONFIG) or backend.exists(LEGACY_MARKER):
                if exist_ok:
                    return open_repository(url, password=password)
                raise RepositoryError(
                    f"{url} is already a repository.", hint="Use it, or pick another --repo."
                )
        master = None
        encryption = None
        if encrypt:
            if not password:
                raise PasswordError(
                    "An encrypted repository needs a password.",
                    hint="Set CARGOHOLD_PASSWORD, or pass --password-file FILE.",
                )
            encryption, master = new_encryption(password)
        config = RepoConfig(
            id=secrets.token_hex(16),
            chunker=ChunkerParams(seed=chunker_seed(master)),
            inline_max=INLINE_MAX,
            encryption=encryption,
        )
        data = config.model_dump_json(indent=2).encode()
        if isinstance(backend, LocalBackend):
            if not _publish_once(backend.root / CONFIG, data):
                # Two first snapshots at once: the other one created it a moment ago.
                if exist_ok:
                    return open_repository(url, password=password)
                raise RepositoryError(
                    f"{url} is already a repository.", hint="Use it, or pick another --repo."
                )
        else:
            backend.put(CONFIG, data)
    except OSError as exc:
        raise RepositoryError(
            f"Cannot create a repository at {url}: {exc.strerror or exc}.",
            hint="Check permissions and free space.",
        ) from None
    return Repository(backend, config, master)


def open_repository(
    url: str | None = None,
    *,
    create: bool = False,
    password: bytes | None = None,
) -> Repository:
    """The repository at ``url`` (default: ``default_repo_url()``); ``create``: a new plain one
    if there is none.

    Raises:
        RepositoryError: it does not exist (and ``create`` is False) or cannot be reached.
        PasswordError: it is encrypted and the password is missing or wrong.
    """
    url = url or default_repo_url()
    if password is None:
        password = read_password()
    backend = _backend(url)
    try:
        raw = backend.read(CONFIG)
    except RepositoryError:
        raw = None
    except PermissionError as exc:
        raise RepositoryError(
            f"Repository {url} is not readable: {exc.strerror}.",
            hint="Check its permissions, or use another --repo.",
        ) from None
    except OSError as exc:
        raise RepositoryError(
            f"Repository {url} is not readable: {exc.strerror or exc}.",
            hint="Check the path, or use another --repo.",
        ) from None
    if raw is None:
        if backend.exists(LEGACY_MARKER):
            from cargohold.snapshots._legacy import open_legacy

            return open_legacy(url)  # type: ignore[return-value]
        if not create:
            raise RepositoryError(
                f"No snapshot repository at {url}.",
                hint="Take a snapshot first (`cargohold snapshot VOLUME --repo …`), create one "
                "with `cargohold repo init`, or check the --repo URL.",
            )
        return init_repository(url, exist_ok=True, password=password)
    config = parse_config(raw, url)
    master = unwrap_key(config.encryption, password, url) if config.encryption else None
    if isinstance(backend, LocalBackend):
        with contextlib.suppress(OSError):
            _local_dirs(backend.root)
    return Repository(backend, config, master)


@dataclass(frozen=True)
class PackInfo:
    name: str
    kind: str  # "d" data, "t" trees
    blobs: tuple[tuple[bytes, int, int], ...]


_PACK_SLOTS = 2  # packs of one kind filled at once (see add_sealed)
_INDEX_BATCH = 50_000  # blobs named by one index file a session writes (see _write_index)


class _OpenPack:
    def __init__(self, path: str) -> None:
        self.path = path
        self.file = open(path, "wb")  # noqa: SIM115 - closed by finish()
        self.size = 0
        self.blobs: list[tuple[str, int, int]] = []


class Repository:
    """A format-2 repository. Thread-safe for blob reads and writes."""

    legacy = False

    def __init__(self, backend: Backend, config: RepoConfig, master: bytes | None) -> None:
        self.backend = backend
        self.config = config
        self.url = backend.url
        self.keys = Keys(master, config.compression_level)
        self._lock = threading.Lock()
        self._index: BlobTable | None = None
        self._pack_names: list[str] = []
        self._pack_numbers: dict[str, int] = {}
        self._index_files: list[str] = []
        self._excluded_packs: set[str] = set()
        # Writing.
        self._session: str | None = None
        self._session_fd: int | None = None
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_ok = 0.0
        self._stop = threading.Event()
        self._open: dict[tuple[str, int], _OpenPack] = {}
        self._slots = [threading.Lock() for _ in range(_PACK_SLOTS)]
        self._written: list[tuple[str, str, list[tuple[str, int, int]]]] = []
        self._written_blobs = 0
        self._uploads: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []
        self._new_blobs: dict[bytes, None] = {}
        # Reading from an object store: a few recent windows of packs.
        self._packs: OrderedDict[str, bytes] = OrderedDict()  # whole packs from an object store
        self._fetching: dict[str, threading.Lock] = {}
        self._tree_cache = self._cache_dir("trees")
        # Records are not content-addressed: their cache is bound to the URL too, so that a
        # hostile repository claiming another's id cannot plant records for it.
        records = self._cache_dir("snapshots")
        url_key = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self._record_cache = records.with_name(f"{records.name}-{url_key}") if records else None

    # -- the index -----------------------------------------------------------------------

    def _cache_dir(self, kind: str) -> Path | None:
        """Where sealed trees and snapshot records of an object-store repository are kept on
        this machine (they never change once written): a snapshot otherwise read every record
        (to find its parent) and every tree of the parent, one GET each."""
        if self.backend.local:
            return None
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        return Path(base) / "cargohold" / kind / self.config.id

    def load_index(self, *, exclude: set[str] | None = None) -> None:
        """Read every index file. ``exclude``: packs whose blobs must not count as stored."""
        index = BlobTable()
        names: list[str] = []
        numbers: dict[str, int] = {}
        files = [name for name, _ in self.backend.list("index")]
        for name in files:
            for pack, _kind, entries in self.read_index_packed(name):
                if exclude and pack in exclude:
                    continue
                number = numbers.get(pack)
                if number is None:
                    number = numbers[pack] = len(names)
                    names.append(pack)
                index.add_packed(entries, number)
        with self._lock:
            self._index, self._pack_names, self._pack_numbers = index, names, numbers
            self._index_files = files
            self._excluded_packs = set(exclude or ())

    def read_index_packed(self, name: str) -> list[tuple[str, str, memoryview]]:
        """One index file's packs, their entries left packed (``_format.index_packs``)."""
        what = f"index {name}"
        return index_packs(self.keys.unseal(self.backend.read(name), what), what)

    def index_files(self) -> list[str]:
        self._ensure_index()
        return list(self._index_files)

    def packs(self) -> Iterator[PackInfo]:
        """Every pack every index names (one index file at a time)."""
        for name, _ in self.backend.list("index"):
            for pack, kind, entries in self.read_index_packed(name):
                yield PackInfo(pack, kind, tuple(index_entries(entries)))

    def _ensure_index(self) -> BlobTable:
        if self._index is None:
            self.load_index()
        assert self._index is not None
        return self._index

    def has_blob(self, blob: str) -> bool:
        raw = bytes.fromhex(blob)
        index = self._ensure_index()
        with self._lock:
            return raw in index or raw in self._new_blobs

    def blob_count(self) -> int:
        return len(self._ensure_index())

    def locate(self, blob: str) -> tuple[str, int, int] | None:
        index = self._ensure_index()
        where = index.get(bytes.fromhex(blob))
        if where is None:
            return None
        number, offset, length = where
        return self._pack_names[number], offset, length

    # -- reading blobs ---------------------------------------------------------------------

    def _read_range(self, pack: str, offset: int, length: int) -> bytes | memoryview:
        """A blob's sealed bytes. From an object store, a whole pack is fetched once (one GET)
        and kept among the last ``_PACKS_KEPT``: ranged GETs of a fixed window fell off the
        end of every pack and then fetched its last blobs one request each (a 1 GB restore
        from radosgw took 33 s, restic 6 s). Threads wanting the same pack wait for one GET."""
        if self.backend.local:
            return self.backend.read(pack, offset, length)
        data = self._cached_pack(pack)
        if data is None:
            with self._lock:
                fetching = self._fetching.setdefault(pack, threading.Lock())
            with fetching:
                data = self._cached_pack(pack)
                if data is None:
                    data = self.backend.read(pack)
                    with self._lock:
                        self._packs[pack] = data
                        while len(self._packs) > _PACKS_KEPT:
                            self._packs.popitem(last=False)
                        self._fetching.pop(pack, None)
        if offset + length > len(data):
            raise damaged(pack, "it is shorter than its index says")
        return memoryview(data)[offset : offset + length]

    def _cached_pack(self, pack: str) -> bytes | None:
        with self._lock:
            data = self._packs.get(pack)
            if data is not None:
                self._packs.move_to_end(pack)
            return data

    def read_blob(self, blob: str, what: str) -> bytes:
        """A blob's plaintext, verified against its id.

        Raises:
            RepositoryError: it is missing, or its bytes do not match its id.
        """
        where = self.locate(blob)
        if where is None:
            raise RepositoryError(
                f"{what}: blob {blob[:12]}… is not in any index of {self.url}.",
                hint="The repository is damaged: `cargohold repo check` reports the extent.",
            )
        pack, offset, length = where
        return self.open_sealed(self._read_range(pack, offset, length), blob, f"{what} (in {pack})")

    def open_sealed(self, sealed: bytes | memoryview, blob: str, what: str) -> bytes:
        """The plaintext of a sealed copy of ``blob``, checked against its id.

        Raises:
            RepositoryError: it does not open, or its bytes do not match the id.
        """
        plain = self.keys.unseal(sealed, what)
        if self.keys.blob_id(plain) != blob:
            raise damaged(what, "its bytes do not match their checksum")
        return plain

    def read_tree(self, blob: str, what: str) -> list[Node]:
        cached: bytes | None = None
        path = self._tree_cache / blob[:2] / blob if self._tree_cache else None
        if path is not None:
            with contextlib.suppress(OSError):
                cached = path.read_bytes()
        if cached is not None:
            plain = self.keys.unseal(cached, what)
            if self.keys.blob_id(plain) == blob:
                return decode_tree(plain, what)
        plain = self.read_blob(blob, what)
        if path is not None:
            self._cache_write(path, self.keys.seal(plain, metadata=True))
        return decode_tree(plain, what)

    def _cache_write(self, path: Path, sealed: bytes) -> None:
        """Readable by this user only: trees hold names and, since small files live in them,
        those files' bytes too."""
        with contextlib.suppress(OSError):
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(sealed)
            os.replace(tmp, path)

    # -- writing ---------------------------------------------------------------------------

    @property
    def session(self) -> str | None:
        return self._session

    def begin_session(self, *, prefix: str = "") -> str:
        """Announce a writer (see the module docstring), clean debris of dead writers, then
        load the index without the blobs of condemned packs."""
        session = f"{prefix}{'-' if prefix else ''}{int(time.time())}-{secrets.token_hex(6)}"
        record = json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        ).encode()
        name = f"sessions/{session}"
        if isinstance(self.backend, LocalBackend):
            self._session_fd = self.backend.hold(name, record)
        else:
            self.backend.put(name, record)
            self._stop.clear()
            self._heartbeat = threading.Thread(
                target=self._beat, args=(name, record), name="cargohold-heartbeat", daemon=True
            )
            self._heartbeat.start()
        self._heartbeat_ok = time.monotonic()
        self._session = session
        self.clean_debris()
        self.load_index(exclude=self.condemned_packs())
        self._uploads = ThreadPoolExecutor(
            1 if self.backend.local else _UPLOADS, thread_name_prefix="cargohold-upload"
        )
        return session

    def _beat(self, name: str, record: bytes) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                self.backend.put(name, record)
                self._heartbeat_ok = time.monotonic()
            except RepositoryError as exc:
                log.warning("session heartbeat failed: %s", exc)

    def session_alive(self) -> bool:
        """Whether this writer's session is certainly still seen as live by gc."""
        if self._session_fd is not None:
            return True
        return time.monotonic() - self._heartbeat_ok < SESSION_TTL * 0.8

    def end_session(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        if self._uploads is not None:
            self._uploads.shutdown(wait=True, cancel_futures=True)
            self._uploads = None
        for pack in self._open.values():
            pack.file.close()
            with contextlib.suppress(OSError):
                os.unlink(pack.path)
        self._open.clear()
        if self._session is not None:
            self.backend.delete(f"sessions/{self._session}")
            if self._session_fd is not None:
                os.close(self._session_fd)
                self._session_fd = None
            self._session = None

    def live_sessions(self) -> dict[str, float]:
        """Sessions of writers still alive, with the time each started."""
        alive: dict[str, float] = {}
        for name, _ in self.backend.list("sessions"):
            session = name.rsplit("/", 1)[-1]
            head = session.split("-", 1)[0]  # (a name a writer did not make: time 0)
            started = float(head) if head.isascii() and head.isdigit() else 0.0
            if session == self._session:
                alive[session] = started
            elif isinstance(self.backend, LocalBackend):
                if self.backend.held(name):
                    alive[session] = started
                else:
                    self.backend.delete(name)  # its writer died
            else:
                try:
                    fresh = time.time() - self.backend.mtime(name) < SESSION_TTL
                except (RepositoryError, FileNotFoundError):
                    continue
                if fresh:
                    alive[session] = started
                else:
                    self.backend.delete(name)
        return alive

    def clean_debris(self) -> list[str]:
        """Remove local temporary packs whose writer is dead (defect 17)."""
        if not isinstance(self.backend, LocalBackend):
            return []
        alive = self.live_sessions()
        removed = []
        with contextlib.suppress(OSError), os.scandir(self.backend.root / "tmp") as it:
            for entry in it:
                owner = entry.name.split("-", 2)
                session = "-".join(owner[:2])
                if entry.name.startswith(".put-"):
                    # A single small file being published; a day old means its writer is gone.
                    with contextlib.suppress(OSError):
                        if entry.stat().st_mtime < time.time() - 86400:
                            os.unlink(entry.path)
                    continue
                if session not in alive:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                        removed.append(entry.name)
        return removed

    def condemned_packs(self) -> set[str]:
        packs: set[str] = set()
        for name, _ in self.backend.list("condemned"):
            packs.update(self.read_condemned(name)[1])
        return packs

    def read_condemned(self, name: str) -> tuple[float, list[str]]:
        what = f"gc record {name}"
        try:
            body = json.loads(self.keys.unseal(self.backend.read(name), what))
            when, packs = float(body["time"]), [str(p) for p in body["packs"]]
        except RecursionError:
            raise damaged(what, "its JSON is nested too deeply") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise damaged(what, str(exc)) from None
        return when, packs

    def add_blob(
        self, kind: str, blob: str, plain: bytes | memoryview, *, sealed: bytes | None = None
    ) -> int:
        """Store a blob unless it is already stored; returns the bytes it added. ``sealed``:
        ``plain`` already sealed by the caller."""
        raw = bytes.fromhex(blob)
        index = self._ensure_index()
        with self._lock:
            if raw in index or raw in self._new_blobs:
                return 0
            self._new_blobs[raw] = None
        if sealed is None:
            sealed = self.keys.seal(plain, metadata=kind == "t")
        self.add_sealed(kind, blob, sealed)
        return len(sealed)

    def add_sealed(self, kind: str, blob: str, sealed: bytes) -> None:
        """Append an already sealed blob to an open pack of ``kind`` (also gc's repacking).

        Appending to a pack and hashing it is serial work; with one pack, every thread waited
        for it. There are ``_PACK_SLOTS`` open packs per kind: a thread takes a free one, so
        two threads append at once, and a snapshot ends with at most that many partial packs.
        """
        slots = self._slots
        slot = next((i for i, lock in enumerate(slots) if lock.acquire(blocking=False)), None)
        if slot is None:
            slot = threading.get_ident() % len(slots)
            slots[slot].acquire()
        try:
            key = (kind, slot)
            with self._lock:
                pack = self._open.get(key)
                if pack is None:
                    assert self._session is not None, "add_blob outside a session"
                    pack = self._open[key] = _OpenPack(self.backend.temp_file(self._session))
            pack.file.write(sealed)
            pack.blobs.append((blob, pack.size, len(sealed)))
            pack.size += len(sealed)
            if pack.size >= self.config.pack_size:
                with self._lock:
                    del self._open[key]
                    self._finish(kind, pack)
        finally:
            slots[slot].release()
        if self._written_blobs >= _INDEX_BATCH:
            self._write_index(at_least=_INDEX_BATCH)

    def _finish(self, kind: str, pack: _OpenPack) -> None:
        """Publish a full pack (in the background on an object store). Holds ``_lock``."""
        pack.file.close()
        digest = secrets.token_hex(32)
        name = f"packs/{digest[:2]}/{digest}"
        self._written.append((name, kind, pack.blobs))
        self._written_blobs += len(pack.blobs)
        assert self._uploads is not None
        self._pending.append(self._uploads.submit(self.backend.put_file, name, pack.path))

    def _write_index(self, *, at_least: int = 0) -> None:
        """Wait for the packs written so far, then publish an index naming them, and move
        their blobs from the session's own set into the lookup table. A session of a million
        small files so writes an index every ``_INDEX_BATCH`` blobs instead of holding the
        whole list (and every blob twice) until its end. Waits without holding ``_lock``:
        the other threads go on sealing meanwhile."""
        with self._lock:
            if self._written_blobs < at_least or not self._written:
                return
            written, self._written, self._written_blobs = self._written, [], 0
            pending, self._pending = self._pending, []
        for future in pending:
            future.result()
        name = f"index/{secrets.token_hex(16)}"
        self.backend.put(name, self.keys.seal(encode_index(written), metadata=True))
        with self._lock:
            index = self._index
            if index is None:
                return
            for pack, _kind, blobs in written:
                number = self._pack_numbers.get(pack)
                if number is None:
                    number = self._pack_numbers[pack] = len(self._pack_names)
                    self._pack_names.append(pack)
                for blob, offset, length in blobs:
                    raw = bytes.fromhex(blob)
                    index.add(raw, number, offset, length)
                    self._new_blobs.pop(raw, None)
            self._index_files.append(name)

    def flush(self) -> None:
        """Publish every open pack, wait for the uploads, then write this session's index."""
        with self._lock:
            for key, pack in list(self._open.items()):
                del self._open[key]
                self._finish(key[0], pack)
        self._write_index()

    def store_tree(self, nodes: list[Node]) -> tuple[str, int]:
        """Store a folder's tree blob; its id and the bytes it added (0 if already stored).
        Sealed once, for the pack and the local cache alike (a tree holding small files'
        bytes is worth compressing only once)."""
        plain = encode_tree(nodes)
        blob = self.keys.blob_id(plain)
        sealed = self.keys.seal(plain, metadata=True)
        added = self.add_blob("t", blob, plain, sealed=sealed)
        if self._tree_cache is not None:
            path = self._tree_cache / blob[:2] / blob
            if not path.exists():
                self._cache_write(path, sealed)
        return blob, added

    # -- snapshot records -----------------------------------------------------------------

    def snapshot_ids(self) -> list[str]:
        return sorted(name.rsplit("/", 1)[-1] for name, _ in self.backend.list("snapshots"))

    def save_snapshot(self, record: SnapshotRecord) -> None:
        if not self.session_alive():
            raise RepositoryError(
                "The snapshot's session expired before it could be published (the process was "
                "paused or cut off for too long); nothing was published.",
                hint="Run the snapshot again.",
            )
        sealed = self.keys.seal(encode_snapshot(record), metadata=True)
        self.backend.put(f"snapshots/{record.id}", sealed)
        cached = self._cached_record(record.id)
        if cached is not None:
            self._cache_write(cached, sealed)

    def load_snapshot(self, snapshot_id: str) -> SnapshotRecord:
        what = f"snapshot {snapshot_id}"
        cached = self._cached_record(snapshot_id)
        if cached is not None:
            with contextlib.suppress(OSError, RepositoryError):
                record = decode_snapshot(self.keys.unseal(cached.read_bytes(), what), what)
                if record.id == snapshot_id:
                    return record
        name = f"snapshots/{snapshot_id}"
        try:
            raw = self.backend.read(name)
        except RepositoryError:
            raise RepositoryError(
                f"No snapshot {snapshot_id} in {self.url}.",
                hint="`cargohold snapshots` lists them.",
            ) from None
        record = decode_snapshot(self.keys.unseal(raw, what), what)
        if record.id != snapshot_id:
            raise damaged(what, f"it says it is {record.id}")
        if cached is not None:
            self._cache_write(cached, bytes(raw))
        return record

    def _cached_record(self, snapshot_id: str) -> Path | None:
        if self._record_cache is None or not _SNAPSHOT_ID.fullmatch(snapshot_id):
            return None
        return self._record_cache / snapshot_id

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.backend.delete(f"snapshots/{snapshot_id}")
        cached = self._cached_record(snapshot_id)
        if cached is not None:
            with contextlib.suppress(OSError):
                cached.unlink()


_SNAPSHOT_ID = re.compile(r"[0-9]{8}T[0-9]{6}\.[0-9]{6}Z-[0-9a-f]{6}")


def new_snapshot_id(now: datetime | None = None) -> str:
    """Sortable by time to the microsecond, unique by its random tail."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S.%fZ") + "-" + secrets.token_hex(3)
