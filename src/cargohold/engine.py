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
from typing import IO, TYPE_CHECKING, Any, NoReturn

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
from cargohold.kinds import Backing

if TYPE_CHECKING:
    from cargohold.plan import Mount

__all__ = ["ArchiveHelper", "ContainerState", "Engine", "VolumeInfo", "connect"]

# A never-started container needs an image, but not a usable one: the engine's archive
# endpoints work on created containers. This one holds nothing but the /v mount point.
HELPER_IMAGE = "cargohold/volume-helper:1"
HELPER_MOUNT = "/v"

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
class VolumeInfo:
    name: str
    driver: str
    labels: dict[str, str]
    mountpoint: str
    created: str
    options: dict[str, str]


class ArchiveHelper:
    """A created, never started container with one volume at ``/v``: the Engine API's archive
    endpoints stream the volume's files in and out without anything running in it."""

    def __init__(self, container: Any) -> None:
        self._container = container
        self._open: list[Any] = []

    def get_archive(self, path: str) -> Iterator[bytes]:
        """A tar stream of ``/v/<path>`` (its first member is the path's own name).

        The HTTP response is kept so that ``close()`` can end it: a reader that stops early
        (is the volume empty?) must not leave the engine writing into an abandoned stream.
        """
        full = f"{HELPER_MOUNT}/{path}".rstrip("/") if path else HELPER_MOUNT
        what = f"Reading {path or '/'} from the volume"
        response = _archive_response(
            self._container.client.api,
            self._container.id,
            full,
            what,
            EngineError(
                f"{path or '/'} does not exist in the volume.",
                hint="`cargohold volume files VOLUME` lists what it holds.",
            ),
        )
        self._open.append(response)
        return _translated_stream(response.iter_content(1 << 20), what)

    def close(self) -> None:
        for response in self._open:
            with contextlib.suppress(Exception):
                response.close()
        self._open.clear()

    def put_archive(self, data: Iterator[bytes]) -> None:
        """Extract a tar stream at the helper's root: names must start with ``v/``."""
        with _translate("Writing into the volume"):
            self._container.put_archive("/", data)


def _archive_response(api: Any, container: str, path: str, what: str, missing: EngineError) -> Any:
    """The open HTTP response of GET /containers/{id}/archive.

    docker-py's ``get_archive`` hides the response, so a reader that stops early could not
    end the transfer; this is the same request with the response kept for ``close()``.
    """
    with _translate(what):
        response = api._get(
            api._url("/containers/{0}/archive", container),
            params={"path": path},
            stream=True,
            headers={"Accept-Encoding": "identity"},
        )
        if response.status_code == 404:
            response.close()
            raise missing
        api._raise_for_status(response)
    return response


