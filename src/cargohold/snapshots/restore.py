"""Restore a snapshot into a volume or a folder: verified first, staged, swapped in when complete.

The rules (issue 8, defects 4, 5, 7):

* **Verify before touching the target.** Every tree of the snapshot is read and validated, and
  every content blob must be in the index, before anything is written. On the Engine-API path,
  where the target cannot be staged, every content blob is also read and checked first.
* **Stage, then swap.** On the direct path (a volume's folder, or ``--to DIR``) the snapshot is
  written into ``.cargohold-restore.staging`` inside the target (inside, not beside: the target
  may be a mount point -- a volume, a PVC -- that cannot be renamed), and only when every byte is
  written and checked do its children replace the old ones. A damaged blob found while writing
  leaves the target as it was.
* **An interruption is visible and a rerun finishes it.** A state file
  (``.cargohold-restore.json``) says what phase the restore reached (writing, swapping, cleaning).
  Rerunning ``restore`` on the same target first completes a swap that was under way (the
  staging folder was complete) or removes a half-written staging folder, then does what it was
  asked.
* **Never under a running job.** A volume that a running container mounts is refused, on both
  paths, whatever ``--force`` says.
* **Confined.** Names in trees are single path components (``_format.valid_name``), hardlink
  targets are relative paths without ``..``, and every write goes through ``TreeWriter``, which
  refuses to pass through a symlink out of its target -- a crafted tree cannot make restore write
  outside the target.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cargohold._atomic import fsync_dir, write_bytes_atomic
from cargohold.archive import (
    Entry,
    EntryStream,
    Opener,
    Progress,
    TreeWriter,
    clean_member_name,
    syncfs,
)
from cargohold.engine import Engine
from cargohold.errors import ChecksumMismatch, UsageError, VolumeNotFound
from cargohold.snapshots._format import Node
from cargohold.snapshots.repository import Repository, RepositoryError
from cargohold.snapshots.snapshot import resolve_snapshot
from cargohold.volumes import open_volume

__all__ = ["RestoreResult", "restore_to_path", "restore_volume", "snapshot_entries"]

STATE = ".cargohold-restore.json"
STAGING = ".cargohold-restore.staging"
OLD = ".cargohold-restore.old"
_OURS = {STATE, STAGING, OLD}


def _no_progress(_: int) -> None:
    pass


@dataclass(frozen=True)
class RestoreResult:
    id: str
    source: str
    target: str
    files: int
    bytes: int
    access: str
    finished_interrupted: bool = False


# -- reading a snapshot as entries --------------------------------------------------------


class _BlobStream(io.RawIOBase):
    """A file's bytes, blob after blob, each checked against its id; the length at the end."""

    def __init__(self, repo: Repository, node: Node, what: str) -> None:
        super().__init__()
        self._repo = repo
        self._refs = list(node.refs)
        self._size = node.size
        self._what = what
        self._buffer = b""
        self._seen = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while not self._buffer and self._refs:
            ref = self._refs.pop(0)
            try:
                self._buffer = self._repo.read_blob(ref, self._what)
            except RepositoryError as exc:
                raise ChecksumMismatch(exc.message, hint=exc.hint) from None
        if not self._buffer:
            if self._seen != self._size:
                raise ChecksumMismatch(
                    f"{self._what}: {self._seen} bytes restored, the snapshot says {self._size}.",
                    hint="The repository is damaged; restore another snapshot.",
                )
            return b""
        n = len(self._buffer) if size is None or size < 0 else min(size, len(self._buffer))
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        self._seen += len(data)
        return data


def _label(record_id: str, path: str) -> str:
    return f"snapshot {record_id}, {path or '/'}"


def _children(repo: Repository, node: Node, record_id: str, path: str) -> Iterator[Node]:
    for ref in node.refs:
        yield from repo.read_tree(ref, _label(record_id, path))


def snapshot_entries(
    repo: Repository, record_id: str, root: Node, *, with_data: bool = True
) -> Iterator[tuple[Entry, Opener | None]]:
    """A snapshot's tree as entries, parents first (the order it was taken in)."""

    def entry(node: Node, path: str) -> Entry:
        target = node.target
        if node.kind == "hardlink":
            try:
                target = clean_member_name(target, what="hardlink target")
            except Exception as exc:
                raise RepositoryError(
                    f"{_label(record_id, path)}: {exc}", hint="The repository is damaged."
                ) from None
        return Entry(
            path=path,
            kind=node.kind,
            mode=node.mode,
            uid=node.uid,
            gid=node.gid,
            mtime_ns=node.mtime_ns,
            size=node.size,
            target=target,
        )

    def walk(node: Node, path: str) -> Iterator[tuple[Entry, Opener | None]]:
        for child in _children(repo, node, record_id, path):
            child_path = f"{path}/{child.name}" if path else child.name
            if child.kind == "dir":
                yield entry(child, child_path), None
                yield from walk(child, child_path)
            elif child.kind == "file" and with_data:
                what = _label(record_id, child_path)
                yield (
                    entry(child, child_path),
                    (
                        lambda c=child, w=what: _BlobStream(repo, c, w)  # type: ignore[misc]
                    ),
                )
            else:
                yield entry(child, child_path), None

    yield entry(root, ""), None
    yield from walk(root, "")


