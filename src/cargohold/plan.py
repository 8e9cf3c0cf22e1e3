"""Spec → Plan: where each store lives for one job, how the job runs, and why. Pure: no Docker,
no I/O.

The choice between a bind mount, a named volume and a tmpfs is the heart of cargohold, so every
mount carries the reason it was chosen; ``cargohold plan`` prints them. The same goes for the
runtime settings a real training job needs (GPUs, shared memory, ulimits, a stop grace period long
enough for a final checkpoint, hardening): ``Runtime`` holds each decided value beside the reason
for it, so a default is never a surprise.

Everything else that runs or renders a job (``jobs.py``, ``render/``) works from a ``Plan``, never
from the raw spec, so that ``cargohold run``, the rendered ``docker run`` line, the compose file
and the cluster renderings cannot drift apart. A plan holds no secret: ``secrets`` are variable
names passed through from the caller's environment and ``env_files`` are paths; values are read
only when a container is created.

Store placement is a table: one small function per store kind (``_PLACEMENTS``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from cargohold.engine.types import MountRequest
from cargohold.errors import SpecError
from cargohold.kinds import Backing, StoreKind, is_url, parse_size

if TYPE_CHECKING:
    from cargohold.spec import JobSpec, Spec, StoreSpec

__all__ = [
    "CACHE_ENV",
    "LABEL_JOB",
    "LABEL_KIND",
    "LABEL_PROJECT",
    "LABEL_STORE",
    "Build",
    "Gpus",
    "Mount",
    "Plan",
    "Resources",
    "Runtime",
    "SnapshotSchedule",
    "Ulimit",
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
    ("TRITON_CACHE_DIR", "triton"),
    ("TORCHINDUCTOR_CACHE_DIR", "torchinductor"),
    ("CUDA_CACHE_PATH", "cuda"),
    ("MPLCONFIGDIR", "matplotlib"),
)

# /dev/shm for DataLoader workers and NCCL: Docker's 64 MB fails with "bus error" at the first
# real batch. 1 GiB is what PyTorch's own images suggest starting from.
DEFAULT_SHM = 1 << 30
# A checkpointing job gets this long between SIGTERM and SIGKILL (Docker's default is 10 s).
CHECKPOINT_STOP_TIMEOUT = 120
# NVIDIA's recommendation for NCCL and CUDA (their containers warn without them).
NCCL_ULIMITS = (("memlock", -1, -1), ("stack", 67108864, 67108864))
# Docker's default capabilities that a training job never uses, by their kernel names (the
# docker CLI writes them so; the engine keeps what it is given). Kept: CHOWN, DAC_OVERRIDE,
# FOWNER, FSETID, KILL, SETGID, SETUID (entrypoints that install packages or drop to a user).
DROPPED_CAPABILITIES = (
    "CAP_AUDIT_WRITE",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_SYS_CHROOT",
)
_SHELLS = frozenset({"sh", "bash", "dash", "ash", "zsh", "ksh"})
_TORCH_RE = re.compile(r"torch", re.IGNORECASE)


@dataclass(frozen=True)
class SnapshotSchedule:
    """A volume snapshotted every ``every`` into ``repo`` by a sidecar, then ``forget``'s
    retention applied to its snapshots."""

    every: str  # as the spec writes it ("1h"); validated there
    repo: str  # an fsspec URL as written, or an absolute host folder
    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0

    @property
    def repo_is_folder(self) -> bool:
        """The repository is a folder of this host (bind-mounted into the sidecar)."""
        return not is_url(self.repo)

    def keep_options(self) -> list[str]:
        """The ``--keep-…`` options of ``cargohold snapshot`` for this retention."""
        counts = (
            ("last", self.keep_last),
            ("hourly", self.keep_hourly),
            ("daily", self.keep_daily),
            ("weekly", self.keep_weekly),
            ("monthly", self.keep_monthly),
        )
        return [word for name, n in counts if n for word in (f"--keep-{name}", str(n))]

    def host_command(self, volume: str) -> list[str]:
        """The ``cargohold snapshot`` command that runs this schedule on the volume's host."""
        return [
            "cargohold",
            "snapshot",
            volume,
            "--every",
            self.every,
            "--repo",
            self.repo,
            *self.keep_options(),
        ]

    def describe(self) -> str:
        kept = " ".join(self.keep_options()) or "every snapshot kept"
        return f"every {self.every} into {self.repo} ({kept})"


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
    # A volume filled once from this host folder (when it is empty), then used as a volume.
    seed: str | None = None
    # Snapshotted on a schedule by a sidecar beside the job (volumes only).
    snapshots: SnapshotSchedule | None = None

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
class Gpus:
    """GPUs for the job: ``count`` (-1 for all) or explicit ``device_ids`` (indexes or UUIDs)."""

    count: int | None = None
    device_ids: tuple[str, ...] = ()

    @property
    def all(self) -> bool:
        return self.count == -1

    def describe(self) -> str:
        if self.device_ids:
            return "devices " + ", ".join(self.device_ids)
        return "all" if self.all else str(self.count)


