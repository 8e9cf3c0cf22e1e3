"""The only seam to Docker: a protocol, frozen result types, one table of SDK errors.

    Engine (protocol, below)        what callers may ask of an engine, in cargohold's terms
    types                           MountRequest, ContainerRequest → EngineInfo, ContainerInfo,
                                    VolumeInfo, ContainerStop (frozen; no Docker key names)
    helpers                         helper-container labels and the "left behind" rule
    _docker.DockerEngine            the protocol over docker-py (the only SDK user)
    _errors                         the one table: SDK/transport error → cargohold error,
                                    applied around every call and every stream
    _parse                          Docker's JSON → types, with pydantic

Importing this package does not import the Docker SDK: ``connect()`` does, so commands that
never talk to Docker start without it. Nothing here imports ``plan`` or the archive code: a
caller converts its mounts into ``MountRequest`` and parses archive byte streams itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import IO, Protocol

from cargohold.engine.helpers import HELPER_IMAGE, HELPER_MOUNT
from cargohold.engine.types import (
    ContainerInfo,
    ContainerRequest,
    ContainerStop,
    EngineInfo,
    MountRequest,
    VolumeInfo,
)

__all__ = [
    "HELPER_IMAGE",
    "HELPER_MOUNT",
    "ArchiveHelper",
    "ContainerInfo",
    "ContainerRequest",
    "ContainerStop",
    "Engine",
    "EngineInfo",
    "MountRequest",
    "VolumeInfo",
    "connect",
]

log = logging.getLogger(__name__)


class ArchiveHelper(Protocol):
    """A volume attached to a container that never runs; its files move as tar streams."""

    def get_archive(self, path: str) -> Iterator[bytes]:
        """A tar stream of ``path`` in the volume (its first member is the path itself).

        Raises:
            EngineError: the path is not in the volume, or the engine failed mid-stream.
        """
        ...

    def put_archive(self, data: Iterator[bytes]) -> None:
        """Extract a tar stream at the helper's root (names start with ``v/``)."""
        ...

    def close(self) -> None:
        """End every stream still open."""
        ...


class Engine(Protocol):
    """What cargohold asks of a Docker engine. Every method raises only ``CargoholdError``s
    (``EngineUnavailable`` when the engine is gone, also in the middle of a stream)."""

    # engine
    def info(self) -> EngineInfo: ...

    # images
    def image_exists(self, name: str) -> bool: ...
    def image_label(self, name: str, key: str) -> str | None:
        """The value of one label of an image; None when the image or the label is missing."""
        ...

    def pull(self, name: str) -> bool:
        """Try to pull; False when no registry can provide the image."""
        ...

    def build(
        self,
        *,
        context: str,
        tag: str,
        dockerfile: str | None,
        buildargs: dict[str, str],
        labels: dict[str, str],
        on_output: Callable[[str], None] | None = None,
    ) -> None:
        """Build an image, streaming its output lines to ``on_output``.

        Raises:
            BuildFailed: a step failed; the message ends with the build's last output.
        """
        ...

    def import_image(self, stream: IO[bytes] | bytes, name: str, changes: list[str]) -> None:
        """Create an image from a root file system tarball: a pipe (streamed) or bytes."""
        ...

    def remove_image(self, name: str) -> None: ...

    # volumes
    def volume_exists(self, name: str) -> bool: ...
    def create_volume(
        self,
        name: str,
        labels: Mapping[str, str],
        *,
        driver: str | None = None,
        driver_opts: Mapping[str, str] | None = None,
    ) -> None: ...
    def remove_volume(self, name: str) -> None:
        """Remove a volume (gone already is fine)."""
        ...

    def volume(self, name: str) -> VolumeInfo:
        """Raises:
        VolumeNotFound: no such volume."""
        ...

    def volumes(self, label: str | None = None) -> list[VolumeInfo]: ...
    def volume_users(self) -> dict[str, list[str]]:
        """Volume name → names of the containers (running or not) that mount it."""
        ...

    def archive_helper(
        self, volume: str, *, readonly: bool
    ) -> AbstractContextManager[ArchiveHelper]:
        """A never-started, labelled helper container with ``volume`` at /v, removed after."""
        ...

    def remove_stale_helpers(self) -> list[str]:
        """Remove helpers whose creating process is gone (``helpers.is_stale``); their names."""
        ...

    # containers
    def container(self, name: str) -> ContainerInfo | None: ...
    def inspect_container(self, name: str) -> ContainerInfo:
        """Raises:
        ContainerNotFound: no such container."""
        ...

    def remove_container(self, name: str, *, force: bool = False) -> None: ...
    def create_container(self, request: ContainerRequest) -> str:
        """Create (not start) a job container. Returns its id."""
        ...

    def start(self, container_id: str) -> None: ...
    def logs(self, container_id: str) -> Iterator[tuple[int, bytes]]:
        """The output from the start, followed until the container stops, as (1 for stdout or
        2 for stderr, bytes): the job's two streams stay apart."""
        ...

    def wait(self, container_id: str) -> int: ...
    def stop(self, container_id: str, timeout: int = 30) -> None: ...
    def pause(self, container_id: str) -> None:
        """Freeze a running container's processes (``docker pause``)."""
        ...

    def unpause(self, container_id: str) -> None: ...
    def container_names(self) -> list[str]:
        """Every container, running or not."""
        ...

    def containers(self, label: str) -> list[ContainerInfo]:
        """The containers with a label (running or not), from the engine's listing."""
        ...

    def container_changes(self, name: str) -> list[str]:
        """Paths a container added or modified in its own layer (not in its mounts).

        Raises:
            ContainerNotFound: no such container.
        """
        ...

    def container_archive(self, name: str, path: str) -> Iterator[bytes]:
        """A tar stream of ``path`` in a container (running or stopped); its first member is
        the path itself. Parse it with ``cargohold``'s archive reader.

        Raises:
            ContainerNotFound: no such container.
            EngineError: the path is not in it.
        """
        ...

    def container_stops(self, until: float | None = None) -> Iterator[ContainerStop]:
        """Containers as they stop ("die" events), until a monotonic deadline (or forever)."""
        ...

    def run_helper(
        self,
        image: str,
        command: list[str],
        mounts: list[MountRequest],
        *,
        user: str = "0:0",
        entrypoint: list[str] | None = None,
    ) -> tuple[int, str]:
        """Run a short-lived, labelled helper container to completion: (exit code, output)."""
        ...


def connect(timeout: int = 60) -> Engine:
    """Connect to the engine that DOCKER_HOST (or the default socket) names, check it answers,
    and remove the helper containers that processes now gone left behind.

    Raises:
        EngineUnavailable: nothing answers, with how to start an engine.
    """
    import docker

    from cargohold.engine._docker import DockerEngine
    from cargohold.engine._errors import translate
    from cargohold.errors import EngineError

    with translate("Connecting to Docker"):
        client = docker.from_env(timeout=timeout)
        client.ping()
    log.debug("connected to %s", os.environ.get("DOCKER_HOST", "the default socket"))
    engine = DockerEngine(client)
    try:
        engine.remove_stale_helpers()
    except EngineError as exc:  # never fail a command for the sake of housekeeping
        log.warning("could not remove helpers left behind: %s", exc)
    return engine
