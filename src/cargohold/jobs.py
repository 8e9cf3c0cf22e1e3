"""Run a job: build its image, prepare its stores, start it, follow it, restart and resume it.

The order matters for data safety:

1. The image is built (if the job has ``build``), with the base image resolved for air-gapped
   machines (``baseimage.py``).
2. Named volumes are created with cargohold's labels; artifacts folders are created on the host
   and handed to the job's user; fresh volumes are handed to the job's user by a short root
   helper, because Docker creates them owned by root.
3. The latest *whole* checkpoint is found (by the format's rules, ``resume.py``) and passed as
   ``CARGOHOLD_RESUME_FROM``, for every user: the store is read through its ``VolumeAccess``
   (directly, or through the Engine API's archive stream for a remote engine or a user without
   access to ``/var/lib/docker``); nothing is executed in the job's image (it may have no
   Python). ``CARGOHOLD_RESUME=auto`` also lets the job's library verify checksums on restore.
4. The container is created from the plan's runtime settings (``container_request``): GPUs are
   checked first (``gpus.require_gpus``), env files and secrets are read only now, from the
   caller's files and environment, and go into the container's environment, never into a plan,
   a rendered file or a log.
5. The container runs; on failure it is replaced and started again, up to ``restart.max`` times,
   each time resuming from the newest valid checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cargohold import baseimage
from cargohold.archive import EntrySource
from cargohold.archive.confined import ConfinedDir, ConfinedReader
from cargohold.buildlog import LineLog, default_log_path
from cargohold.engine import ContainerRequest, Engine
from cargohold.errors import (
    BuildFailed,
    EngineError,
    ImageNotFound,
    TransferError,
    UsageError,
    VolumeNotFound,
)
from cargohold.gpus import gpu_support, require_gpus
from cargohold.kinds import Backing
from cargohold.plan import LABEL_PROJECT, Plan
from cargohold.render._prepare import seed_mounts, seed_script, stores_to_chown
from cargohold.resume import latest_whole_checkpoint
from cargohold.sidecar import start_mirror, stop_mirror
from cargohold.volumes import engine_is_local, open_volume

__all__ = [
    "Resume",
    "RunResult",
    "container_request",
    "job_environment",
    "prepare_stores",
    "read_env_file",
    "resolve_resume",
    "run_job",
]

log = logging.getLogger(__name__)

Say = Callable[[str], None]


@dataclass(frozen=True)
class Resume:
    """How a run resumes: ``auto`` (newest valid checkpoint), ``never``, or a given path."""

    policy: str  # auto | never | path
    path: str | None = None

    @classmethod
    def parse(cls, value: str) -> Resume:
        if value in ("auto", "never"):
            return cls(value)
        if not value:
            raise UsageError(
                "--resume needs auto, never or a checkpoint path.",
                hint="For example --resume step-0000000012.",
            )
        return cls("path", value)


@dataclass(frozen=True)
class RunResult:
    container: str
    exit_code: int
    attempts: int
    resumed_from: str | None


def _quiet(_: str) -> None:
    pass


def ensure_image(
    engine: Engine, plan: Plan, say: Say = _quiet, progress: Say | None = None
) -> None:
    """Build the job's image when it has ``build``; else make sure it is present. ``progress``
    gets each line of a build (for a status line), ``say`` the few lines worth keeping.

    Raises:
        ImageNotFound: no build and the image is neither local nor pullable.
        BuildFailed: the build failed.
    """
    if plan.build is None:
        if engine.image_exists(plan.image):
            return
        if plan.image == baseimage.DEFAULT_BASE:
            raise ImageNotFound(
                f"Image {plan.image} is not available.",
                hint=f'Use image = "{baseimage.LOCAL_BASE}" (built by `cargohold base-image`).',
            )
        say(f"Pulling {plan.image} …")
        if not engine.pull(plan.image):
            raise ImageNotFound(
                f"Image {plan.image} is neither on this machine nor pullable.",
                hint='Add `build = "."` to the job to build it from a Dockerfile, or '
                "`docker load` it.",
            )
        return
    context = Path(plan.build.context)
    dockerfile = context / (plan.build.dockerfile or "Dockerfile")
    if not dockerfile.is_file():
        raise UsageError(
            f"Job {plan.job!r} builds from {dockerfile}, which does not exist.",
            hint="Write a Dockerfile there, or set build.dockerfile to its path.",
        )
    args = dict(plan.build.args)
    default_base = baseimage.dockerfile_base_default(dockerfile)
    if default_base is not None and baseimage.BASE_ARG not in args:
        args[baseimage.BASE_ARG] = baseimage.ensure_base_image(
            engine, default_base, on_output=say, on_progress=progress
        )
    with LineLog(default_log_path(f"build-{plan.image}"), then=progress) as build_log:
        where = f" (log: {build_log.path})" if build_log.path else ""
        say(f"Building {plan.image} from {context}{where}")
        try:
            engine.build(
                context=str(context),
                tag=plan.image,
                dockerfile=plan.build.dockerfile,
                buildargs=args,
                labels={LABEL_PROJECT: plan.project},
                on_output=build_log,
            )
        except BuildFailed as exc:
            build_log.record(exc.message)  # the engine's error line is not among the lines
            if build_log.path is None:
                raise
            raise BuildFailed(
                exc.message, hint=f"{exc.hint or ''} Full log: {build_log.path}".strip()
            ) from exc


def _make_owned_dirs(path: Path, uid: int, gid: int) -> None:
    """mkdir -p, handing every folder it creates to uid:gid (when we may)."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        folder.mkdir()
        if os.geteuid() == 0 and (uid, gid) != (0, 0):
            os.chown(folder, uid, gid)


