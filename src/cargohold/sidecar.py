"""The checkpoint mirror beside a job that ``cargohold run`` starts on one Docker host.

Before the job: a short container of the cargohold image restores the newest mirrored checkpoint
into an empty checkpoint volume (a fresh machine resumes where another one stopped). Beside the
job: ``<job container>-mirror`` pushes every committed checkpoint while the job runs, reading the
volume read-only, and keeps its state in ``/tmp/cargohold-mirror.json`` inside itself, where
``cargohold ps`` reads it. When an attached job ends, the sidecar gets SIGTERM, pushes once more
and is removed; a detached job's sidecar keeps mirroring until it is removed.

The mirror's credentials (``AWS_*``, ``CARGOHOLD_S3_ENDPOINT``) are passed from the caller's
environment to these two containers only, never to the job, never into a plan or a log. An S3
endpoint on this machine's loopback is reached with the host's network; a repository in a local
folder is bind-mounted at the same path.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse

from cargohold.engine import ContainerRequest, Engine, MountRequest
from cargohold.errors import EngineError
from cargohold.image import DEFAULT_TAG, build_cargohold_image, image_is_current
from cargohold.mirror import MirrorStatus
from cargohold.plan import LABEL_PROJECT, Plan
from cargohold.render._mirror import CREDENTIAL_ENV, STATUS_PATH

__all__ = [
    "ROLE_LABEL",
    "STATUS_PATH",
    "MirrorState",
    "mirror_container_name",
    "mirror_states",
    "mirror_status",
    "start_mirror",
    "stop_mirror",
]

ROLE_LABEL = "cargohold.role"
_MAX_STATUS = 64 * 1024
_START_GRACE = 120.0  # seconds a new sidecar may take to report its first state

Say = Callable[[str], None]


def mirror_container_name(plan: Plan) -> str:
    return f"{plan.container_name}-mirror"


def _network(url: str) -> tuple[str | None, list[MountRequest]]:
    """The network and extra mounts the mirror needs to reach ``url`` from a container."""
    if "://" not in url or url.startswith("file://"):
        folder = os.path.abspath(url.removeprefix("file://"))
        os.makedirs(folder, exist_ok=True)
        return "none", [MountRequest(type="bind", source=folder, target=folder)]
    endpoint = os.environ.get("CARGOHOLD_S3_ENDPOINT", "")
    host = urlparse(endpoint).hostname or ""
    loopback = host == "localhost" or host.startswith("127.") or host == "::1"
    return ("host" if loopback else None), []


def _request(plan: Plan, name: str, command: list[str], *, readonly: bool) -> ContainerRequest:
    ckpt = plan.checkpoint_mount
    assert ckpt is not None and ckpt.mirror is not None
    network, extra = _network(ckpt.mirror)
    env = {k: os.environ[k] for k in CREDENTIAL_ENV if k in os.environ}
    env.update(CARGOHOLD_CHECKPOINT_DIR=ckpt.target, CARGOHOLD_MIRROR=ckpt.mirror)
    volume = ckpt.request()
    volume = MountRequest(**{**volume.__dict__, "readonly": readonly})
    return ContainerRequest(
        image=DEFAULT_TAG,
        name=name,
        command=tuple(command),
        user=plan.user,
        mounts=(volume, *extra),
        env=env,
        labels={**dict(plan.labels), ROLE_LABEL: "mirror"},
        network=network,
        cap_drop=("ALL",),
        security_opt=("no-new-privileges",),
    )


def _remove(engine: Engine, name: str) -> None:
    with contextlib.suppress(EngineError):
        engine.remove_container(name, force=True)


def start_mirror(engine: Engine, plan: Plan, say: Say) -> str | None:
    """Restore into an empty checkpoint store, then start the mirror sidecar.

    Returns:
        The sidecar's name, or None when the job has no mirror.

    Raises:
        EngineError: a container cannot be created.
        ImageNotFound: the cargohold image cannot be built.
    """
    ckpt = plan.checkpoint_mount
    if ckpt is None or ckpt.mirror is None:
        return None
    if not image_is_current(engine, DEFAULT_TAG):
        say(f"Building {DEFAULT_TAG} for the checkpoint mirror (once per cargohold version)")
        build_cargohold_image(engine, DEFAULT_TAG)
    restorer = f"{plan.container_name}-mirror-restore"
    _remove(engine, restorer)
    cid = engine.create_container(
        _request(plan, restorer, ["cargohold", "mirror", "--restore-only"], readonly=False)
    )
    try:
        engine.start(cid)
        output = b"".join(chunk for _, chunk in engine.logs(cid))
        code = engine.wait(cid)
    finally:
        _remove(engine, restorer)
    for line in output.decode(errors="replace").splitlines():
        if line.strip():
            say(f"mirror: {line.strip()}")
    if code != 0:
        raise EngineError(
            f"The checkpoint mirror could not start (exit {code}).",
            hint="The lines above say why; fix the credentials or the mirror URL.",
        )
    sidecar = mirror_container_name(plan)
    _remove(engine, sidecar)
    engine.start(
        engine.create_container(
            _request(
                plan,
                sidecar,
                ["cargohold", "mirror", "--status-file", STATUS_PATH],
                readonly=True,
            )
        )
    )
    say(f"Mirroring checkpoints to {ckpt.mirror} ({sidecar})")
    return sidecar


def mirror_status(engine: Engine, name: str) -> MirrorStatus | None:
    """The sidecar's last state, read from its status file; None when there is none yet."""
    try:
        data = b"".join(engine.container_archive(name, STATUS_PATH))
    except EngineError:
        return None
    with contextlib.suppress(tarfile.TarError, OSError, ValueError):
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            member = next((m for m in archive.getmembers() if m.isfile()), None)
            if member is None or member.size > _MAX_STATUS:
                return None
            raw = archive.extractfile(member)
            if raw is None:
                return None
            text = raw.read(_MAX_STATUS)
        return MirrorStatus.parse(text)
    return None


