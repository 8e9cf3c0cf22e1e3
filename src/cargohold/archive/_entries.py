"""What flows between every reader and every writer: an ``Entry`` (one node of a tree) and,
for a file, an ``Opener`` that yields its bytes.

Sources differ in one way that matters to their consumers, and they say so instead of being
recognised by type: a source with ``random_access`` hands out openers that stay valid for the
whole walk (a folder, a snapshot: files can be read in any order, by several threads), one
without it hands out openers that are valid only until the next entry (a tar stream). Sources
that stat what they walk also give each entry's ``os.stat_result``, which caches key on.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Literal, Protocol

__all__ = [
    "CHUNK",
    "Entry",
    "EntrySource",
    "EntryStream",
    "Foreign",
    "Kind",
    "Opener",
    "Progress",
    "Walked",
    "data_stamp",
    "no_progress",
]

CHUNK = 1 << 20
Kind = Literal["dir", "file", "symlink", "hardlink"]
Opener = Callable[[], IO[bytes]]
Progress = Callable[[int], None]
Walked = tuple["Entry", "Opener | None", "os.stat_result | None"]


def no_progress(_: int) -> None:
    """A progress callback that ignores its argument."""


@dataclass(frozen=True)
class Entry:
    """One node of a tree. ``path`` is relative and POSIX; ``""`` is the tree's root folder."""

    path: str
    kind: Kind
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    target: str = ""  # a symlink's target, or the path a hardlink shares its data with


class EntrySource(Protocol):
    """A tree as a stream of entries, parents before children."""

    @property
    def random_access(self) -> bool:
        """Openers stay valid for the whole walk, in any order, from any thread."""
        ...

    def __iter__(self) -> Iterator[tuple[Entry, Opener | None]]: ...

    def walk(self) -> Iterator[Walked]:
        """Each entry with its opener (files only) and its stat result (when the source has one)."""
        ...


class EntryStream:
    """Any iterable of (entry, opener) pairs as an ``EntrySource`` that declares its access."""

    def __init__(
        self, entries: Iterable[tuple[Entry, Opener | None]], *, random_access: bool
    ) -> None:
        self._entries = entries
        self._random_access = random_access

    @property
    def random_access(self) -> bool:
        return self._random_access

    def __iter__(self) -> Iterator[tuple[Entry, Opener | None]]:
        return iter(self._entries)

    def walk(self) -> Iterator[Walked]:
        for entry, opener in self._entries:
            yield entry, opener, None


def data_stamp(entry: Entry, st: os.stat_result | None) -> int:
    """When this entry last changed: mtime and ctime when its stat is at hand (ctime catches
    renames, chmods and deletions inside a folder), else the mtime an archive carries.

    Snapshots record the newest stamp of a volume and prune compares it with the volume's
    current one, so both must compute it here, the same way.
    """
    return entry.mtime_ns if st is None else max(st.st_mtime_ns, st.st_ctime_ns)


class Foreign:
    """A source from outside cargohold (an archive, an object store), tamed as PEP 706's
    ``data`` filter does: setuid and setgid bits are dropped and every entry belongs to the
    user running cargohold. cargohold's own snapshots are not foreign: they keep exact modes
    and owners."""

    def __init__(self, source: EntrySource) -> None:
        self._source = source
        self._uid, self._gid = os.getuid(), os.getgid()

    @property
    def random_access(self) -> bool:
        return self._source.random_access

    def _tame(self, entry: Entry) -> Entry:
        return Entry(
            path=entry.path,
            kind=entry.kind,
            mode=entry.mode & ~(stat.S_ISUID | stat.S_ISGID),
            uid=self._uid,
            gid=self._gid,
            mtime_ns=entry.mtime_ns,
            size=entry.size,
            target=entry.target,
        )

    def __iter__(self) -> Iterator[tuple[Entry, Opener | None]]:
        for entry, opener in self._source:
            yield self._tame(entry), opener

    def walk(self) -> Iterator[Walked]:
        for entry, opener, st in self._source.walk():
            yield self._tame(entry), opener, st
