"""Find the newest whole checkpoint in a checkpoint store, treating everything in it as hostile.

``cargohold run`` looks into a store that containers wrote: a manifest may name
``../../etc/shadow``, a file may be a symlink to ``/dev/zero`` (a read that never ends) or a
FIFO (a read that never starts), a manifest may be a number instead of a table, or 10 GB.

There is no walker here: the store is read as an ``EntrySource`` -- a ``VolumeAccess``'s
``entries()`` for a named volume (``archive.confined``'s directory-fd walk when its folder is
readable here, else the Engine API's archive stream), or a ``ConfinedReader`` of a bind-mounted
host folder. Those readers already refuse to follow links, skip or refuse FIFOs and devices,
and judge names; this module only applies the checkpoint format's rules
(``checkpoint._format``) to the entries they yield:

* a ``step-…`` folder with a ``manifest.json`` (written last: no manifest, no checkpoint) of at
  most 16 MiB that the library's own parser, ``checkpoint._format.Manifest.parse``, accepts
  (format, version, step, files, each a clean relative name inside the folder with a size and
  a checksum of a known algorithm; for many ranks also ``world_size`` and ``ranks``, every
  rank's files listed in ``files`` and nothing else): one set of rules for the library inside
  the container and for this lookup outside it;
* every file the manifest names is reached as a regular file (a symlink, a FIFO, a missing file
  makes the checkpoint not whole) with the manifest's size;
* checksums: where the files can be read again after the walk (a folder on this host:
  ``random_access``) every checksum of the newest candidates is verified, newest first, each
  read bounded by the manifest's size.

Over the Engine API the store arrives as one tar stream, in name order, and there is no way to
list it without it (the archive endpoint has no listing): every byte passes once. The manifest
comes in the middle of its folder, so what a file must hash to is often unknown while its bytes
pass, and checking afterwards would stream the checkpoint a second time. The rule there: the
crc32 (the format's default) of every file is computed as it passes and compared once the
manifest is known -- on the shared 2-core test machine that added ~60% to the stream's own time
(``benchmarks/resume.py``), the price of a ``CARGOHOLD_RESUME_FROM`` as trustworthy as on the
direct path. A sha256 (on request) is not computed for every file on the chance that the
manifest asks for it: there the file's size and the manifest's structure are checked, and the
checksum by the job's library on restore (the job gets ``CARGOHOLD_RESUME=auto``, under which
the library verifies the checkpoint it restores and, if bit rot broke that one, takes the next
whole one itself). Nothing is buffered.

Any surprise makes that checkpoint not whole, never an exception. ``None`` -- no promise, the
library decides -- also comes from a store the reader refuses as a whole (a FIFO or a device
node in the Engine API's stream) and from a store too large to judge in bounded memory (more
than 250,000 files, or more than 64 MiB of manifests to hold before the newest whole one).
"""

from __future__ import annotations

import hashlib
import tarfile
import zlib
from dataclasses import dataclass, field

from cargohold.archive import CHUNK, Entry, EntrySource, Opener
from cargohold.checkpoint import _format
from cargohold.errors import TransferError

__all__ = ["MAX_MANIFEST", "latest_whole_checkpoint"]

MAX_MANIFEST = _format.MAX_MANIFEST
_MAX_FILES = 250_000  # files remembered across the store (~50 MB): beyond, the library decides
_MAX_MANIFESTS_KEPT = 4 * MAX_MANIFEST  # JSON bytes of parsed manifests held at once


@dataclass
class _File:
    size: int
    opener: Opener | None  # kept when openers outlive the walk (random access) ...
    crc32: str | None  # ... else the crc32 of the bytes that streamed past ("": unreadable)


@dataclass
class _Step:
    step: int
    name: str
    manifest: _format.Manifest | None = None
    manifest_bytes: int = 0
    evicted: bool = False  # its manifest was dropped to stay within memory: unknown, not "no"
    files: dict[str, _File] = field(default_factory=dict)  # relative to the step folder


class _TooMany(Exception):
    """The store holds more files than the lookup remembers."""


def latest_whole_checkpoint(entries: EntrySource) -> str | None:
    """The name of the newest ``step-…`` folder of the store that is whole, or None.

    Args:
        entries: the store's entries, parents before children, the store's folder as ``""``;
            its ``random_access`` says how checksums are verified (module docstring).

    Returns:
        The folder's name, or None when no checkpoint is whole -- or the store is refused
        as a whole by its reader (then the in-container library decides).
    """
    store = _Store(entries.random_access)
    try:
        for entry, opener in entries:
            store.take(entry, opener)
    except (TransferError, OSError, _TooMany):
        return None
    for step in sorted(store.steps.values(), key=lambda s: s.step, reverse=True):
        if step.evicted:
            return None  # an older one may be whole, but this one was not judged
        if _whole(step):
            return step.name
    return None


