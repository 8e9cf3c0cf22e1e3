"""Render plans as a stack file for ``docker stack deploy`` (Compose file format 3.8).

Swarm differs from Compose where ML data is concerned, and the file says so in its header
(``render/_limits.py``): a service has no ``shm_size`` (moby#26714), so ``/dev/shm`` is a tmpfs
mount; there is no ``depends_on`` ordering, so no preparing container; and there are no pods, so
the checkpoint mirror cannot be a sidecar sharing the task's volume on whichever node the task
lands. It runs in the job's container instead: ``cargohold mirror --exec -- CMD`` restores the
newest mirrored checkpoint into an empty store, runs the command, pushes every committed
checkpoint while it runs, and exits with the command's status.

``docker stack deploy`` interpolates ``$VAR`` in the file, so every ``$`` of the spec is written
as ``$$``; the mirror's credentials are the only variables, read from the deploying shell.
"""

from __future__ import annotations

from typing import Any

from cargohold.kinds import Backing, is_url
from cargohold.plan import Mount, Plan
from cargohold.render._mirror import CREDENTIAL_ENV, literal

__all__ = ["render_swarm"]

# The node's own network namespace, as a stack names it.
_HOST_NETWORK = "hostnet"


def _service_volume(mount: Mount) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": mount.backing.value, "target": mount.target}
    if mount.backing is Backing.BIND:
        entry["source"] = literal(mount.source or "")
    elif mount.backing is Backing.VOLUME:
        entry["source"] = mount.store
    elif mount.tmpfs_size is not None:
        entry["tmpfs"] = {"size": mount.tmpfs_size}
    if mount.readonly:
        entry["read_only"] = True
    return entry


def _top_level_volume(plan: Plan, mount: Mount) -> dict[str, Any]:
    if mount.external:
        return {"name": mount.source, "external": True}
    volume: dict[str, Any] = {"name": mount.source}
    if mount.driver:
        volume["driver"] = mount.driver
        volume["driver_opts"] = {k: literal(v) for k, v in mount.driver_opts}
    volume["labels"] = mount.volume_labels(plan.project)
    return volume


def _resources(plan: Plan) -> dict[str, Any]:
    rt = plan.runtime
    limits: dict[str, Any] = {}
    if rt.resources.cpus is not None:
        limits["cpus"] = f"{rt.resources.cpus:g}"
    if rt.resources.memory is not None:
        limits["memory"] = str(rt.resources.memory)
    resources: dict[str, Any] = {"limits": limits} if limits else {}
    if rt.gpus is not None and rt.gpus.count is not None and rt.gpus.count > 0:
        resources["reservations"] = {
            "generic_resources": [
                {"discrete_resource_spec": {"kind": "NVIDIA-GPU", "value": rt.gpus.count}}
            ]
        }
    return resources


def _service(plan: Plan) -> dict[str, Any]:
    service: dict[str, Any] = {"image": plan.image}
    ckpt = plan.checkpoint_mount
    mirror = ckpt.mirror if ckpt is not None else None
    command = [literal(word) for word in plan.command] if plan.command is not None else None
    rt = plan.runtime
    entrypoint = [literal(word) for word in rt.entrypoint] if rt.entrypoint is not None else None
    if mirror is not None:
        service["entrypoint"] = ["cargohold", "mirror", "--exec", "--", *(entrypoint or [])]
    elif entrypoint is not None:
        service["entrypoint"] = entrypoint
    if command is not None:
        service["command"] = command
    service["user"] = plan.user
    if plan.workdir is not None:
        service["working_dir"] = literal(plan.workdir)
    env = {k: literal(v) for k, v in plan.env}
    env["CARGOHOLD_NODE_HOSTNAME"] = "{{.Node.Hostname}}"
    for name in rt.secrets:  # from the deploying shell, never written here
        env[name] = "${" + name + "}"
    if mirror is not None:
        env["CARGOHOLD_MIRROR"] = literal(mirror)
        for name in CREDENTIAL_ENV:
            env[name] = "${" + name + ":-}"
    service["environment"] = env
    if rt.env_files:
        service["env_file"] = [literal(f) for f in rt.env_files]
    service["labels"] = dict(plan.labels)
    if rt.init:
        service["init"] = True
    if rt.read_only:
        service["read_only"] = True
    if rt.stop_timeout is not None:
        service["stop_grace_period"] = f"{rt.stop_timeout}s"
    if rt.cap_drop:
        service["cap_drop"] = list(rt.cap_drop)
    if rt.ulimits:
        service["ulimits"] = {u.name: {"soft": u.soft, "hard": u.hard} for u in rt.ulimits}
    if rt.network == "host":
        service["networks"] = [_HOST_NETWORK]
    volumes = [_service_volume(m) for m in plan.mounts]
    shm = plan.runtime.cluster_shm_size
    if shm is not None:  # also for ipc = "host", which a service cannot have
        volumes.append({"type": "tmpfs", "target": "/dev/shm", "tmpfs": {"size": shm}})
    volumes += [{"type": "tmpfs", "target": folder} for folder in rt.tmpfs]
    if mirror is not None and not is_url(mirror):
        # A folder mirror (a shared file system on every node, check_limits says so), bound
        # at its own path so that CARGOHOLD_MIRROR names it inside the task.
        volumes.append({"type": "bind", "source": literal(mirror), "target": literal(mirror)})
    service["volumes"] = volumes
    deploy: dict[str, Any] = {"replicas": 1, "labels": dict(plan.labels)}
    if plan.restart_max:
        deploy["restart_policy"] = {"condition": "on-failure", "max_attempts": plan.restart_max}
    else:
        deploy["restart_policy"] = {"condition": "none"}
    if plan.placement:
        deploy["placement"] = {"constraints": list(plan.placement)}
    resources = _resources(plan)
    if resources:
        deploy["resources"] = resources
    service["deploy"] = deploy
    return service


def render_swarm(plans: list[Plan]) -> dict[str, Any]:
    """A stack file running every plan as a service.

    Args:
        plans: one plan per job of one project; check each with ``check_limits(p, "swarm")``.

    Returns:
        A dict ready for ``yaml.safe_dump``.
    """
    if not plans:
        raise ValueError("render_swarm needs at least one plan")
    services: dict[str, Any] = {}
    volumes: dict[str, Any] = {}
    for plan in plans:
        services[plan.job] = _service(plan)
        for mount in plan.volumes():
            volumes[mount.store] = _top_level_volume(plan, mount)
    document: dict[str, Any] = {"version": "3.8", "services": services}
    if volumes:
        document["volumes"] = volumes
    if any(p.runtime.network == "host" for p in plans):
        document["networks"] = {_HOST_NETWORK: {"external": True, "name": "host"}}
    return document
