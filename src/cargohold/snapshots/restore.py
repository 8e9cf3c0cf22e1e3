"""Restore a snapshot into a volume or a folder: verified first, staged, swapped in when complete.

The rules (issue 8, defects 4, 5, 7):

* **Nothing changes until everything is checked.** Every tree and every blob is checked
  against its id as it is written, into a staging area (below); the target's content changes
  only when the whole snapshot is written and checked. A write that could not be staged would
  read and check every byte first (``verify_snapshot``); both access paths stage today, so a
  restore reads the snapshot once (a pass over every tree first cost a fifth of a restore of
  100,000 small files).
* **Stage, then swap.** Through the Engine API, ``--force`` stages the snapshot in a second
  volume and empties the target only when that is whole (``volumes._engine_api``). On the
  direct path (a volume's folder, or ``--to DIR``) the snapshot is
  written through ``archive.staging`` (replace mode): into a staging folder *inside* the target
  (the target may be a mount point -- a volume, a PVC -- that cannot be renamed), and only when
  every byte is written and checked does it replace the old content. A damaged blob found while
  writing leaves the target as it was.
* **An interruption is visible and a rerun finishes it.** The staging marker
  (``.cargohold-incomplete``) names the restore and its phase. Rerunning ``restore`` on the same
  target first completes a swap that was under way or removes a half-written staging folder
  (``VolumeAccess.recover``, ``staging.recover``), then does what it was asked.
* **Never under a running job.** A volume that a running container mounts is refused, on both
  paths, whatever ``--force`` says.
* **Confined.** Names in trees are single path components (``_format.valid_name``), hardlink
  targets are relative paths without ``..``, and every host-side step -- writing, clearing the
  old content, finishing an interrupted run -- goes through ``archive.confined`` (folder
  descriptors, ``O_NOFOLLOW``): neither a crafted tree nor a link a container planted in the
  volume (where the staging folder or a marker would go) makes restore touch anything outside.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cargohold.archive import (
    Entry,
    EntrySource,
    EntryStream,
    Opener,
    Progress,
    clean_member_name,
    no_progress,
    syncfs,
)
from cargohold.archive.confined import ConfinedDir, ConfinedWriter
from cargohold.archive.staging import is_internal, recover, staged
from cargohold.engine import Engine
from cargohold.errors import ChecksumMismatch, UsageError, VolumeNotFound
from cargohold.snapshots._format import Node
from cargohold.snapshots.repository import Repository, RepositoryError
from cargohold.snapshots.snapshot import resolve_snapshot
from cargohold.volumes import Recovery, open_volume

__all__ = ["RestoreResult", "restore_to_path", "restore_volume", "snapshot_entries"]

WRITERS = 4  # files written at once into a folder: overlaps decryption, checksums and the disk


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
            elif child.kind == "file" and with_data and child.data is not None:
                # a small file kept in its tree (checked with the tree's own id)
                yield (
                    entry(child, child_path),
                    (
                        lambda d=child.data: io.BytesIO(d)  # type: ignore[misc]
                    ),
                )
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


def verify_snapshot(repo: Repository, record_id: str, root: Node) -> int:
    """Read every tree and every content blob of a snapshot, each checked against its id.

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
                    repo.read_blob(ref, _label(record_id, child_path))

    try:
        walk(root, "")
    except RepositoryError as exc:
        raise ChecksumMismatch(exc.message, hint=exc.hint) from None
    return files


def _record_and_root(repo: Repository, ref: str, progress: Progress) -> tuple[str, str, Node]:
    """The snapshot ``ref`` names; ``progress`` learns its size (the record counts it)."""
    record = resolve_snapshot(repo, ref)
    if record.root is None:
        raise RepositoryError(f"Snapshot {record.id} has no tree.", hint="It cannot be restored.")
    progress.expect(files=record.files, nbytes=record.bytes, exact=True)
    return record.id, record.source, record.root


def _root_attrs(fd: int, node: Node) -> None:
    """The target folder's own mode, owner (as root) and times, as the snapshot has them."""
    with contextlib.suppress(OSError):
        if os.geteuid() == 0:
            os.fchown(fd, node.uid, node.gid)
        os.fchmod(fd, stat.S_IMODE(node.mode))
        os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))
        os.fsync(fd)


# -- the commands -------------------------------------------------------------------------


def _running_users(engine: Engine, volume: str) -> list[str]:
    running = []
    for name in engine.volume_users().get(volume, []):
        state = engine.container(name)
        if state is not None and state.state in ("running", "paused", "restarting"):
            running.append(name)
    return running


