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
from collections.abc import Callable, Iterator
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
    Foreign,
    Opener,
    Progress,
    TarReader,
    TarWriter,
    no_progress,
    syncfs,
)
from cargohold.archive.confined import ConfinedDir, ConfinedReader, ConfinedWriter
from cargohold.archive.staging import is_internal, recover, staged
from cargohold.engine import Engine
from cargohold.errors import (
    ChecksumMismatch,
    TransferError,
    UnsafeArchive,
    UsageError,
    VolumeNotFound,
)
from cargohold.volumes._access import Recovery, VolumeAccess, split_volume_path
from cargohold.volumes._journal import Journal
from cargohold.volumes._local import WRITERS
from cargohold.volumes._open import open_volume

__all__ = [
    "ARCHIVE_SUFFIXES",
    "TransferResult",
    "clone_volume",
    "export_folder",
    "export_volume",
    "ingest",
    "ingest_folder",
]

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst", ".tar.xz", ".tar.bz2")


@dataclass(frozen=True)
class TransferResult:
    """What a transfer did."""

    files: int
    bytes: int
    access: str  # local | archive
    verified: bool = False
    created_volume: bool = False
    recovered: Recovery | None = None  # an interrupted earlier run, finished or undone first


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


def _prescan_archive(path: Path, *, hash_files: bool) -> dict[str, str] | None:
    """Check every member before anything is written; with ``hash_files``, return each file's
    sha256 (for ``--verify``; without it nothing per file is kept but the names hardlinks may
    point to).

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
                if hash_files:
                    hashes[entry.path] = _sha256(data)
    return hashes if hash_files else None


@contextlib.contextmanager
def _source_entries(
    source: str, *, hash_files: bool = False
) -> Iterator[tuple[EntrySource, dict[str, str] | None]]:
    """Entries of an ingest source, and the sha256 of each file when already known."""
    if "://" in source and not source.startswith("file://"):
        yield Foreign(EntryStream(_fsspec_entries(source), random_access=True)), None
        return
    path = Path(source.removeprefix("file://")).expanduser()
    if not path.exists():
        raise TransferError(f"{path} does not exist.", hint="Check the source path.")
    if path.is_file() and _compression_of(path.name) is not None:
        hashes = _prescan_archive(path, hash_files=hash_files)
        with open(path, "rb") as f:
            yield Foreign(TarReader(f)), hashes
        return
    yield FolderReader(path), None


def _fsspec_entries(url: str) -> Iterator[tuple[Entry, Opener | None]]:
    import time

    from cargohold.volumes._remote import fsspec_filesystem

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


def _volume_for_writing(
    engine: Engine, name: str, journal: Journal, operation: str, labels: dict[str, str]
) -> tuple[VolumeAccess, bool, Recovery | None]:
    """The volume to write into (created, with ``labels``, when missing) and what was done
    about an interrupted earlier run into it."""
    try:
        files = open_volume(engine, name)
    except VolumeNotFound:
        journal.begin(name, operation)
        engine.create_volume(name, labels)
        return open_volume(engine, name), True, None
    unfinished = journal.unfinished(name)
    if unfinished is not None and unfinished != operation:
        raise TransferError(
            f"Volume {name} holds a partial copy left by an interrupted `cargohold {unfinished}`.",
            hint=f"Run that command again to finish it, or remove the volume "
            f"(`cargohold volume rm {name} --force`).",
        )
    if unfinished is not None:
        # A run of ours created this volume and was killed before it finished: what is in it
        # is partial, and no one else's. Start it over.
        files.clear()
        files = open_volume(engine, name)
        return files, False, Recovery(unfinished, "discarded")
    return files, False, files.recover()


def _failed(exc: OSError, what: str, changed: str) -> TransferError:
    return TransferError(
        f"{what} failed: {exc.strerror or exc}. {changed}",
        hint="Free space (or fix permissions) and run the same command again.",
    )


def ingest(
    engine: Engine,
    source: str,
    destination: str,
    *,
    verify: bool = False,
    progress: Progress = no_progress,
) -> TransferResult:
    """Copy a host folder, file, archive or fsspec URL into ``VOLUME[:PATH]``.

    Archives and fsspec sources are foreign: their files lose setuid/setgid bits and belong
    to the user running cargohold. A host folder keeps its modes and owners.

    Raises:
        UnsafeArchive: a hostile archive (nothing is written).
        TransferError: the source is missing or unreadable, or the write failed (the message
            says what changed).
        ChecksumMismatch: ``verify`` found a difference.
    """
    volume, path = split_volume_path(destination)
    operation = f"ingest {source}"
    journal = Journal()
    with _source_entries(source, hash_files=verify) as (entries, known_hashes):
        files, created, recovered = _volume_for_writing(
            engine, volume, journal, operation, {"cargohold.created-by": "ingest"}
        )
        try:
            written = files.write(entries, path, progress=progress, operation=operation)
        except OSError as exc:
            if created:
                engine.remove_volume(volume)
                journal.end(volume)
            raise _failed(
                exc, f"Ingest into {destination}", _what_changed(files, created)
            ) from None
        except BaseException:
            if created:
                engine.remove_volume(volume)
                journal.end(volume)
            raise
    journal.end(volume)
    if verify:
        _verify_ingest(files, source, path, known_hashes)
    return TransferResult(
        written.files, written.bytes, files.access, verify, created, recovered=recovered
    )


def _what_changed(files: VolumeAccess, created: bool) -> str:
    if created:
        return "The new volume was removed again."
    return f"Nothing in volume {files.name} changed."


def _verify_ingest(
    files: VolumeAccess, source: str, path: str, known: dict[str, str] | None
) -> None:
    _verify_copy(lambda: files.entries(path), source, f"volume {files.name}", known)


def _verify_copy(
    open_landed: Callable[[], contextlib.AbstractContextManager[EntrySource]],
    source: str,
    where: str,
    known: dict[str, str] | None,
) -> None:
    if known is None:
        with _source_entries(source) as (entries, _):
            known = {e.path: _sha256(d) for e, d in entries if e.kind == "file" and d}
    landed: dict[str, str] = {}
    with open_landed() as entries:
        for entry, data in entries:
            if entry.kind == "file" and data is not None:
                landed[entry.path] = _sha256(data)
    for name, digest in known.items():
        if landed.get(name) != digest:
            raise ChecksumMismatch(
                f"{name}: the copy in {where} does not match the source"
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

    A new folder is written under a hidden name beside it and renamed when complete; into an
    existing folder (``force``) the copy is staged inside it and swapped in. Either way a
    failure leaves the destination as it was.

    Raises:
        UsageError: the destination folder has content and ``force`` is not set.
        TransferError: the copy failed (the destination is unchanged).
    """
    volume, path = split_volume_path(source)
    files = open_volume(engine, volume)
    return _write_host(
        lambda: files.entries(path),
        source,
        destination,
        files.access,
        force=force,
        progress=progress,
    )


