"""Scheduled snapshots as a sidecar: ``[stores.NAME.snapshots]`` beside the job (issue 12).

The sidecar gets what a job gets and nothing more: the job's user, never privileged, never the
Docker socket. Without the socket it cannot ask the engine for the volume, so it mounts the
volume read-only and snapshots the folder with ``--as-volume VOLUME``: the snapshots (and the
retention applied after each run) are recorded as the volume's, and ``cargohold restore
VOLUME@latest`` on the host finds them. A repository that is a folder of this host is
bind-mounted at ``REPO_TARGET`` (and the sidecar has no network); an ``s3://`` one is reached
with the credentials of whoever starts Compose (``${AWS_…:-}``), never written into the file.

One sidecar per volume: a store several jobs share is snapshotted beside the first of them.
Added after the document's ``$`` escaping, like the mirror, so the spec's values are escaped
here with ``literal``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from cargohold.plan import Mount, Plan, SnapshotSchedule
from cargohold.render._mirror import CREDENTIAL_ENV, literal

__all__ = [
    "REPO_TARGET",
    "SNAPSHOT_ENV",
    "add_compose_snapshots",
    "scheduled_mounts",
    "snapshot_command",
    "snapshots_service_name",
]

# Where a folder repository appears inside the sidecar.
REPO_TARGET = "/cargohold-repo"
# The mirror's credentials, and the password of an encrypted repository.
SNAPSHOT_ENV = (*CREDENTIAL_ENV, "CARGOHOLD_PASSWORD")


def scheduled_mounts(plans: list[Plan]) -> Iterator[tuple[Plan, Mount, SnapshotSchedule]]:
    """Each scheduled volume once, with the first plan that mounts it."""
    seen: set[str | None] = set()
    for plan in plans:
        for mount in plan.volumes():
            if mount.snapshots is not None and mount.source not in seen:
                seen.add(mount.source)
                yield plan, mount, mount.snapshots


def snapshots_service_name(plan: Plan, mount: Mount) -> str:
    return f"{plan.job}-snapshots-{mount.store}"


def snapshot_command(mount: Mount, schedule: SnapshotSchedule) -> list[str]:
    """``cargohold snapshot TARGET --as-volume VOLUME --every … --keep-…`` (not escaped)."""
    assert mount.source is not None
    return [
        "cargohold",
        "snapshot",
        mount.target,
        "--as-volume",
        mount.source,
        "--every",
        schedule.every,
        *schedule.keep_options(),
    ]


def add_compose_snapshots(document: dict[str, Any], plans: list[Plan], image: str) -> None:
    """Add a ``<job>-snapshots-<store>`` service for every scheduled volume."""
    services: dict[str, Any] = document["services"]
    for plan, mount, schedule in scheduled_mounts(plans):
        volumes: list[dict[str, Any]] = [
            {
                "type": "volume",
                "source": mount.store,
                "target": literal(mount.target),
                "read_only": True,
            }
        ]
        env: dict[str, str] = {}
        if schedule.repo_is_folder:
            volumes.append(
                {
                    "type": "bind",
                    "source": literal(schedule.repo),
                    "target": REPO_TARGET,
                    "bind": {"create_host_path": False},
                }
            )
            env["CARGOHOLD_REPO"] = REPO_TARGET
        else:
            env["CARGOHOLD_REPO"] = literal(schedule.repo)
        env.update({name: "${" + name + ":-}" for name in SNAPSHOT_ENV})
        service: dict[str, Any] = {
            "image": image,
            "user": plan.user,
            "command": [literal(word) for word in snapshot_command(mount, schedule)],
            "environment": env,
            "volumes": volumes,
            "labels": {**{k: literal(v) for k, v in plan.labels}, "cargohold.role": "snapshots"},
            "security_opt": ["no-new-privileges"],
        }
        if schedule.repo_is_folder:
            service["network_mode"] = "none"  # nothing to reach: keep it off every network
        job = services[plan.job]
        if "depends_on" in job:  # after the volume is seeded and prepared, like the job
            service["depends_on"] = {name: dict(c) for name, c in job["depends_on"].items()}
        services[snapshots_service_name(plan, mount)] = service
