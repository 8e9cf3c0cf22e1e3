"""Host folders given by path: ``FolderReader`` walks one, ``TreeWriter`` writes into one.

Both are thin doors into ``confined``: the path the caller gave is resolved once (it is the
caller's own), and everything below it is reached with directory descriptors and
``O_NOFOLLOW``, so a link inside the folder is copied as a link and never followed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from cargohold.archive._entries import Entry, Opener, Progress, Walked, no_progress
from cargohold.archive.confined import ConfinedDir, ConfinedReader, ConfinedWriter, TwinSource
from cargohold.errors import TransferError

__all__ = ["FolderReader", "TreeWriter"]


class FolderReader:
    """The entries under a host folder (or the one entry of a file), parents before children.

    Hardlinked files are reported once as files and then as ``hardlink`` entries; sockets,
    FIFOs and devices are skipped.
    """

    random_access = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self._reader: ConfinedReader | None = None

    def _open(self) -> ConfinedReader:
        if self._reader is None:
            if not os.path.exists(self.root):
                raise TransferError(
                    f"{self.root} does not exist.",
                    hint="Check the path (`cargohold volume files` lists a volume).",
                )
            if os.path.isdir(self.root):
                self._reader = ConfinedReader(ConfinedDir.open(self.root, follow=True))
            else:
                real = Path(os.path.realpath(self.root))
                base = ConfinedDir.open(real.parent, follow=True)
                self._reader = ConfinedReader(base, real.name, name=self.root.name)
        return self._reader

    @property
    def skipped(self) -> int:
        return self._reader.skipped if self._reader is not None else 0

    def __iter__(self) -> Iterator[tuple[Entry, Opener | None]]:
        return iter(self._open())

    def twin_source(self) -> TwinSource | None:
        return self._open().twin_source()

    def walk(self) -> Iterator[Walked]:
        return self._open().walk()


class TreeWriter(ConfinedWriter):
    """Writes entries into a host folder (made if missing), never outside it."""

    def __init__(self, root: Path, *, progress: Progress = no_progress, workers: int = 1) -> None:
        super().__init__(
            ConfinedDir.open(root, follow=True, create=True), progress=progress, workers=workers
        )
        self.path = root
