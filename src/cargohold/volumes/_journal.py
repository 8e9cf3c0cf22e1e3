"""A host-side journal of volumes that a command is creating and filling.

The direct path marks an interrupted write inside the volume (``archive.staging``); the Engine
API cannot rename or delete, so it cannot. This journal covers both paths for the one case
where starting over is always safe: a volume the command itself created. ``begin`` is written
before the volume is created, ``end`` after the last byte landed; a rerun that finds an entry
whose writer is gone knows the volume holds a partial copy that no one else wrote, and starts
over. Entries are small versioned JSON records, written atomically, validated on read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from cargohold._atomic import write_bytes_atomic
from cargohold.errors import TransferError

__all__ = ["Journal"]

log = logging.getLogger(__name__)

FORMAT = 1


@dataclass(frozen=True)
class _Record:
    volume: str
    operation: str
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
        if record.pid != os.getpid() and _alive(record.pid):
            raise TransferError(
                f"Volume {volume} is being written by another cargohold run "
                f"({record.operation}, pid {record.pid}).",
                hint="Wait for it to finish, or stop it and run the command again.",
            )
        return record.operation
