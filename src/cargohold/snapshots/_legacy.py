"""Format-1 repositories, read only: they keep restoring after the move to format 2.

    <repo>/cargohold-repository.json    marks the folder as a format-1 repository
    <repo>/objects/ab/abcdef…           one zstd-compressed object per file content (sha256)
    <repo>/snapshots/<id>.json          one JSON manifest per snapshot, the whole tree inside

Nothing is written here any more: new snapshots need a format-2 repository (``repo init``), and
``cargohold repo migrate`` copies every format-1 snapshot into one. Manifests are validated on
read (a manifest without ``entries``, or with a bad entry, is a clear error, never a KeyError),
and restore writes through ``TreeWriter`` exactly as format 2 does.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import zstandard
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cargohold.archive import CHUNK, Entry, EntryStream, Opener, Progress, clean_member_name
from cargohold.errors import ChecksumMismatch, UsageError, VolumeNotFound
from cargohold.snapshots._backend import RepositoryError, fsspec_filesystem
from cargohold.snapshots._format import SnapshotRecord, damaged
from cargohold.volumes import open_volume

if TYPE_CHECKING:
    from cargohold.engine import Engine
    from cargohold.snapshots.restore import RestoreResult

__all__ = ["LegacyRepository", "open_legacy"]

MARKER = "cargohold-repository.json"


class _Entry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    path: str
    kind: Literal["dir", "file", "symlink", "hardlink"]
    mode: int = Field(ge=0, le=0o7777)
    uid: int = Field(ge=0)
    gid: int = Field(ge=0)
    mtime_ns: int
    size: int = Field(default=0, ge=0)
    hash: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    target: str = ""


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    format: Literal["cargohold-snapshot"]
    version: Literal[1]
    id: str
    volume: str
    created: str
    tag: str | None = None
    labels: dict[str, str] | None = None
    files: int = Field(ge=0)
    bytes: int = Field(ge=0)
    new_objects: int = 0
    new_bytes_stored: int = 0
    data_version: int = 0
    entries: list[_Entry]


class LegacyRepository:
    """A format-1 repository in a folder or behind an fsspec URL."""

    legacy = True

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        if "://" in url and not url.startswith("file://"):
            self.fs, self.root = fsspec_filesystem(self.url)
        else:
            import fsspec

            self.fs = fsspec.filesystem("file")
            self.root = str(Path(url.removeprefix("file://")).expanduser())

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise RepositoryError(
                f"Reading {self.url} failed: {exc}.", hint="Check the URL and credentials."
            ) from None

    def snapshot_ids(self) -> list[str]:
        try:
            paths = self._call(self.fs.glob, f"{self.root}/snapshots/*.json")
        except FileNotFoundError:
            return []
        return sorted(str(p).rsplit("/", 1)[-1][: -len(".json")] for p in paths)

    def manifest(self, snapshot_id: str) -> _Manifest:
        what = f"snapshot manifest {snapshot_id}"
        try:
            raw = self._call(self.fs.cat_file, f"{self.root}/snapshots/{snapshot_id}.json")
        except FileNotFoundError:
            raise RepositoryError(
                f"No snapshot {snapshot_id} in {self.url}.",
                hint="`cargohold snapshots` lists them.",
            ) from None
        try:
            return _Manifest.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise damaged(
                what, f"{first['msg']} at {'.'.join(str(p) for p in first['loc'])}"
            ) from None

    def load_snapshot(self, snapshot_id: str) -> SnapshotRecord:
        m = self.manifest(snapshot_id)
        return SnapshotRecord.model_construct(
            id=m.id,
            source=m.volume,
            kind="volume",
            created=m.created,
            tag=m.tag,
            labels=m.labels or {},
            files=m.files,
            bytes=m.bytes,
            new_blobs=m.new_objects,
            new_bytes_stored=m.new_bytes_stored,
            data_version=m.data_version,
            root=None,
            changed=[],
            hostname="",
        )

    def open_object(self, digest: str) -> IO[bytes]:
        try:
            return self._call(  # type: ignore[no-any-return]
                self.fs.open, f"{self.root}/objects/{digest[:2]}/{digest}", "rb"
            )
        except FileNotFoundError:
            raise RepositoryError(
                f"Object {digest[:12]}… is missing from {self.url}.",
                hint="The repository is damaged; restore from another one.",
            ) from None

    def entries(self, manifest: _Manifest) -> Iterator[tuple[Entry, Opener | None]]:
        for item in manifest.entries:
            try:
                path = clean_member_name(item.path, what="manifest path") if item.path else ""
                target = item.target
                if item.kind == "hardlink":
                    target = clean_member_name(target, what="hardlink target")
            except Exception as exc:
                raise damaged(f"snapshot manifest {manifest.id}", str(exc)) from None
            if item.kind == "file" and item.hash is None:
                raise damaged(f"snapshot manifest {manifest.id}", f"{path!r} has no hash")
            entry = Entry(
                path, item.kind, item.mode, item.uid, item.gid, item.mtime_ns, item.size, target
            )
            if item.kind == "file" and item.hash is not None:
                digest = item.hash
                yield (
                    entry,
                    (
                        lambda d=digest, p=path: _VerifiedObject(self.open_object(d), d, p)  # type: ignore[misc]
                    ),
                )
            else:
                yield entry, None


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


def open_legacy(url: str) -> LegacyRepository:
    return LegacyRepository(url)


def restore_legacy(
    engine: Engine,
    repo: Any,
    ref: str,
    volume: str,
    *,
    force: bool,
    progress: Progress,
) -> RestoreResult:
    """Restore a format-1 snapshot into a volume (new or empty, or ``force``)."""
    from cargohold.snapshots.restore import RestoreResult
    from cargohold.snapshots.snapshot import resolve_snapshot

    assert isinstance(repo, LegacyRepository)
    manifest = repo.manifest(resolve_snapshot(repo, ref).id)  # type: ignore[arg-type]
    # Every object must exist before the volume is touched.
    for item in manifest.entries:
        if item.kind == "file" and item.hash:
            with repo.open_object(item.hash):
                pass
    created = False
    try:
        files = open_volume(engine, volume)
    except VolumeNotFound:
        engine.create_volume(volume, {"cargohold.restored-from": manifest.id})
        created = True
        files = open_volume(engine, volume)
    if not created and not files.is_empty():
        if not force:
            raise UsageError(
                f"Volume {volume} is not empty; restoring would mix two states.",
                hint="Restore into a new volume, or pass --force to replace its content.",
            )
        files.clear()
        files = open_volume(engine, volume)
    try:
        written = files.write(
            EntryStream(repo.entries(manifest), random_access=True), progress=progress
        )
        files.sync()
    except BaseException:
        if created:
            with contextlib.suppress(Exception):
                engine.remove_volume(volume)
        raise
    return RestoreResult(
        manifest.id, manifest.volume, volume, written.files, written.bytes, files.access
    )


def legacy_manifest_json(repo: LegacyRepository, snapshot_id: str) -> dict[str, Any]:
    return dict(json.loads(repo.manifest(snapshot_id).model_dump_json()))
