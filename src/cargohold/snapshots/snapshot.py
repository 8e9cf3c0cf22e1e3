"""Incremental, content-addressed snapshots of volumes, and their restore.

A snapshot walks the volume once. Each regular file's bytes are hashed (sha256) and compressed
(zstd) in one pass, in parallel across files, into the repository -- unless the metadata cache
says the file is unchanged since the last snapshot (same size, mtime, inode and ctime) and its
object is already stored: then it is not even read. The manifest records the whole tree (names,
types, modes, owners, mtimes, symlinks, hardlinks) and is written last.

A restore streams the tree back, decompressing each object and checking its sha256 on the way;
a mismatch stops the restore and leaves nothing half-restored in the volume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import zstandard

from cargohold.archive import CHUNK, Entry, EntryStream, Opener, Progress, data_stamp
from cargohold.engine import Engine
from cargohold.errors import ChecksumMismatch, UsageError, VolumeNotFound
from cargohold.snapshots.repository import Repository, RepositoryError
from cargohold.volumes import VolumeAccess, open_volume

__all__ = [
    "SnapshotInfo",
    "list_snapshots",
    "resolve_snapshot",
    "restore_snapshot",
    "snapshot_volume",
]

log = logging.getLogger(__name__)

FORMAT = "cargohold-snapshot"
_WORKERS = max(2, min(4, os.cpu_count() or 2))


def _no_progress(_: int) -> None:
    pass


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    volume: str
    created: str
    tag: str | None
    files: int
    bytes: int
    new_objects: int
    new_bytes_stored: int
    data_version: int
    repo: str
    seconds: float = 0.0

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], repo: str) -> SnapshotInfo:
        return cls(
            id=manifest["id"],
            volume=manifest["volume"],
            created=manifest["created"],
            tag=manifest.get("tag"),
            files=manifest["files"],
            bytes=manifest["bytes"],
            new_objects=manifest.get("new_objects", 0),
            new_bytes_stored=manifest.get("new_bytes_stored", 0),
            data_version=manifest.get("data_version", 0),
            repo=repo,
        )


# -- the metadata cache --------------------------------------------------------------------


def _cache_path(volume: str, repo: Repository) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    key = hashlib.sha256(f"{volume}\0{repo.url}".encode()).hexdigest()[:24]
    return Path(base) / "cargohold" / "snapshot-cache" / f"{key}.json"


def _load_cache(path: Path) -> dict[str, list[Any]]:
    try:
        return dict(json.loads(path.read_bytes()))
    except (OSError, ValueError):
        return {}


def _save_cache(path: Path, cache: dict[str, list[Any]]) -> None:
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(json.dumps(cache, separators=(",", ":")).encode())
        os.replace(tmp, path)


# -- snapshot ------------------------------------------------------------------------------


class _ObjectStore:
    """Hashes and compresses file contents into a repository, each object once."""

    def __init__(self, repo: Repository, existing: set[str], progress: Progress) -> None:
        self._repo = repo
        self._known = set(existing)
        self._lock = threading.Lock()
        self._progress = progress
        self.new_objects = 0
        self.new_bytes_stored = 0

    def store(self, opener: Opener) -> str:
        digest = hashlib.sha256()
        sink, staged = self._repo.staging_file()
        try:
            with sink, opener() as source:
                compressor = zstandard.ZstdCompressor(level=1).stream_writer(sink, closefd=False)
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    compressor.write(chunk)
                    self._progress(len(chunk))
                compressor.flush(zstandard.FLUSH_FRAME)
                stored = sink.tell()
        except BaseException:
            self._repo.discard(staged)
            raise
        name = digest.hexdigest()
        with self._lock:
            duplicate = name in self._known
            self._known.add(name)
        if duplicate:
            self._repo.discard(staged)
        else:
            self._repo.stage_object(staged, name)
            with self._lock:
                self.new_objects += 1
                self.new_bytes_stored += stored
        return name

    def has(self, digest: str) -> bool:
        return digest in self._known


def _entry_json(entry: Entry, digest: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "path": entry.path,
        "kind": entry.kind,
        "mode": entry.mode,
        "uid": entry.uid,
        "gid": entry.gid,
        "mtime_ns": entry.mtime_ns,
    }
    if entry.kind == "file":
        data["size"] = entry.size
        data["hash"] = digest
    elif entry.target:
        data["target"] = entry.target
    return data


def new_snapshot_id(now: datetime) -> str:
    """Sortable by time to the microsecond, unique by its random tail."""
    return now.strftime("%Y%m%dT%H%M%S.%fZ") + "-" + secrets.token_hex(3)


def snapshot_volume(
    engine: Engine,
    volume: str,
    repo: Repository,
    *,
    tag: str | None = None,
    progress: Progress = _no_progress,
) -> SnapshotInfo:
    """Snapshot a volume into a repository.

    Raises:
        VolumeNotFound: no such volume.
        RepositoryError: the repository cannot be written.
    """
    began = time.monotonic()
    files = open_volume(engine, volume)
    cache_file = _cache_path(volume, repo)
    cache = _load_cache(cache_file) if files.keeps_stats else {}
    store = _ObjectStore(repo, repo.existing_objects(), progress)
    records: list[dict[str, Any] | Future[dict[str, Any]]] = []
    new_cache: dict[str, list[Any]] = {}
    total_files = total_bytes = data_version = 0
    try:
        with (
            ThreadPoolExecutor(_WORKERS, thread_name_prefix="cargohold-snap") as pool,
            files.entries() as entries,
        ):
            for entry, opener, st in entries.walk():
                data_version = max(data_version, data_stamp(entry, st))
                if entry.kind != "file" or opener is None:
                    records.append(_entry_json(entry))
                    continue
                total_files += 1
                total_bytes += entry.size
                if st is not None and entries.random_access:
                    key = [entry.size, entry.mtime_ns, st.st_ino, st.st_ctime_ns]
                    cached = cache.get(entry.path)
                    if cached and cached[:4] == key and store.has(cached[4]):
                        records.append(_entry_json(entry, cached[4]))
                        new_cache[entry.path] = cached
                        progress(entry.size)
                        continue
                    records.append(pool.submit(_hashed, store, entry, opener, key, new_cache))
                else:
                    # An archive stream must be read in order: hash it here, now.
                    records.append(_entry_json(entry, store.store(opener)))
        resolved = [r.result() if isinstance(r, Future) else r for r in records]
        repo.commit()
    except OSError as exc:
        repo.abort()
        raise RepositoryError(
            f"Snapshot of {volume} failed: {exc.strerror or exc}. Nothing was published.",
            hint="Check free space and permissions where the repository lives.",
        ) from None
    except BaseException:
        repo.abort()
        raise
    now = datetime.now(UTC)
    snapshot_id = new_snapshot_id(now)
    manifest = {
        "format": FORMAT,
        "version": 1,
        "id": snapshot_id,
        "volume": volume,
        "created": now.isoformat(timespec="microseconds"),
        "tag": tag,
        "labels": files.info.labels,
        "files": total_files,
        "bytes": total_bytes,
        "new_objects": store.new_objects,
        "new_bytes_stored": store.new_bytes_stored,
        "data_version": data_version,
        "entries": resolved,
    }
    repo.write_manifest(snapshot_id, json.dumps(manifest, separators=(",", ":")).encode())
    if files.keeps_stats:
        _save_cache(cache_file, new_cache)
    info = SnapshotInfo.from_manifest(manifest, repo.url)
    return dataclasses.replace(info, seconds=time.monotonic() - began)


def _hashed(
    store: _ObjectStore, entry: Entry, opener: Opener, key: list[Any], cache: dict[str, list[Any]]
) -> dict[str, Any]:
    digest = store.store(opener)
    cache[entry.path] = [*key, digest]
    return _entry_json(entry, digest)


# -- listing -------------------------------------------------------------------------------


def list_snapshots(repo: Repository, volume: str | None = None) -> list[SnapshotInfo]:
    """Every snapshot in the repository (of one volume), oldest first."""
    found = []
    for snapshot_id in repo.manifest_ids():
        try:
            manifest = repo.read_manifest(snapshot_id)
        except RepositoryError as exc:
            log.warning("skipping %s: %s", snapshot_id, exc)
            continue
        if volume is None or manifest.get("volume") == volume:
            found.append(SnapshotInfo.from_manifest(manifest, repo.url))
    return sorted(found, key=lambda s: (s.created, s.id))


def resolve_snapshot(repo: Repository, ref: str) -> dict[str, Any]:
    """A snapshot's manifest by id, unique id prefix, tag, or ``VOLUME@latest``.

    Raises:
        RepositoryError: nothing or several match.
    """
    ids = repo.manifest_ids()
    if ref in ids:
        return repo.read_manifest(ref)
    if ref.endswith("@latest"):
        snaps = list_snapshots(repo, ref.removesuffix("@latest"))
        if snaps:
            return repo.read_manifest(snaps[-1].id)
    matches = [i for i in ids if i.startswith(ref)]
    if not matches:
        matches = [s.id for s in list_snapshots(repo) if s.tag == ref]
    if len(matches) == 1:
        return repo.read_manifest(matches[0])
    if not matches:
        raise RepositoryError(
            f"No snapshot {ref!r} in {repo.url}.",
            hint="`cargohold snapshots` lists ids and tags; VOLUME@latest names a volume's newest.",
        )
    raise RepositoryError(f"{ref!r} matches {len(matches)} snapshots.", hint="Give more of the id.")


# -- restore -------------------------------------------------------------------------------


class _VerifiedObject(io.RawIOBase):
    """An object's bytes, decompressed, whose sha256 is checked when the end is reached."""

    def __init__(self, raw: IO[bytes], expected: str, path: str) -> None:
        super().__init__()
        self._raw = raw
        self._reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK)
        self._digest = hashlib.sha256()
        self._expected = expected
        self._path = path

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._reader.read(CHUNK if size is None or size < 0 else size)
        except zstandard.ZstdError as exc:
            raise ChecksumMismatch(
                f"{self._path}: its stored object is corrupt ({exc}).",
                hint="The repository is damaged; restore another snapshot.",
            ) from None
        if data:
            self._digest.update(data)
        elif self._digest.hexdigest() != self._expected:
            raise ChecksumMismatch(
                f"{self._path}: restored bytes do not match the snapshot's checksum.",
                hint="The repository is damaged; restore another snapshot.",
            )
        return data

    def close(self) -> None:
        self._reader.close()  # type: ignore[no-untyped-call]
        self._raw.close()
        super().close()