@dataclass(frozen=True)
class Ulimit:
    name: str
    soft: int
    hard: int


@dataclass(frozen=True)
class Resources:
    cpus: float | None = None
    memory: int | None = None
    pids_limit: int | None = None


@dataclass(frozen=True)
class Runtime:
    """How the job's container runs, beyond its stores. Each decided setting has a reason in
    ``reasons`` (setting name → sentence); settings left to Docker's default have none."""

    gpus: Gpus | None = None
    ipc: str | None = None
    shm_size: int | None = None
    # The /dev/shm a cluster gives the job when ipc = "host" (which pods and services cannot
    # have): the size the job would get without host IPC. None: Docker's default is enough.
    cluster_shm_size: int | None = None
    ulimits: tuple[Ulimit, ...] = ()
    stop_timeout: int | None = None
    init: bool = False
    read_only: bool = False
    # Extra tmpfs folders (``/tmp`` for a read-only root file system).
    tmpfs: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    resources: Resources = field(default_factory=Resources)
    devices: tuple[str, ...] = ()
    network: str | None = None
    entrypoint: tuple[str, ...] | None = None
    # Absolute host paths, read when the container is created (never by the planner).
    env_files: tuple[str, ...] = ()
    # Variable names whose values come from the caller's environment at run time.
    secrets: tuple[str, ...] = ()
    reasons: tuple[tuple[str, str], ...] = ()

    def reason(self, setting: str) -> str | None:
        return dict(self.reasons).get(setting)


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
    restart_max: int
    workdir: str | None = None
    labels: tuple[tuple[str, str], ...] = field(default=())
    nodes: int = 1
    placement: tuple[str, ...] = ()
    runtime: Runtime = field(default_factory=Runtime)
    # The job runs as the invoking user (user = "host"): folders it creates are already its own.
    as_invoking_user: bool = False

    @property
    def container_name(self) -> str:
        return f"{self.project}-{self.job}"

    @property
    def shm_size(self) -> int | None:
        return self.runtime.shm_size

    @property
    def uid(self) -> int:
        return int(self.user.split(":")[0])

    @property
    def gid(self) -> int:
        return int(self.user.split(":")[1])

    @property
    def checkpoint_mount(self) -> Mount | None:
        return next((m for m in self.mounts if m.kind is StoreKind.CHECKPOINTS), None)

    def entrypoint_and_command(
        self, command: tuple[str, ...] | None = None
    ) -> tuple[list[str] | None, list[str] | None]:
        """(entrypoint, command) as every runner passes them; ``command`` replaces the job's.
        ``docker run --entrypoint`` takes one word, so the entrypoint's other words lead the
        command, and every runner splits it that way (their ``docker inspect`` must agree)."""
        cmd = list(command if command is not None else self.command or ())
        entrypoint = self.runtime.entrypoint
        if entrypoint is None:
            return None, cmd or None
        return [entrypoint[0]], [*entrypoint[1:], *cmd]

    def volumes(self) -> list[Mount]:
        """The named volumes this job uses, in mount order."""
        return [m for m in self.mounts if m.backing is Backing.VOLUME]

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON-ready data (``cargohold plan --json``): stores and runtime settings
        with their reasons. Holds no secret value: only names and file paths."""
        rt = self.runtime
        return {
            "project": self.project,
            "job": self.job,
            "image": self.image,
            "build": None
            if self.build is None
            else {
                "context": self.build.context,
                "dockerfile": self.build.dockerfile,
                "args": dict(self.build.args),
            },
            "command": list(self.command) if self.command is not None else None,
            "user": self.user,
            "workdir": self.workdir,
            "shm_size": rt.shm_size,
            "restart_max": self.restart_max,
            "nodes": self.nodes,
            "placement": list(self.placement),
            "labels": dict(self.labels),
            "stores": [
                {
                    "store": m.store,
                    "kind": m.kind.value,
                    "backing": m.backing.value,
                    "source": m.source,
                    "target": m.target,
                    "mode": m.mode,
                    "reason": m.reason,
                    **({"tmpfs_size": m.tmpfs_size} if m.tmpfs_size is not None else {}),
                    **({"seed": m.seed} if m.seed is not None else {}),
                    **({"external": True} if m.external else {}),
                    **({"snapshots": asdict(m.snapshots)} if m.snapshots is not None else {}),
                }
                for m in self.mounts
            ],
            "env": dict(self.env),
            "runtime": {
                "gpus": None
                if rt.gpus is None
                else {"count": rt.gpus.count, "device_ids": list(rt.gpus.device_ids)},
                "ipc": rt.ipc,
                "shm_size": rt.shm_size,
                "ulimits": {u.name: {"soft": u.soft, "hard": u.hard} for u in rt.ulimits},
                "stop_timeout": rt.stop_timeout,
                "init": rt.init,
                "read_only": rt.read_only,
                "tmpfs": list(rt.tmpfs),
                "security_opt": list(rt.security_opt),
                "cap_drop": list(rt.cap_drop),
                "resources": {
                    "cpus": rt.resources.cpus,
                    "memory": rt.resources.memory,
                    "pids_limit": rt.resources.pids_limit,
                },
                "devices": list(rt.devices),
                "network": rt.network,
                "entrypoint": list(rt.entrypoint) if rt.entrypoint is not None else None,
                "env_files": list(rt.env_files),
                "secrets": list(rt.secrets),
                "reasons": dict(rt.reasons),
            },
        }


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


@dataclass(frozen=True)
class _Placing:
    """One store being placed: the spec's facts and the two ways to attach it."""

    spec: Spec
    name: str
    store: StoreSpec

    @property
    def volume_name(self) -> str:
        return self.store.volume or f"{self.spec.project.name}-{self.name}"

    def volume(self, reason: str, readonly: bool) -> Mount:
        seed = None
        if self.store.source is not None:
            seed = str(self.spec.host_path(self.store.source))
            reason += f"; seeded once from {seed} (copied in while the volume is empty)"
        return Mount(
            store=self.name,
            kind=self.store.kind,
            backing=Backing.VOLUME,
            target=self.store.target,
            readonly=readonly,
            reason=reason,
            source=self.volume_name,
            # Options without a driver are the local driver's (NFS, tmpfs, a device): Docker's
            # default, named so that no rendering drops the options with the missing name.
            driver=self.store.driver or ("local" if self.store.driver_opts else None),
            driver_opts=tuple(sorted(self.store.driver_opts.items())),
            external=self.store.external,
            seed=seed,
        )

    def bind(self, reason: str, readonly: bool) -> Mount:
        assert self.store.source is not None
        return Mount(
            store=self.name,
            kind=self.store.kind,
            backing=Backing.BIND,
            target=self.store.target,
            readonly=readonly,
            reason=reason,
            source=str(self.spec.host_path(self.store.source)),
            create_source=self.store.kind is StoreKind.ARTIFACTS,
        )

    @property
    def wants_bind(self) -> bool:
        """A host folder mounted as it is (a source without ``backing = "volume"``)."""
        return self.store.source is not None and self.store.backing in (None, Backing.BIND)


