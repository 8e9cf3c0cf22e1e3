"""Change a folder's content all at once, or visibly not at all: stage inside the target, then
swap in, with a marker that makes an interrupted run visible and lets a rerun finish or clean it.

The root of a volume cannot be replaced (containers mount it), so a new state is written into a
hidden folder *inside* it, ``.cargohold-staging``, next to a marker file,
``.cargohold-incomplete`` (a versioned JSON record: the operation, the mode, the phase). Then:

    writing     the staging folder fills; the old content is untouched.
                A failure or a kill here: ``recover`` removes the staging folder -- nothing changed.
    clearing    (replace only) the new content is complete; the old is removed, name by name.
    merging     each staged name is renamed into place (folders merged recursively).
                A kill in these two phases: ``recover`` finishes them -- the new state is whole.

Every step goes through ``confined``: a link planted in the target is never followed, and the
marker's own record is validated when read (a damaged one is an error that says what to do).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Literal

from cargohold.archive._entries import Entry, EntrySource, Opener, Walked
from cargohold.archive._fs import syncfs
from cargohold.archive.confined import ConfinedDir, TwinSource
from cargohold.errors import TransferError

__all__ = [
    "MARKER",
    "STAGING",
    "Marker",
    "Stage",
    "Visible",
    "is_internal",
    "recover",
    "staged",
]

MARKER = ".cargohold-incomplete"
STAGING = ".cargohold-staging"
FORMAT = 1

Mode = Literal["merge", "replace"]
Phase = Literal["writing", "clearing", "merging"]


def is_internal(name: str) -> bool:
    """A top-level name that belongs to this protocol, not to the data."""
    return name == MARKER or name.startswith(STAGING)


def _hidden(path: str) -> bool:
    return path.startswith(".cargohold-") and is_internal(path.split("/", 1)[0])


class Visible:
    """A walk of a target's root without this protocol's own names (the marker, staging
    folders and what is left of them): readers -- snapshot, export, clone, ``volume du`` --
    see the data only."""

    def __init__(self, source: EntrySource) -> None:
        self._source = source

    @property
    def random_access(self) -> bool:
        return self._source.random_access

    def __iter__(self) -> Iterator[tuple[Entry, Opener | None]]:
        return ((e, o) for e, o in self._source if not _hidden(e.path))

    def walk(self) -> Iterator[Walked]:
        return (w for w in self._source.walk() if not _hidden(w[0].path))

    def twin_source(self) -> TwinSource | None:
        ask = getattr(self._source, "twin_source", None)
        found: TwinSource | None = ask() if ask is not None else None
        return None if found is None else dataclasses.replace(found, visible=True)


@dataclass(frozen=True)
class Marker:
    """What an interrupted operation left behind, as written in ``.cargohold-incomplete``."""

    operation: str
    mode: Mode
    phase: Phase
    staging: str
    started: str
    format: int = FORMAT


def _write_marker(root: ConfinedDir, marker: Marker) -> None:
    data = json.dumps(asdict(marker), sort_keys=True).encode()
    tmp = f"{MARKER}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=root.fd)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, MARKER, src_dir_fd=root.fd, dst_dir_fd=root.fd)
    os.fsync(root.fd)


def read_marker(root: ConfinedDir) -> Marker | None:
    """The marker of an interrupted operation, None when there is none.

    Raises:
        TransferError: a marker that is not a valid record (it is left in place).
    """
    st = root.lstat(MARKER)
    if st is None:
        return None
    bad = TransferError(
        f"{root.path}/{MARKER} is damaged: an interrupted operation cannot be finished.",
        hint=f"Check the content of {root.path}, then remove {MARKER} and any "
        f"{STAGING}* folder in it by hand.",
    )
    if not stat.S_ISREG(st.st_mode) or st.st_size > 65536:
        raise bad
    with root.open_file(MARKER) as f:
        raw = f.read()
    try:
        data = json.loads(raw)
        marker = Marker(
            operation=str(data["operation"]),
            mode=data["mode"],
            phase=data["phase"],
            staging=str(data["staging"]),
            started=str(data["started"]),
            format=int(data["format"]),
        )
    except (ValueError, KeyError, TypeError, RecursionError):
        raise bad from None
    if (
        marker.format != FORMAT
        or marker.mode not in ("merge", "replace")
        or marker.phase not in ("writing", "clearing", "merging")
        or not marker.staging.startswith(STAGING)
        or "/" in marker.staging
    ):
        raise bad
    return marker


def recover(root: ConfinedDir) -> tuple[Marker, str] | None:
    """Finish or undo what an interrupted operation left in ``root``.

    Returns:
        None when nothing was interrupted; else the marker and ``"discarded"`` (the old content
        stands, unchanged) or ``"completed"`` (the new content was whole and is now in place).
    """
    marker = read_marker(root)
    if marker is None:
        for name in root.names():  # staging folders of a run killed before its marker landed
            if name.startswith(STAGING):
                root.remove(name)
        return None
    if marker.phase == "writing":
        for name in root.names():
            if name.startswith(STAGING):
                root.remove(name)
        root.remove(MARKER)
        os.fsync(root.fd)
        return marker, "discarded"
    _commit(root, marker)
    return marker, "completed"


@dataclass
class Stage:
    """The folder to write the new state into, and the folders in it whose attributes are not
    to be copied over the target's (made only as parents, without an entry of their own)."""

    dir: ConfinedDir
    keep_attrs: set[str]


