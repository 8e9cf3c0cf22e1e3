"""The Engine-API path: a created, never started helper container mounts the volume and the
engine's archive endpoints stream tar in and out. The engine itself resolves every path inside
the container's root, so nothing on this host follows a link a container planted.

The archive endpoints extract as they receive and can neither rename nor delete, yet a write
into a volume that holds data must change it whole or not at all (issue 8, defects 7 and 14).
Three things they *can* do make that possible: extract a hardlink, replace a name (a folder
included, with everything in it) by an entry of another type, and -- on the volume itself --
remove and create it. So a write into a volume with data is staged:

* **merge** (ingest): the files go into ``.cargohold-staging-api`` inside the volume; a full
  disk or a kill there leaves every visible name as it was. Then one metadata-only archive
  hard-links each file into place and makes folders and links (``committing``), and the
  staging folder is replaced by an empty file (the only trace: cargohold's own listings skip it;
  a direct-path write removes it).
* **replace** (``restore --force``, clone): the new content goes into a staging *volume*; only
  when it is whole is the target emptied (removed and created again, labels kept) and the
  content copied over, then the staging volume removed.
* a write into an **empty** volume needs no staging: starting over undoes it.

Each write keeps a record on this host (``_journal.WriteRecord``) naming its kind, phase and
staging place; ``recover`` -- which every writing command calls first -- discards a write
killed while ``writing`` and finishes one killed while ``committing``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any, NoReturn

from cargohold.archive import (
    CHUNK,
    Entry,
    EntrySource,
    Opener,
    Progress,
    TarReader,
    TarWriter,
    no_progress,
)
from cargohold.archive.staging import STAGING, Visible
from cargohold.engine import HELPER_MOUNT, ArchiveHelper, Engine, VolumeInfo
from cargohold.errors import (
    CargoholdError,
    PathNotFound,
    TransferError,
    UnsafeArchive,
    UsageError,
    VolumeNotFound,
)
from cargohold.volumes._access import Recovery, Written
from cargohold.volumes._journal import Journal, WriteRecord, new_write

__all__ = ["EngineApiVolume"]


class EngineApiVolume:
    """A volume reached through the engine's archive endpoints."""

    keeps_stats = False
    stages_writes = True
    access = "archive"

    def __init__(self, engine: Engine, info: VolumeInfo, journal: Journal | None = None) -> None:
        self.engine = engine
        self.info = info
        self.journal = journal or Journal()

    @property
    def name(self) -> str:
        return self.info.name

    @contextlib.contextmanager
    def entries(
        self, path: str = "", *, on_vanished: Callable[[str], None] | None = None
    ) -> Iterator[EntrySource]:
        with self.engine.archive_helper(self.name, readonly=True) as helper:
            reader = TarReader(helper.get_archive(path), strip=1)
            yield reader if path else Visible(reader)

    def open_file(self, path: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        if not path:
            raise UsageError("Name a file inside the volume.", hint="VOLUME PATH")
        return _ArchiveFile(self, path)

    def is_empty(self) -> bool:
        with self.entries() as entries:
            for entry, _ in entries:
                if entry.path:
                    return False
        return True

    def write(
        self,
        source: EntrySource,
        path: str = "",
        *,
        progress: Progress = no_progress,
        operation: str = "write",
        replace: bool = False,
    ) -> Written:
        if replace and path:
            raise UsageError("Only a whole volume can be replaced.", hint="Drop the path.")
        with self.journal.hold(self.name, operation):
            if replace and not self.is_empty():
                return self._replace(source, progress, operation)
            # Into an empty volume too: undoing it then removes only the staging folder,
            # never what someone else may have written into the volume meanwhile.
            return self._merge(source, path, progress, operation)

    def _put(
        self, helper: ArchiveHelper, source: EntrySource, path: str, progress: Progress
    ) -> Written:
        # Extract at the helper's root with every name under v/: the engine refuses symlinks
        # that point above the folder it extracts into, and a volume may hold such links
        # (relative ones that dangle); above "/" there is nothing to point at.
        counts = [0, 0]
        helper.put_archive(_tar_chunks(_under(source, _inside(path)), progress, counts))
        return Written(counts[0], counts[1])

    # -- merge: stage inside the volume, hard-link into place ------------------------------

    def _merge(self, source: EntrySource, path: str, progress: Progress, operation: str) -> Written:
        record = new_write(self.name, operation, "merge", API_STAGING)
        self.journal.record_write(record)
        spool = self.journal.spool(self.name)
        counts = [0, 0]
        with self.engine.archive_helper(self.name, readonly=False) as helper:
            root = _root_of(helper)
            try:
                if path:
                    self._refuse_links_on(helper, path)
                helper.put_archive(iter([_tombstone()]))  # a stale staging folder goes first
                parents = _Parents()
                with open(spool, "w", encoding="utf-8") as listing:
                    staged = _staged(_under(source, _inside(path)), path, listing, parents)
                    helper.put_archive(_tar_chunks(staged, progress, counts))
                    listing.flush()
                    os.fsync(listing.fileno())
                self._refuse_links_on_parents(helper, parents)
            except BaseException as exc:
                # Nothing visible changed: the data went into the staging folder only.
                self._abandon(exc, lambda: helper.put_archive(iter([_tombstone(root)])))
            self.journal.record_write(_phase(record, "committing"))
            self._commit(helper, root)
        self.journal.end_write(self.name)
        return Written(counts[0], counts[1])

    def _abandon(self, exc: BaseException, undo: Callable[[], None]) -> NoReturn:
        """Undo a staged write that failed before anything visible changed (``undo`` drops
        its staging place), end its record, and raise ``exc`` -- said as "nothing changed"."""
        undone = False
        with contextlib.suppress(CargoholdError):
            undo()
            self.journal.end_write(self.name)
            undone = True
        if isinstance(exc, CargoholdError) and not isinstance(exc, UnsafeArchive):
            raise _unchanged(exc, self.name, undone) from None
        raise exc

    def _refuse_links_on_parents(self, helper: ArchiveHelper, parents: _Parents) -> None:
        """A folder the source does not list (a tar without folder entries) is made by the
        engine, through whatever the volume holds at that name: a link a container planted
        there would redirect the files (or send them into the helper's own layer). Such
        folders are looked up before anything is committed, and a link or file refused."""
        inside = _inside("")
        for folder in parents.unlisted():
            if not folder.startswith(inside + "/"):
                continue
            rel = folder[len(inside) + 1 :]
            kind = _kind_of(helper, rel)
            if kind not in (None, "dir"):
                raise UnsafeArchive(
                    f"Refused: {rel} is a {kind} inside volume {self.name}, and the archive "
                    "would write through it.",
                    hint="Links a container made are never followed; remove it or write elsewhere.",
                )

    def _commit(self, helper: ArchiveHelper, root: Entry | None) -> None:
        """Hard-link every staged file into place (and make the folders and links), then drop
        the staging folder. Running it again after a kill gives the same result.

        Dropping the staging folder touches the volume root: its attributes are set last,
        to the source's root where the source has one, else to ``root`` (as it was)."""
        final: list[Entry] = []
        top = _inside("")

        def entries() -> Iterator[tuple[Entry, Opener | None]]:
            for entry, data in _commit_entries(self.journal.spool(self.name)):
                if entry.path == top and entry.kind == "dir":
                    final.append(entry)
                yield entry, data

        try:
            helper.put_archive(_tar_chunks(entries(), no_progress, [0, 0]))
            helper.put_archive(iter([_tombstone(final[-1] if final else root)]))
        except CargoholdError as exc:
            raise TransferError(
                f"{exc.message} Volume {self.name} was being updated from a complete staged "
                "copy when this happened: some names are new, some still old.",
                hint="Run the same command again: it finishes the update first.",
            ) from None

    # -- replace: stage in another volume, then empty this one and copy -------------------

    def _replace(self, source: EntrySource, progress: Progress, operation: str) -> Written:
        if self.info.driver not in ("", "local") or self.info.options:
            raise UsageError(
                f"Volume {self.name} is backed by driver {self.info.driver!r} with options "
                f"{dict(self.info.options)}: through the Engine API its content can be "
                "replaced only by removing the volume, which would not remove that data.",
                hint="Restore into a new volume, or empty this one first from a container.",
            )
        staging = _staging_volume(self.name)
        record = new_write(self.name, operation, "replace", staging)
        self.journal.record_write(record)
        self.engine.remove_volume(staging)  # a stale one of a run killed before its record
        self.engine.create_volume(staging, {STAGING_LABEL: self.name})
        try:
            with self.engine.archive_helper(staging, readonly=False) as helper:
                written = self._put(helper, source, "", progress)
        except BaseException as exc:
            self._abandon(exc, lambda: self.engine.remove_volume(staging))
        self.journal.record_write(_phase(record, "committing"))
        self._copy_from(staging)
        return written

    def _copy_from(self, staging: str) -> None:
        """Empty this volume and copy the staging volume's content in; then drop the record
        and the staging volume (in that order: a record never outlives its staged copy)."""
        try:
            found: VolumeInfo | None = self.engine.volume(staging)
        except VolumeNotFound:
            found = None
        if found is None or found.labels.get(STAGING_LABEL) != self.name:
            raise TransferError(
                f"The staged content for volume {self.name} (volume {staging}) is gone: the "
                "interrupted replace cannot be finished.",
                hint=f"Check volume {self.name}; remove its record in {self.journal.folder} "
                "(the newest *.write.json) and run the command again.",
            )
        try:
            self.clear()
        except CargoholdError as exc:
            raise TransferError(
                f"{exc.message} Volume {self.name} could not be emptied, so its old content "
                f"may still be there; the new content is whole in volume {staging}.",
                hint="Stop what uses the volume (`docker ps -a`), then run the same command "
                "again: it finishes the replace first.",
            ) from None
        try:
            with (
                self.engine.archive_helper(staging, readonly=True) as source,
                self.engine.archive_helper(self.name, readonly=False) as target,
            ):
                entries = TarReader(source.get_archive(""), strip=1)
                target.put_archive(_tar_chunks(_under(entries, _inside("")), no_progress, [0, 0]))
        except CargoholdError as exc:
            raise TransferError(
                f"{exc.message} The old content of volume {self.name} was removed; the new "
                f"content is whole in volume {staging}, and copying it over did not finish.",
                hint="Run the same command again: it finishes the copy first.",
            ) from None
        self.journal.end_write(self.name)
        self.engine.remove_volume(staging)

    def _refuse_links_on(self, helper: ArchiveHelper, path: str) -> None:
        """The engine resolves a link on the way inside the helper container: the host is safe,
        but the data would land in the helper's own layer and vanish with it. So, as on the
        direct path, a destination that passes through a link (or a file) is refused."""
        parts = [p for p in path.split("/") if p]
        for i in range(1, len(parts) + 1):
            rel = "/".join(parts[:i])
            kind = _kind_of(helper, rel)
            if kind is None:
                return  # missing from here on: the engine makes the folders
            if kind == "symlink":
                raise UnsafeArchive(
                    f"Refused {self.name}:{path}: {rel} is a symlink inside the volume, and "
                    "links a container made are never followed.",
                    hint="Write to the link's real location inside the volume instead.",
                )
            if kind != "dir":
                raise TransferError(
                    f"Refused {self.name}:{path}: {rel} is a file, not a folder.",
                    hint="Pick a folder inside the volume.",
                )

    def clear(self) -> None:
        # The archive endpoints cannot delete: recreate the volume with the same labels.
        self.engine.remove_volume(self.name)
        self.engine.create_volume(
            self.name,
            self.info.labels,
            driver=self.info.driver or None,
            driver_opts=dict(self.info.options) or None,
        )
        # A volume whose data lives elsewhere (driver options: NFS, a bind) comes back full.
        if not self.is_empty():
            raise TransferError(
                f"Volume {self.name} still holds data after it was removed and created again "
                "(its data lives outside the engine).",
                hint="Empty it from a container, or use a new volume.",
            )

    def sync(self) -> None:
        """The engine wrote the files; there is nothing here to flush."""

    def recover(self) -> Recovery | None:
        """Discard or finish the write a killed run left (its record is on this host)."""
        with self.journal.hold(self.name, "recover"):
            record = self.journal.unfinished_write(self.name)
            if record is None:
                return None
            if record.kind == "replace":
                if record.phase == "committing":
                    self._copy_from(record.staging)
                    return Recovery(record.operation, "completed")
                self.engine.remove_volume(record.staging)
                self.journal.end_write(self.name)
                return Recovery(record.operation, "discarded")
            outcome = "discarded"
            with self.engine.archive_helper(self.name, readonly=False) as helper:
                if record.phase == "committing":
                    if _kind_of(helper, API_STAGING) == "dir":  # else it was done and dropped
                        self._commit(helper, _root_of(helper))
                    outcome = "completed"
                else:
                    helper.put_archive(iter([_tombstone()]))
            self.journal.end_write(self.name)
            return Recovery(record.operation, outcome)


API_STAGING = f"{STAGING}-api"
STAGING_LABEL = "cargohold.staging-for"


def _inside(path: str) -> str:
    return HELPER_MOUNT.strip("/") + (f"/{path}" if path else "")


def _staging_volume(name: str) -> str:
    candidate = f"{name}.cargohold-staging"
    if len(candidate) <= 255:
        return candidate
    return f"cargohold-staging-{hashlib.sha256(name.encode()).hexdigest()[:32]}"


def _phase(record: WriteRecord, phase: str) -> WriteRecord:
    return WriteRecord(
        record.volume,
        record.operation,
        record.kind,
        phase,  # type: ignore[arg-type]
        record.staging,
        record.pid,
        record.started,
    )


def _unchanged(exc: CargoholdError, volume: str, undone: bool) -> TransferError:
    cleaned = (
        ""
        if undone
        else " Its staging copy could not be removed yet: the next command on the volume does it."
    )
    return TransferError(
        f"{exc.message.rstrip('.')}. Nothing in volume {volume} changed (the write was "
        f"staged).{cleaned}",
        hint="Free space (or fix what the message names) and run the same command again.",
    )


def _entry_of(helper: ArchiveHelper, path: str) -> Entry | None:
    """``path``'s own entry in the volume (None: nothing), from the first header of its stream.

    Raises:
        EngineError: the engine failed otherwise (never taken for "nothing there").
    """
    try:
        for entry, _ in TarReader(helper.get_archive(path), strip=1):
            return entry
    except PathNotFound:
        return None
    return None


def _kind_of(helper: ArchiveHelper, path: str) -> str | None:
    entry = _entry_of(helper, path)
    return None if entry is None else entry.kind


def _root_of(helper: ArchiveHelper) -> Entry | None:
    """The volume root's own entry (its mode, owner and times), to be put back after a write
    that changed nothing but the staging name in it."""
    entry = _entry_of(helper, "")
    return entry if entry is not None and not entry.path and entry.kind == "dir" else None


def _tombstone(root: Entry | None = None) -> bytes:
    """An archive that replaces the staging folder, with all in it, by an empty file: the
    one way the archive endpoints remove something. With ``root``, the volume root's
    attributes are set back as they were (the engine sets a folder's times last)."""
    buffer = io.BytesIO()
    writer = TarWriter(buffer)
    empty = Entry(f"{_inside('')}/{API_STAGING}", "file", 0o600, os.getuid(), os.getgid(), 0)
    entries: list[tuple[Entry, Opener | None]] = [(empty, lambda: io.BytesIO(b""))]
    if root is not None:
        entries.append((dataclasses.replace(root, path=_inside("")), None))
    writer.write_all(iter(entries))
    return buffer.getvalue()


class _Parents:
    """The folders a write lists, and the parents of its entries that it does not list."""

    def __init__(self) -> None:
        self._listed: set[str] = set()
        self._missing: set[str] = set()

    def see(self, entry: Entry) -> None:
        if entry.kind == "dir":
            self._listed.add(entry.path)
        parent = entry.path.rpartition("/")[0]
        while parent and parent not in self._listed and parent not in self._missing:
            self._missing.add(parent)
            parent = parent.rpartition("/")[0]

    def unlisted(self) -> list[str]:
        return sorted(self._missing - self._listed)


def _staged(
    entries: Iterator[tuple[Entry, Opener | None]],
    path: str,
    listing: IO[str],
    parents: _Parents,
) -> Iterator[tuple[Entry, Opener | None]]:
    """The files and folders of ``entries`` renamed into the staging folder, each entry listed
    (as it will be committed) in ``listing`` and shown to ``parents`` on the way."""
    final_root = _inside(path)
    stage_root = f"{_inside('')}/{API_STAGING}"
    yield Entry(stage_root, "dir", 0o700, os.getuid(), os.getgid(), 0), None
    for entry, data in entries:
        parents.see(entry)
        row: list[Any] = [
            entry.path,
            entry.kind,
            entry.mode,
            entry.uid,
            entry.gid,
            entry.mtime_ns,
            entry.size,
            entry.target,
        ]
        if entry.kind == "file":
            rel = entry.path[len(final_root) :].lstrip("/")
            staged_path = f"{stage_root}/{rel}"
            row.append(staged_path)
            yield (
                Entry(
                    staged_path,
                    "file",
                    entry.mode,
                    entry.uid,
                    entry.gid,
                    entry.mtime_ns,
                    entry.size,
                ),
                data,
            )
        elif entry.kind == "dir" and entry.path != final_root:
            rel = entry.path[len(final_root) :].lstrip("/")
            yield Entry(f"{stage_root}/{rel}", "dir", 0o700, entry.uid, entry.gid, 0), None
        listing.write(json.dumps(row) + "\n")


def _commit_entries(spool: os.PathLike[str]) -> Iterator[tuple[Entry, Opener | None]]:
    """What a staged merge's commit extracts: folders and links as they were listed, and each
    file as a hardlink to its staged copy (no data moves)."""
    try:
        listing = open(spool, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise TransferError(
            f"The list of staged files ({spool}) is gone: {exc.strerror or exc}.",
            hint="Run the command again with --force where it has one, or write into a new volume.",
        ) from None
    with listing:
        for number, line in enumerate(listing, 1):
            try:
                path, kind, mode, uid, gid, mtime_ns, _size, target, *rest = json.loads(line)
                if kind == "file":
                    (target,) = rest
                    kind = "hardlink"
                entry = Entry(
                    str(path), kind, int(mode), int(uid), int(gid), int(mtime_ns), 0, str(target)
                )
            except (ValueError, TypeError, RecursionError) as exc:
                raise TransferError(
                    f"Line {number} of the list of staged files ({spool}) is damaged: {exc}.",
                    hint="Check the volume, then remove the record next to that file.",
                ) from None
            yield entry, None


def _under(entries: EntrySource, path: str) -> Iterator[tuple[Entry, Opener | None]]:
    """The entries renamed to lie under ``path`` (the engine creates missing parents)."""
    for entry, data in entries:
        if not entry.path and entry.kind != "dir":
            raise UnsafeArchive(
                f"Refused a {entry.kind} as the root ('.') of the target: the root of a "
                "volume is never replaced.",
                hint="Only extract archives you trust.",
            )
        target = f"{path}/{entry.target}" if entry.kind == "hardlink" else entry.target
        new_path = f"{path}/{entry.path}" if entry.path else path
        yield (
            Entry(
                new_path,
                entry.kind,
                entry.mode,
                entry.uid,
                entry.gid,
                entry.mtime_ns,
                entry.size,
                target,
            ),
            data,
        )


def _tar_chunks(
    entries: Iterator[tuple[Entry, Opener | None]], progress: Progress, counts: list[int]
) -> Iterator[bytes]:
    """A tar stream of ``entries``, produced by a thread through a pipe, in 1 MiB chunks."""
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb", buffering=CHUNK) as sink:
                writer = TarWriter(sink, progress=progress)
                writer.write_all(entries)
                counts[0], counts[1] = writer.files, writer.bytes
        except BaseException as exc:  # re-raised in the consumer
            failure.append(exc)

    producer = threading.Thread(target=produce, name="cargohold-tar", daemon=True)
    producer.start()
    with os.fdopen(read_fd, "rb", buffering=0) as source:
        while chunk := source.read(CHUNK):
            yield chunk
    producer.join()
    if failure:
        raise failure[0]


class _ArchiveFile:
    """A file read out of a volume through the archive endpoint, as a context manager."""

    def __init__(self, volume: EngineApiVolume, path: str) -> None:
        self._volume = volume
        self._path = path
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> IO[bytes]:
        entries = self._stack.enter_context(self._volume.entries(self._path))
        for entry, data in entries:
            if entry.kind == "file" and data is not None:
                return data()
            break
        self._stack.close()
        raise TransferError(
            f"{self._path} is not a file in volume {self._volume.name}.",
            hint=f"`cargohold volume files {self._volume.name}` lists it.",
        )

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