def _place_dataset(p: _Placing) -> Mount:
    readonly = True if p.store.readonly is None else p.store.readonly
    why_mode = (
        "read-only: training must never modify its inputs"
        if readonly
        else "writable because the spec sets readonly = false"
    )
    if p.store.backing is Backing.TMPFS:
        raise SpecError(
            f"Dataset store {p.name!r} on a tmpfs would start empty every run.",
            key=f"stores.{p.name}.backing",
            hint='Use a bind source or backing = "volume" and fill it with `cargohold ingest`.',
        )
    if p.wants_bind:
        return p.bind(f"dataset from a host folder: bind mount, {why_mode}", readonly)
    what = "dataset in" if p.store.source is not None else "dataset without a host folder:"
    return p.volume(f"{what} named volume {p.volume_name}, {why_mode}", readonly)


def _place_checkpoints(p: _Placing) -> Mount:
    readonly = bool(p.store.readonly)
    if p.wants_bind:
        return p.bind(
            "checkpoints in a host folder as the spec asks; they survive the container", readonly
        )
    return p.volume(
        f"checkpoints: named volume {p.volume_name}, Docker-managed, survives container "
        "removal, no host-permission trouble",
        readonly,
    )


def _place_artifacts(p: _Placing) -> Mount:
    readonly = bool(p.store.readonly)
    if p.store.backing is Backing.VOLUME:
        return p.volume(f"artifacts in named volume {p.volume_name} as the spec asks", readonly)
    if p.store.source is None:
        raise SpecError(
            f"Artifacts store {p.name!r} has no source folder.",
            key=f"stores.{p.name}.source",
            hint='Add source = "./artifacts" so results land where you look for them, or '
            'set backing = "volume".',
        )
    return p.bind(
        "artifacts: bind to a host folder, created and owned by the job's user, so results "
        "land where you look for them",
        readonly,
    )


