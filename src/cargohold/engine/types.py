"""What callers hand the engine and what they get back: frozen values in cargohold's terms.

Nothing here knows Docker's JSON key names or imports the SDK; ``_parse`` turns the engine's
inspect JSON into these values, and ``plan.Mount`` converts itself into a ``MountRequest``. New
container settings (GPUs, ulimits, …) are new fields of ``ContainerRequest`` with a default, so
every existing caller keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "ContainerInfo",
    "ContainerRequest",
    "ContainerStop",
    "EngineInfo",
    "MountRequest",
    "VolumeInfo",
]


@dataclass(frozen=True)
class MountRequest:
    """One mount of a container: a host folder, a named volume or a tmpfs."""

    type: Literal["bind", "volume", "tmpfs"]
    target: str
    source: str | None = None  # host folder or volume name; None for tmpfs
    readonly: bool = False
    tmpfs_size: int | None = None
    driver: str | None = None  # volume driver, when the engine must create the volume
    driver_opts: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ContainerRequest:
    """Everything a job container is created with. Add a field (with a default) for a new
    runtime setting, and translate it in ``_docker.DockerEngine.create_container``."""

    image: str
    name: str
    command: tuple[str, ...] | None = None
    user: str = ""
    mounts: tuple[MountRequest, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    shm_size: int | None = None
    workdir: str | None = None
    restart_max: int = 0
    # Runtime settings of issue 9 (plan.Runtime converts into these; see jobs.container_request).
    entrypoint: tuple[str, ...] | None = None
    gpu_count: int | None = None  # -1: all GPUs
    gpu_ids: tuple[str, ...] = ()
    ipc_mode: str | None = None
    ulimits: tuple[tuple[str, int, int], ...] = ()  # (name, soft, hard)
    stop_timeout: int | None = None
    init: bool = False
    read_only: bool = False
    tmpfs: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    nano_cpus: int | None = None
    memory: int | None = None
    pids_limit: int | None = None
    devices: tuple[str, ...] = ()
    network: str | None = None


@dataclass(frozen=True)
class EngineInfo:
    """The engine as ``doctor`` describes it."""

    version: str
    api_version: str
    operating_system: str
    storage_driver: str
    root_dir: str
    security_options: tuple[str, ...]
    runtimes: tuple[str, ...]
    cpus: int
    memory: int

    @property
    def userns_remap(self) -> bool:
        return any("userns" in option for option in self.security_options)

    @property
    def rootless(self) -> bool:
        return any("rootless" in option for option in self.security_options)


@dataclass(frozen=True)
class ContainerInfo:
    """One container, from an inspect or a listing.

    ``state`` is the engine's machine word (created, running, exited, …); ``status`` the
    human one ("Up 3 minutes"); ``upper_dir`` the overlay2 folder of its writable layer (only
    from an inspect, only with that driver).
    """

    id: str
    name: str
    image: str
    state: str
    status: str
    exit_code: int | None
    labels: Mapping[str, str]
    volumes: tuple[str, ...] = ()
    created: float = 0.0  # seconds since the epoch
    storage_driver: str = ""
    upper_dir: str | None = None


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    driver: str
    labels: Mapping[str, str]
    mountpoint: str
    created: str
    options: Mapping[str, str]


@dataclass(frozen=True)
class ContainerStop:
    """A container stopped (the engine's "die" event)."""

    id: str
    name: str
