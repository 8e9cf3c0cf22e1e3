"""Render a plan as one shell line: create the volumes, prepare them, ``docker run`` the job.

Pasted into a POSIX shell, the line gives the same mounts, user and environment as
``cargohold run`` (the integration tests compare ``docker inspect`` of both). Every word is
quoted with ``shlex.quote``; ``--mount`` values are also CSV-quoted, because Docker splits them on
commas.
"""

from __future__ import annotations

import csv
import io
import shlex

from cargohold.kinds import Backing
from cargohold.plan import Mount, Plan
from cargohold.render._prepare import volumes_to_chown

__all__ = ["docker_run_argv", "mount_option", "render_docker_run"]


def _csv_field(text: str) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([text])
    return buffer.getvalue()


def mount_option(mount: Mount) -> str:
    """The value of ``--mount`` for one store."""
    fields = [f"type={mount.backing.value}"]
    if mount.backing is not Backing.TMPFS:
        assert mount.source is not None
        fields.append(f"source={mount.source}")
    fields.append(f"target={mount.target}")
    if mount.readonly:
        fields.append("readonly")
    if mount.backing is Backing.VOLUME and mount.driver:
        fields.append(f"volume-driver={mount.driver}")
        fields.extend(f"volume-opt={k}={v}" for k, v in mount.driver_opts)
    if mount.backing is Backing.TMPFS and mount.tmpfs_size is not None:
        fields.append(f"tmpfs-size={mount.tmpfs_size}")
    return ",".join(_csv_field(f) for f in fields)


def docker_run_argv(
    plan: Plan, *, command: tuple[str, ...] | None = None, extra_env: dict[str, str] | None = None
) -> list[str]:
    """The ``docker run`` argv for the job itself (no volume preparation)."""
    argv = ["docker", "run", "--name", plan.container_name]
    for key, value in plan.labels:
        argv += ["--label", f"{key}={value}"]
    argv += ["--user", plan.user]
    for mount in plan.mounts:
        argv += ["--mount", mount_option(mount)]
    if plan.shm_size is not None:
        argv += ["--shm-size", str(plan.shm_size)]
    if plan.workdir is not None:
        argv += ["--workdir", plan.workdir]
    env = dict(plan.env)
    env.update(extra_env or {})
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    argv.append(plan.image)
    cmd = command if command is not None else plan.command
    argv += list(cmd or ())
    return argv


def _volume_create_argv(plan: Plan, mount: Mount) -> list[str]:
    assert mount.source is not None
    argv = ["docker", "volume", "create"]
    for key, value in mount.volume_labels(plan.project).items():
        argv += ["--label", f"{key}={value}"]
    if mount.driver:
        argv += ["--driver", mount.driver]
        for key, value in mount.driver_opts:
            argv += ["--opt", f"{key}={value}"]
    return [*argv, mount.source]


def prepare_argv(plan: Plan) -> list[str] | None:
    """The root helper that hands fresh volumes to the job's user, or None if none need it."""
    mounts = volumes_to_chown(plan)
    if not mounts:
        return None
    argv = ["docker", "run", "--rm", "--user", "0:0", "--network", "none"]
    for mount in mounts:
        argv += ["--mount", mount_option(mount)]
    argv += ["--entrypoint", "chown", plan.image, plan.user, *(m.target for m in mounts)]
    return argv


def render_docker_run(plan: Plan) -> str:
    """One shell line, joined with ``&&``, equivalent to ``cargohold run`` for this plan."""
    steps: list[list[str]] = []
    for mount in plan.volumes():
        if not mount.external:
            steps.append([*_volume_create_argv(plan, mount), ">/dev/null"])
    for mount in plan.mounts:
        if mount.create_source and mount.source is not None:
            steps.append(["mkdir", "-p", mount.source])
    prepare = prepare_argv(plan)
    if prepare is not None:
        steps.append(prepare)
    steps.append(docker_run_argv(plan))
    return " && ".join(
        " ".join(word if word == ">/dev/null" else shlex.quote(word) for word in step)
        for step in steps
    )