@contextlib.contextmanager
def staged(root: ConfinedDir, operation: str, mode: Mode) -> Iterator[Stage]:
    """A folder to write the new state into; swapped in when the block ends without an error.

    On an error, the staging folder and the marker are removed and ``root`` is as it was.
    Call ``recover`` first: a marker already in place is refused here.

    Raises:
        TransferError: ``root`` holds the marker of another, unfinished operation.
    """
    if read_marker(root) is not None:
        raise TransferError(
            f"{root.path} holds an unfinished operation.",
            hint="Run the same command again: it finishes or cleans what was interrupted.",
        )
    name = f"{STAGING}-{secrets.token_hex(4)}"
    marker = Marker(
        operation=operation,
        mode=mode,
        phase="writing",
        staging=name,
        started=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    before = os.fstat(root.fd)
    _write_marker(root, marker)
    try:
        stage = root.sub(name, create=True)
    except BaseException:
        root.remove(MARKER)
        _restore_times(root, before)
        raise
    handle = Stage(stage, set())
    try:
        yield handle
        fd = root.open_dir(name)
        try:
            syncfs(fd)  # the new content is on disk before the old one is removed
        finally:
            os.close(fd)
    except BaseException:
        stage.close()
        root.remove(name)
        root.remove(MARKER)
        _restore_times(root, before)
        raise
    stage.close()
    _commit(root, marker, handle.keep_attrs)


def _restore_times(root: ConfinedDir, before: os.stat_result) -> None:
    """Undo what adding and removing the marker and the staging folder did to the root."""
    os.utime(root.fd, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.fsync(root.fd)


def _commit(root: ConfinedDir, marker: Marker, keep_attrs: set[str] | None = None) -> None:
    # Resumed after a kill, which folders were mere parents is no longer known: the attributes
    # of folders that exist on both sides are then left as they are.
    keep = keep_attrs if keep_attrs is not None else _ALL
    if root.lstat(marker.staging) is None:
        if marker.phase == "merging":  # killed after the last rename: only the marker is left
            root.remove(MARKER)
            os.fsync(root.fd)
            return
        raise TransferError(
            f"{root.path}: the staged content of {marker.operation!r} is missing.",
            hint=f"Check {root.path}, then remove {MARKER} in it by hand.",
        )
    # Opened before anything is removed: a staging name that is not a real folder (a link a
    # container planted) stops the commit here, with the old content still in place.
    src = root.open_dir(marker.staging)
    try:
        if marker.mode == "replace" and marker.phase in ("writing", "clearing"):
            marker = _phase(root, marker, "clearing")
            for name in root.names():
                if not is_internal(name):
                    root.remove(name)
        marker = _phase(root, marker, "merging")
        before = os.fstat(src)
        _merge(src, root.fd, "", keep)
        os.rmdir(marker.staging, dir_fd=root.fd)
        os.fsync(root.fd)
        root.remove(MARKER)
        if not _kept("", keep):  # last: removing the staging folder and the marker touch it
            _copy_attrs(before, root.fd)
    finally:
        os.close(src)
    os.fsync(root.fd)


def _phase(root: ConfinedDir, marker: Marker, phase: Phase) -> Marker:
    if marker.phase == phase:
        return marker
    new = Marker(marker.operation, marker.mode, phase, marker.staging, marker.started)
    _write_marker(root, new)
    return new


def _copy_attrs(st: os.stat_result, dst: int) -> None:
    """Give folder ``dst`` the attributes a staged folder had before its content moved out
    (moving it out changed the staged folder's own times)."""
    if os.geteuid() == 0:
        os.fchown(dst, st.st_uid, st.st_gid)
    os.fchmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


class _All(set[str]):
    def __contains__(self, _: object) -> bool:
        return True


_ALL = _All()


def _kept(rel: str, keep: set[str]) -> bool:
    return rel in keep


def _merge(src: int, dst: int, rel: str, keep: set[str]) -> None:
    """Move everything in folder ``src`` into folder ``dst``: names that exist are replaced,
    folders that exist on both sides are merged."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.scandir(src) as it:
        names = sorted(e.name for e in it)
    for name in names:
        child = f"{rel}/{name}" if rel else name
        s = os.stat(name, dir_fd=src, follow_symlinks=False)
        try:
            d: os.stat_result | None = os.stat(name, dir_fd=dst, follow_symlinks=False)
        except FileNotFoundError:
            d = None
        if d is not None and stat.S_ISDIR(s.st_mode) and stat.S_ISDIR(d.st_mode):
            child_src = os.open(name, flags, dir_fd=src)
            try:
                child_dst = os.open(name, flags, dir_fd=dst)
                try:
                    _merge(child_src, child_dst, child, keep)
                    if not _kept(child, keep):
                        _copy_attrs(s, child_dst)
                finally:
                    os.close(child_dst)
            finally:
                os.close(child_src)
            os.rmdir(name, dir_fd=src)
            continue
        if d is not None and stat.S_ISDIR(d.st_mode):
            shutil.rmtree(name, dir_fd=dst)
        elif d is not None and stat.S_ISDIR(s.st_mode):
            os.unlink(name, dir_fd=dst)
        os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
