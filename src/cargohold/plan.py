"""Spec → Plan: where each store lives for one job, and why. Pure: no Docker, no I/O.

The choice between a bind mount, a named volume and a tmpfs is the heart of cargohold, so every
mount carries the reason it was chosen; ``cargohold plan`` prints them. Everything else that runs
or renders a job (``jobs.py``, ``render/``) works from a ``Plan``, never from the raw spec, so that
``cargohold run``, the rendered ``docker run`` line and the rendered compose file cannot drift
apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from cargohold.engine.types import MountRequest
from cargohold.errors import SpecError
from cargohold.kinds import Backing, StoreKind, parse_size

if TYPE_CHECKING:
    from cargohold.spec import Spec, StoreSpec

__all__ = [
    "CACHE_ENV",
    "LABEL_JOB",
    "LABEL_KIND",
    "LABEL_PROJECT",
    "LABEL_STORE",
    "Build",
    "Mount",
    "Plan",
    "make_plan",
    "store_env_name",
]

LABEL_PROJECT = "cargohold.project"
LABEL_JOB = "cargohold.job"
LABEL_STORE = "cargohold.store"
LABEL_KIND = "cargohold.kind"

# Where the usual ML libraries keep their downloads, relative to a cache store's target.
CACHE_ENV: tuple[tuple[str, str], ...] = (
    ("HF_HOME", "huggingface"),
    ("TORCH_HOME", "torch"),
    ("XDG_CACHE_HOME", ""),
    ("PIP_CACHE_DIR", "pip"),
)


@dataclass(frozen=True)
class Mount:
    """One store as it is attached to a job's container."""

    store: str
    kind: StoreKind
    backing: Backing
    target: str
    readonly: bool
    reason: str
    # Bind: the absolute host folder. Volume: the volume name. Tmpfs: None.
    source: str | None = None
    tmpfs_size: int | None = None
    driver: str | None = None
    driver_opts: tuple[tuple[str, str], ...] = ()
    # Created by someone else; cargohold neither creates nor labels it.
    external: bool = False
    # Artifacts: the runner creates the host folder, owned by the job's user.
    create_source: bool = False
    # Clusters (issue 10): checkpoints mirrored to this repository URL; a persistent volume's
    # class and size; a dataset restored from ``snapshot`` in ``repository`` before the job.
    mirror: str | None = None
    storage_class: str | None = None
    capacity: int | None = None
    repository: str | None = None
    snapshot: str | None = None

    @property
    def mode(self) -> str:
        return "ro" if self.readonly else "rw"

    def volume_labels(self, project: str) -> dict[str, str]:
        return {LABEL_PROJECT: project, LABEL_STORE: self.store, LABEL_KIND: self.kind.value}

    def request(self) -> MountRequest:
        """This mount as the engine takes it."""
        return MountRequest(
            type=_ENGINE_MOUNT_TYPES[self.backing],
            target=self.target,
            source=self.source,
            readonly=self.readonly,
            tmpfs_size=self.tmpfs_size,
            driver=self.driver,
            driver_opts=self.driver_opts,
        )


_ENGINE_MOUNT_TYPES: dict[Backing, Literal["bind", "volume", "tmpfs"]] = {
    Backing.BIND: "bind",
    Backing.VOLUME: "volume",
    Backing.TMPFS: "tmpfs",
}


@dataclass(frozen=True)
class Build:
    context: str
    dockerfile: str | None
    args: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Plan:
    """Everything needed to run one job, identical for every way of running it."""

    project: str
    job: str
    image: str
    build: Build | None
    command: tuple[str, ...] | None
    user: str  # "UID:GID"
    mounts: tuple[Mount, ...]
    env: tuple[tuple[str, str], ...]
    shm_size: int | None
    restart_max: int
    workdir: str | None = None
    labels: tuple[tuple[str, str], ...] = field(default=())
    nodes: int = 1
    placement: tuple[str, ...] = ()

    @property
    def container_name(self) -> str:
        return f"{self.project}-{self.job}"

    @property
    def uid(self) -> int:
        return int(self.user.split(":")[0])

    @property
    def gid(self) -> int:
        return int(self.user.split(":")[1])

    @property
    def checkpoint_mount(self) -> Mount | None:
        return next((m for m in self.mounts if m.kind is StoreKind.CHECKPOINTS), None)

    def volumes(self) -> list[Mount]:
        """The named volumes this job uses, in mount order."""
        return [m for m in self.mounts if m.backing is Backing.VOLUME]


def store_env_name(store: str) -> str:
    """``CARGOHOLD_STORE_<NAME>``: upper case, anything but letters and digits as ``_``."""
    return "CARGOHOLD_STORE_" + re.sub(r"[^A-Za-z0-9]", "_", store).upper()


def _resolve_user(user: str, host_user: tuple[int, int]) -> str:
    if user == "host":
        return f"{host_user[0]}:{host_user[1]}"
    if user == "root":
        return "0:0"
    if ":" not in user:
        return f"{user}:{user}"
    return user


