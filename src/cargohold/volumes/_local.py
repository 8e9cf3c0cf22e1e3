"""The direct path: a volume whose folder is on this host and readable, read and written at disk
speed with the same readers and writers as any host folder."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from cargohold.archive import (
    EntrySource,
    FolderReader,
    Progress,
    TreeWriter,
    no_progress,
    syncfs,
)
from cargohold.engine import Engine, VolumeInfo
from cargohold.errors import TransferError, UsageError
from cargohold.volumes._access import Written

__all__ = ["LocalVolume"]

WRITERS = 4  # files written at once: enough to overlap decompression, checksums and the disk


class LocalVolume:
    """A volume reached through its ``Mountpoint`` on this host."""

    keeps_stats = True
    access = "local"

    def __init__(self, engine: Engine, info: VolumeInfo, root: Path) -> None:
        self.engine = engine
        self.info = info
        self._root = root

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def local_root(self) -> Path | None:
        return self._root

    @contextlib.contextmanager
    def entries(self, path: str = "") -> Iterator[EntrySource]:
        root = self._root / path if path else self._root
        if not os.path.lexists(root):
            raise TransferError(
                f"{path} does not exist in volume {self.name}.",
                hint=f"`cargohold volume files {self.name}` lists it.",
            )
        yield FolderReader(root)

    def open_file(self, path: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        if not path:
            raise UsageError("Name a file inside the volume.", hint="VOLUME PATH")
        full = self._root / path
        real = os.path.realpath(full)
        if not real.startswith(os.path.realpath(self._root) + os.sep) or not os.path.isfile(real):
            raise TransferError(
                f"{path} is not a file in volume {self.name}.",
                hint=f"`cargohold volume files {self.name}` lists it.",
            )
        return open(real, "rb")

    def is_empty(self) -> bool:
        with os.scandir(self._root) as it:
            return next(it, None) is None

    def write(
        self, source: EntrySource, path: str = "", *, progress: Progress = no_progress
    ) -> Written:
        writer = TreeWriter(
            self._root / path if path else self._root,
            progress=progress,
            workers=WRITERS if source.random_access else 1,
        )
        writer.write_all(source)
        return Written(writer.files, writer.bytes)

    def clear(self) -> None:
        for child in os.scandir(self._root):
            if child.is_dir(follow_symlinks=False):
                shutil.rmtree(child.path)
            else:
                os.unlink(child.path)

    def sync(self) -> None:
        fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            syncfs(fd)
        finally:
            os.close(fd)
