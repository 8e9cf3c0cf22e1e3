"""The only module that talks to Docker.

Everything else asks ``Engine`` for what it needs in cargohold's terms (volumes with labels,
a job container, a helper command) and gets cargohold's errors back. Docker SDK exceptions are
translated in exactly one place, ``_translate``; none escapes this module.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, NoReturn

import docker
import docker.errors
import docker.types
import requests.exceptions

from cargohold.errors import (
    BuildFailed,
    EngineError,
    EngineUnavailable,
    ImageNotFound,
    VolumeNotFound,
)
from cargohold.plan import Mount
from cargohold.spec import Backing

__all__ = ["ContainerState", "Engine", "connect"]

log = logging.getLogger(__name__)

_START_HINT = (
    "Start a Docker engine (as root: `dockerd >/var/log/dockerd.log 2>&1 &`, or "
    "`systemctl start docker`), or point DOCKER_HOST at a running one; `cargohold doctor` "
    "checks the connection."
)


def _fail(exc: Exception, what: str) -> NoReturn:
    """Translate a Docker SDK or transport exception into cargohold's tree."""
    if isinstance(exc, docker.errors.ImageNotFound):
        raise ImageNotFound(
            f"{what}: image not found ({_explain(exc)}).",
            hint="Build it (set `build` in the job) or check the image name.",
        ) from None
    if isinstance(exc, docker.errors.NotFound):
        raise EngineError(
            f"{what}: not found ({_explain(exc)}).",
            hint="It may have been removed meanwhile; run the command again.",
        ) from None
    if isinstance(exc, docker.errors.BuildError):
        tail = "".join(str(item.get("stream", item.get("error", ""))) for item in exc.build_log)
        raise BuildFailed(
            f"{what}: {exc.msg}\n{tail[-2000:]}".rstrip(),
            hint="Fix the Dockerfile step shown above and run again.",
        ) from None
    if isinstance(exc, docker.errors.APIError):
        raise EngineError(
            f"{what}: the Docker engine refused: {_explain(exc)}.",
            hint="Check the engine's log; `cargohold doctor` checks the set-up.",
        ) from None
    if isinstance(
        exc, (docker.errors.DockerException, requests.exceptions.ConnectionError, ConnectionError)
    ):
        raise EngineUnavailable(
            f"{what}: cannot reach the Docker engine ({_first_line(exc)}).", hint=_START_HINT
        ) from None
    raise exc


def _explain(exc: docker.errors.APIError | Exception) -> str:
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        return str(exc.explanation)
    return _first_line(exc)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


@contextlib.contextmanager
def _translate(what: str) -> Iterator[None]:
    try:
        yield
    except (
        docker.errors.DockerException,
        requests.exceptions.RequestException,
        ConnectionError,
    ) as exc:
        _fail(exc, what)


@dataclass(frozen=True)
class ContainerState:
    id: str
    name: str
    status: str  # created | running | exited | ...
    exit_code: int | None
    labels: dict[str, str]


def _sdk_mount(mount: Mount) -> docker.types.Mount:
    if mount.backing is Backing.TMPFS:
        return docker.types.Mount(
            target=mount.target, source=None, type="tmpfs", tmpfs_size=mount.tmpfs_size
        )
    driver_config = None
    if mount.backing is Backing.VOLUME and mount.driver:
        driver_config = docker.types.DriverConfig(mount.driver, dict(mount.driver_opts))
    return docker.types.Mount(
        target=mount.target,
        source=mount.source,
        type=mount.backing.value,
        read_only=mount.readonly,
        driver_config=driver_config,
    )