def _mount_for(spec: Spec, name: str, store: StoreSpec) -> Mount:
    project = spec.project.name
    kind = store.kind
    volume_name = store.volume or f"{project}-{name}"
    opts = tuple(sorted(store.driver_opts.items()))

    def volume(reason: str, readonly: bool) -> Mount:
        return Mount(
            store=name,
            kind=kind,
            backing=Backing.VOLUME,
            target=store.target,
            readonly=readonly,
            reason=reason,
            source=volume_name,
            driver=store.driver,
            driver_opts=opts,
            external=store.external,
        )

    def bind(reason: str, readonly: bool) -> Mount:
        assert store.source is not None
        return Mount(
            store=name,
            kind=kind,
            backing=Backing.BIND,
            target=store.target,
            readonly=readonly,
            reason=reason,
            source=str(spec.host_path(store.source)),
            create_source=kind is StoreKind.ARTIFACTS,
        )

    backing = store.backing
    if kind is StoreKind.DATASET:
        readonly = True if store.readonly is None else store.readonly
        why_mode = (
            "read-only: training must never modify its inputs"
            if readonly
            else "writable because the spec sets readonly = false"
        )
        if backing is Backing.TMPFS:
            raise SpecError(
                f"Dataset store {name!r} on a tmpfs would start empty every run.",
                key=f"stores.{name}.backing",
                hint='Use a bind source or backing = "volume" and fill it with `cargohold ingest`.',
            )
        if store.source is not None and backing in (None, Backing.BIND):
            return bind(f"dataset from a host folder: bind mount, {why_mode}", readonly)
        return volume(
            f"dataset without a host folder: named volume {volume_name}, {why_mode}", readonly
        )

    readonly = bool(store.readonly)
    if kind is StoreKind.CHECKPOINTS:
        if store.source is not None:
            return bind(
                "checkpoints in a host folder as the spec asks; they survive the container",
                readonly,
            )
        return volume(
            f"checkpoints: named volume {volume_name}, Docker-managed, survives container "
            "removal, no host-permission trouble",
            readonly,
        )
    if kind is StoreKind.ARTIFACTS:
        if store.source is None or backing is Backing.VOLUME:
            if backing is Backing.VOLUME:
                return volume(f"artifacts in named volume {volume_name} as the spec asks", readonly)
            raise SpecError(
                f"Artifacts store {name!r} has no source folder.",
                key=f"stores.{name}.source",
                hint='Add source = "./artifacts" so results land where you look for them, or '
                'set backing = "volume".',
            )
        return bind(
            "artifacts: bind to a host folder, created and owned by the job's user, so results "
            "land where you look for them",
            readonly,
        )
    if kind is StoreKind.CACHE:
        if store.source is not None:
            return bind("cache in a host folder as the spec asks", readonly)
        return volume(
            f"cache: named volume {volume_name} shared by every job of {project}; downloads "
            "are fetched once",
            readonly,
        )
    # scratch
    if backing in (None, Backing.TMPFS):
        size = parse_size(store.size) if store.size is not None else None
        return Mount(
            store=name,
            kind=kind,
            backing=Backing.TMPFS,
            target=store.target,
            readonly=False,
            reason="scratch: tmpfs in memory, explicitly ephemeral and fast"
            + (f", at most {store.size}" if store.size is not None else ", no size limit set"),
            tmpfs_size=size,
        )
    if store.source is not None:
        return bind("scratch in a host folder as the spec asks", readonly)
    return volume(f"scratch in named volume {volume_name} as the spec asks", readonly)


def _cluster_fields(mount: Mount, store: StoreSpec) -> Mount:
    return replace(
        mount,
        mirror=store.mirror,
        storage_class=store.storage_class,
        capacity=parse_size(store.capacity) if store.capacity is not None else None,
        repository=store.repository,
        snapshot=store.snapshot,
    )


def make_plan(spec: Spec, job: str | None, *, host_user: tuple[int, int]) -> Plan:
    """Decide how one job runs: its mounts with reasons, environment and user.

    Args:
        spec: a checked spec.
        job: the job's name; ``None`` picks the only job, or ``train``.
        host_user: the invoking user's (uid, gid), used when the job's user is ``host``.

    Returns:
        The plan.

    Raises:
        SpecError: the job is unknown or a store cannot be placed.
    """
    job_name = spec.job_name(job)
    job_spec = spec.jobs[job_name]
    mounts = tuple(
        _cluster_fields(_mount_for(spec, name, spec.stores[name]), spec.stores[name])
        for name in spec.stores_of(job_name)
    )

    env: dict[str, str] = {
        "CARGOHOLD_PROJECT": spec.project.name,
        "CARGOHOLD_JOB": job_name,
    }
    for mount in mounts:
        env[store_env_name(mount.store)] = mount.target
    checkpoints = next((m for m in mounts if m.kind is StoreKind.CHECKPOINTS), None)
    if checkpoints is not None:
        env["CARGOHOLD_CHECKPOINT_DIR"] = checkpoints.target
    cache = next((m for m in mounts if m.kind is StoreKind.CACHE), None)
    if cache is not None:
        for var, sub in CACHE_ENV:
            env[var] = f"{cache.target}/{sub}".rstrip("/")
    env.update(job_spec.env)  # the user's own values win

    build = None
    if job_spec.build is not None:
        build = Build(
            context=str(spec.host_path(job_spec.build.context)),
            dockerfile=job_spec.build.dockerfile,
            args=tuple(sorted(job_spec.build.args.items())),
        )
    return Plan(
        project=spec.project.name,
        job=job_name,
        image=job_spec.image,
        build=build,
        command=tuple(job_spec.command) if job_spec.command is not None else None,
        user=_resolve_user(job_spec.user, host_user),
        mounts=mounts,
        env=tuple(env.items()),
        shm_size=parse_size(job_spec.shm_size) if job_spec.shm_size is not None else None,
        restart_max=job_spec.restart.max,
        workdir=job_spec.workdir,
        labels=((LABEL_PROJECT, spec.project.name), (LABEL_JOB, job_name)),
        nodes=job_spec.nodes,
        placement=tuple(job_spec.placement),
    )
