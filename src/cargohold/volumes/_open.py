"""Choosing how to reach a volume: directly when its folder is on this host and accessible,
through the Engine API otherwise (or as ``CARGOHOLD_VOLUME_ACCESS`` says)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cargohold.engine import Engine
from cargohold.errors import UsageError, VolumeNotFound
from cargohold.volumes._access import (
    ACCESS_ENV,
    VolumeAccess,
    check_volume_name,
    engine_is_local,
)
from cargohold.volumes._engine_api import EngineApiVolume
from cargohold.volumes._local import LocalVolume

__all__ = ["open_volume"]

log = logging.getLogger(__name__)


def open_volume(engine: Engine, name: str) -> VolumeAccess:
    """The volume's files, on the local path when possible.

    Raises:
        VolumeNotFound: no such volume.
        UsageError: ``CARGOHOLD_VOLUME_ACCESS`` holds something else than auto|local|archive.
    """
    info = engine.volume(check_volume_name(name))
    wanted = os.environ.get(ACCESS_ENV, "auto")
    if wanted not in ("auto", "local", "archive"):
        raise UsageError(
            f"{ACCESS_ENV}={wanted!r} is not auto, local or archive.",
            hint=f"Unset {ACCESS_ENV} to let cargohold choose.",
        )
    if (
        wanted != "archive"
        and engine_is_local()
        and info.driver == "local"
        and not info.options
        and info.mountpoint
    ):
        mount = Path(info.mountpoint)
        if os.access(mount, os.R_OK | os.X_OK | os.W_OK):
            log.debug("volume %s: local access", name)
            return LocalVolume(engine, info, mount)
    if wanted == "local":
        raise VolumeNotFound(
            f"Volume {name} cannot be reached directly ({info.mountpoint} is not accessible here).",
            hint=f"Unset {ACCESS_ENV} to go through the engine instead.",
        )
    log.debug("volume %s: archive access", name)
    return EngineApiVolume(engine, info)
