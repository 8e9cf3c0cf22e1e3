"""A host-side journal of volumes that a command is creating or writing.

The direct path marks an interrupted write inside the volume (``archive.staging``); the Engine
API cannot rename or delete, so the marker of a write through it lives here, on the host that
runs cargohold. Two kinds of entries, each keyed by engine and volume:

* ``begin``/``end`` -- a volume the command itself created. A rerun that finds an entry whose
  writer is gone knows the volume holds a partial copy that no one else wrote, and starts over.
* ``WriteRecord`` -- an Engine-API write in progress (``EngineApiVolume``): what it was, where
  it stages and how far it got, so that ``recover`` can discard or finish it. Its spool (the
  entries being written, one JSON line each) sits next to it.

Entries are small versioned JSON records, written atomically, validated on read; one whose
writer is still alive makes the next writer of that volume wait (an error that says so).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cargohold._atomic import write_bytes_atomic
from cargohold.errors import TransferError

__all__ = ["Journal", "WriteRecord", "new_write"]

log = logging.getLogger(__name__)

FORMAT = 1


@dataclass(frozen=True)
class _Record:
    volume: str
    operation: str
    pid: int
    started: str
    format: int = FORMAT


WriteKind = Literal["merge", "replace"]
WritePhase = Literal["writing", "committing"]


@dataclass(frozen=True)
class WriteRecord:
    """An Engine-API write into an existing volume, as far as it got.

    ``merge``: files are staged in the folder ``staging`` inside the volume, then hard-linked
    into place (``committing``) from the spool.
    ``replace``: the new content is written into the volume ``staging``, then (``committing``)
    the volume is emptied and the content copied over.
    """

    volume: str
    operation: str
    kind: WriteKind
    phase: WritePhase
    staging: str
    pid: int
    started: str
    format: int = FORMAT


def _default_folder() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "cargohold" / "unfinished"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Journal:
    """Unfinished volume-creating writes of this host, keyed by engine and volume."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or _default_folder()
        self._engine = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")

    def _path(self, volume: str) -> Path:
        key = hashlib.sha256(f"{self._engine}\0{volume}".encode()).hexdigest()[:32]
        return self.folder / f"{key}.json"

    def begin(self, volume: str, operation: str) -> None:
        record = _Record(volume, operation, os.getpid(), datetime.now(UTC).isoformat())
        write_bytes_atomic(self._path(volume), json.dumps(asdict(record)).encode())

    def end(self, volume: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(volume).unlink()

    def unfinished(self, volume: str) -> str | None:
        """The operation of a killed run that created ``volume``, None when there is none.

        Raises:
            TransferError: the run that created it is still going.
        """
        path = self._path(volume)
        try:
            data = json.loads(path.read_bytes())
            record = _Record(
                volume=str(data["volume"]),
                operation=str(data["operation"]),
                pid=int(data["pid"]),
                started=str(data["started"]),
                format=int(data["format"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the damaged journal entry %s: %s", path, exc)
            return None
        if record.format != FORMAT or record.volume != volume:
            return None
        _not_alive(volume, record.operation, record.pid)
        return record.operation

    # -- Engine-API writes ----------------------------------------------------------------

    @contextlib.contextmanager
    def hold(self, volume: str, operation: str) -> Iterator[None]:
        """This host's one writer of ``volume``: an ``flock`` held for the block (released by
        the kernel when the process dies, so it never outlives its holder).

        Raises:
            TransferError: another cargohold run on this host holds it.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path(volume).with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise TransferError(
                    f"Volume {volume} is being written by another cargohold run on this host.",
                    hint=f"Wait for it to finish ({operation} was refused), or stop it and run "
                    "the command again.",
                ) from None
            yield
        finally:
            os.close(fd)

    def spool(self, volume: str) -> Path:
        """Where the entries of a staged write into ``volume`` are listed."""
        return self._path(volume).with_suffix(".entries")

    def record_write(self, record: WriteRecord) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(record.volume).with_suffix(".write.json")
        write_bytes_atomic(path, json.dumps(asdict(record)).encode())

    def end_write(self, volume: str) -> None:
        for path in (self._path(volume).with_suffix(".write.json"), self.spool(volume)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def unfinished_write(self, volume: str) -> WriteRecord | None:
        """The Engine-API write into ``volume`` that a killed run left, None when there is none.

        Raises:
            TransferError: the run is still going, or its record is damaged.
        """
        path = self._path(volume).with_suffix(".write.json")
        try:
            data = json.loads(path.read_bytes())
            record = WriteRecord(
                volume=str(data["volume"]),
                operation=str(data["operation"]),
                kind=data["kind"],
                phase=data["phase"],
                staging=str(data["staging"]),
                pid=int(data["pid"]),
                started=str(data["started"]),
                format=int(data["format"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            record = None
        if (
            record is None
            or record.format != FORMAT
            or record.volume != volume
            or record.kind not in ("merge", "replace")
            or record.phase not in ("writing", "committing")
        ):
            raise TransferError(
                f"The record of an interrupted write into volume {volume} ({path}) is damaged.",
                hint=f"Check the volume's content, then remove {path} by hand.",
            )
        _not_alive(volume, record.operation, record.pid)
        return record


def _not_alive(volume: str, operation: str, pid: int) -> None:
    if pid != os.getpid() and _alive(pid):
        raise TransferError(
            f"Volume {volume} is being written by another cargohold run ({operation}, pid {pid}).",
            hint="Wait for it to finish, or stop it and run the command again.",
        )


def new_write(volume: str, operation: str, kind: WriteKind, staging: str) -> WriteRecord:
    return WriteRecord(
        volume,
        operation,
        kind,
        "writing",
        staging,
        os.getpid(),
        datetime.now(UTC).isoformat(timespec="seconds"),
    )