def _place_cache(p: _Placing) -> Mount:
    readonly = bool(p.store.readonly)
    if p.wants_bind:
        return p.bind("cache in a host folder as the spec asks", readonly)
    return p.volume(
        f"cache: named volume {p.volume_name} shared by every job of {p.spec.project.name}; "
        "downloads are fetched once",
        readonly,
    )


def _place_scratch(p: _Placing) -> Mount:
    store = p.store
    if store.backing in (None, Backing.TMPFS) and store.source is None:
        return Mount(
            store=p.name,
            kind=store.kind,
            backing=Backing.TMPFS,
            target=store.target,
            readonly=False,
            reason="scratch: tmpfs in memory, explicitly ephemeral and fast"
            + (f", at most {store.size}" if store.size is not None else ", no size limit set"),
            tmpfs_size=parse_size(store.size) if store.size is not None else None,
        )
    if p.wants_bind:
        return p.bind("scratch in a host folder as the spec asks", bool(store.readonly))
    return p.volume(f"scratch in named volume {p.volume_name} as the spec asks", False)


_PLACEMENTS: dict[StoreKind, Callable[[_Placing], Mount]] = {
    StoreKind.DATASET: _place_dataset,
    StoreKind.CHECKPOINTS: _place_checkpoints,
    StoreKind.ARTIFACTS: _place_artifacts,
    StoreKind.CACHE: _place_cache,
    StoreKind.SCRATCH: _place_scratch,
}


def _mount_for(spec: Spec, name: str, store: StoreSpec) -> Mount:
    return _PLACEMENTS[store.kind](_Placing(spec, name, store))


def _gpus(value: str | int | list[str] | None) -> Gpus | None:
    if value is None:
        return None
    if value == "all":
        return Gpus(count=-1)
    if isinstance(value, int):
        return Gpus(count=value)
    if isinstance(value, list):
        return Gpus(device_ids=tuple(value))
    raise AssertionError(value)  # the spec validated it


def _home(plan_env: dict[str, str], uid: int, mounts: tuple[Mount, ...]) -> tuple[str, str] | None:
    """(HOME, reason) for a job whose uid may have no account in the image, or None."""
    if uid == 0 or "HOME" in plan_env:
        return None
    for kind in (StoreKind.CACHE, StoreKind.SCRATCH):
        mount = next((m for m in mounts if m.kind is kind and not m.readonly), None)
        if mount is not None:
            where = mount.target
            break
    else:
        where = "/tmp"
    return where, (
        f"HOME={where}: uid {uid} may have no account in the image, and without one ~/.cache "
        "resolves to /.cache, which the job cannot write (set env.HOME to choose)"
    )


