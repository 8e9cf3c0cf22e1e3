"""Helper containers: who made them, and when one left behind may be removed.

cargohold attaches volumes to short-lived helper containers (a never-started one whose archive
endpoints stream a volume in and out; a short run that hands a volume to the job's user). A
SIGKILLed cargohold, or an engine that died mid-transfer, leaves such a helper behind, and it
pins its volume: ``docker volume rm`` refuses while it exists. So every helper carries labels
naming its owner, and every connection removes the helpers whose owner is provably gone.

"Provably gone" is decided conservatively: the owner label records the boot, the pid namespace,
the pid and the process start time of the cargohold that created the helper. On the same boot
and pid namespace, the owner is gone when no process with that pid and start time exists (a
reused pid has another start time). A helper made elsewhere (another machine sharing a remote
engine, another container) cannot be checked that way; it is stale only after ``FOREIGN_AGE``,
far longer than any transfer. A helper without an owner label (made by an older cargohold) is
treated the same way.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FOREIGN_AGE",
    "HELPER_IMAGE",
    "HELPER_MOUNT",
    "LABEL_HELPER",
    "LABEL_HOST",
    "LABEL_OWNER",
    "UNSEEN",
    "Owner",
    "helper_labels",
    "is_stale",
    "this_process",
]

# A never-started container needs an image, but not a usable one: the engine's archive
# endpoints work on created containers. This one holds nothing but the /v mount point.
HELPER_IMAGE = "cargohold/volume-helper:1"
HELPER_MOUNT = "/v"
LABEL_HELPER = "cargohold.helper"
LABEL_OWNER = "cargohold.helper.owner"
LABEL_HOST = "cargohold.helper.host"
FOREIGN_AGE = 24 * 3600.0


@dataclass(frozen=True)
class Owner:
    """A process, named so that it can be recognised (or found gone) later."""

    boot: str
    pid_namespace: str
    pid: int
    start: str  # the process's start time in clock ticks since boot (/proc/PID/stat field 22)

    def label(self) -> str:
        return f"{self.boot}:{self.pid_namespace}:{self.pid}:{self.start}"

    @classmethod
    def from_label(cls, text: str) -> Owner | None:
        parts = text.split(":")
        if len(parts) != 4 or not parts[2].isdigit() or int(parts[2]) <= 0:
            return None
        return cls(parts[0], parts[1], int(parts[2]), parts[3])


def _read(path: str) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8", "replace").strip()
    except OSError:
        return ""


UNSEEN = "?"


def process_start(pid: int) -> str:
    """The start time of a live process; "" when there is none with that pid; ``UNSEEN`` when
    one exists that this user may not look at (``/proc`` mounted with ``hidepid``)."""
    stat = _read(f"/proc/{pid}/stat")
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = stat.rpartition(")")[2].split()
    if len(fields) > 19:
        return "" if fields[0] == "Z" else fields[19]  # a zombie has ended already
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return ""
    except PermissionError:
        return UNSEEN  # another user's process: alive, its start time hidden
    return UNSEEN


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def this_process() -> Owner:
    return Owner(
        boot=_read("/proc/sys/kernel/random/boot_id").replace(":", "") or "unknown",
        pid_namespace=_pid_namespace() or "unknown",
        pid=os.getpid(),
        start=process_start(os.getpid()) or "unknown",
    )


def helper_labels() -> dict[str, str]:
    """The labels of a helper container created by this process."""
    return {
        LABEL_HELPER: "true",
        LABEL_OWNER: this_process().label(),
        LABEL_HOST: socket.gethostname(),
    }


def is_stale(
    labels: Mapping[str, str],
    created: float,
    *,
    now: float,
    here: Owner,
    start_of: Callable[[int], str] = process_start,
) -> bool:
    """Whether a helper with these labels, created at ``created`` (epoch seconds), was left
    behind by a process that no longer exists.

    Args:
        here: this process (its boot and pid namespace say whether pids can be checked).
        start_of: the start time of a live pid, "" when none (injectable for tests).
    """
    owner = Owner.from_label(labels.get(LABEL_OWNER, ""))
    if owner is None or owner.boot != here.boot or owner.pid_namespace != here.pid_namespace:
        return now - created > FOREIGN_AGE
    if owner.pid == here.pid and owner.start == here.start:
        return False
    start = start_of(owner.pid)
    # A process we cannot see into might be the owner: keep its helper (never guess "gone").
    return start != UNSEEN and start != owner.start