class Engine:
    """A connection to one Docker engine."""

    def __init__(self, client: Any) -> None:
        self._client = client

    # -- engine ---------------------------------------------------------------------------

    def version(self) -> dict[str, Any]:
        with _translate("Asking the engine for its version"):
            return dict(self._client.version())

    def info(self) -> dict[str, Any]:
        with _translate("Asking the engine for its state"):
            return dict(self._client.info())

    # -- images ---------------------------------------------------------------------------

    def image_exists(self, name: str) -> bool:
        with _translate(f"Looking up image {name}"):
            try:
                self._client.images.get(name)
            except docker.errors.ImageNotFound:
                return False
            return True

    def pull(self, name: str) -> bool:
        """Try to pull an image; False when no registry can provide it (air-gapped, unknown)."""
        repository, _, tag = name.partition(":")
        try:
            self._client.images.pull(repository, tag=tag or "latest")
        except docker.errors.APIError as exc:
            log.info("pull of %s failed: %s", name, _explain(exc))
            return False
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            _fail(exc, f"Pulling {name}")
        return True

    def build(
        self,
        *,
        context: str,
        tag: str,
        dockerfile: str | None,
        buildargs: dict[str, str],
        labels: dict[str, str],
        on_output: Callable[[str], None] | None = None,
    ) -> None:
        """Build an image, streaming its output lines to ``on_output``.

        Raises:
            BuildFailed: a step failed; the message ends with the build's last output.
        """
        with _translate(f"Building image {tag} from {context}"):
            stream = self._client.api.build(
                path=context,
                tag=tag,
                dockerfile=dockerfile,
                buildargs=buildargs,
                labels=labels,
                rm=True,
                decode=True,
            )
            output: list[str] = []
            for chunk in stream:
                if "error" in chunk:
                    raise docker.errors.BuildError(
                        chunk["error"].strip(), [{"stream": line} for line in output[-30:]]
                    )
                text = chunk.get("stream")
                if text:
                    output.append(text)
                    if on_output is not None:
                        on_output(text.rstrip("\n"))

    def import_image(self, stream: IO[bytes], name: str, changes: list[str]) -> None:
        """Create an image from a root file system tarball read from ``stream``."""
        repository, _, tag = name.partition(":")
        with _translate(f"Importing image {name}"):
            self._client.api.import_image_from_stream(
                stream, repository=repository, tag=tag or "latest", changes=changes
            )

    def remove_image(self, name: str) -> None:
        with _translate(f"Removing image {name}"), contextlib.suppress(docker.errors.ImageNotFound):
            self._client.images.remove(name, force=True)

    # -- volumes --------------------------------------------------------------------------

    def volume_exists(self, name: str) -> bool:
        with _translate(f"Looking up volume {name}"):
            try:
                self._client.volumes.get(name)
            except docker.errors.NotFound:
                return False
            return True

    def ensure_volume(self, mount: Mount, labels: dict[str, str]) -> bool:
        """Create the mount's named volume unless it exists. Returns True when it was created.

        Raises:
            VolumeNotFound: an external volume is missing (cargohold must not invent it).
        """
        assert mount.backing is Backing.VOLUME and mount.source is not None
        if self.volume_exists(mount.source):
            return False
        if mount.external:
            raise VolumeNotFound(
                f"External volume {mount.source} (store {mount.store!r}) does not exist.",
                hint=f"Create it first (`docker volume create {mount.source}`), or drop "
                "external = true to let cargohold create it.",
            )
        with _translate(f"Creating volume {mount.source}"):
            self._client.volumes.create(
                name=mount.source,
                driver=mount.driver or "local",
                driver_opts=dict(mount.driver_opts),
                labels=labels,
            )
        return True

    def remove_volume(self, name: str) -> None:
        with _translate(f"Removing volume {name}"), contextlib.suppress(docker.errors.NotFound):
            self._client.volumes.get(name).remove(force=True)

    def volume_mountpoint(self, name: str) -> str | None:
        """The host folder behind a local volume, or None when it is not local."""
        with _translate(f"Inspecting volume {name}"):
            try:
                attrs = self._client.volumes.get(name).attrs
            except docker.errors.NotFound:
                raise VolumeNotFound(
                    f"Volume {name} does not exist.", hint="`docker volume ls` lists the volumes."
                ) from None
        if attrs.get("Driver") != "local" or attrs.get("Options"):
            return None
        return str(attrs.get("Mountpoint") or "") or None

    # -- containers -----------------------------------------------------------------------

    def container(self, name: str) -> ContainerState | None:
        with _translate(f"Looking up container {name}"):
            try:
                c = self._client.containers.get(name)
            except docker.errors.NotFound:
                return None
            return _state(c)

    def remove_container(self, name: str, *, force: bool = False) -> None:
        with _translate(f"Removing container {name}"):
            try:
                self._client.containers.get(name).remove(force=force, v=False)
            except docker.errors.NotFound:
                return

    def create_container(
        self,
        *,
        image: str,
        name: str,
        command: list[str] | None,
        user: str,
        mounts: list[Mount],
        env: dict[str, str],
        labels: dict[str, str],
        shm_size: int | None,
        workdir: str | None,
        restart_max: int = 0,
    ) -> str:
        """Create (not start) a job container. Returns its id."""
        kwargs: dict[str, Any] = {}
        if restart_max:
            kwargs["restart_policy"] = {"Name": "on-failure", "MaximumRetryCount": restart_max}
        with _translate(f"Creating container {name}"):
            c = self._client.containers.create(
                image,
                command=command,
                name=name,
                user=user,
                mounts=[_sdk_mount(m) for m in mounts],
                environment=env,
                labels=labels,
                shm_size=shm_size,
                working_dir=workdir,
                detach=True,
                privileged=False,
                **kwargs,
            )
            return str(c.id)

    def start(self, container_id: str) -> None:
        with _translate(f"Starting container {container_id[:12]}"):
            self._client.containers.get(container_id).start()

    def logs(self, container_id: str) -> Iterator[bytes]:
        """The container's output from its start, followed until it stops."""
        with _translate(f"Reading logs of {container_id[:12]}"):
            c = self._client.containers.get(container_id)
            yield from c.logs(stream=True, follow=True, stdout=True, stderr=True)

    def wait(self, container_id: str) -> int:
        with _translate(f"Waiting for {container_id[:12]}"):
            result = self._client.containers.get(container_id).wait()
            return int(result.get("StatusCode", 1))

    def stop(self, container_id: str, timeout: int = 30) -> None:
        with (
            _translate(f"Stopping {container_id[:12]}"),
            contextlib.suppress(docker.errors.NotFound),
        ):
            self._client.containers.get(container_id).stop(timeout=timeout)

    def inspect_container(self, name: str) -> dict[str, Any]:
        with _translate(f"Inspecting container {name}"):
            return dict(self._client.api.inspect_container(name))

    def run_helper(
        self,
        image: str,
        command: list[str],
        mounts: list[Mount],
        *,
        user: str = "0:0",
        entrypoint: list[str] | None = None,
    ) -> tuple[int, str]:
        """Run a short-lived helper container to completion. Returns (exit code, output)."""
        with _translate(f"Running a helper container from {image}"):
            c = self._client.containers.create(
                image,
                command=command,
                entrypoint=entrypoint,
                user=user,
                mounts=[_sdk_mount(m) for m in mounts],
                network_disabled=True,
                labels={"cargohold.helper": "true"},
                detach=True,
            )
            try:
                c.start()
                code = int(c.wait().get("StatusCode", 1))
                output = c.logs(stdout=True, stderr=True).decode("utf-8", "replace")
            finally:
                with contextlib.suppress(docker.errors.APIError):
                    c.remove(force=True)
            return code, output


def _state(c: Any) -> ContainerState:
    state = c.attrs.get("State", {})
    code = state.get("ExitCode")
    return ContainerState(
        id=str(c.id),
        name=str(c.name),
        status=str(c.status),
        exit_code=int(code) if code is not None and c.status == "exited" else None,
        labels=dict(c.labels or {}),
    )


def connect(timeout: int = 60) -> Engine:
    """Connect to the engine that DOCKER_HOST (or the default socket) names, and check it answers.

    Raises:
        EngineUnavailable: nothing answers, with how to start an engine.
    """
    with _translate("Connecting to Docker"):
        client = docker.from_env(timeout=timeout)
        client.ping()
    log.debug("connected to %s", os.environ.get("DOCKER_HOST", "the default socket"))
    return Engine(client)
