"""One interface to a volume's files, two ways to reach them -- chosen once, in ``open_volume``.

* **local** -- the engine runs on this machine and the volume's folder (its ``Mountpoint``) is
  readable: files are read and written directly, at disk speed, and snapshots can skip unchanged
  files by their inode metadata (``keeps_stats``).
* **archive** -- anything else (a remote ``DOCKER_HOST``, Docker Desktop's VM, a user without
  access to ``/var/lib/docker``, a volume driver other than plain ``local``): a created, never
  started container mounts the volume, and the Engine API's archive endpoints stream tar in and
  out. No shell, no image with tools, nothing runs.

Callers ask a ``VolumeAccess`` for what it can do (``keeps_stats``, ``stages_writes``, the
``random_access`` of the sources it hands out) and never which implementation they hold.
``CARGOHOLD_VOLUME_ACCESS=local|archive`` forces one path (the tests run both).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Protocol

from cargohold.archive import EntrySource, Progress, clean_member_name
from cargohold.engine import Engine, VolumeInfo
from cargohold.errors import TransferError, UsageError

__all__ = [
    "ACCESS_ENV",
    "Recovery",
    "VolumeAccess",
    "Written",
    "check_volume_name",
    "engine_is_local",
    "split_volume_path",
]

log = logging.getLogger(__name__)

ACCESS_ENV = "CARGOHOLD_VOLUME_ACCESS"


@dataclass(frozen=True)
class Written:
    """What a write put into a volume."""

    files: int
    bytes: int


@dataclass(frozen=True)
class Recovery:
    """What ``VolumeAccess.recover`` did about an interrupted write it found."""

    operation: str  # as the interrupted command named it, e.g. "clone data"
    outcome: str  # "discarded": the old content stands; "completed": the new one is whole


class VolumeAccess(Protocol):
    """Read and write the files of one volume."""

    engine: Engine
    info: VolumeInfo

    @property
    def name(self) -> str: ...

    @property
    def access(self) -> str:
        """``local`` or ``archive``: how the files are reached (shown to the user)."""
        ...

    @property
    def stages_writes(self) -> bool:
        """A ``write`` is staged and swapped in whole: one that fails changes nothing, so a
        source need not be checked in full before it is written."""
        ...

    @property
    def keeps_stats(self) -> bool:
        """Walks give each entry's stat result, stable across runs (caches may key on it)."""
        ...

    def entries(
        self, path: str = "", *, on_vanished: Callable[[str], None] | None = None
    ) -> contextlib.AbstractContextManager[EntrySource]:
        """The entries under ``path`` (relative to the volume root), root first as ``""``.

        ``on_vanished`` hears of each path that vanished or was replaced while the walk reached
        it (where files are walked live; an archive stream is one moment and has none).

        Raises:
            TransferError: ``path`` does not exist in the volume.
        """
        ...

    def open_file(self, path: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """One file's bytes (streamed).

        Raises:
            TransferError: it is missing or not a regular file.
        """
        ...

    def is_empty(self) -> bool: ...

    def write(
        self,
        source: EntrySource,
        path: str = "",
        *,
        progress: Progress = ...,
        operation: str = ...,
        replace: bool = ...,
    ) -> Written:
        """Write a source's entries under ``path`` (merged into what is there), or with
        ``replace`` make them the volume's whole content.

        The write is staged and swapped in when complete: a failure changes nothing; a kill
        leaves a marker naming ``operation`` (in the volume on the direct path, on this host
        through the Engine API) that ``recover`` finishes or undoes.

        Raises:
            UnsafeArchive: an entry would replace the root or pass through a link.
            TransferError: the volume holds an unfinished operation (call ``recover``).
        """
        ...

    def recover(self) -> Recovery | None:
        """Finish or undo an interrupted write found in the volume (None: there was none)."""
        ...

    def clear(self) -> None:
        """Remove everything in the volume, keeping the volume itself."""
        ...

    def sync(self) -> None:
        """Make what was written durable (a no-op where the engine already did)."""
        ...


def split_volume_path(text: str) -> tuple[str, str]:
    """``VOLUME[:PATH]`` → (volume, relative path inside it).

    Raises:
        UsageError: an empty volume name, or a path that climbs out of the volume.
    """
    name, _, path = text.partition(":")
    if not name:
        raise UsageError(f"{text!r} names no volume.", hint="Write VOLUME or VOLUME:PATH.")
    check_volume_name(name)
    try:
        return name, clean_member_name(path, what="path") if path else ""
    except TransferError as exc:
        raise UsageError(
            str(exc).replace("member", "path"), hint="Paths are relative to the volume's root."
        ) from None


_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_volume_name(name: str) -> str:
    """Refuse what Docker would not take as a volume name, before asking it.

    Raises:
        UsageError: the name has characters a volume name cannot have.
    """
    if not _VOLUME_NAME.fullmatch(name) or len(name) > 255:
        raise UsageError(
            f"{name!r} is not a volume name.",
            hint="Volume names are letters, digits and _ . - (start with a letter or digit); "
            "write VOLUME:PATH for a path inside one.",
        )
    return name


def engine_is_local() -> bool:
    """The engine runs on this machine, so the paths it reports are paths here."""
    host = os.environ.get("DOCKER_HOST", "")
    return host == "" or host.startswith("unix://")