def verify_snapshot(repo: Repository, record_id: str, root: Node, *, read_data: bool) -> int:
    """Read every tree; check every content blob is indexed (``read_data``: read and check it).

    Returns the number of files. Raises ChecksumMismatch naming the snapshot and the path.
    """
    files = 0

    def walk(node: Node, path: str) -> None:
        nonlocal files
        for child in _children(repo, node, record_id, path):
            child_path = f"{path}/{child.name}" if path else child.name
            if child.kind == "dir":
                walk(child, child_path)
            elif child.kind == "file":
                files += 1
                for ref in child.refs:
                    what = _label(record_id, child_path)
                    if repo.locate(ref) is None:
                        raise ChecksumMismatch(
                            f"{what}: blob {ref[:12]}… is missing from the repository.",
                            hint="The repository is damaged; restore another snapshot.",
                        )
                    if read_data:
                        try:
                            repo.read_blob(ref, what)
                        except RepositoryError as exc:
                            raise ChecksumMismatch(exc.message, hint=exc.hint) from None

    try:
        walk(root, "")
    except RepositoryError as exc:
        raise ChecksumMismatch(exc.message, hint=exc.hint) from None
    return files


def _record_and_root(repo: Repository, ref: str) -> tuple[str, str, Node]:
    record = resolve_snapshot(repo, ref)
    if record.root is None:
        raise RepositoryError(f"Snapshot {record.id} has no tree.", hint="It cannot be restored.")
    return record.id, record.source, record.root


# -- staging and swapping on a host folder ------------------------------------------------


def _write_state(path: Path, snapshot_id: str, phase: str) -> None:
    write_bytes_atomic(path, json.dumps({"snapshot": snapshot_id, "phase": phase}).encode())


def _read_state(path: Path) -> str | None:
    try:
        phase = json.loads(path.read_bytes()).get("phase")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError):
        return "writing"  # unreadable: treat as the earliest phase (the staging is discarded)
    return phase if phase in ("writing", "swapping", "moving-in", "cleaning") else "writing"


