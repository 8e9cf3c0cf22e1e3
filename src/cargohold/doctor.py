"""``cargohold doctor`` and ``cargohold ps`` as library functions: typed results, no printing.

Each doctor check is a small function from facts to a ``Check`` (pure where it can be, so that
the unit tests decide every branch without a daemon); ``diagnose`` gathers the facts from the
engine and the plan and runs them in order. ``project_status`` is what ``ps`` shows: a
project's containers with the ML data at risk in their layers, and its volumes.

Free space for checkpoints is judged from what the checkpoint volume holds: the largest
checkpoint times (the checkpoints kept there now + the one being written). cargohold's spec
does not say how many the job keeps (``keep_last`` is an argument of the job's
``CheckpointManager``), so the count on disk is the evidence, not an assumed 3.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cargohold.engine import Engine, EngineInfo
from cargohold.gpus import gpu_support
from cargohold.guard import scan_container
from cargohold.inventory import VolumeSummary, volume_summaries
from cargohold.kinds import Backing, StoreKind, format_size
from cargohold.plan import LABEL_PROJECT
from cargohold.volumes import engine_is_local, open_volume, volume_usage

if TYPE_CHECKING:
    from cargohold.plan import Mount, Plan

__all__ = [
    "Check",
    "ContainerStatus",
    "ProjectStatus",
    "Status",
    "check_engine",
    "check_free_space",
    "check_gpus",
    "check_shm",
    "check_storage_driver",
    "check_uid_mapping",
    "diagnose",
    "doctor",
    "project_status",
    "worst",
]

Status = Literal["ok", "warn", "fail"]
SHM_DEFAULT = 64 << 20  # Docker's /dev/shm when the job sets none
SHM_ENOUGH = 256 << 20
LAYER_DRIVERS = ("overlay2", "btrfs", "zfs")


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


def worst(checks: list[Check]) -> Status:
    statuses = {c.status for c in checks}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"


# -- the checks ------------------------------------------------------------------------------


def check_engine(info: EngineInfo) -> Check:
    return Check(
        "engine", "ok", f"Docker {info.version} (API {info.api_version}), {info.operating_system}"
    )


def check_storage_driver(info: EngineInfo) -> Check:
    if info.storage_driver in LAYER_DRIVERS:
        return Check("storage driver", "ok", info.storage_driver)
    return Check(
        "storage driver",
        "warn",
        f"{info.storage_driver}: scans of writable layers go through the engine (slower)",
    )


def check_uid_mapping(info: EngineInfo) -> Check:
    if info.userns_remap:
        return Check(
            "uid mapping",
            "warn",
            "userns-remap is on: uids in volumes differ from host uids; bind mounts need "
            "matching ownership",
        )
    if info.rootless:
        return Check(
            "uid mapping",
            "warn",
            "rootless engine: volume files belong to your sub-uid range on the host",
        )
    return Check("uid mapping", "ok", "none: container uids are host uids")


def check_gpus(info: EngineInfo, plan: Plan | None, *, local: bool | None = None) -> Check | None:
    """Only when the job asks for GPUs: the NVIDIA driver and runtime, toolkit hook or CDI
    specification (the same rule ``cargohold run`` applies before creating the container)."""
    if plan is None or plan.runtime.gpus is None:
        return None
    support = gpu_support(info, local=engine_is_local() if local is None else local)
    wanted = plan.runtime.gpus.describe()
    memlock = next((u.hard for u in plan.runtime.ulimits if u.name == "memlock"), None)
    problem = support.problem(memlock)
    if problem is None:
        return Check("gpu runtime", "ok", f"{support.describe()} for GPUs {wanted}")
    return Check(
        "gpu runtime",
        "fail",
        f"the job asks for GPUs ({wanted}), but {problem}. {support.hint(memlock)}",
    )


def check_shm(shm_size: int | None) -> Check:
    shm = shm_size or SHM_DEFAULT
    if shm >= SHM_ENOUGH:
        return Check("shm", "ok", f"/dev/shm of the job: {format_size(shm)}")
    return Check(
        "shm",
        "warn",
        f"/dev/shm of the job: {format_size(shm)} (PyTorch DataLoader workers want more: "
        'shm_size = "1g")',
    )


def check_free_space(free: int, checkpoint_sizes: dict[str, int]) -> Check:
    """Room for the checkpoints: the largest one times (those kept now + 1 being written).

    Args:
        free: bytes free where the engine keeps volumes.
        checkpoint_sizes: bytes of each ``step-*`` folder in the checkpoint volume.
    """
    if not checkpoint_sizes:
        return Check(
            "free space", "ok", f"{format_size(free)} free where volumes live (no checkpoints yet)"
        )
    each = max(checkpoint_sizes.values())
    kept = len(checkpoint_sizes)
    need = each * (kept + 1)
    return Check(
        "free space",
        "ok" if free > need else "fail",
        f"{format_size(free)} free where volumes live; checkpoints of {format_size(each)} x "
        f"({kept} kept + 1 in flight) need {format_size(need)}",
    )


def check_bind_store(mount: Mount, plan: Plan, owner_uid: int | None) -> Check:
    """A writable bind store: its folder (``owner_uid`` None: it does not exist yet)."""
    name = f"store {mount.store}"
    if owner_uid is None:
        return Check(name, "ok", f"{mount.source} will be created for uid {plan.uid}")
    if owner_uid == plan.uid or plan.uid == 0:
        return Check(name, "ok", f"{mount.source} writable by {plan.user}")
    return Check(
        name,
        "fail",
        f"{mount.source} belongs to uid {owner_uid}; the job runs as {plan.user} and cannot "
        "write it (chown it, or set user)",
    )


def check_fixed_store(mount: Mount) -> Check | None:
    """Stores whose writability needs no test: read-only ones and tmpfs."""
    name = f"store {mount.store}"
    if mount.readonly:
        should = ", as a dataset should be" if mount.kind is StoreKind.DATASET else ""
        return Check(name, "ok", f"{mount.target} read-only{should}")
    if mount.backing is Backing.TMPFS:
        return Check(name, "ok", f"{mount.target}: tmpfs, writable by anyone")
    return None


# -- gathering the facts ---------------------------------------------------------------------


def _volume_store(engine: Engine, plan: Plan, mount: Mount, image_built: bool) -> Check:
    name = f"store {mount.store}"
    assert mount.source is not None
    if not engine.volume_exists(mount.source):
        return Check(name, "ok", f"volume {mount.source} will be created and handed to {plan.user}")
    if not image_built:
        return Check(
            name,
            "warn",
            f"volume {mount.source}: image {plan.image} not built yet, cannot test as the "
            "job's user",
        )
    code, _ = engine.run_helper(
        plan.image,
        ["-c", 'touch "$1/.cargohold-doctor" && rm -f "$1/.cargohold-doctor"', "sh", mount.target],
        [mount.request()],
        user=plan.user,
        entrypoint=["sh"],
    )
    if code == 0:
        return Check(name, "ok", f"volume {mount.source} writable by {plan.user}")
    return Check(
        name,
        "warn",
        f"volume {mount.source} not writable by {plan.user} (`cargohold run` hands fresh "
        "volumes over; this one has other owners)",
    )


def _checkpoint_sizes(engine: Engine, volume: str) -> dict[str, int]:
    sizes = volume_usage(open_volume(engine, volume)).by_entry
    return {k: v for k, v in sizes.items() if k.startswith("step-")}


def diagnose(
    engine: Engine,
    plan: Plan | None,
    *,
    free_space: Callable[[str], int | None] | None = None,
) -> list[Check]:
    """Every doctor check, in order. ``plan`` None: the engine-wide checks only.

    Args:
        free_space: bytes free at a folder, None when it is not visible here (a remote
            engine); defaults to ``shutil.disk_usage``.
    """
    free_at = free_space or _free_space
    info = engine.info()
    checks = [check_engine(info), check_storage_driver(info), check_uid_mapping(info)]
    gpus = check_gpus(info, plan)
    if gpus is not None:
        checks.append(gpus)
    checks.append(check_shm(plan.shm_size if plan is not None else None))
    free = free_at(info.root_dir)
    if plan is None:
        if free is not None:
            checks.append(Check("free space", "ok", f"{format_size(free)} free in {info.root_dir}"))
        return checks
    ckpt = plan.checkpoint_mount
    if ckpt is not None and ckpt.backing is Backing.VOLUME and ckpt.source and free is not None:
        sizes = _checkpoint_sizes(engine, ckpt.source) if engine.volume_exists(ckpt.source) else {}
        checks.append(check_free_space(free, sizes))
    image_built = engine.image_exists(plan.image)
    for mount in plan.mounts:
        fixed = check_fixed_store(mount)
        if fixed is not None:
            checks.append(fixed)
        elif mount.backing is Backing.BIND:
            checks.append(check_bind_store(mount, plan, _owner(mount.source)))
        else:
            checks.append(_volume_store(engine, plan, mount, image_built))
    return checks


def doctor(engine: Engine, spec_file: Path | None) -> list[Check]:
    """``diagnose`` for the job of the spec at ``spec_file`` (or the nearest spec). Without a
    usable spec, the engine-wide checks and a "spec" check that says why (a warning when the
    file was named, since then the user expected it to be checked).
    """
    from cargohold.errors import CargoholdError
    from cargohold.plan import make_plan
    from cargohold.spec import load_spec

    try:
        plan = make_plan(load_spec(spec_file), None, host_user=(os.getuid(), os.getgid()))
    except CargoholdError as exc:
        problem = Check("spec", "warn" if spec_file else "ok", f"no job checked ({exc.message})")
        return [problem, *diagnose(engine, None)]
    return diagnose(engine, plan)


def _free_space(folder: str) -> int | None:
    return shutil.disk_usage(folder).free if folder and Path(folder).exists() else None


def _owner(path: str | None) -> int | None:
    try:
        return os.stat(path).st_uid if path else None
    except FileNotFoundError:
        return None


# -- ps ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerStatus:
    name: str
    status: str
    image: str
    ml_files_at_risk: int
    bytes_at_risk: int


@dataclass(frozen=True)
class ProjectStatus:
    project: str | None  # None: every cargohold project
    containers: tuple[ContainerStatus, ...]
    volumes: tuple[VolumeSummary, ...]

    @property
    def at_risk(self) -> bool:
        return any(c.ml_files_at_risk for c in self.containers)


def project_status(engine: Engine, project: str | None) -> ProjectStatus:
    """A project's containers (with the ML data their layers hold) and its volumes."""
    label = f"{LABEL_PROJECT}={project}" if project else LABEL_PROJECT
    containers = []
    for container in engine.containers(label):
        scan = scan_container(engine, container.id, keep=0)
        containers.append(
            ContainerStatus(
                container.name,
                container.status,
                container.image,
                scan.keeping,
                scan.bytes_at_risk,
            )
        )
    volumes = tuple(
        v for v in volume_summaries(engine, None) if project is None or v.project == project
    )
    return ProjectStatus(project, tuple(containers), volumes)
