"""Scheduled snapshots (``snapshot VOLUME --every 1h``) and ``--pause``.

``--pause`` freezes (``docker pause``, the cgroup freezer) every running container that mounts
the volume for exactly the time of the read, so that a job writing several files at once is
captured in one consistent state; they are unpaused whatever happens, including Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

from cargohold.engine import Engine
from cargohold.errors import UsageError

__all__ = ["parse_duration", "paused_users"]

log = logging.getLogger(__name__)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``30s``, ``15m``, ``1h``, ``1d`` (or a sum like ``1h30m``) → seconds.

    Raises:
        UsageError: anything else, or less than a second.
    """
    parts = re.fullmatch(r"((\d+)([smhd]))+", text.strip())
    if not parts:
        raise UsageError(f"{text!r} is not a duration.", hint="Write 30s, 15m, 1h, 1d or 1h30m.")
    seconds = float(sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhd])", text)))
    if seconds < 1:
        raise UsageError(f"{text!r} is too short.", hint="Snapshot at most once a second.")
    return seconds


@contextlib.contextmanager
def paused_users(engine: Engine, volume: str, *, enabled: bool) -> Iterator[list[str]]:
    """Pause the running containers that mount ``volume`` for the duration of the block."""
    if not enabled:
        yield []
        return
    paused: list[str] = []
    try:
        for name in engine.volume_users().get(volume, []):
            state = engine.container(name)
            if state is not None and state.state == "running":
                engine.pause(name)
                paused.append(name)
                log.info("paused %s for the snapshot of %s", name, volume)
        yield paused
    finally:
        for name in paused:
            try:
                engine.unpause(name)
            except Exception as exc:  # keep unpausing the others
                log.error("could not unpause %s: %s", name, exc)