def prepare_stores(engine: Engine, plan: Plan, say: Say = _quiet) -> None:
    """Create volumes and artifacts folders, and make writable stores writable by the job's user.

    Raises:
        VolumeNotFound: an external volume is missing.
        EngineError: the ownership helper failed.
    """
    for mount in plan.volumes():
        assert mount.source is not None
        if engine.volume_exists(mount.source):
            continue
        if mount.external:
            raise VolumeNotFound(
                f"External volume {mount.source} (store {mount.store!r}) does not exist.",
                hint=f"Create it first (`docker volume create {mount.source}`), or drop "
                "external = true to let cargohold create it.",
            )
        engine.create_volume(
            mount.source,
            mount.volume_labels(plan.project),
            driver=mount.driver,
            driver_opts=dict(mount.driver_opts),
        )
        say(f"Created volume {mount.source} for store {mount.store!r}")
    for mount in plan.mounts:
        if mount.create_source and mount.source is not None:
            path = Path(mount.source)
            if not path.exists():
                _make_owned_dirs(path, plan.uid, plan.gid)
                say(f"Created {path} for store {mount.store!r}")
            elif not path.is_dir():
                raise UsageError(
                    f"Store {mount.store!r}: {path} exists and is not a folder.",
                    hint="Move the file away or point source elsewhere.",
                )
    script = seed_script(plan)
    if script is not None:
        code, output = engine.run_helper(
            plan.image, ["-c", script], [m.request() for m in seed_mounts(plan)], entrypoint=["sh"]
        )
        if code != 0:
            raise EngineError(
                f"Could not seed the volumes of {plan.job!r} from their host folders: "
                f"{output.strip()[-500:]}",
                hint="The image needs `sh`, `ls` and `cp` (coreutils or busybox).",
            )
    to_chown = stores_to_chown(plan)
    if to_chown:
        code, output = engine.run_helper(
            plan.image,
            [plan.user, *(m.target for m in to_chown)],
            [m.request() for m in to_chown],
            entrypoint=["chown"],
        )
        if code != 0:
            raise EngineError(
                f"Could not hand the stores of {plan.job!r} to user {plan.user}: "
                f"{output.strip()[-500:]}",
                hint="The image needs a `chown` binary (coreutils or busybox).",
            )