class _Store:
    """What the walk has said so far about the store's step folders."""

    def __init__(self, random_access: bool) -> None:
        self.random_access = random_access
        self.steps: dict[str, _Step] = {}
        self._known: dict[str, _File] = {}  # every regular file in a step folder (hardlinks)
        self._manifest_bytes = 0

    def take(self, entry: Entry, opener: Opener | None) -> None:
        """Remember what one entry says about the step folder it lies in."""
        top, _, rel = entry.path.partition("/")
        if not rel:
            match = _format.STEP_DIR_RE.fullmatch(top)  # its "$" alone lets "step-…\n" through
            if match and entry.kind == "dir":
                self.steps[top] = _Step(int(match.group(1)), top)
            return
        step = self.steps.get(top)
        if step is None:
            return
        if entry.kind == "file" and opener is not None:
            if len(self._known) >= _MAX_FILES:
                raise _TooMany
            if rel == _format.MANIFEST:
                self._keep_manifest(step, _read_manifest(entry, opener), entry.size)
                return
            if self.random_access:
                found = _File(entry.size, opener, None)
            else:  # read now or never: its bytes pass by anyway
                found = _File(entry.size, None, _checksum(opener, entry.size, "crc32") or "")
            self._known[entry.path] = found
            step.files[rel] = found
        elif entry.kind == "hardlink" and entry.target in self._known:
            step.files[rel] = self._known[entry.target]  # the same bytes under a second name

    def _keep_manifest(self, step: _Step, manifest: _format.Manifest | None, size: int) -> None:
        """Keep a parsed manifest, within a memory budget: over it, the oldest steps' are
        dropped (if every newer step fails, the answer is None, never an older one)."""
        if manifest is None:
            return
        step.manifest, step.manifest_bytes = manifest, size
        self._manifest_bytes += size
        if self._manifest_bytes <= _MAX_MANIFESTS_KEPT:
            return
        for oldest in sorted(self.steps.values(), key=lambda s: s.step):
            if self._manifest_bytes <= _MAX_MANIFESTS_KEPT:
                break
            if oldest.manifest is not None:
                self._manifest_bytes -= oldest.manifest_bytes
                oldest.manifest, oldest.manifest_bytes = None, 0
                oldest.evicted = True


def _read_manifest(entry: Entry, opener: Opener) -> _format.Manifest | None:
    """The manifest, or None when it is too large or not one (``_format.Manifest.parse``)."""
    if entry.size > MAX_MANIFEST:
        return None
    try:
        with opener() as data:
            raw = data.read(MAX_MANIFEST + 1)
        return _format.Manifest.parse(raw)
    except (OSError, EOFError, ValueError, TransferError, tarfile.TarError):
        return None


def _whole(step: _Step) -> bool:
    manifest = step.manifest
    if manifest is None or manifest.step != step.step:  # a step-3 folder claiming step 1000
        return False
    for name, entry in manifest.files.items():  # clean relative names: the parser saw to it
        found = step.files.get(name)
        if found is None or found.size != entry.size:
            return False
        if found.crc32 is not None:  # streamed: crc32 checked here, a sha256 on restore
            if entry.algorithm == "crc32" and found.crc32 != entry.digest:
                return False
        elif found.opener is None or (
            _checksum(found.opener, found.size, entry.algorithm) != entry.digest
        ):
            return False
    return True


def _checksum(opener: Opener, size: int, algorithm: str) -> str | None:
    """The file's checksum, reading at most ``size`` + 1 bytes (None: it is not that size)."""
    digest = hashlib.sha256() if algorithm == "sha256" else None
    crc, total = 0, 0
    try:
        with opener() as data:
            while total <= size and (chunk := data.read(min(CHUNK, size + 1 - total))):
                total += len(chunk)
                if digest is not None:
                    digest.update(chunk)
                else:
                    crc = zlib.crc32(chunk, crc)
    except (OSError, EOFError, TransferError, tarfile.TarError):  # a damaged stream, a gone file
        return None
    if total != size:
        return None
    return digest.hexdigest() if digest is not None else f"{crc:08x}"
