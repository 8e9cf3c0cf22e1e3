"""Render plans as a Compose Specification document (a plain dict; the CLI writes YAML).

Each job becomes a service; each named volume a top-level volume with cargohold's labels and its
real name, so that ``docker compose up`` and ``cargohold run`` share data. When the job's user is
not root, a ``<job>-prepare`` service runs first (``service_completed_successfully``) to hand
fresh volumes to that user, as ``cargohold run`` does.
"""

from __future__ import annotations

from typing import Any

from cargohold.kinds import Backing
from cargohold.plan import Mount, Plan
from cargohold.render._prepare import volumes_to_chown

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


def _service(plan: Plan) -> dict[str, Any]:
    service: dict[str, Any] = {"image": plan.image}
    if plan.build is not None:
        build: dict[str, Any] = {"context": plan.build.context}
        if plan.build.dockerfile:
            build["dockerfile"] = plan.build.dockerfile
        if plan.build.args:
            build["args"] = dict(plan.build.args)
        service["build"] = build
    if plan.command is not None:
        service["command"] = list(plan.command)
    service["user"] = plan.user
    if plan.workdir is not None:
        service["working_dir"] = plan.workdir
    if plan.shm_size is not None:
        service["shm_size"] = plan.shm_size
    service["environment"] = dict(plan.env)
    service["labels"] = dict(plan.labels)
    service["volumes"] = [_service_volume(m) for m in plan.mounts]
    if plan.restart_max:
        service["restart"] = f"on-failure:{plan.restart_max}"
    return service


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


def render_compose(plans: list[Plan]) -> dict[str, Any]:
    """A Compose document running every plan as a service.

    Args:
        plans: one plan per job, all of one project.

    Returns:
        A dict ready for ``yaml.safe_dump``.
    """
    if not plans:
        raise ValueError("render_compose needs at least one plan")
    services: dict[str, Any] = {}
    volumes: dict[str, Any] = {}
    for plan in plans:
        service = _service(plan)
        to_chown = volumes_to_chown(plan)
        if to_chown:
            prepare_name = f"{plan.job}-prepare"
            services[prepare_name] = _prepare_service(plan, to_chown)
            service["depends_on"] = {prepare_name: {"condition": "service_completed_successfully"}}
        services[plan.job] = service
        for mount in plan.volumes():
            volumes[_volume_key(mount)] = _top_level_volume(plan, mount)
    document: dict[str, Any] = {"name": plans[0].project, "services": services}
    if volumes:
        document["volumes"] = volumes
    return document