def export_folder(
    source: Path, destination: Path, *, force: bool = False, progress: Progress = no_progress
) -> TransferResult:
    """``export`` of a host folder (no Docker: an initContainer, a sidecar, a Slurm job):
    the same destinations and guarantees as ``export_volume``.

    Raises:
        TransferError: the source is not a folder, or the copy failed (destination unchanged).
        UsageError: the destination folder has content and ``force`` is not set.
    """
    if not source.expanduser().is_dir():
        raise TransferError(
            f"{source} is not a folder.",
            hint="Export a folder (a path), or a volume (VOLUME or VOLUME:PATH).",
        )
    _refuse_copy_into_itself(str(source), destination)

    @contextlib.contextmanager
    def entries() -> Iterator[EntrySource]:
        with _source_entries(str(source)) as (found, _):
            yield found

    return _write_host(entries, str(source), destination, "folder", force=force, progress=progress)


def ingest_folder(
    source: str, destination: Path, *, verify: bool = False, progress: Progress = no_progress
) -> TransferResult:
    """``ingest`` into a host folder (no Docker): a folder, file, archive or fsspec URL is
    merged into ``destination`` (made when missing), staged and swapped in like a volume
    write, so a failure or a kill leaves the folder as it was (or a marker the next run
    finishes). Archives are checked whole before anything is written.

    Raises:
        UnsafeArchive: a hostile archive (nothing is written).
        TransferError: the source is missing or unreadable, or the write failed.
        ChecksumMismatch: ``verify`` found a difference.
    """
    destination = destination.expanduser()
    if os.path.lexists(destination) and not destination.is_dir():
        raise UsageError(
            f"{destination} exists and is not a folder.",
            hint="Ingest into a folder (made when missing) or a volume.",
        )
    _refuse_copy_into_itself(source, destination)
    with _source_entries(source, hash_files=verify) as (entries, known_hashes):

        @contextlib.contextmanager
        def given() -> Iterator[EntrySource]:
            yield entries

        result = _write_host(
            given, source, destination, "folder", force=True, progress=progress, archive=False
        )
    if verify:

        @contextlib.contextmanager
        def landed() -> Iterator[EntrySource]:
            with ConfinedDir.open(destination, follow=True) as root:
                yield ConfinedReader(root, "")

        _verify_copy(landed, source, str(destination), known_hashes)
    return TransferResult(result.files, result.bytes, "folder", verify, recovered=result.recovered)


def _refuse_copy_into_itself(source: str, destination: Path) -> None:
    """A folder copied into itself would read its own copy as it grows (cp -a refuses too).

    Raises:
        UsageError: ``destination`` is ``source`` or lies inside it.
    """
    if "://" in source and not source.startswith("file://"):
        return
    folder = Path(source.removeprefix("file://")).expanduser()
    if not folder.is_dir():
        return
    inner, outer = destination.expanduser().resolve(), folder.resolve()
    if inner == outer or inner.is_relative_to(outer):
        raise UsageError(
            f"{destination} is inside {source}: the copy would read itself as it grows.",
            hint="Copy into a folder outside the source.",
        )