def manifest_entries(
    repo: Repository, manifest: dict[str, Any]
) -> Iterator[tuple[Entry, Opener | None]]:
    for item in manifest["entries"]:
        entry = Entry(
            path=item["path"],
            kind=item["kind"],
            mode=item["mode"],
            uid=item["uid"],
            gid=item["gid"],
            mtime_ns=item["mtime_ns"],
            size=item.get("size", 0),
            target=item.get("target", ""),
        )
        if entry.kind == "file":
            digest, path = item["hash"], item["path"]
            yield entry, (lambda d=digest, p=path: _VerifiedObject(repo.open_object(d), d, p))  # type: ignore[misc]
        else:
            yield entry, None


def restore_snapshot(
    engine: Engine,
    repo: Repository,
    ref: str,
    volume: str,
    *,
    force: bool = False,
    progress: Progress = _no_progress,
) -> tuple[dict[str, Any], VolumeAccess]:
    """Restore a snapshot into a new or empty volume (``force``: replace a volume's content).

    Raises:
        UsageError: the volume has data and ``force`` is not set.
        ChecksumMismatch: an object is corrupt (the volume is left empty, or removed if it was
            created here).
    """
    manifest = resolve_snapshot(repo, ref)
    created = False
    try:
        files = open_volume(engine, volume)
    except VolumeNotFound:
        labels = {k: v for k, v in (manifest.get("labels") or {}).items()}
        labels["cargohold.restored-from"] = manifest["id"]
        engine.create_volume(volume, labels)
        created = True
        files = open_volume(engine, volume)
    if not created and not files.is_empty():
        if not force:
            raise UsageError(
                f"Volume {volume} is not empty; restoring would mix two states.",
                hint=f"Restore into a new volume, or pass --force to replace its content "
                f"(snapshot it first: `cargohold snapshot {volume}`).",
            )
        files.clear()
        files = open_volume(engine, volume)
    try:
        entries = EntryStream(manifest_entries(repo, manifest), random_access=True)
        files.write(entries, progress=progress)
        files.sync()
    except BaseException:
        if created:
            engine.remove_volume(volume)
        else:
            files.clear()
        raise
    return manifest, files