def read_env_file(path: str) -> dict[str, str]:
    """``KEY=VALUE`` lines as ``docker run --env-file`` reads them: ``#`` comments and blank
    lines skipped, values taken literally, a bare ``KEY`` taken from the caller's environment.

    Raises:
        UsageError: the file is unreadable or a line is not an assignment (the message names the
            line number, never its content: it may hold a secret).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"Cannot read env file {path}: {getattr(exc, 'strerror', None) or exc}.",
            hint="Create it, or fix env_file in cargohold.toml.",
        ) from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        key, has_value, value = stripped.partition("=")
        if not key or key != key.strip() or any(c.isspace() for c in key) or "\0" in line:
            raise UsageError(
                f"Env file {path}, line {number}: not a KEY=VALUE line.",
                hint="Write one KEY=VALUE per line (no spaces around the key, no `export`).",
            )
        if has_value:
            values[key] = value
        elif key in os.environ:
            values[key] = os.environ[key]
    return values


def job_environment(plan: Plan, say: Say = _quiet) -> dict[str, str]:
    """The job's environment: env files, then the plan's variables, then the secrets from the
    caller's environment (Docker's precedence for ``--env-file`` and ``--env``)."""
    env: dict[str, str] = {}
    for path in plan.runtime.env_files:
        env.update(read_env_file(path))
    env.update(plan.env)
    for name in plan.runtime.secrets:
        if name in os.environ:
            env[name] = os.environ[name]
        else:
            say(f"secret {name} is not set in your environment; the job runs without it")
    return env


def container_request(
    plan: Plan,
    env: dict[str, str],
    *,
    command: tuple[str, ...] | None = None,
    restart_max: int = 0,
) -> ContainerRequest:
    """The engine request for the job's container: the plan's stores and runtime settings."""
    rt = plan.runtime
    entrypoint, cmd = plan.entrypoint_and_command(command)
    return ContainerRequest(
        image=plan.image,
        name=plan.container_name,
        command=tuple(cmd) if cmd is not None else None,
        user=plan.user,
        mounts=tuple(m.request() for m in plan.mounts),
        env=env,
        labels=dict(plan.labels),
        shm_size=rt.shm_size,
        workdir=plan.workdir,
        restart_max=restart_max,
        entrypoint=tuple(entrypoint) if entrypoint is not None else None,
        gpu_count=rt.gpus.count if rt.gpus is not None else None,
        gpu_ids=rt.gpus.device_ids if rt.gpus is not None else (),
        ipc_mode=rt.ipc,
        ulimits=tuple((u.name, u.soft, u.hard) for u in rt.ulimits),
        stop_timeout=rt.stop_timeout,
        init=rt.init,
        read_only=rt.read_only,
        tmpfs=rt.tmpfs,
        security_opt=rt.security_opt,
        cap_drop=rt.cap_drop,
        nano_cpus=round(rt.resources.cpus * 1e9) if rt.resources.cpus is not None else None,
        memory=rt.resources.memory,
        pids_limit=rt.resources.pids_limit,
        devices=rt.devices,
        network=rt.network,
    )


def resolve_resume(engine: Engine, plan: Plan, resume: Resume) -> dict[str, str]:
    """The resume environment for the job: ``CARGOHOLD_RESUME`` and ``CARGOHOLD_RESUME_FROM``."""
    mount = plan.checkpoint_mount
    if resume.policy == "never":
        return {"CARGOHOLD_RESUME": "never"}
    if resume.policy == "path":
        assert resume.path is not None
        path = resume.path
        if not path.startswith("/"):
            if mount is None:
                raise UsageError(
                    f"--resume {path}: the job has no checkpoints store.",
                    hint="Give an absolute path inside the container.",
                )
            path = f"{mount.target}/{path}"
        return {"CARGOHOLD_RESUME": "path", "CARGOHOLD_RESUME_FROM": path}
    if mount is None:
        return {}
    name = _latest_checkpoint_name(engine, plan)
    if not name:
        return {"CARGOHOLD_RESUME": "auto"}
    return {"CARGOHOLD_RESUME": "auto", "CARGOHOLD_RESUME_FROM": f"{mount.target}/{name}"}


def _latest_checkpoint_name(engine: Engine, plan: Plan) -> str | None:
    """The newest whole checkpoint's folder name, or None when there is none.

    A volume is read through its ``VolumeAccess`` -- its folder directly when this user can
    read it, else the Engine API's archive stream (a non-root user, a remote engine) -- and a
    bind-mounted folder from this host; nothing runs in the job's image, which may have no
    Python. ``resume.latest_whole_checkpoint`` applies the format's rules to what they yield;
    a store whose folder cannot be walked at all leaves the choice to the job's library."""
    mount = plan.checkpoint_mount
    assert mount is not None
    if mount.source is None:
        return None
    opened: contextlib.AbstractContextManager[EntrySource]
    if mount.backing is Backing.BIND:
        opened = _host_folder(Path(mount.source))
    elif mount.backing is Backing.VOLUME:
        opened = open_volume(engine, mount.source).entries()
    else:
        return None
    try:
        with opened as entries:
            found = latest_whole_checkpoint(entries)
    except (TransferError, OSError) as exc:
        log.debug("checkpoint store %s cannot be walked: %s", mount.source, exc)
        return None
    if found is None:
        log.debug("no whole checkpoint in %s", mount.source)
    return found


@contextlib.contextmanager
def _host_folder(path: Path) -> Iterator[EntrySource]:
    """A bind-mounted store's entries, read by the one confinement rule (a container wrote
    them, as it writes a volume's): the folder the spec names is followed, as Docker follows
    it to mount it; nothing below it is."""
    with ConfinedDir.open(path, follow=True) as root:
        yield ConfinedReader(root)


def _start(engine: Engine, plan: Plan, container_id: str) -> None:
    """Start the job's container; a limit the engine itself may not grant gets a way out."""
    try:
        engine.start(container_id)
    except EngineError as exc:
        if "rlimit" not in exc.message or not plan.runtime.ulimits:
            raise
        asked = ", ".join(
            f"{u.name}={'unlimited' if u.hard == -1 else u.hard}" for u in plan.runtime.ulimits
        )
        raise EngineError(
            f"The engine may not give job {plan.job!r} the ulimits it asks for ({asked}): "
            "dockerd's own hard limits are lower.",
            hint="Raise dockerd's limits (systemd: LimitMEMLOCK=infinity and LimitSTACK=infinity "
            "in docker.service, then `systemctl daemon-reload && systemctl restart docker`), "
            "or set lower ulimits in cargohold.toml (with GPUs cargohold asks for memlock "
            "unlimited and a 64 MB stack, as NVIDIA recommends for NCCL).",
        ) from None


