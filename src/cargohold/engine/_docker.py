"""``DockerEngine``: the ``Engine`` protocol over docker-py, and nothing else.

Every SDK call runs inside ``_errors.translate`` and every stream inside ``_errors.translated``;
every answer is parsed by ``_parse`` into the frozen values of ``types``. Only public docker-py
API is used: the archive download goes through the client's own requests session (public
``requests`` API) so that its response can be closed when a reader stops early.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import queue
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any
from urllib.parse import quote

import docker
import docker.errors
import docker.types
import requests

from cargohold.engine import _parse
from cargohold.engine._errors import describe, translate, translated
from cargohold.engine.helpers import (
    HELPER_IMAGE,
    HELPER_MOUNT,
    LABEL_HELPER,
    helper_labels,
    is_stale,
    this_process,
)
from cargohold.engine.types import (
    ContainerInfo,
    ContainerRequest,
    ContainerStop,
    EngineInfo,
    MountRequest,
    VolumeInfo,
)
from cargohold.errors import (
    CargoholdError,
    ContainerNotFound,
    EngineError,
    PathNotFound,
    VolumeNotFound,
)

__all__ = ["ArchiveHelper", "DockerEngine"]

_CHUNK = 1 << 20

log = logging.getLogger(__name__)


def _container_missing(name: str) -> ContainerNotFound:
    return ContainerNotFound(f"No container {name}.", hint="`docker ps -a` lists the containers.")


def _sdk_mount(mount: MountRequest) -> docker.types.Mount:
    if mount.type == "tmpfs":
        return docker.types.Mount(
            target=mount.target, source=None, type="tmpfs", tmpfs_size=mount.tmpfs_size
        )
    driver_config = None
    if mount.type == "volume" and mount.driver:
        driver_config = docker.types.DriverConfig(mount.driver, dict(mount.driver_opts))
    return docker.types.Mount(
        target=mount.target,
        source=mount.source,
        type=mount.type,
        read_only=mount.readonly,
        driver_config=driver_config,
    )


def _runtime_host_config(request: ContainerRequest) -> dict[str, Any]:
    """HostConfig keywords of the runtime settings, as ``docker run`` sets them (the parity test
    compares the inspect output of both): GPUs as a device request with an empty driver and the
    ``gpu`` capability, exactly like ``--gpus``."""
    config: dict[str, Any] = {}
    if request.gpu_count is not None or request.gpu_ids:
        config["device_requests"] = [
            docker.types.DeviceRequest(
                count=request.gpu_count if not request.gpu_ids else None,
                device_ids=list(request.gpu_ids) or None,
                capabilities=[["gpu"]],
            )
        ]
    if request.ipc_mode is not None:
        config["ipc_mode"] = request.ipc_mode
    if request.ulimits:
        config["ulimits"] = [
            docker.types.Ulimit(name=name, soft=soft, hard=hard)
            for name, soft, hard in request.ulimits
        ]
    if request.init:
        config["init"] = True
    if request.read_only:
        config["read_only"] = True
    if request.tmpfs:
        config["tmpfs"] = dict.fromkeys(request.tmpfs, "")
    if request.security_opt:
        config["security_opt"] = list(request.security_opt)
    if request.cap_drop:
        config["cap_drop"] = list(request.cap_drop)
    if request.nano_cpus is not None:
        config["nano_cpus"] = request.nano_cpus
    if request.memory is not None:
        config["mem_limit"] = request.memory
    if request.pids_limit is not None:
        config["pids_limit"] = request.pids_limit
    if request.devices:
        config["devices"] = list(request.devices)
    if request.network is not None:
        config["network_mode"] = request.network
    return config


class ArchiveHelper:
    """A created, never started container with one volume at ``/v``: the Engine API's archive
    endpoints stream the volume's files in and out without anything running in it."""

    def __init__(self, engine: DockerEngine, container_id: str) -> None:
        self._engine = engine
        self._id = container_id
        self._open: list[requests.Response] = []

    def get_archive(self, path: str) -> Iterator[bytes]:
        """A tar stream of ``/v/<path>`` (its first member is the path's own name).

        The HTTP response is kept so that ``close()`` can end it: a reader that stops early
        (is the volume empty?) must not leave the engine writing into an abandoned stream.
        """
        full = f"{HELPER_MOUNT}/{path}".rstrip("/") if path else HELPER_MOUNT
        what = f"Reading {path or '/'} from the volume"
        response = self._engine._archive_response(
            self._id,
            full,
            what,
            missing=PathNotFound(
                f"{path or '/'} does not exist in the volume.",
                hint="`cargohold volume files VOLUME` lists what it holds.",
            ),
        )
        self._open.append(response)
        return translated(response.iter_content(_CHUNK), what)

    def close(self) -> None:
        for response in self._open:
            with contextlib.suppress(Exception):
                response.close()
        self._open.clear()

    def put_archive(self, data: Iterator[bytes]) -> None:
        """Extract a tar stream at the helper's root: names must start with ``v/``.

        The stream is produced while it is sent. When producing fails (an unreadable source
        file, a hostile archive), that error is raised, not what the HTTP stack made of it:
        urllib3 turns any OSError raised by a request body into "Connection aborted", which
        would read as an engine that went away.
        """
        failed: list[BaseException] = []

        def produce() -> Iterator[bytes]:
            try:
                yield from data
            except BaseException as exc:
                failed.append(exc)
                raise

        try:
            with translate("Writing into the volume"):
                self._engine._client.api.put_archive(self._id, "/", produce())
        except CargoholdError:
            if failed:
                raise failed[0] from None
            raise


