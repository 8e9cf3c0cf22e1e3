"""A volume's files, read and written the fastest safe way.

Two paths, one interface (``VolumeFiles``):

* **local** -- the engine runs on this machine and the volume's folder (its ``Mountpoint``) is
  readable: files are read and written directly, at disk speed, and snapshots can skip unchanged
  files by their inode metadata.
* **archive** -- anything else (a remote ``DOCKER_HOST``, Docker Desktop's VM, a user without
  access to ``/var/lib/docker``, a volume driver other than plain ``local``): a created, never
  started container mounts the volume, and the Engine API's archive endpoints stream tar in and
  out. No shell, no image with tools, nothing runs.

``CARGOHOLD_VOLUME_ACCESS=local|archive`` forces one path (the tests run both).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from cargohold.engine import HELPER_MOUNT, Engine, VolumeInfo
from cargohold.errors import TransferError, UsageError, VolumeNotFound
from cargohold.transfer.tree import (
    CHUNK,
    Entry,
    FolderReader,
    Opener,
    Progress,
    TarReader,
    TarWriter,
    TreeWriter,
    clean_member_name,
)

__all__ = ["ACCESS_ENV", "VolumeFiles", "engine_is_local", "open_volume", "split_volume_path"]

log = logging.getLogger(__name__)

ACCESS_ENV = "CARGOHOLD_VOLUME_ACCESS"
WRITERS = 4  # files written at once: enough to overlap decompression, checksums and the disk

Entries = Iterable[tuple[Entry, Opener | None]]


def _no_progress(_: int) -> None:
    pass


def split_volume_path(text: str) -> tuple[str, str]:
    """``VOLUME[:PATH]`` → (volume, relative path inside it).

    Raises:
        UsageError: an empty volume name, or a path that climbs out of the volume.
    """
    name, _, path = text.partition(":")
    if not name:
        raise UsageError(f"{text!r} names no volume.", hint="Write VOLUME or VOLUME:PATH.")
    try:
        return name, clean_member_name(path, what="path") if path else ""
    except TransferError as exc:
        raise UsageError(
            str(exc).replace("member", "path"), hint="Paths are relative to the volume's root."
        ) from None


def engine_is_local() -> bool:
    """The engine runs on this machine, so the paths it reports are paths here."""
    host = os.environ.get("DOCKER_HOST", "")
    return host == "" or host.startswith("unix://")


class VolumeFiles:
    """Read and write the files of one volume."""

    def __init__(self, engine: Engine, info: VolumeInfo, local_root: Path | None) -> None:
        self.engine = engine
        self.info = info
        self.local_root = local_root

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def access(self) -> str:
        return "local" if self.local_root is not None else "archive"

    # -- reading --------------------------------------------------------------------------

    @contextlib.contextmanager
    def entries(self, path: str = "") -> Iterator[Entries]:
        """The entries under ``path`` (relative to the volume root), root first as ``""``."""
        if self.local_root is not None:
            root = self.local_root / path if path else self.local_root
            if not os.path.lexists(root):
                raise TransferError(
                    f"{path} does not exist in volume {self.name}.",
                    hint=f"`cargohold volume files {self.name}` lists it.",
                )
            yield FolderReader(root)
            return
        with self.engine.archive_helper(self.name, readonly=True) as helper:
            yield TarReader(helper.get_archive(path), strip=1)

    def open_file(self, path: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """One file's bytes (streamed).

        Raises:
            TransferError: it is missing or not a regular file.
        """
        if not path:
            raise UsageError("Name a file inside the volume.", hint="VOLUME PATH")
        if self.local_root is not None:
            full = self.local_root / path
            real = os.path.realpath(full)
            if not real.startswith(
                os.path.realpath(self.local_root) + os.sep
            ) or not os.path.isfile(real):
                raise TransferError(
                    f"{path} is not a file in volume {self.name}.",
                    hint=f"`cargohold volume files {self.name}` lists it.",
                )
            return open(real, "rb")
        return _ArchiveFile(self, path)

    def is_empty(self) -> bool:
        if self.local_root is not None:
            with os.scandir(self.local_root) as it:
                return next(it, None) is None
        with self.entries() as entries:
            for entry, _ in entries:
                if entry.path:
                    return False
        return True

    # -- writing --------------------------------------------------------------------------

    def write(
        self,
        entries: Entries,
        path: str = "",
        *,
        progress: Progress = _no_progress,
        parallel: bool = False,
    ) -> tuple[int, int]:
        """Write entries under ``path``; returns (files, bytes).

        ``parallel``: the entries' files may be opened in any order (not a tar stream), so
        several can be written at once on the local path.
        """
        if self.local_root is not None:
            writer = TreeWriter(
                self.local_root / path if path else self.local_root,
                progress=progress,
                workers=WRITERS if parallel else 1,
            )
            writer.write_all(entries)
            return writer.files, writer.bytes
        # Extract at the helper's root with every name under v/: the engine refuses symlinks
        # that point above the folder it extracts into, and a volume may hold such links
        # (relative ones that dangle); above "/" there is nothing to point at.
        inside = HELPER_MOUNT.strip("/") + (f"/{path}" if path else "")
        counts = [0, 0]
        with self.engine.archive_helper(self.name, readonly=False) as helper:
            helper.put_archive(_tar_chunks(_under(entries, inside), progress, counts))
        return counts[0], counts[1]

    def clear(self) -> None:
        """Remove everything in the volume, keeping the volume itself."""
        if self.local_root is not None:
            for child in os.scandir(self.local_root):
                if child.is_dir(follow_symlinks=False):
                    shutil.rmtree(child.path)
                else:
                    os.unlink(child.path)
            return
        # The archive endpoints cannot delete: recreate the volume with the same labels.
        self.engine.remove_volume(self.name)
        self.engine.create_volume(self.name, self.info.labels)


def _under(entries: Entries, path: str) -> Entries:
    """The entries renamed to lie under ``path`` (the engine creates missing parents)."""
    for entry, data in entries:
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


def _tar_chunks(entries: Entries, progress: Progress, counts: list[int]) -> Iterator[bytes]:
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

    def __init__(self, volume: VolumeFiles, path: str) -> None:
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


def open_volume(engine: Engine, name: str) -> VolumeFiles:
    """The volume's files, on the local path when possible.

    Raises:
        VolumeNotFound: no such volume.
    """
    info = engine.volume(name)
    wanted = os.environ.get(ACCESS_ENV, "auto")
    if wanted not in ("auto", "local", "archive"):
        raise UsageError(
            f"{ACCESS_ENV}={wanted!r} is not auto, local or archive.",
            hint=f"Unset {ACCESS_ENV} to let cargohold choose.",
        )
    local: Path | None = None
    if (
        wanted != "archive"
        and engine_is_local()
        and info.driver == "local"
        and not info.options
        and info.mountpoint
    ):
        mount = Path(info.mountpoint)
        if os.access(mount, os.R_OK | os.X_OK | os.W_OK):
            local = mount
    if wanted == "local" and local is None:
        raise VolumeNotFound(
            f"Volume {name} cannot be reached directly ({info.mountpoint} is not accessible here).",
            hint=f"Unset {ACCESS_ENV} to go through the engine instead.",
        )
    log.debug("volume %s: %s access", name, "local" if local else "archive")
    return VolumeFiles(engine, info, local)