@dataclass(frozen=True)
class MirrorState:
    """A checkpoint mirror container (`cargohold run`'s or Compose's) and what it last did."""

    name: str
    state: str  # ok | unreachable | refused | failing | starting | the container's state
    message: str
    pushed: int


def mirror_states(engine: Engine, project: str | None) -> list[MirrorState]:
    """Every mirror container (of ``project``, or of all projects), for `cargohold ps`."""
    found = []
    for c in engine.containers(f"{ROLE_LABEL}=mirror"):
        if project is not None and c.labels.get(LABEL_PROJECT) != project:
            continue
        status = mirror_status(engine, c.name) if c.state == "running" else None
        if status is not None:
            found.append(MirrorState(c.name, status.state, status.message, status.pushed))
        else:
            state = "starting" if c.state == "running" else c.state
            found.append(MirrorState(c.name, state, c.status, 0))
    return found


def stop_mirror(engine: Engine, name: str, say: Say) -> MirrorStatus | None:
    """Stop the sidecar (it pushes once more on SIGTERM), say how it ended, remove it.

    Its first status is awaited first: the mirror is its container's pid 1, which ignores
    SIGTERM until cargohold has started and set its handler, so an early stop would wait for
    the engine's kill and push nothing more.
    """
    deadline = time.monotonic() + _START_GRACE
    while time.monotonic() < deadline and mirror_status(engine, name) is None:
        info = engine.container(name)
        if info is None or info.state != "running":
            break
        time.sleep(0.5)
    with contextlib.suppress(EngineError):
        engine.stop(name, timeout=120)
    status = mirror_status(engine, name)
    _remove(engine, name)
    if status is not None and status.state != "ok":
        say(f"NOTHING IS MIRRORED: {status.message}")
    elif status is not None:
        say(f"mirror: {status.pushed} checkpoint(s) pushed")
    return status