class DockerEngine:
    """A connection to one Docker engine (see ``cargohold.engine.Engine`` for the contract)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    # -- engine ---------------------------------------------------------------------------

    def info(self) -> EngineInfo:
        with translate("Asking the engine for its state"):
            version, info = self._client.version(), self._client.info()
        return _parse.parse_engine_info(version, info)

    # -- images ---------------------------------------------------------------------------

    def image_exists(self, name: str) -> bool:
        return _exists(f"Looking up image {name}", lambda: self._client.api.inspect_image(name))

    def image_label(self, name: str, key: str) -> str | None:
        with translate(f"Looking up image {name}"):
            try:
                labels = (self._client.api.inspect_image(name).get("Config") or {}).get("Labels")
            except docker.errors.ImageNotFound:
                return None
        value = (labels or {}).get(key)
        return value if isinstance(value, str) else None

    def pull(self, name: str) -> bool:
        """Try to pull an image; False when no registry can provide it (air-gapped, unknown)."""
        repository, _, tag = name.partition(":")
        with translate(f"Pulling {name}"):
            try:
                self._client.images.pull(repository, tag=tag or "latest")
            except docker.errors.APIError as exc:
                log.info("pull of %s failed: %s", name, describe(exc))
                return False
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
        with translate(f"Building image {tag} from {context}"):
            stream = self._client.api.build(
                path=context,
                tag=tag,
                dockerfile=dockerfile,
                buildargs=buildargs,
                labels=labels,
                rm=True,
                forcerm=True,  # a failed step leaves no intermediate container behind
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
        repository, _, tag = name.partition(":")
        with translate(f"Importing image {name}"):
            if isinstance(stream, bytes):
                self._client.api.import_image_from_data(
                    stream, repository=repository, tag=tag or "latest", changes=changes
                )
            else:
                self._client.api.import_image_from_stream(
                    stream, repository=repository, tag=tag or "latest", changes=changes
                )

    def remove_image(self, name: str) -> None:
        with translate(f"Removing image {name}"), contextlib.suppress(docker.errors.ImageNotFound):
            self._client.images.remove(name, force=True)

    # -- volumes --------------------------------------------------------------------------

    def volume_exists(self, name: str) -> bool:
        return _exists(f"Looking up volume {name}", lambda: self._client.api.inspect_volume(name))

    def create_volume(
        self,
        name: str,
        labels: Mapping[str, str],
        *,
        driver: str | None = None,
        driver_opts: Mapping[str, str] | None = None,
    ) -> None:
        with translate(f"Creating volume {name}"):
            self._client.api.create_volume(
                name=name,
                driver=driver or "local",
                driver_opts=dict(driver_opts or {}),
                labels=dict(labels),
            )

    def remove_volume(self, name: str) -> None:
        with translate(f"Removing volume {name}"), contextlib.suppress(docker.errors.NotFound):
            self._client.api.remove_volume(name, force=True)

    def volume(self, name: str) -> VolumeInfo:
        missing = VolumeNotFound(
            f"Volume {name} does not exist.", hint="`cargohold volume ls` lists the volumes."
        )
        with translate(f"Inspecting volume {name}", not_found=missing):
            attrs = self._client.api.inspect_volume(name)
        return _parse.parse_volume(attrs)

    def volumes(self, label: str | None = None) -> list[VolumeInfo]:
        with translate("Listing volumes"):
            found = self._client.api.volumes(filters={"label": label} if label else None)
        listed = (found or {}).get("Volumes") or []
        return sorted((_parse.parse_volume(v) for v in listed), key=lambda v: v.name)

    def volume_users(self) -> dict[str, list[str]]:
        users: dict[str, list[str]] = {}
        for c in self._containers():
            for volume in c.volumes:
                users.setdefault(volume, []).append(c.name)
        return users

    @contextlib.contextmanager
    def archive_helper(self, volume: str, *, readonly: bool) -> Iterator[ArchiveHelper]:
        self._ensure_helper_image()
        # no_copy: Docker would copy the helper image's folder into an empty volume, and with it
        # that folder's owner (root), undoing the chown that made the volume the job's.
        mount = docker.types.Mount(
            target=HELPER_MOUNT, source=volume, type="volume", read_only=readonly, no_copy=True
        )
        with translate(f"Attaching volume {volume}"):
            created = self._client.api.create_container(
                HELPER_IMAGE,
                command=["/none"],
                network_disabled=True,
                labels=helper_labels(),
                host_config=self._client.api.create_host_config(mounts=[mount]),
            )
        helper = ArchiveHelper(self, str(created["Id"]))
        try:
            yield helper
        finally:
            helper.close()
            self._remove_helper(helper._id)

    def _remove_helper(self, container_id: str) -> None:
        # Best effort: when the engine is gone, the next connection removes it (helpers.py).
        with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
            self._client.api.remove_container(container_id, force=True)

    def _ensure_helper_image(self) -> None:
        if self.image_exists(HELPER_IMAGE):
            return
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(HELPER_MOUNT.strip("/"))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        self.import_image(buffer.getvalue(), HELPER_IMAGE, [f"LABEL {LABEL_HELPER}=true"])

    def remove_stale_helpers(self) -> list[str]:
        here, now = this_process(), time.time()
        removed = []
        for c in self._containers(label=LABEL_HELPER):
            if is_stale(c.labels, c.created, now=now, here=here):
                log.info("removing helper %s left behind by a process that is gone", c.name)
                self._remove_helper(c.id)
                removed.append(c.name)
        return removed

    # -- containers -----------------------------------------------------------------------

    def _containers(self, label: str | None = None) -> list[ContainerInfo]:
        with translate("Listing containers"):
            found = self._client.api.containers(
                all=True, filters={"label": label} if label else None
            )
        return [_parse.parse_container_summary(c) for c in found or []]

    def container(self, name: str) -> ContainerInfo | None:
        try:
            return self.inspect_container(name)
        except ContainerNotFound:
            return None

    def inspect_container(self, name: str) -> ContainerInfo:
        with translate(f"Inspecting container {name}", not_found=_container_missing(name)):
            data = self._client.api.inspect_container(name)
        return _parse.parse_container(data)

    def remove_container(self, name: str, *, force: bool = False) -> None:
        with translate(f"Removing container {name}"), contextlib.suppress(docker.errors.NotFound):
            self._client.api.remove_container(name, force=force, v=False)

    def create_container(self, request: ContainerRequest) -> str:
        api = self._client.api
        host_config = api.create_host_config(
            mounts=[_sdk_mount(m) for m in request.mounts],
            shm_size=request.shm_size,
            privileged=False,
            restart_policy=(
                {"Name": "on-failure", "MaximumRetryCount": request.restart_max}
                if request.restart_max
                else None
            ),
            **_runtime_host_config(request),
        )
        with translate(f"Creating container {request.name}"):
            created = api.create_container(
                request.image,
                command=list(request.command) if request.command is not None else None,
                entrypoint=list(request.entrypoint) if request.entrypoint is not None else None,
                name=request.name,
                user=request.user or None,
                environment=dict(request.env),
                labels=dict(request.labels),
                working_dir=request.workdir,
                stop_timeout=request.stop_timeout,
                detach=True,
                host_config=host_config,
            )
        return str(created["Id"])

    def start(self, container_id: str) -> None:
        with translate(
            f"Starting container {container_id[:12]}", not_found=_container_missing(container_id)
        ):
            self._client.api.start(container_id)

    def logs(self, container_id: str) -> Iterator[tuple[int, bytes]]:
        # One follower per stream: the engine's combined stream does not say which is which,
        # and attach(logs=True) can miss what was printed before it connects.
        chunks: queue.Queue[tuple[int, bytes] | BaseException | None] = queue.Queue(64)

        def follow(stream: int) -> None:
            try:
                for chunk in self._client.api.logs(
                    container_id, stream=True, follow=True, stdout=stream == 1, stderr=stream == 2
                ):
                    chunks.put((stream, chunk))
            except BaseException as exc:  # handed to the consumer, translated there
                chunks.put(exc)
            finally:
                chunks.put(None)

        followers = [threading.Thread(target=follow, args=(s,), daemon=True) for s in (1, 2)]
        for thread in followers:
            thread.start()
        with translate(
            f"Reading logs of {container_id[:12]}", not_found=_container_missing(container_id)
        ):
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
        with translate(
            f"Waiting for {container_id[:12]}", not_found=_container_missing(container_id)
        ):
            result = self._client.api.wait(container_id)
        return int((result or {}).get("StatusCode", 1))

    def stop(self, container_id: str, timeout: int = 30) -> None:
        with (
            translate(f"Stopping {container_id[:12]}"),
            contextlib.suppress(docker.errors.NotFound),
        ):
            self._client.api.stop(container_id, timeout=timeout)

    def pause(self, container_id: str) -> None:
        with translate(f"Pausing {container_id[:12]}"):
            self._client.api.pause(container_id)

    def unpause(self, container_id: str) -> None:
        with translate(f"Unpausing {container_id[:12]}"):
            self._client.api.unpause(container_id)

    def container_names(self) -> list[str]:
        return [c.name for c in self._containers()]

    def containers(self, label: str) -> list[ContainerInfo]:
        return self._containers(label)

    def container_changes(self, name: str) -> list[str]:
        with translate(f"Listing the changes of {name}", not_found=_container_missing(name)):
            changes = self._client.api.diff(name)
        return _parse.parse_changes(changes)

    def container_archive(self, name: str, path: str) -> Iterator[bytes]:
        what = f"Reading {path} from container {name}"
        response = self._archive_response(
            name,
            path,
            what,
            missing=EngineError(
                f"{path} is not in container {name} (any more).",
                hint="Scan it again: `cargohold scan`.",
            ),
        )
        try:
            yield from translated(response.iter_content(_CHUNK), what)
        finally:
            response.close()

    def _archive_response(
        self, container: str, path: str, what: str, *, missing: EngineError
    ) -> requests.Response:
        """The open response of GET /containers/{id}/archive (docker-py's ``get_archive``
        hides it, so a reader that stops early could not end the transfer)."""
        api = self._client.api
        url = f"{api.base_url}/v{api.api_version}/containers/{quote(container, safe='')}/archive"
        with translate(what):
            response = api.get(
                url,
                params={"path": path},
                stream=True,
                headers={"Accept-Encoding": "identity"},
                timeout=api.timeout,
            )
            if response.status_code == 404:
                message = _error_message(response)
                response.close()
                if "no such container" in message.lower():
                    raise _container_missing(container)
                raise missing
            try:
                response.raise_for_status()
            except requests.HTTPError as exc:
                response.close()
                raise docker.errors.create_api_error_from_http_exception(exc) from None
        assert isinstance(response, requests.Response)
        return response

    def container_stops(self, until: float | None = None) -> Iterator[ContainerStop]:
        kwargs: dict[str, Any] = {"decode": True, "filters": {"type": "container", "event": "die"}}
        if until is not None:
            kwargs["until"] = int(time.time() + max(0.0, until - time.monotonic())) + 1
        with translate("Following engine events"):
            events = self._client.api.events(**kwargs)
        for event in translated(events, "Following engine events"):
            yield _parse.parse_stop(event)
        if until is not None and time.monotonic() >= until:
            return
        # The engine ends the stream only at ``until`` (by its own clock); ending earlier, the
        # connection may have been cut: a dead engine closes its socket without an error, and
        # docker-py just stops reading. Ask whether it is still there.
        with translate("Following engine events"):
            self._client.ping()
        if until is not None:
            return
        raise EngineError(
            "Following engine events: the engine ended the stream early.",
            hint="Run the command again; check the engine's log if it repeats.",
        )

    def run_helper(
        self,
        image: str,
        command: list[str],
        mounts: list[MountRequest],
        *,
        user: str = "0:0",
        entrypoint: list[str] | None = None,
    ) -> tuple[int, str]:
        api = self._client.api
        with translate(f"Running a helper container from {image}"):
            created = api.create_container(
                image,
                command=command,
                entrypoint=entrypoint,
                user=user,
                network_disabled=True,
                labels=helper_labels(),
                detach=True,
                host_config=api.create_host_config(mounts=[_sdk_mount(m) for m in mounts]),
            )
            container_id = str(created["Id"])
            try:
                api.start(container_id)
                code = int((api.wait(container_id) or {}).get("StatusCode", 1))
                output = api.logs(container_id, stdout=True, stderr=True)
            finally:
                self._remove_helper(container_id)
        return code, bytes(output).decode("utf-8", "replace")


def _exists(what: str, inspect: Callable[[], object]) -> bool:
    """Whether an inspect finds its object (ImageNotFound is a NotFound)."""
    with translate(what):
        try:
            inspect()
        except docker.errors.NotFound:
            return False
    return True


def _error_message(response: requests.Response) -> str:
    try:
        return str(json.loads(response.content or b"{}").get("message", ""))
    except (ValueError, AttributeError):
        return response.text[:300]
