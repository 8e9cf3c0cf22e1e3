"""Render plans as a Compose Specification document (a plain dict; the CLI writes YAML).

Each job becomes a service; each named volume a top-level volume with cargohold's labels and its
real name, so that ``docker compose up`` and ``cargohold run`` share data. When the job's user is
not root, a ``<job>-prepare`` service runs first (``service_completed_successfully``) to hand
fresh volumes to that user, as ``cargohold run`` does; a ``<job>-seed`` service fills volumes
seeded from host folders.

GPUs use the service-level ``gpus:`` attribute: the bundled Compose (v2.40) turns it into the
same ``DeviceRequests`` as ``docker run --gpus`` (empty driver, capability ``gpu``), where
``deploy.resources.reservations.devices`` would need a driver name. ``stop_grace_period`` becomes
the container's ``StopTimeout``, so ``docker stop`` without ``-t`` honours it. Secrets are listed
by name without a value (Compose passes the caller's), env files by path in Compose's ``raw``
format, which reads them as ``docker run --env-file`` does.
"""

from __future__ import annotations

from typing import Any

from cargohold.errors import SpecError
from cargohold.kinds import Backing
from cargohold.plan import Mount, Plan, Runtime
from cargohold.render._mirror import add_compose_mirrors
from cargohold.render._prepare import seed_mounts, seed_script, stores_to_chown
from cargohold.render._snapshots import add_compose_snapshots, snapshots_service_name

__all__ = ["render_compose"]


def _volume_key(mount: Mount) -> str:
    return mount.store


def _service_volume(mount: Mount) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": mount.backing.value, "target": mount.target}
    if mount.backing is Backing.BIND:
        entry["source"] = mount.source
        # Never let the engine invent an empty root-owned folder for a missing source.
        entry["bind"] = {"create_host_path": False}
    elif mount.backing is Backing.VOLUME:
        entry["source"] = _volume_key(mount)
    elif mount.tmpfs_size is not None:
        entry["tmpfs"] = {"size": mount.tmpfs_size}
    if mount.readonly:
        entry["read_only"] = True
    return entry


def _top_level_volume(plan: Plan, mount: Mount) -> dict[str, Any]:
    if mount.external:
        return {"name": mount.source, "external": True}
    volume: dict[str, Any] = {"name": mount.source, "labels": mount.volume_labels(plan.project)}
    if mount.driver:
        volume["driver"] = mount.driver
        volume["driver_opts"] = dict(mount.driver_opts)
    return volume


def _gpus(runtime: Runtime) -> str | list[dict[str, Any]] | None:
    gpus = runtime.gpus
    if gpus is None:
        return None
    if gpus.all:
        return "all"
    # No `capabilities`: Compose adds "gpu" itself, and a second one would differ from --gpus.
    if gpus.device_ids:
        return [{"device_ids": list(gpus.device_ids)}]
    return [{"count": gpus.count}]


def _runtime(service: dict[str, Any], runtime: Runtime) -> None:
    """The service keys of the plan's runtime settings (entrypoint excepted)."""
    gpus = _gpus(runtime)
    if gpus is not None:
        service["gpus"] = gpus
    if runtime.ipc is not None:
        service["ipc"] = runtime.ipc
    if runtime.shm_size is not None:
        service["shm_size"] = runtime.shm_size
    if runtime.ulimits:
        service["ulimits"] = {
            u.name: u.soft if u.soft == u.hard else {"soft": u.soft, "hard": u.hard}
            for u in runtime.ulimits
        }
    if runtime.stop_timeout is not None:
        service["stop_grace_period"] = f"{runtime.stop_timeout}s"
    if runtime.init:
        service["init"] = True
    if runtime.read_only:
        service["read_only"] = True
    if runtime.tmpfs:
        service["tmpfs"] = list(runtime.tmpfs)
    if runtime.security_opt:
        service["security_opt"] = list(runtime.security_opt)
    if runtime.cap_drop:
        service["cap_drop"] = list(runtime.cap_drop)
    resources = runtime.resources
    if resources.cpus is not None:
        service["cpus"] = resources.cpus
    if resources.memory is not None:
        service["mem_limit"] = resources.memory
    if resources.pids_limit is not None:
        service["pids_limit"] = resources.pids_limit
    if runtime.devices:
        service["devices"] = list(runtime.devices)
    if runtime.network is not None:
        service["network_mode"] = runtime.network
    if runtime.env_files:
        # raw: values as `docker run --env-file` reads them (no quote stripping, no ${...}).
        service["env_file"] = [{"path": path, "format": "raw"} for path in runtime.env_files]


