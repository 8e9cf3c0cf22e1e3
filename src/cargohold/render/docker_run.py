"""Render a plan as one shell line: create the volumes, prepare them, ``docker run`` the job.

Pasted into a POSIX shell, the line gives the same mounts, user, environment and runtime settings
as ``cargohold run`` (the integration tests compare ``docker inspect`` of both). Every word is
quoted with ``shlex.quote``; ``--mount`` and ``--gpus`` values are also CSV-quoted, because Docker
splits them on commas. Secrets appear as ``--env NAME`` (Docker reads the value from the shell's
environment) and env files as ``--env-file PATH``: the line never holds a secret's value.

Like ``cargohold run``, the line first removes a *stopped* container of the same job (and only
one labelled with this project), so it can follow ``cargohold run`` without a name conflict; a
running one makes ``docker run`` fail, as it should.
"""

from __future__ import annotations

import csv
import io
import shlex

from cargohold.kinds import Backing
from cargohold.plan import LABEL_PROJECT, Mount, Plan, Runtime
from cargohold.render._prepare import seed_mounts, seed_script, stores_to_chown

__all__ = ["docker_run_argv", "mount_option", "render_docker_run", "runtime_options"]


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


def gpus_option(runtime: Runtime) -> str | None:
    """The value of ``--gpus``: ``all``, a count, or ``"device=ID,ID"``."""
    gpus = runtime.gpus
    if gpus is None:
        return None
    if gpus.device_ids:
        return _csv_field("device=" + ",".join(gpus.device_ids))
    return "all" if gpus.all else str(gpus.count)


def runtime_options(runtime: Runtime) -> list[str]:
    """The ``docker run`` options of the plan's runtime settings (entrypoint excepted)."""
    argv: list[str] = []
    gpus = gpus_option(runtime)
    if gpus is not None:
        argv += ["--gpus", gpus]
    if runtime.ipc is not None:
        argv += ["--ipc", runtime.ipc]
    if runtime.shm_size is not None:
        argv += ["--shm-size", str(runtime.shm_size)]
    for limit in runtime.ulimits:
        value = str(limit.soft) if limit.soft == limit.hard else f"{limit.soft}:{limit.hard}"
        argv += ["--ulimit", f"{limit.name}={value}"]
    if runtime.stop_timeout is not None:
        argv += ["--stop-timeout", str(runtime.stop_timeout)]
    if runtime.init:
        argv.append("--init")
    if runtime.read_only:
        argv.append("--read-only")
    for folder in runtime.tmpfs:
        argv += ["--tmpfs", folder]
    for option in runtime.security_opt:
        argv += ["--security-opt", option]
    for capability in runtime.cap_drop:
        argv += ["--cap-drop", capability]
    resources = runtime.resources
    if resources.cpus is not None:
        argv += ["--cpus", str(resources.cpus)]
    if resources.memory is not None:
        argv += ["--memory", str(resources.memory)]
    if resources.pids_limit is not None:
        argv += ["--pids-limit", str(resources.pids_limit)]
    for device in runtime.devices:
        argv += ["--device", device]
    if runtime.network is not None:
        argv += ["--network", runtime.network]
    return argv


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
    argv += runtime_options(plan.runtime)
    if plan.workdir is not None:
        argv += ["--workdir", plan.workdir]
    env = dict(plan.env)
    env.update(extra_env or {})
    for path in plan.runtime.env_files:
        argv += ["--env-file", path]
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    for name in plan.runtime.secrets:
        argv += ["--env", name]  # no value: Docker passes the caller's, never the line
    entrypoint, cmd = plan.entrypoint_and_command(command)
    if entrypoint is not None:
        argv += ["--entrypoint", entrypoint[0]]
    argv.append(plan.image)
    argv += cmd or []
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


def seed_argv(plan: Plan) -> list[str] | None:
    """The root helper that copies seed folders into their empty volumes, or None."""
    script = seed_script(plan)
    if script is None:
        return None
    argv = ["docker", "run", "--rm", "--user", "0:0", "--network", "none"]
    for mount in seed_mounts(plan):
        argv += ["--mount", mount_option(mount)]
    return [*argv, "--entrypoint", "sh", plan.image, "-c", script]


def prepare_argv(plan: Plan) -> list[str] | None:
    """The root helper that hands fresh volumes to the job's user, or None if none need it."""
    mounts = stores_to_chown(plan)
    if not mounts:
        return None
    argv = ["docker", "run", "--rm", "--user", "0:0", "--network", "none"]
    for mount in mounts:
        argv += ["--mount", mount_option(mount)]
    argv += ["--entrypoint", "chown", plan.image, plan.user, *(m.target for m in mounts)]
    return argv


def _remove_stopped_argv(plan: Plan) -> str:
    """Shell text removing a stopped container of this job (only one of this project)."""
    listing = " ".join(
        shlex.quote(word)
        for word in [
            "docker", "ps", "-aq",
            "--filter", f"name=^/?{plan.container_name}$",
            "--filter", f"label={LABEL_PROJECT}={plan.project}",
            "--filter", "status=exited",
            "--filter", "status=created",
        ]
    )  # fmt: skip
    return f"{{ docker rm $({listing}) >/dev/null 2>&1 || true; }}"


def render_docker_run(plan: Plan) -> str:
    """One shell line, joined with ``&&``, equivalent to ``cargohold run`` for this plan."""
    steps: list[list[str]] = []
    for mount in plan.volumes():
        if not mount.external:
            steps.append([*_volume_create_argv(plan, mount), ">/dev/null"])
    for mount in plan.mounts:
        if mount.create_source and mount.source is not None:
            steps.append(["mkdir", "-p", mount.source])
    for helper in (seed_argv(plan), prepare_argv(plan)):
        if helper is not None:
            steps.append(helper)
    steps.append(docker_run_argv(plan))
    words = [
        " ".join(word if word == ">/dev/null" else shlex.quote(word) for word in step)
        for step in steps
    ]
    words.insert(len(words) - 1, _remove_stopped_argv(plan))
    return " && ".join(words)