def _replace_old_container(engine: Engine, plan: Plan) -> None:
    old = engine.container(plan.container_name)
    if old is None:
        return
    if old.labels.get(LABEL_PROJECT) != plan.project:
        raise EngineError(
            f"A container named {plan.container_name} exists and is not cargohold's.",
            hint=f"Rename or remove it (`docker rm {plan.container_name}`).",
        )
    if old.state in ("running", "restarting", "paused"):
        raise EngineError(
            f"Job {plan.job!r} is already running as container {plan.container_name}.",
            hint=f"Follow it with `docker logs -f {plan.container_name}`, or stop it with "
            f"`docker stop {plan.container_name}`.",
        )
    engine.remove_container(plan.container_name)


def run_job(
    engine: Engine,
    plan: Plan,
    *,
    resume: Resume = Resume("auto"),
    command: tuple[str, ...] | None = None,
    detach: bool = False,
    say: Say = _quiet,
    on_log: Callable[[int, bytes], None] | None = None,
    progress: Say | None = None,
) -> RunResult:
    """Run the job to its end (or start it, with ``detach``).

    Args:
        engine: a connected engine.
        plan: the job's plan.
        resume: where to resume from.
        command: replaces the job's command.
        detach: start and return; Docker's ``on-failure`` policy does the restarts.
        say: receives progress lines for the user.
        progress: receives each line of an image build, for a status line.
        on_log: receives the container's output as it comes: (1 stdout | 2 stderr, bytes).

    Returns:
        The container name, its final exit code, the attempts made and the resume point.

    Raises:
        EngineError: the engine failed; SpecError/UsageError for an impossible job.
    """
    if plan.runtime.gpus is not None:
        memlock = next((u.hard for u in plan.runtime.ulimits if u.name == "memlock"), None)
        require_gpus(gpu_support(engine.info(), local=engine_is_local()), plan.job, memlock)
    base_env = job_environment(plan, say)
    ensure_image(engine, plan, say, progress)
    prepare_stores(engine, plan, say)
    mirror = start_mirror(engine, plan, say)
    try:
        result = _run_attempts(
            engine,
            plan,
            base_env,
            resume=resume,
            command=command,
            detach=detach,
            say=say,
            on_log=on_log,
        )
    except BaseException:
        if mirror is not None:
            stop_mirror(engine, mirror, say)
        raise
    if mirror is not None and detach:
        say(f"{mirror} keeps mirroring until you remove it (docker rm -f {mirror})")
    elif mirror is not None:
        stop_mirror(engine, mirror, say)
    return result


def _run_attempts(
    engine: Engine,
    plan: Plan,
    base_env: dict[str, str],
    *,
    resume: Resume,
    command: tuple[str, ...] | None,
    detach: bool,
    say: Say,
    on_log: Callable[[int, bytes], None] | None,
) -> RunResult:
    grace = plan.runtime.stop_timeout if plan.runtime.stop_timeout is not None else 10
    attempts = 0
    first_resume: str | None = None
    while True:
        attempts += 1
        _replace_old_container(engine, plan)
        resume_env = resolve_resume(engine, plan, resume)
        resumed = resume_env.get("CARGOHOLD_RESUME_FROM")
        if attempts == 1:
            first_resume = resumed
        if resumed:
            say(f"Resuming from {resumed}")
        container_id = engine.create_container(
            container_request(
                plan,
                {**base_env, **resume_env},
                command=command,
                restart_max=plan.restart_max if detach else 0,
            )
        )
        _start(engine, plan, container_id)
        if detach:
            say(f"Started {plan.container_name} in the background")
            return RunResult(plan.container_name, 0, attempts, first_resume)
        try:
            for stream, chunk in engine.logs(container_id):
                if on_log is not None:
                    on_log(stream, chunk)
            code = engine.wait(container_id)
        except KeyboardInterrupt:
            say(f"Interrupted: stopping {plan.container_name} (it gets SIGTERM, then {grace} s)")
            engine.stop(container_id, timeout=grace)
            raise
        if code == 0 or attempts > plan.restart_max:
            return RunResult(plan.container_name, code, attempts, first_resume)
        # A job that resumes after a failure keeps following its latest checkpoint.
        resume = Resume("auto") if resume.policy == "path" else resume
        say(f"Job exited with {code}; restart {attempts} of {plan.restart_max}")
