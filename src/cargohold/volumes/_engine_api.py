"""The Engine-API path: a created, never started helper container mounts the volume and the
engine's archive endpoints stream tar in and out. The engine itself resolves every path inside
the container's root, so nothing on this host follows a link a container planted."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import IO

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
from cargohold.engine import HELPER_MOUNT, ArchiveHelper, Engine, VolumeInfo
from cargohold.errors import EngineError, TransferError, UnsafeArchive, UsageError
from cargohold.volumes._access import Recovery, Written

__all__ = ["EngineApiVolume"]


class EngineApiVolume:
    """A volume reached through the engine's archive endpoints."""

    keeps_stats = False
    stages_writes = False
    access = "archive"

    def __init__(self, engine: Engine, info: VolumeInfo) -> None:
        self.engine = engine
        self.info = info

    @property
    def name(self) -> str:
        return self.info.name

    @contextlib.contextmanager
    def entries(
        self, path: str = "", *, on_vanished: Callable[[str], None] | None = None
    ) -> Iterator[EntrySource]:
        with self.engine.archive_helper(self.name, readonly=True) as helper:
            yield TarReader(helper.get_archive(path), strip=1)

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
        if replace:
            self.clear()
        # Extract at the helper's root with every name under v/: the engine refuses symlinks
        # that point above the folder it extracts into, and a volume may hold such links
        # (relative ones that dangle); above "/" there is nothing to point at.
        inside = HELPER_MOUNT.strip("/") + (f"/{path}" if path else "")
        counts = [0, 0]
        with self.engine.archive_helper(self.name, readonly=False) as helper:
            if path:
                self._refuse_links_on(helper, path)
            helper.put_archive(_tar_chunks(_under(source, inside), progress, counts))
        return Written(counts[0], counts[1])

    def _refuse_links_on(self, helper: ArchiveHelper, path: str) -> None:
        """The engine resolves a link on the way inside the helper container: the host is safe,
        but the data would land in the helper's own layer and vanish with it. So, as on the
        direct path, a destination that passes through a link (or a file) is refused."""
        parts = [p for p in path.split("/") if p]
        for i in range(1, len(parts) + 1):
            rel = "/".join(parts[:i])
            try:
                first = next(iter(TarReader(helper.get_archive(rel), strip=1)), None)
            except EngineError:
                return  # missing from here on: the engine makes the folders
            if first is None:
                return
            entry = first[0]
            if entry.kind == "symlink":
                raise UnsafeArchive(
                    f"Refused {self.name}:{path}: {rel} is a symlink inside the volume, and "
                    "links a container made are never followed.",
                    hint="Write to the link's real location inside the volume instead.",
                )
            if entry.kind != "dir":
                raise TransferError(
                    f"Refused {self.name}:{path}: {rel} is a file, not a folder.",
                    hint="Pick a folder inside the volume.",
                )

    def clear(self) -> None:
        # The archive endpoints cannot delete: recreate the volume with the same labels.
        self.engine.remove_volume(self.name)
        self.engine.create_volume(self.name, self.info.labels)

    def sync(self) -> None:
        """The engine wrote the files; there is nothing here to flush."""

    def recover(self) -> Recovery | None:
        """The archive endpoints cannot rename or delete, so nothing is staged on this path."""
        return None


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
