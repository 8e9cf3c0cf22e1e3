"""What flows between every reader and every writer: an ``Entry`` (one node of a tree) and,
for a file, an ``Opener`` that yields its bytes.

Sources differ in one way that matters to their consumers, and they say so instead of being
recognised by type: a source with ``random_access`` hands out openers that stay valid for the
whole walk (a folder, a snapshot: files can be read in any order, by several threads), one
without it hands out openers that are valid only until the next entry (a tar stream). Sources
that stat what they walk also give each entry's ``os.stat_result``, which caches key on.

Progress is a small protocol rather than a bare byte callback: ``progress(n)`` for bytes,
``progress(0, files=1)`` when a file is done, ``progress.expect(...)`` when the size of the
whole is known (a restore: exactly, from the snapshot record) or can be guessed (a snapshot:
from the previous one of the same source). Files are counted by the writers, where bytes are
already counted and where a file is known to be *done* (a wrapper around the ``EntrySource``
would count files when handed out, ahead of the pool that writes them), and the totals come
from the library, which has already loaded the record they are in: the CLI would have to list
the repository a second time to find them.
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
Walked = tuple["Entry", "Opener | None", "os.stat_result | None"]


class Progress(Protocol):
    """Told what a long transfer has moved, from any thread, as it moves it."""

    def __call__(self, nbytes: int, /, *, files: int = 0) -> None:
        """``nbytes`` more bytes moved; ``files`` more files complete."""
        ...

    def expect(self, *, files: int, nbytes: int, exact: bool) -> None:
        """The size of the whole, when known (``exact``) or estimated."""
        ...


class _NoProgress:
    def __call__(self, nbytes: int, /, *, files: int = 0) -> None:
        pass

    def expect(self, *, files: int, nbytes: int, exact: bool) -> None:
        pass


no_progress: Progress = _NoProgress()
"""A progress that ignores what it is told."""


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