def _translated_stream(stream: Iterator[bytes], what: str) -> Iterator[bytes]:
    with _translate(what):
        yield from stream


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

    def import_image(self, stream: IO[bytes] | bytes, name: str, changes: list[str]) -> None:
        """Create an image from a root file system tarball: a pipe (streamed) or bytes."""
        repository, _, tag = name.partition(":")
        with _translate(f"Importing image {name}"):
            if isinstance(stream, bytes):
                self._client.api.import_image_from_data(
                    stream, repository=repository, tag=tag or "latest", changes=changes
                )
            else:
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

    def create_volume(self, name: str, labels: dict[str, str]) -> None:
        with _translate(f"Creating volume {name}"):
            self._client.volumes.create(name=name, labels=labels)

    def volume(self, name: str) -> VolumeInfo:
        """Raises:
        VolumeNotFound: no such volume."""
        with _translate(f"Inspecting volume {name}"):
            try:
                attrs = self._client.volumes.get(name).attrs
            except docker.errors.NotFound:
                raise VolumeNotFound(
                    f"Volume {name} does not exist.",
                    hint="`cargohold volume ls` lists the volumes.",
                ) from None
        return _volume_info(attrs)

    def volumes(self, label: str | None = None) -> list[VolumeInfo]:
        with _translate("Listing volumes"):
            found = self._client.api.volumes(filters={"label": label} if label else None)
        return sorted((_volume_info(v) for v in found.get("Volumes") or []), key=lambda v: v.name)

    def volume_users(self) -> dict[str, list[str]]:
        """Volume name → names of the containers (running or not) that mount it."""
        users: dict[str, list[str]] = {}
        with _translate("Listing containers"):
            for c in self._client.api.containers(all=True):
                for m in c.get("Mounts") or []:
                    if m.get("Type") == "volume" and m.get("Name"):
                        users.setdefault(m["Name"], []).append(
                            (c.get("Names") or ["?"])[0].lstrip("/")
                        )
        return users

    @contextlib.contextmanager
    def archive_helper(self, volume: str, *, readonly: bool) -> Iterator[ArchiveHelper]:
        """A never-started container with ``volume`` at /v, removed afterwards."""
        self._ensure_helper_image()
        with _translate(f"Attaching volume {volume}"):
            container = self._client.containers.create(
                HELPER_IMAGE,
                command=["/none"],
                network_disabled=True,
                mounts=[
                    docker.types.Mount(HELPER_MOUNT, volume, type="volume", read_only=readonly)
                ],
                labels={"cargohold.helper": "true"},
            )
        helper = ArchiveHelper(container)
        try:
            yield helper
        finally:
            helper.close()
            with contextlib.suppress(docker.errors.APIError, requests.exceptions.RequestException):
                container.remove(force=True)

    def _ensure_helper_image(self) -> None:
        if self.image_exists(HELPER_IMAGE):
            return
        import io
        import tarfile

        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(HELPER_MOUNT.strip("/"))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        self.import_image(buffer.getvalue(), HELPER_IMAGE, ["LABEL cargohold.helper=true"])

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

    def logs(self, container_id: str) -> Iterator[tuple[int, bytes]]:
        """The container's output from its start, followed until it stops, as
        (1 for stdout or 2 for stderr, bytes): the job's two streams stay apart."""
        import queue
        import threading

        # One follower per stream: the engine's combined stream does not say which is which,
        # and attach(logs=True) can miss what was printed before it connects.
        chunks: queue.Queue[tuple[int, bytes] | BaseException | None] = queue.Queue(64)

        def follow(stream: int) -> None:
            try:
                c = self._client.containers.get(container_id)
                for chunk in c.logs(
                    stream=True, follow=True, stdout=stream == 1, stderr=stream == 2
                ):
                    chunks.put((stream, chunk))
            except BaseException as exc:  # handed to the consumer
                chunks.put(exc)
            finally:
                chunks.put(None)

        followers = [threading.Thread(target=follow, args=(s,), daemon=True) for s in (1, 2)]
        for thread in followers:
            thread.start()
        with _translate(f"Reading logs of {container_id[:12]}"):
            running = len(followers)
            while running:
                item = chunks.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item

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

    def container_names(self) -> list[str]:
        """Every container, running or not."""
        with _translate("Listing containers"):
            return [
                str(c["Names"][0]).lstrip("/")
                for c in self._client.api.containers(all=True)
                if c.get("Names")
            ]

    def containers(self, label: str) -> list[dict[str, Any]]:
        """The engine's summaries of the containers with a label (running or not)."""
        with _translate("Listing containers"):
            return list(self._client.api.containers(all=True, filters={"label": label}))

    def container_changes(self, name: str) -> list[str]:
        """Paths a container added or modified in its own layer (not in its mounts)."""
        with _translate(f"Listing the changes of {name}"):
            try:
                changes = self._client.api.diff(name) or []
            except docker.errors.NotFound:
                raise EngineError(
                    f"No container {name}.", hint="`docker ps -a` lists the containers."
                ) from None
        return sorted(str(c["Path"]) for c in changes if c.get("Kind") in (0, 1))

    def container_archive_entries(self, name: str, path: str) -> Iterator[Any]:
        """The entries under ``path`` in a container (running or stopped), as a tar stream
        read member by member; paths are relative to ``path``."""
        from cargohold.archive import TarReader

        what = f"Reading {path} from container {name}"
        response = _archive_response(
            self._client.api,
            name,
            path,
            what,
            EngineError(
                f"{path} is not in container {name} (any more).",
                hint="Scan it again: `cargohold scan`.",
            ),
        )
        try:
            yield from TarReader(_translated_stream(response.iter_content(1 << 20), what), strip=1)
        finally:
            response.close()

    def container_stops(self, until: float | None = None) -> Iterator[dict[str, str]]:
        """Containers as they stop ("die" events), until a monotonic deadline (or forever)."""
        import time as _time

        kwargs: dict[str, Any] = {"decode": True, "filters": {"type": "container", "event": "die"}}
        if until is not None:
            kwargs["until"] = int(_time.time() + max(0.0, until - _time.monotonic())) + 1
        with _translate("Following engine events"):
            for event in self._client.events(**kwargs):
                actor = event.get("Actor") or {}
                yield {
                    "id": str(event.get("id") or actor.get("ID")),
                    "name": str((actor.get("Attributes") or {}).get("name", "")),
                }

    def inspect_container(self, name: str) -> dict[str, Any]:
        with _translate(f"Inspecting container {name}"):
            try:
                return dict(self._client.api.inspect_container(name))
            except docker.errors.NotFound:
                raise EngineError(
                    f"No container {name}.", hint="`docker ps -a` lists the containers."
                ) from None

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


def _volume_info(attrs: dict[str, Any]) -> VolumeInfo:
    return VolumeInfo(
        name=str(attrs["Name"]),
        driver=str(attrs.get("Driver") or "local"),
        labels=dict(attrs.get("Labels") or {}),
        mountpoint=str(attrs.get("Mountpoint") or ""),
        created=str(attrs.get("CreatedAt") or ""),
        options=dict(attrs.get("Options") or {}),
    )


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