def _service(plan: Plan) -> dict[str, Any]:
    service: dict[str, Any] = {"image": plan.image}
    if plan.build is not None:
        build: dict[str, Any] = {"context": plan.build.context}
        if plan.build.dockerfile:
            build["dockerfile"] = plan.build.dockerfile
        if plan.build.args:
            build["args"] = dict(plan.build.args)
        service["build"] = build
    entrypoint, command = plan.entrypoint_and_command()
    if entrypoint is not None:
        service["entrypoint"] = entrypoint
    if command is not None:
        service["command"] = command
    service["user"] = plan.user
    if plan.workdir is not None:
        service["working_dir"] = plan.workdir
    _runtime(service, plan.runtime)
    # A secret without a value: Compose takes it from the environment it runs in.
    service["environment"] = {**dict(plan.env), **dict.fromkeys(plan.runtime.secrets)}
    service["labels"] = dict(plan.labels)
    service["volumes"] = [_service_volume(m) for m in plan.mounts]
    if plan.restart_max:
        service["restart"] = f"on-failure:{plan.restart_max}"
    return service


def _seed_service(plan: Plan, script: str) -> dict[str, Any]:
    return {
        "image": plan.image,
        "user": "0:0",
        "network_mode": "none",
        "entrypoint": ["sh"],
        "command": ["-c", script],
        "volumes": [_service_volume(m) for m in seed_mounts(plan)],
        "labels": dict(plan.labels),
    }


def _prepare_service(plan: Plan, mounts: list[Mount]) -> dict[str, Any]:
    return {
        "image": plan.image,
        "user": "0:0",
        "network_mode": "none",
        "entrypoint": ["chown"],
        "command": [plan.user, *(m.target for m in mounts)],
        "volumes": [_service_volume(m) for m in mounts],
        "labels": dict(plan.labels),
    }


def render_compose(plans: list[Plan], *, mirror_image: str | None = None) -> dict[str, Any]:
    """A Compose document running every plan as a service.

    Args:
        plans: one plan per job, all of one project.
        mirror_image: the cargohold image; with it, a checkpoints store's ``mirror`` gets its
            restore and mirror services (``render/_mirror.py``), and a volume with a
            ``snapshots`` schedule its snapshot sidecar (``render/_snapshots.py``).

    Returns:
        A dict ready for ``yaml.safe_dump``.
    """
    if not plans:
        raise ValueError("render_compose needs at least one plan")
    _refuse_name_clashes(plans, with_sidecars=mirror_image is not None)
    services: dict[str, Any] = {}
    volumes: dict[str, Any] = {}
    for plan in plans:
        service = _service(plan)
        before: list[tuple[str, dict[str, Any]]] = []
        script = seed_script(plan)
        if script is not None:
            before.append((f"{plan.job}-seed", _seed_service(plan, script)))
        to_chown = stores_to_chown(plan)
        if to_chown:
            before.append((f"{plan.job}-prepare", _prepare_service(plan, to_chown)))
        for (_, helper), (previous, _) in zip(before[1:], before, strict=False):
            helper["depends_on"] = {previous: {"condition": "service_completed_successfully"}}
        services.update(before)
        if before:
            service["depends_on"] = {before[-1][0]: {"condition": "service_completed_successfully"}}
        services[plan.job] = service
        for mount in plan.volumes():
            volumes[_volume_key(mount)] = _top_level_volume(plan, mount)
    document: dict[str, Any] = {"name": plans[0].project, "services": services}
    if volumes:
        document["volumes"] = volumes
    escaped: dict[str, Any] = _escaped(document)
    if mirror_image is not None:
        # Snapshots first: their sidecar waits for what the job waits for before the mirror.
        add_compose_snapshots(escaped, plans, mirror_image)
        add_compose_mirrors(escaped, plans, mirror_image)
    return escaped


def _refuse_name_clashes(plans: list[Plan], *, with_sidecars: bool) -> None:
    """A job named like a service this file adds for another (``train-prepare``,
    ``train-mirror``, …) would replace it in the services table without a word.

    Raises:
        SpecError: naming the job whose name is taken.
    """
    owner: dict[str, str] = {}
    jobs = {plan.job for plan in plans}
    for plan in plans:
        names = [plan.job]
        if seed_script(plan) is not None:
            names.append(f"{plan.job}-seed")
        if stores_to_chown(plan):
            names.append(f"{plan.job}-prepare")
        if with_sidecars:
            ckpt = plan.checkpoint_mount
            if ckpt is not None and ckpt.mirror is not None:
                names += [f"{plan.job}-mirror-restore", f"{plan.job}-mirror"]
            names += [
                snapshots_service_name(plan, m) for m in plan.volumes() if m.snapshots is not None
            ]
        for name in names:
            if (name in owner and owner[name] != plan.job) or names.count(name) > 1:
                other = owner.get(name, plan.job)
                raise SpecError(
                    f"Compose service {name!r} is wanted twice, for job {other!r} and for job "
                    f"{plan.job!r}: one would replace the other.",
                    key=f"jobs.{name if name in jobs else plan.job}",
                    hint="Rename the job (names ending in -prepare, -seed, -mirror, "
                    "-mirror-restore or -snapshots-STORE are the helpers' of another job).",
                )
            owner[name] = plan.job


def _escaped(value: Any) -> Any:
    """Every ``$`` doubled: Compose interpolates ``$NAME`` anywhere in the file, and a value from
    the spec (a path, an env value, the seeding script) means what it says."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return value