def _runtime(
    job: JobSpec, spec: Spec, mounts: tuple[Mount, ...], command: tuple[str, ...] | None
) -> Runtime:
    reasons: dict[str, str] = {}
    gpus = _gpus(job.gpus)
    if gpus is not None:
        reasons["gpus"] = f"GPUs: {gpus.describe()}, as the spec asks"

    ipc = job.ipc.value if job.ipc is not None else None
    if ipc is not None:
        reasons["ipc"] = f"IPC namespace {ipc}, as the spec asks"

    shm_size: int | None = None
    cluster_shm_size: int | None = None
    if job.shm_size is not None:
        shm_size = parse_size(job.shm_size)
        reasons["shm_size"] = f"/dev/shm of {job.shm_size}, as the spec asks"
    else:
        words = [job.image, *(job.entrypoint or ()), *(command or ())]
        torch = next((w for w in words if _TORCH_RE.search(w)), None)
        why = "the job has GPUs: NCCL and DataLoader workers" if gpus is not None else None
        if why is None and torch is not None:
            why = f"the job looks like PyTorch ({torch!r}): its DataLoader workers"
        if why is not None and ipc == "host":
            cluster_shm_size = DEFAULT_SHM  # the host's /dev/shm here; a cluster has none
        elif why is not None:
            shm_size = DEFAULT_SHM
            reasons["shm_size"] = (
                f"/dev/shm of 1g because {why} pass data through shared memory, and Docker's "
                "64 MB ends in 'bus error' (set shm_size to change it)"
            )

    limits: dict[str, tuple[int, int]] = {}
    if gpus is not None:
        limits.update({name: (soft, hard) for name, soft, hard in NCCL_ULIMITS})
        reasons["ulimits"] = (
            "memlock unlimited and a 64 MB stack, as NVIDIA recommends for NCCL with GPUs"
        )
    for name, limit in job.ulimits.items():
        limits[name] = (limit, limit) if isinstance(limit, int) else (limit.soft, limit.hard)
    if job.ulimits:
        mine = "limits the spec sets: " + ", ".join(sorted(job.ulimits))
        reasons["ulimits"] = f"{reasons['ulimits']}; {mine}" if "ulimits" in reasons else mine
    ulimits = tuple(Ulimit(name, soft, hard) for name, (soft, hard) in sorted(limits.items()))

    stop_timeout = job.stop_timeout
    if stop_timeout is not None:
        reasons["stop_timeout"] = f"{stop_timeout} s between SIGTERM and SIGKILL, as the spec asks"
    elif any(m.kind is StoreKind.CHECKPOINTS for m in mounts):
        stop_timeout = CHECKPOINT_STOP_TIMEOUT
        reasons["stop_timeout"] = (
            f"{stop_timeout} s between SIGTERM and SIGKILL: Docker's 10 s would kill the final "
            "checkpoint save half-way (also for `docker stop` without -t)"
        )

    entrypoint = tuple(job.entrypoint) if job.entrypoint is not None else None
    first = (entrypoint or command or ("",))[0]
    init = job.init
    if init is None:
        init = first.rsplit("/", 1)[-1] in _SHELLS
        if init:
            reasons["init"] = (
                f"an init process as PID 1: {first!r} is a shell, which does not pass SIGTERM "
                "on to Python, so the job could not save a final checkpoint"
            )
    else:
        reasons["init"] = f"init = {str(init).lower()}, as the spec asks"

    tmpfs: tuple[str, ...] = ()
    if job.read_only:
        reasons["read_only"] = (
            "the root file system is read-only: everything the job writes goes to a store"
        )
        if not any(m.target == "/tmp" for m in mounts):
            tmpfs = ("/tmp",)
            reasons["read_only"] += "; /tmp is a tmpfs"

    security_opt: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    if job.hardening:
        security_opt = ("no-new-privileges",)
        cap_drop = DROPPED_CAPABILITIES
        reasons["hardening"] = (
            "no-new-privileges (setuid binaries cannot raise privileges) and these capabilities "
            "dropped, which training never needs: " + ", ".join(cap_drop)
        )
    else:
        reasons["hardening"] = "hardening = false: Docker's default capabilities, as the spec asks"

    res = job.resources
    resources = Resources(
        cpus=res.cpus,
        memory=parse_size(res.memory) if res.memory is not None else None,
        pids_limit=res.pids_limit,
    )
    if resources != Resources():
        limits_text = [
            f"{resources.cpus:g} CPUs" if resources.cpus is not None else "",
            f"memory {res.memory}" if res.memory is not None else "",
            f"at most {resources.pids_limit} processes" if resources.pids_limit else "",
        ]
        reasons["resources"] = "limits the spec sets: " + ", ".join(t for t in limits_text if t)
    if job.devices:
        reasons["devices"] = "host devices the spec passes through: " + ", ".join(job.devices)
    if job.network is not None:
        reasons["network"] = f"network {job.network}, as the spec asks"
    env_files = tuple(str(spec.host_path(f)) for f in job.env_file)
    if env_files or job.secrets:
        reasons["secrets"] = (
            "values read when the container is created, never written into the plan or a "
            "rendered file: " + ", ".join([*(f"${name}" for name in job.secrets), *env_files])
        )
    return Runtime(
        gpus=gpus,
        ipc=ipc,
        shm_size=shm_size,
        cluster_shm_size=shm_size if shm_size is not None else cluster_shm_size,
        ulimits=ulimits,
        stop_timeout=stop_timeout,
        init=init,
        read_only=job.read_only,
        tmpfs=tmpfs,
        security_opt=security_opt,
        cap_drop=cap_drop,
        resources=resources,
        devices=tuple(job.devices),
        network=job.network,
        entrypoint=entrypoint,
        env_files=env_files,
        secrets=tuple(job.secrets),
        reasons=tuple(reasons.items()),
    )