def _write_host(
    open_entries: Callable[[], contextlib.AbstractContextManager[EntrySource]],
    source: str,
    destination: Path,
    access: str,
    *,
    force: bool,
    progress: Progress,
    archive: bool = True,
) -> TransferResult:
    """Entries to a host folder or (``archive``, chosen by the extension) a tar file."""
    compression = _compression_of(destination.name) if archive else None
    if compression is not None:
        if compression == "" and not destination.name.endswith(".tar"):
            raise UsageError(
                f"{destination.name}: export writes .tar, .tar.gz and .tar.zst.",
                hint="Pick one of those extensions.",
            )
        try:
            with atomic_file(destination) as sink, open_entries() as entries:
                tar = TarWriter(sink, compression=compression, progress=progress)
                tar.write_all(entries)
        except OSError as exc:
            raise _failed(exc, f"Export to {destination}", "No archive was written.") from None
        return TransferResult(tar.files, tar.bytes, access)
    what = "Export to" if archive else "Ingest into"
    if destination.is_dir():
        return _export_into(
            open_entries, source, destination, access, what, force=force, progress=progress
        )
    if os.path.lexists(destination):
        raise UsageError(
            f"{destination} exists and is not a folder.",
            hint="Export into a new folder, or name an archive (.tar, .tar.gz, .tar.zst).",
        )
    _remove_stale_partials(destination)
    partial = destination.with_name(f".{destination.name}.partial-{secrets.token_hex(4)}")
    try:
        writer = _export_to(
            open_entries, ConfinedDir.open(partial, create=True), progress, not archive
        )
        os.rename(partial, destination)
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _failed(exc, f"{what} {destination}", "Nothing was written.") from None
        raise
    return TransferResult(writer.files, writer.bytes, access)


def _export_to(
    open_entries: Callable[[], contextlib.AbstractContextManager[EntrySource]],
    target: ConfinedDir,
    progress: Progress,
    durable: bool = False,
) -> ConfinedWriter:
    with target, open_entries() as entries:
        writer = ConfinedWriter(
            target,
            progress=progress,
            workers=WRITERS if entries.random_access else 1,
            durable=durable,
        )
        writer.write_all(entries)
        if durable:  # an ingest, like one into a volume; an export is a copy out, as cp's
            syncfs(target.fd)
    return writer


def _export_into(
    open_entries: Callable[[], contextlib.AbstractContextManager[EntrySource]],
    source: str,
    destination: Path,
    access: str,
    what: str,
    *,
    force: bool,
    progress: Progress,
) -> TransferResult:
    operation = f"{what.split()[0].lower()} {source}"
    with ConfinedDir.open(destination, follow=True) as root:
        found = recover(root)
        recovered = None if found is None else Recovery(found[0].operation, found[1])
        if not force and any(not is_internal(n) for n in root.names()):
            raise UsageError(
                f"{destination} is not empty.",
                hint="Export into a new folder, or pass --force to write into it.",
            )
        try:
            with staged(root, operation, "merge") as stage:
                writer = _export_to(open_entries, stage.dir, progress, what == "Ingest into")
                stage.keep_attrs.update(writer.implicit)
        except OSError as exc:
            raise _failed(exc, f"{what} {destination}", f"{destination} is unchanged.") from None
    return TransferResult(writer.files, writer.bytes, access, recovered=recovered)


def _remove_stale_partials(destination: Path) -> None:
    """Hidden partial copies a killed export of the same destination left beside it."""
    prefix = f".{destination.name}.partial-"
    parent = destination.parent if str(destination.parent) else Path(".")
    if not parent.is_dir():
        return
    with ConfinedDir.open(parent, follow=True) as folder:
        for name in folder.names():
            if name.startswith(prefix):
                folder.remove(name)


def clone_volume(
    engine: Engine, source: str, destination: str, *, progress: Progress = no_progress
) -> TransferResult:
    """Copy every file of one volume into a new (or empty) volume, labels included.

    The copy is staged inside the destination and swapped in when complete (direct path); a
    destination this command created is journalled, so that a rerun after a kill starts it
    over (either path).

    Raises:
        UsageError: the destination has data.
    """
    src = open_volume(engine, source)
    operation = f"clone {source}"
    journal = Journal()
    labels = {**src.info.labels, "cargohold.cloned-from": source}
    dst, created, recovered = _volume_for_writing(engine, destination, journal, operation, labels)
    if recovered == Recovery(operation, "completed"):
        return TransferResult(0, 0, f"{src.access}→{dst.access}", recovered=recovered)
    if not created and not dst.is_empty():
        raise UsageError(
            f"Volume {destination} is not empty.", hint="Clone into a new volume name."
        )
    try:
        with src.entries() as entries:
            written = dst.write(entries, progress=progress, operation=operation, replace=True)
    except BaseException as exc:
        if created:
            engine.remove_volume(destination)
            journal.end(destination)
        if isinstance(exc, OSError):
            raise _failed(exc, f"Clone into {destination}", _what_changed(dst, created)) from None
        raise
    journal.end(destination)
    return TransferResult(
        written.files,
        written.bytes,
        f"{src.access}→{dst.access}",
        created_volume=created,
        recovered=recovered,
    )