def _remove(path: Path) -> None:
    """Remove a file, symlink or folder without following any symlink."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        del st
        os.unlink(path)


def _swap_in_folder(root: Path, state: Path, staging: Path, old: Path, snapshot_id: str) -> None:
    """Replace the children of ``root`` by those of ``staging`` (a volume's folder: the folder
    itself must stay, it is what the engine mounts). Resumable from any phase."""
    phase = _read_state(state)
    if phase in (None, "writing"):
        _write_state(state, snapshot_id, "swapping")
        phase = "swapping"
    if phase == "swapping":
        old.mkdir(exist_ok=True)
        for child in os.listdir(root):
            if child not in _OURS:
                os.rename(root / child, old / child)
        _write_state(state, snapshot_id, "moving-in")
        phase = "moving-in"
    attrs = os.stat(staging) if staging.is_dir() else None
    if phase == "moving-in":
        if staging.is_dir():
            for child in os.listdir(staging):
                os.rename(staging / child, root / child)
        fsync_dir(root)
        _write_state(state, snapshot_id, "cleaning")
    _remove(old)
    _remove(staging)
    os.unlink(state)
    if attrs is not None:  # last: every step above touched the folder's times
        with contextlib.suppress(OSError):
            if os.geteuid() == 0:
                os.chown(root, attrs.st_uid, attrs.st_gid)
            os.chmod(root, attrs.st_mode & 0o7777)
            os.utime(root, ns=(attrs.st_atime_ns, attrs.st_mtime_ns))


def _sync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        syncfs(fd)
    finally:
        os.close(fd)


def _state_snapshot(path: Path) -> str:
    try:
        return str(json.loads(path.read_bytes()).get("snapshot") or "")
    except (OSError, ValueError, AttributeError):
        return ""


def _resume(root: Path) -> str | None:
    """Finish or clean an interrupted restore into ``root``. Returns None if there was none,
    the snapshot id if an interrupted swap was completed, "" if a partial staging was removed."""
    state, staging, old = root / STATE, root / STAGING, root / OLD
    phase = _read_state(state)
    if phase is None:
        for leftover in (staging, old):  # a state file lost with its folders still there
            _remove(leftover)
        return None
    if phase == "writing":
        _remove(staging)
        _remove(old)
        os.unlink(state)
        return ""
    snapshot_id = _state_snapshot(state)
    _swap_in_folder(root, state, staging, old, snapshot_id)
    return snapshot_id


def _has_content(root: Path) -> bool:
    with os.scandir(root) as it:
        return any(e.name not in _OURS for e in it)


def _restore_into_folder(
    repo: Repository,
    snapshot_id: str,
    tree_root: Node,
    root: Path,
    progress: Progress,
) -> tuple[int, int]:
    state, staging, old = root / STATE, root / STAGING, root / OLD
    _remove(staging)
    _write_state(state, snapshot_id, "writing")
    writer = TreeWriter(staging, progress=progress, workers=4)
    try:
        writer.write_all(snapshot_entries(repo, snapshot_id, tree_root))
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(staging)
            os.unlink(state)
        raise
    _sync(staging)
    _swap_in_folder(root, state, staging, old, snapshot_id)
    return writer.files, writer.bytes


# -- the commands -------------------------------------------------------------------------


def _running_users(engine: Engine, volume: str) -> list[str]:
    running = []
    for name in engine.volume_users().get(volume, []):
        state = engine.container(name)
        if state is not None and state.state in ("running", "paused", "restarting"):
            running.append(name)
    return running


def restore_volume(
    engine: Engine,
    repo: Repository,
    ref: str,
    volume: str,
    *,
    force: bool = False,
    progress: Progress = _no_progress,
) -> RestoreResult:
    """Restore a snapshot into a new or empty volume (``force``: replace a volume's content).

    Raises:
        UsageError: the volume has data and ``force`` is not set, or a running container uses it.
        ChecksumMismatch: the snapshot is damaged (named with the path); the volume is unchanged.
    """
    if repo.legacy:
        from cargohold.snapshots._legacy import restore_legacy

        return restore_legacy(engine, repo, ref, volume, force=force, progress=progress)
    snapshot_id, source, tree_root = _record_and_root(repo, ref)
    created = False
    try:
        files = open_volume(engine, volume)
    except VolumeNotFound:
        files = None
    if files is not None:
        users = _running_users(engine, volume)
        if users:
            raise UsageError(
                f"Volume {volume} is in use by running container(s) {', '.join(users)}; "
                "restoring would change files under a live job.",
                hint="Stop them first (`docker stop …`), or restore into a new volume.",
            )
    interrupted = False
    if files is not None and files.local_root is not None:
        resumed = _resume(files.local_root)
        interrupted = resumed is not None
        if resumed == snapshot_id:  # the interrupted run of this same restore is now complete
            return RestoreResult(snapshot_id, source, volume, 0, 0, files.access, True)
        if _has_content(files.local_root) and not force:
            raise _not_empty(volume)
    elif files is not None and not files.is_empty() and not force:
        raise _not_empty(volume)
    # Everything that will be needed must be there before anything changes.
    read_data = files is None or files.local_root is None
    verify_snapshot(repo, snapshot_id, tree_root, read_data=read_data and files is not None)
    if files is None:
        labels = {"cargohold.restored-from": snapshot_id}
        engine.create_volume(volume, labels)
        created = True
        files = open_volume(engine, volume)
    try:
        if files.local_root is not None:
            count, size = _restore_into_folder(
                repo, snapshot_id, tree_root, files.local_root, progress
            )
        else:
            if not files.is_empty():
                files.clear()
                files = open_volume(engine, volume)
            stream = EntryStream(snapshot_entries(repo, snapshot_id, tree_root), random_access=True)
            written = files.write(stream, progress=progress)
            count, size = written.files, written.bytes
    except BaseException:
        if created:
            with contextlib.suppress(Exception):
                engine.remove_volume(volume)
        raise
    return RestoreResult(snapshot_id, source, volume, count, size, files.access, interrupted)


def _not_empty(volume: str) -> UsageError:
    return UsageError(
        f"{volume} is not empty; restoring would mix two states.",
        hint=f"Restore into a new or empty target, or pass --force to replace its content "
        f"(snapshot it first: `cargohold snapshot {volume}`).",
    )


def restore_to_path(
    repo: Repository,
    ref: str,
    target: Path,
    *,
    force: bool = False,
    progress: Progress = _no_progress,
) -> RestoreResult:
    """Restore a snapshot into a host folder (no Docker needed), staged inside it.

    Raises:
        UsageError: the folder has data and ``force`` is not set, or it is not a folder.
        ChecksumMismatch: the snapshot is damaged; the folder is unchanged.
    """
    if repo.legacy:
        raise UsageError(
            "Restoring a format-1 snapshot into a folder is not supported.",
            hint="Restore it into a volume, or `cargohold repo migrate` the repository.",
        )
    snapshot_id, source, tree_root = _record_and_root(repo, ref)
    target = Path(os.path.abspath(target))
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise UsageError(f"{target} exists and is not a folder.", hint="Pick a folder.")
    target.mkdir(parents=True, exist_ok=True)
    resumed = _resume(target)
    if resumed == snapshot_id:  # the interrupted run of this same restore is now complete
        return RestoreResult(snapshot_id, source, str(target), 0, 0, "local", True)
    interrupted = resumed is not None
    if _has_content(target) and not force:
        raise _not_empty(str(target))
    verify_snapshot(repo, snapshot_id, tree_root, read_data=False)
    count, size = _restore_into_folder(repo, snapshot_id, tree_root, target, progress)
    return RestoreResult(snapshot_id, source, str(target), count, size, "local", interrupted)