def _operation(snapshot_id: str) -> str:
    """The name an interrupted restore leaves in the staging marker (a rerun recognises it)."""
    return f"restore {snapshot_id}"


def _source(repo: Repository, snapshot_id: str, tree_root: Node) -> EntrySource:
    return EntryStream(snapshot_entries(repo, snapshot_id, tree_root), random_access=True)


def restore_volume(
    engine: Engine,
    repo: Repository,
    ref: str,
    volume: str,
    *,
    force: bool = False,
    progress: Progress = no_progress,
) -> RestoreResult:
    """Restore a snapshot into a new or empty volume (``force``: replace a volume's content).

    Raises:
        UsageError: the volume has data and ``force`` is not set, or a running container uses it.
        ChecksumMismatch: the snapshot is damaged (named with the path); the volume is unchanged.
    """
    if repo.legacy:
        from cargohold.snapshots._legacy import restore_legacy

        return restore_legacy(engine, repo, ref, volume, force=force, progress=progress)
    snapshot_id, source, tree_root = _record_and_root(repo, ref, progress)
    operation = _operation(snapshot_id)
    try:
        files = open_volume(engine, volume)
    except VolumeNotFound:
        files = None
    interrupted = False
    if files is not None:
        users = _running_users(engine, volume)
        if users:
            raise UsageError(
                f"Volume {volume} is in use by running container(s) {', '.join(users)}; "
                "restoring would change files under a live job.",
                hint="Stop them first (`docker stop …`), or restore into a new volume.",
            )
        recovered = files.recover()
        interrupted = recovered is not None
        if recovered == Recovery(operation, "completed"):  # this same restore, now whole
            return RestoreResult(snapshot_id, source, volume, 0, 0, files.access, True)
        if not force and not files.is_empty():
            raise _not_empty(volume)
    # Everything that will be needed must be there before anything changes: a staged write is
    # checked as it goes; one that is not (no access path today) reads every byte first.
    if files is not None and not files.stages_writes:
        verify_snapshot(repo, snapshot_id, tree_root)
    created = files is None
    if files is None:
        engine.create_volume(volume, {"cargohold.restored-from": snapshot_id})
        files = open_volume(engine, volume)
    try:
        written = files.write(
            _source(repo, snapshot_id, tree_root),
            progress=progress,
            operation=operation,
            replace=force and not created,  # else the volume is new or empty: nothing to clear
        )
    except BaseException:
        if created:
            with contextlib.suppress(Exception):
                engine.remove_volume(volume)
        raise
    return RestoreResult(
        snapshot_id, source, volume, written.files, written.bytes, files.access, interrupted
    )


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
    progress: Progress = no_progress,
) -> RestoreResult:
    """Restore a snapshot into a host folder (no Docker needed), staged inside it.

    Raises:
        UsageError: the folder has data and ``force`` is not set, or it is not a folder.
        ChecksumMismatch: the snapshot is damaged; the folder is unchanged.
    """
    if repo.legacy:
        raise UsageError(
            "Restoring a format-1 snapshot into a folder is not supported.",
            hint="Restore it into a volume (format-1 repositories stay readable, not writable).",
        )
    snapshot_id, source, tree_root = _record_and_root(repo, ref, progress)
    operation = _operation(snapshot_id)
    target = Path(os.path.abspath(target))
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise UsageError(f"{target} exists and is not a folder.", hint="Pick a folder.")
    with ConfinedDir.open(target, create=True) as root:
        found = recover(root)
        if found is not None and (found[0].operation, found[1]) == (operation, "completed"):
            # A kill after the last rename leaves no staging folder to take the root's own
            # attributes from: they come from the snapshot, as a whole restore sets them.
            _root_attrs(root.fd, tree_root)
            return RestoreResult(snapshot_id, source, str(target), 0, 0, "local", True)
        if not force and any(not is_internal(name) for name in root.names()):
            raise _not_empty(str(target))
        with staged(root, operation, "replace") as stage:  # (checked as it is written)
            writer = ConfinedWriter(stage.dir, progress=progress, workers=WRITERS, durable=True)
            writer.write_all(_source(repo, snapshot_id, tree_root))
            stage.keep_attrs.update(writer.implicit)
        syncfs(root.fd)
    return RestoreResult(
        snapshot_id, source, str(target), writer.files, writer.bytes, "local", found is not None
    )