def _schedule(spec: Spec, store: StoreSpec) -> SnapshotSchedule | None:
    schedule = store.snapshots
    if schedule is None:
        return None
    repo = schedule.repo if is_url(schedule.repo) else str(spec.host_path(schedule.repo))
    return SnapshotSchedule(
        every=schedule.every,
        repo=repo,
        keep_last=schedule.keep_last,
        keep_hourly=schedule.keep_hourly,
        keep_daily=schedule.keep_daily,
        keep_weekly=schedule.keep_weekly,
        keep_monthly=schedule.keep_monthly,
    )


def _cluster_fields(spec: Spec, mount: Mount, store: StoreSpec) -> Mount:
    snapshots = _schedule(spec, store)
    if snapshots is not None:
        mount = replace(
            mount, reason=f"{mount.reason}; snapshotted {snapshots.describe()} by a sidecar"
        )
    return replace(
        mount,
        snapshots=snapshots,
        mirror=store.mirror,
        storage_class=store.storage_class,
        capacity=parse_size(store.capacity) if store.capacity is not None else None,
        repository=store.repository,
        snapshot=store.snapshot,
    )


def make_plan(spec: Spec, job: str | None, *, host_user: tuple[int, int]) -> Plan:
    """Decide how one job runs: its mounts with reasons, environment, user and runtime settings.

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
        _cluster_fields(spec, _mount_for(spec, name, spec.stores[name]), spec.stores[name])
        for name in spec.stores_of(job_name)
    )
    user = _resolve_user(job_spec.user, host_user)
    command = tuple(job_spec.command) if job_spec.command is not None else None
    runtime = _runtime(job_spec, spec, mounts, command)

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
    home = _home(job_spec.env, int(user.split(":")[0]), mounts)
    if home is not None:
        env["HOME"] = home[0]
        runtime = _with_reason(runtime, "home", home[1])
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
        command=command,
        user=user,
        mounts=mounts,
        env=tuple(env.items()),
        restart_max=job_spec.restart.max,
        workdir=job_spec.workdir,
        labels=((LABEL_PROJECT, spec.project.name), (LABEL_JOB, job_name)),
        nodes=job_spec.nodes,
        placement=tuple(job_spec.placement),
        runtime=runtime,
        as_invoking_user=job_spec.user == "host",
    )


def _with_reason(runtime: Runtime, setting: str, reason: str) -> Runtime:
    return replace(runtime, reasons=(*runtime.reasons, (setting, reason)))
