"""Scheduled snapshots (``snapshot VOLUME --every 1h``) and ``--pause``.

``--pause`` freezes (``docker pause``, the cgroup freezer) every running container that mounts
the volume for exactly the time of the read, so that a job writing several files at once is
captured in one consistent state; they are unpaused whatever happens, including Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from cargohold.engine import Engine
from cargohold.errors import UsageError
from cargohold.kinds import parse_duration as _seconds

__all__ = ["parse_duration", "paused_users"]

log = logging.getLogger(__name__)


def parse_duration(text: str) -> float:
    """``30s``, ``15m``, ``1h``, ``1d`` (or a sum like ``1h30m``) → seconds.

    Raises:
        UsageError: anything else, or less than a second.
    """
    try:
        return _seconds(text)
    except ValueError as exc:
        message, _, hint = str(exc).partition("; ")
        raise UsageError(f"{message}.", hint=f"{hint[:1].upper()}{hint[1:]}.") from None


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
