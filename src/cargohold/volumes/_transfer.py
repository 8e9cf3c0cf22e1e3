"""Host ↔ volume and volume ↔ volume moves: ingest, export, clone.

Archives given to ``ingest`` are read twice when they are files on disk: a first pass checks
every member (names, types, links) and hashes the data, so that a hostile archive is refused
before a single byte is written; the second pass extracts. ``--verify`` then reads back what
landed in the volume and compares every file's sha256 with the source's.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cargohold._atomic import atomic_file
from cargohold.archive import (
    CHUNK,
    Entry,
    EntrySource,
    EntryStream,
    FolderReader,
    Opener,
    Progress,
    TarReader,
    TarWriter,
    TreeWriter,
    no_progress,
)
from cargohold.engine import Engine
from cargohold.errors import (
    ChecksumMismatch,
    TransferError,
    UnsafeArchive,
    UsageError,
    VolumeNotFound,
)
from cargohold.volumes._access import VolumeAccess, split_volume_path
from cargohold.volumes._open import open_volume

__all__ = [
    "ARCHIVE_SUFFIXES",
    "TransferResult",
    "clone_volume",
    "export_volume",
    "ingest",
]

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst", ".tar.xz", ".tar.bz2")


@dataclass(frozen=True)
class TransferResult:
    files: int
    bytes: int
    access: str  # local | archive
    verified: bool = False
    created_volume: bool = False


def _compression_of(path: str) -> str | None:
    lower = path.lower()
    if lower.endswith((".tar.zst", ".tzst")):
        return "zst"
    if lower.endswith((".tar.gz", ".tgz")):
        return "gz"
    if lower.endswith((".tar", ".tar.xz", ".tar.bz2")):
        return ""
    return None


def _sha256(opener: Opener) -> str:
    digest = hashlib.sha256()
    with opener() as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _prescan_archive(path: Path) -> dict[str, str]:
    """Check every member before anything is written; return each file's sha256.

    Raises:
        UnsafeArchive: naming the first hostile member.
    """
    hashes: dict[str, str] = {}
    symlinks: set[str] = set()
    regular: set[str] = set()
    with open(path, "rb") as f:
        for entry, data in TarReader(f):
            parents = PurePosixPath(entry.path).parents
            through = next((str(p) for p in parents if str(p) in symlinks), None)
            if through is not None:
                raise UnsafeArchive(
                    f"Refused member {entry.path!r}: it passes through symlink {through!r}.",
                    hint="Only extract archives you trust.",
                )
            if entry.kind == "symlink":
                symlinks.add(entry.path)
            elif entry.kind == "hardlink" and entry.target not in regular:
                raise UnsafeArchive(
                    f"Refused member {entry.path!r}: a hardlink to {entry.target!r}, which is "
                    "not a file extracted before it.",
                    hint="Only extract archives you trust.",
                )
            elif entry.kind == "file" and data is not None:
                regular.add(entry.path)
                hashes[entry.path] = _sha256(data)
    return hashes


@contextlib.contextmanager
def _source_entries(source: str) -> Iterator[tuple[EntrySource, dict[str, str] | None]]:
    """Entries of an ingest source, and the sha256 of each file when already known."""
    if "://" in source and not source.startswith("file://"):
        yield EntryStream(_fsspec_entries(source), random_access=True), None
        return
    path = Path(source.removeprefix("file://")).expanduser()
    if not path.exists():
        raise TransferError(f"{path} does not exist.", hint="Check the source path.")
    if path.is_file() and _compression_of(path.name) is not None:
        hashes = _prescan_archive(path)
        with open(path, "rb") as f:
            yield TarReader(f), hashes
        return
    yield FolderReader(path), None


def _fsspec_entries(url: str) -> Iterator[tuple[Entry, Opener | None]]:
    import time

    from cargohold.snapshots.repository import fsspec_filesystem

    try:
        fs, root = fsspec_filesystem(url)
    except (ImportError, ValueError) as exc:
        raise TransferError(
            f"Cannot read {url}: {exc}.", hint="For s3:// URLs, `pip install s3fs`."
        ) from None
    uid, gid = os.getuid(), os.getgid()
    now = time.time_ns()
    try:
        found = fs.find(root, detail=True)
    except Exception as exc:  # fsspec back ends raise their own types
        raise TransferError(
            f"Cannot list {url}: {exc}.", hint="Check the URL and the credentials."
        ) from None
    if not found:
        raise TransferError(f"Nothing found at {url}.", hint="Check the URL.")
    yield Entry("", "dir", 0o755, uid, gid, now), None
    made: set[str] = set()
    for full, info in sorted(found.items()):
        rel = full[len(root) :].lstrip("/") or full.rsplit("/", 1)[-1]
        rel = "/".join(p for p in rel.split("/") if p not in ("", ".", ".."))
        parts = rel.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            if folder not in made:
                made.add(folder)
                yield Entry(folder, "dir", 0o755, uid, gid, now), None
        yield (
            Entry(rel, "file", 0o644, uid, gid, now, int(info.get("size") or 0)),
            _fsspec_opener(fs, full),
        )


def _fsspec_opener(fs: Any, path: str) -> Opener:
    return lambda: fs.open(path, "rb")


def _volume_for_writing(engine: Engine, name: str) -> tuple[VolumeAccess, bool]:
    try:
        return open_volume(engine, name), False
    except VolumeNotFound:
        engine.create_volume(name, {"cargohold.created-by": "ingest"})
        return open_volume(engine, name), True


def ingest(
    engine: Engine,
    source: str,
    destination: str,
    *,
    verify: bool = False,
    progress: Progress = no_progress,
) -> TransferResult:
    """Copy a host folder, file, archive or fsspec URL into ``VOLUME[:PATH]``.

    Raises:
        UnsafeArchive: a hostile archive (nothing is written).
        TransferError: the source is missing or unreadable.
        ChecksumMismatch: ``verify`` found a difference.
    """
    volume, path = split_volume_path(destination)
    with _source_entries(source) as (entries, known_hashes):
        files, created = _volume_for_writing(engine, volume)
        try:
            written = files.write(entries, path, progress=progress)
        except BaseException:
            if created:
                engine.remove_volume(volume)
            raise
    if verify:
        _verify_ingest(files, source, path, known_hashes)
    return TransferResult(written.files, written.bytes, files.access, verify, created)


def _verify_ingest(
    files: VolumeAccess, source: str, path: str, known: dict[str, str] | None
) -> None:
    if known is None:
        with _source_entries(source) as (entries, _):
            known = {e.path: _sha256(d) for e, d in entries if e.kind == "file" and d}
    landed: dict[str, str] = {}
    with files.entries(path) as entries:
        for entry, data in entries:
            if entry.kind == "file" and data is not None:
                landed[entry.path] = _sha256(data)
    for name, digest in known.items():
        if landed.get(name) != digest:
            raise ChecksumMismatch(
                f"{name}: the copy in volume {files.name} does not match the source"
                + (" (missing)." if name not in landed else "."),
                hint="Run the ingest again; check the disk if it happens twice.",
            )


def export_volume(
    engine: Engine,
    source: str,
    destination: Path,
    *,
    force: bool = False,
    progress: Progress = no_progress,
) -> TransferResult:
    """Copy ``VOLUME[:PATH]`` to a host folder, or to an archive chosen by its extension.

    Raises:
        UsageError: the destination folder has content and ``force`` is not set.
    """
    volume, path = split_volume_path(source)
    files = open_volume(engine, volume)
    compression = _compression_of(destination.name)
    if compression is not None:
        if compression == "" and not destination.name.endswith(".tar"):
            raise UsageError(
                f"{destination.name}: export writes .tar, .tar.gz and .tar.zst.",
                hint="Pick one of those extensions.",
            )
        with atomic_file(destination) as sink, files.entries(path) as entries:
            writer = TarWriter(sink, compression=compression, progress=progress)
            writer.write_all(entries)
        return TransferResult(writer.files, writer.bytes, files.access)
    if destination.exists() and any(destination.iterdir()) and not force:
        raise UsageError(
            f"{destination} is not empty.",
            hint="Export into a new folder, or pass --force to write into it.",
        )
    # A new folder is written under a temporary name and renamed when complete, so that a
    # failed export (a full disk) leaves nothing that looks like a finished one.
    fresh = not destination.exists()
    target = (
        destination.with_name(f".{destination.name}.partial-{secrets.token_hex(4)}")
        if fresh
        else destination
    )
    writer_tree = TreeWriter(target, progress=progress)
    try:
        with files.entries(path) as entries:
            writer_tree.write_all(entries)
        if fresh:
            os.rename(target, destination)
    except BaseException:
        if fresh:
            shutil.rmtree(target, ignore_errors=True)
        raise
    return TransferResult(writer_tree.files, writer_tree.bytes, files.access)


def clone_volume(
    engine: Engine, source: str, destination: str, *, progress: Progress = no_progress
) -> TransferResult:
    """Copy every file of one volume into a new (or empty) volume, labels included.

    Raises:
        UsageError: the destination has data.
    """
    src = open_volume(engine, source)
    try:
        dst = open_volume(engine, destination)
        created = False
        if not dst.is_empty():
            raise UsageError(
                f"Volume {destination} is not empty.", hint="Clone into a new volume name."
            )
    except VolumeNotFound:
        labels = {**src.info.labels, "cargohold.cloned-from": source}
        engine.create_volume(destination, labels)
        dst, created = open_volume(engine, destination), True
    try:
        with src.entries() as entries:
            written = dst.write(entries, progress=progress)
    except BaseException:
        if created:
            engine.remove_volume(destination)
        raise
    return TransferResult(
        written.files, written.bytes, f"{src.access}→{dst.access}", created_volume=created
    )
