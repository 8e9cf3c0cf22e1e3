"""The direct path: a volume whose folder is on this host, read and written at disk speed -- and
only through ``archive.confined``: the folder is held open and everything in it is reached with
directory descriptors and ``O_NOFOLLOW``, because a container wrote it. Writes are staged inside
the volume and swapped in (``archive.staging``), so a failed or killed write changes nothing, or
leaves a marker that the next run finishes."""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from cargohold.archive import EntrySource, Progress, no_progress, syncfs
from cargohold.archive.confined import ConfinedDir, ConfinedReader, ConfinedWriter
from cargohold.archive.staging import Visible, is_internal, recover, staged
from cargohold.engine import Engine, VolumeInfo
from cargohold.errors import TransferError, UnsafeArchive, UsageError
from cargohold.volumes._access import Recovery, Written

__all__ = ["LocalVolume"]

WRITERS = 4  # files written at once: enough to overlap decompression, checksums and the disk


class LocalVolume:
    """A volume reached through its ``Mountpoint`` on this host."""

    keeps_stats = True
    stages_writes = True
    access = "local"

    def __init__(self, engine: Engine, info: VolumeInfo, root: Path) -> None:
        self.engine = engine
        self.info = info
        self._root = root

    @property
    def name(self) -> str:
        return self.info.name

    def _open(self) -> ConfinedDir:
        return ConfinedDir.open(self._root)

    def _missing(self, path: str) -> TransferError:
        return TransferError(
            f"{path} does not exist in volume {self.name}.",
            hint=f"`cargohold volume files {self.name}` lists it.",
        )

    @contextlib.contextmanager
    def entries(
        self, path: str = "", *, on_vanished: Callable[[str], None] | None = None
    ) -> Iterator[EntrySource]:
        with self._open() as root:
            if path and root.lstat(path) is None:
                raise self._missing(path)
            reader = ConfinedReader(root, path, on_vanished=on_vanished)
            yield reader if path else Visible(reader)

    def open_file(self, path: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        if not path:
            raise UsageError("Name a file inside the volume.", hint="VOLUME PATH")
        with self._open() as root:
            st = root.lstat(path)
            if st is None or not stat.S_ISREG(st.st_mode):
                raise TransferError(
                    f"{path} is not a file in volume {self.name}"
                    + (
                        " (it is a symlink, which is never followed)."
                        if st and stat.S_ISLNK(st.st_mode)
                        else "."
                    ),
                    hint=f"`cargohold volume files {self.name}` lists it.",
                )
            return root.open_file(path)

    def is_empty(self) -> bool:
        with self._open() as root:
            return not any(not is_internal(n) for n in root.names())

    def recover(self) -> Recovery | None:
        with self._open() as root:
            found = recover(root)
        return None if found is None else Recovery(found[0].operation, found[1])

    def write(
        self,
        source: EntrySource,
        path: str = "",
        *,
        progress: Progress = no_progress,
        operation: str = "write",
        replace: bool = False,
    ) -> Written:
        with self._open() as root:
            _refuse_links_on(root, path, self.name)
            with staged(root, operation, "replace" if replace else "merge") as stage:
                target = stage.dir.sub(path, create=True) if path else stage.dir
                writer = ConfinedWriter(
                    target,
                    progress=progress,
                    workers=WRITERS if source.random_access else 1,
                    durable=True,
                )
                try:
                    writer.write_all(source)
                finally:
                    if target is not stage.dir:
                        target.close()
                parts = [p for p in path.split("/") if p]
                stage.keep_attrs.update("/".join(parts[:i]) for i in range(len(parts)))
                stage.keep_attrs.update("/".join([*parts, d]).strip("/") for d in writer.implicit)
            syncfs(root.fd)
        return Written(writer.files, writer.bytes)

    def clear(self) -> None:
        with self._open() as root:
            for name in root.names():
                root.remove(name)

    def sync(self) -> None:
        with self._open() as root:
            syncfs(root.fd)


def _refuse_links_on(root: ConfinedDir, path: str, volume: str) -> None:
    """Refuse a destination path that passes through a link or a file inside the volume."""
    parts = [p for p in path.split("/") if p]
    for i in range(1, len(parts) + 1):
        rel = "/".join(parts[:i])
        st = root.lstat(rel)
        if st is None:
            return
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeArchive(
                f"Refused {volume}:{path}: {rel} is a symlink inside the volume, and links a "
                "container made are never followed.",
                hint="Write to the link's real location inside the volume instead.",
            )
        if not stat.S_ISDIR(st.st_mode):
            raise TransferError(
                f"Refused {volume}:{path}: {rel} is a file, not a folder.",
                hint="Pick a folder inside the volume.",
            )
