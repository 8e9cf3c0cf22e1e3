"""The user's spec, ``cargohold.toml``: pydantic models, loading, validation, path resolution.

Validation happens in two layers. The pydantic models check each value on its own (types, allowed
kinds, absolute targets); ``Spec.check`` then checks what only the whole file can tell (two stores
on one target, a job naming a store that does not exist). Every failure becomes one ``SpecError``
that names the key and says how to fix it, because a pydantic traceback is not an answer an ML
engineer can act on.

File-system facts (does the dataset folder exist?) are checked by ``load_spec`` only, so that
``parse_spec`` stays pure and planning can be tested against golden files without a disk.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import tomllib
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from cargohold.errors import SpecError
from cargohold.kinds import (
    Backing,
    StoreKind,
    is_url,
    looks_like_a_mistyped_url,
    parse_duration,
    parse_size,
)

__all__ = [
    "SPEC_FILENAME",
    "Backing",
    "BuildSpec",
    "IpcMode",
    "JobSpec",
    "ProjectSpec",
    "ResourcesSpec",
    "RestartSpec",
    "SnapshotScheduleSpec",
    "Spec",
    "StoreKind",
    "StoreSpec",
    "find_spec_file",
    "load_spec",
    "parse_size",
    "parse_spec",
]

SPEC_FILENAME = "cargohold.toml"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_USER_RE = re.compile(r"^\d+(:\d+)?$")
_PLACEMENT_RE = re.compile(r"^node\.[A-Za-z0-9_.-]+ ?(==|!=) ?[A-Za-z0-9_.\-/]+$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_GPU_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
_NETWORK_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Names that hold credentials: they belong in `secrets` or `env_file`, never in the spec's text
# (which is committed, printed by `plan` and copied into every rendered file).
_SECRET_KEY_RE = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY)", re.I)
# Where the Docker socket lives; a job that mounts it (or a folder holding it) owns the host.
DOCKER_SOCKETS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/run/podman/podman.sock",
)
# The resource limits `ulimit`/Docker know; anything else is a typo that Docker would refuse late.
ULIMIT_NAMES = frozenset(
    {
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
    }
)
MAX_STOP_TIMEOUT = 24 * 3600
MAX_GPUS = 1024  # on one node; more is a typo
# Devices that are the host itself: raw memory and I/O ports, and whole disks or their partitions.
_HOST_OWNING_DEVICE_RE = re.compile(
    r"^/dev/(mem|kmem|port|(sd|hd|vd|xvd)[a-z]+\d*|nvme\d+(n\d+(p\d+)?)?|dm-\d+|md\d+|"
    r"loop\d+|mapper/.*|disk/.*|block/.*)$"
)


class IpcMode(StrEnum):
    HOST = "host"
    PRIVATE = "private"
    SHAREABLE = "shareable"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: Any, info: ValidationInfo) -> Any:
        # A NUL byte ends a C string: Docker, the shell line and the file system would each
        # read a different value than the spec shows (and rendered lines carry it raw).
        # A field holding tables of their own (stores, jobs, a schedule) leaves its values to
        # them, so that the error names the innermost key.
        field = cls.model_fields.get(info.field_name or "")
        nested = field is not None and _names_a_model(field.annotation)
        if _holds_nul(value, values=not nested):
            raise ValueError("the value holds a NUL character")
        return value


def _names_a_model(annotation: object) -> bool:
    """Does a field's type hold a model anywhere (``StoreSpec``, ``dict[str, JobSpec]``,
    ``X | None``)?"""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_names_a_model(arg) for arg in get_args(annotation))


def _holds_nul(value: object, *, values: bool = True) -> bool:
    """A NUL in a string, or in a list's or a table's strings (with ``values`` False, only in
    the table's keys)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list | tuple):
        return values and any(_holds_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_nul(k) or (values and _holds_nul(v)) for k, v in value.items())
    return False


class ProjectSpec(_Model):
    name: str

    @field_validator("name")
    @classmethod
    def _docker_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                f"{value!r} cannot prefix Docker names; use lower-case letters, digits, '_', "
                "'.' and '-', starting with a letter or digit"
            )
        return value


_STORAGE_CLASS_RE = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_URL_WITH_CREDENTIALS_RE = re.compile(r"^[a-z][a-z0-9+.-]*://[^/]*@")
_CREDENTIALS_HINT = (
    "the URL carries credentials; remove them and set AWS_ACCESS_KEY_ID / "
    "AWS_SECRET_ACCESS_KEY in the environment instead"
)


class SnapshotScheduleSpec(_Model):
    """``[stores.NAME.snapshots]``: a volume snapshotted on a schedule by a sidecar
    (``render compose``/``kubernetes``), with ``forget``'s retention after every run."""

    every: str
    repo: str
    keep_last: StrictInt = Field(default=0, ge=0)
    keep_hourly: StrictInt = Field(default=0, ge=0)
    keep_daily: StrictInt = Field(default=0, ge=0)
    keep_weekly: StrictInt = Field(default=0, ge=0)
    keep_monthly: StrictInt = Field(default=0, ge=0)

    @field_validator("every", mode="before")
    @classmethod
    def _valid_every(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError(f'{value!r}: write the interval as text, e.g. every = "1h"')
        parse_duration(value)
        return value.strip()

    @field_validator("repo")
    @classmethod
    def _valid_repo(cls, value: str) -> str:
        if not value.strip():
            raise ValueError('write a folder or a URL, e.g. repo = "s3://bucket/snapshots"')
        if _URL_WITH_CREDENTIALS_RE.match(value):
            raise ValueError(_CREDENTIALS_HINT)
        return value


class StoreSpec(_Model):
    kind: StoreKind
    target: str
    source: str | None = None
    backing: Backing | None = None
    readonly: StrictBool | None = None
    volume: str | None = None
    driver: str | None = None
    driver_opts: dict[str, str] = Field(default_factory=dict)
    external: StrictBool = False
    size: str | int | None = None
    # Clusters (issue 10): where a checkpoint store is mirrored, the PVC's class and size, and a
    # dataset restored from a snapshot repository instead of a local folder.
    mirror: str | None = None
    storage_class: str | None = None
    capacity: str | int | None = None
    repository: str | None = None
    snapshot: str | None = None
    # A schedule of snapshots taken by a sidecar beside the job (issue 12).
    snapshots: SnapshotScheduleSpec | None = None

    @field_validator("target")
    @classmethod
    def _absolute_target(cls, value: str) -> str:
        path = container_path(value)
        if path.rstrip("/") == "/dev/shm":
            raise ValueError("/dev/shm is the job's shared memory: set shm_size (or ipc) instead")
        return path

    @field_validator("snapshots", mode="before")
    @classmethod
    def _schedule_table(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, dict):
            raise ValueError(
                'write a table: [stores.NAME.snapshots] with every = "1h" and '
                'repo = "s3://bucket/prefix" (or a folder)'
            )
        return value

    @field_validator("mirror", "repository")
    @classmethod
    def _no_secret_in_url(cls, value: str | None) -> str | None:
        # The spec is rendered into manifests and logs; credentials come from the environment.
        if value is not None and _URL_WITH_CREDENTIALS_RE.match(value):
            raise ValueError(_CREDENTIALS_HINT)
        if value is not None and looks_like_a_mistyped_url(value):
            raise ValueError(
                f"{value!r} is neither a URL (scheme://…, e.g. s3://bucket/prefix) nor a folder"
            )
        if value is not None and not is_url(value) and not value.startswith("/"):
            raise ValueError(
                f"{value!r}: a folder here is written as an absolute path (or use s3://…)"
            )
        if value is not None and not is_url(value):
            if posixpath.normpath(value) != value or value == "/":
                raise ValueError(f"{value!r}: write the folder's plain path, not / itself")
            if _docker_socket_inside(value):
                raise ValueError(
                    f"{value} is or holds the Docker socket, which the mirror's container "
                    "would get with it; use a folder of its own"
                )
        return value

    @field_validator("storage_class")
    @classmethod
    def _valid_storage_class(cls, value: str | None) -> str | None:
        # A StorageClass name is a DNS subdomain: lower case, digits, '-' and '.'.
        if value is not None and not _STORAGE_CLASS_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a StorageClass name (lower case, digits, '-', '.')")
        return value

    @field_validator("capacity")
    @classmethod
    def _valid_capacity(cls, value: str | int | None) -> str | int | None:
        if value is not None and parse_size(value) == 0:
            raise ValueError("a claim of 0 bytes holds nothing; leave capacity out for 10Gi")
        return value

    @field_validator("size", mode="before")
    @classmethod
    def _valid_size(cls, value: Any) -> Any:
        if value is not None and parse_size(value) == 0:
            raise ValueError("a tmpfs of size 0 has no limit at all; give a real size")
        return value

    @field_validator("volume")
    @classmethod
    def _valid_volume(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", value):
            raise ValueError(f"{value!r} is not a valid Docker volume name")
        return value


class BuildSpec(_Model):
    context: str = "."
    dockerfile: str | None = None
    args: dict[str, str] = Field(default_factory=dict)


class RestartSpec(_Model):
    max: StrictInt = Field(default=0, ge=0, le=100)


class UlimitSpec(_Model):
    soft: int
    hard: int


class ResourcesSpec(_Model):
    cpus: StrictInt | StrictFloat | None = Field(default=None, ge=0.01, le=4096)
    memory: str | int | None = None
    pids_limit: StrictInt | None = Field(default=None, ge=1, le=4_194_304)

    @field_validator("memory", mode="before")
    @classmethod
    def _valid_memory(cls, value: Any) -> Any:
        if value is not None and parse_size(value) < 6 << 20:
            raise ValueError("Docker needs at least 6m of memory for a container")
        return value


def container_path(value: str) -> str:
    """An absolute path inside the container, normalised; ``..`` is refused, not resolved.

    Raises:
        ValueError: relative, ``/`` itself, or climbing with ``..``.
    """
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"{value!r} is not an absolute path inside the container")
    parts = PurePosixPath(value).parts
    if ".." in parts:
        raise ValueError(f"{value!r} climbs with '..'; write the folder it means")
    path = "/" + "/".join(parts[1:])
    if path == "/":
        raise ValueError("a store cannot be mounted over the container's root '/'")
    return path


def _ulimit_value(name: str, limit: object, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"{name} = {limit!r}: write a number (-1 for unlimited) or {{ soft = N, hard = M }}"
        )
    if value < -1:
        raise ValueError(f"{name} = {value} is negative; -1 means unlimited")
    if name == "nofile" and value == -1:
        raise ValueError(
            "nofile cannot be unlimited: the kernel caps open files at fs.nr_open "
            "(1048576 by default); write a number"
        )
    if name == "nofile" and value < 3:
        raise ValueError(f"nofile = {value}: a process needs a few open files to start at all")
    return value


class JobSpec(_Model):
    image: str
    build: BuildSpec | None = None
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    stores: list[str] | None = None
    user: str = "host"
    shm_size: str | int | None = None
    restart: RestartSpec = Field(default_factory=RestartSpec)
    env: dict[str, str] = Field(default_factory=dict)
    env_file: list[str] = Field(default_factory=list)
    secrets: list[str] = Field(default_factory=list)
    workdir: str | None = None
    # Clusters (issue 10): pods/tasks working on one job, and where the scheduler may put them.
    nodes: StrictInt = Field(default=1, ge=1, le=1000)
    placement: list[str] = Field(default_factory=list)
    gpus: str | int | list[str] | None = None
    ipc: IpcMode | None = None
    ulimits: dict[str, int | UlimitSpec] = Field(default_factory=dict)
    stop_timeout: StrictInt | None = Field(default=None, ge=0, le=MAX_STOP_TIMEOUT)
    init: StrictBool | None = None
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    devices: list[str] = Field(default_factory=list)
    network: str | None = None
    read_only: StrictBool = False
    hardening: StrictBool = True

    @field_validator("image")
    @classmethod
    def _valid_image(cls, value: str) -> str:
        # The image lands in a docker run line: "--privileged" there is an option, not a name.
        if not value.strip() or value.startswith("-") or any(c.isspace() for c in value):
            raise ValueError(
                f"{value!r} is not an image reference, e.g. pytorch/pytorch:2.3.0-cuda12.1"
            )
        return value

    @field_validator("gpus", mode="before")
    @classmethod
    def _valid_gpus(cls, value: Any) -> Any:
        if value is None:
            return value
        if isinstance(value, bool):
            raise ValueError('write "all", a number of GPUs, or a list of device ids or UUIDs')
        if isinstance(value, int):
            if value < 1:
                raise ValueError(f"{value} GPUs: ask for at least 1, or leave gpus out")
            if value > MAX_GPUS:
                raise ValueError(f"{value} GPUs on one node: at most {MAX_GPUS}")
            return value
        if isinstance(value, str):
            if value != "all":
                raise ValueError(
                    f'{value!r} is not "all", a number of GPUs or a list of device ids, e.g. '
                    'gpus = ["0", "1"]'
                )
            return value
        if isinstance(value, list):
            if not value:
                raise ValueError("an empty list asks for no GPU; leave gpus out instead")
            for item in value:
                text = str(item) if isinstance(item, int) and not isinstance(item, bool) else item
                if not isinstance(text, str) or not _GPU_ID_RE.match(text):
                    raise ValueError(f"{item!r} is not a GPU index or UUID")
            ids = [str(item) for item in value]
            twice = sorted({i for i in ids if ids.count(i) > 1})
            if twice:
                raise ValueError(f"GPU {', '.join(twice)} is listed twice")
            return ids
        raise ValueError('write "all", a number of GPUs, or a list of device ids or UUIDs')

    @field_validator("ulimits", mode="before")
    @classmethod
    def _valid_ulimits(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        for name, limit in value.items():
            if name not in ULIMIT_NAMES:
                raise ValueError(
                    f"{name!r} is not a resource limit; use one of "
                    + ", ".join(sorted(ULIMIT_NAMES))
                )
            pair = (
                (limit, limit)
                if not isinstance(limit, dict)
                else (limit.get("soft"), limit.get("hard"))
            )
            soft, hard = (_ulimit_value(name, limit, number) for number in pair)
            if hard != -1 and (soft == -1 or soft > hard):
                raise ValueError(f"{name}: the soft limit {soft} is above the hard limit {hard}")
        return value

    @field_validator("env_file", "secrets", mode="before")
    @classmethod
    def _string_or_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("secrets")
    @classmethod
    def _valid_secrets(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _ENV_KEY_RE.match(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value

    @field_validator("devices")
    @classmethod
    def _valid_devices(cls, value: list[str]) -> list[str]:
        for device in value:
            host = device.split(":", 1)[0]
            if not host.startswith("/dev/"):
                raise ValueError(f"{device!r} is not a device under /dev (HOST[:CONTAINER[:rwm]])")
            if ".." in PurePosixPath(host).parts:
                raise ValueError(f"{device!r} climbs with '..'")
            if posixpath.normpath(host) != host or host == "/dev/":
                # /dev//mem, /dev/./mem and /dev/sda/ are /dev/mem and /dev/sda to Docker, and
                # a folder (/dev/ itself) maps every device under it.
                raise ValueError(
                    f"{host!r}: write the device's plain path (e.g. /dev/fuse, /dev/infiniband)"
                )
            parts = device.split(":")
            if len(parts) > 3 or (len(parts) == 3 and not set(parts[2]) <= set("rwm")):
                raise ValueError(
                    f"{device!r}: write HOST[:CONTAINER[:PERMISSIONS]], permissions of r, w, m"
                )
            if len(parts) >= 2 and not parts[1].startswith("/"):
                raise ValueError(f"{device!r}: the container path must be absolute")
            if _HOST_OWNING_DEVICE_RE.match(host):
                raise ValueError(
                    f"{host} gives the job the host's memory or disks, and with them the host; "
                    "jobs are never privileged"
                )
        return value

    @field_validator("network")
    @classmethod
    def _valid_network(cls, value: str | None) -> str | None:
        if value is not None and not _NETWORK_RE.match(value):
            raise ValueError(
                f"{value!r} is not a network: use none, bridge, host or a network's name"
            )
        return value

    @field_validator("entrypoint", mode="before")
    @classmethod
    def _entrypoint_list(cls, value: Any) -> Any:
        if isinstance(value, str) or value == [] or (isinstance(value, list) and value[0] == ""):
            raise ValueError(
                'write the entrypoint as a non-empty list of arguments, e.g. ["python3"]'
            )
        return value

    @field_validator("workdir")
    @classmethod
    def _valid_workdir(cls, value: str | None) -> str | None:
        return container_path(value) if value is not None else None

    @field_validator("build", mode="before")
    @classmethod
    def _build_shorthand(cls, value: Any) -> Any:
        # `build = "."` is the common case; a table gives dockerfile and args.
        return {"context": value} if isinstance(value, str) else value

    @field_validator("command", mode="before")
    @classmethod
    def _command_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError(
                'write the command as a list of arguments, e.g. ["python3", "train.py"], '
                "so that nothing depends on shell quoting"
            )
        return value

    @field_validator("user")
    @classmethod
    def _valid_user(cls, value: str) -> str:
        if value not in ("host", "root") and not _USER_RE.match(value):
            raise ValueError(f'{value!r} is not "host", "root" or a numeric "UID:GID"')
        if _USER_RE.match(value) and any(int(n) >= 2**32 - 1 for n in value.split(":")):
            raise ValueError(f"{value!r}: user and group ids are below 4294967295")
        return value

    @field_validator("placement")
    @classmethod
    def _valid_placement(cls, value: list[str]) -> list[str]:
        for constraint in value:
            if not _PLACEMENT_RE.match(constraint):
                raise ValueError(
                    f"{constraint!r} is not a placement constraint; write it like "
                    '"node.labels.gpu==true" or "node.hostname!=worker-3"'
                )
        return value

    @field_validator("shm_size", mode="before")
    @classmethod
    def _valid_shm(cls, value: Any) -> Any:
        if value is not None and parse_size(value) < 1 << 20:
            raise ValueError('a /dev/shm under 1m is too small for anything; write e.g. "1g"')
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env_strings(cls, value: Any) -> Any:
        # The environment only holds text, and TOML's 1e-3 or true would reach the job as
        # "0.001" or "true"/"True" depending on who converts it: the user writes the text.
        if not isinstance(value, dict):
            return value
        for key, item in value.items():
            if not _ENV_KEY_RE.match(key):
                raise ValueError(
                    f"{key!r} is not an environment variable name (letters, digits, '_'; "
                    "no '=' or spaces)"
                )
            if not isinstance(item, str):
                raise ValueError(f'{key} = {item!r}: quote the value, e.g. {key} = "{item}"')
            if "\x00" in item:
                raise ValueError(f"{key}: the value holds a NUL character")
            if _SECRET_KEY_RE.search(key):
                raise ValueError(
                    f"{key} looks like a credential; the spec is committed and printed by "
                    f'`cargohold plan`. Use secrets = ["{key}"] (taken from your environment) '
                    "or env_file"
                )
        return value


class Spec(_Model):
    project: ProjectSpec
    stores: dict[str, StoreSpec] = Field(default_factory=dict)
    jobs: dict[str, JobSpec] = Field(default_factory=dict)
    # Where the file lives; relative paths resolve against it. Not part of the TOML.
    base_dir: Path = Path(".")

    def check(self) -> None:
        """Checks that span keys: names, overlapping targets, references between jobs and stores.

        Raises:
            SpecError: naming the first key at fault.
        """
        for name in self.stores:
            if not _NAME_RE.match(name):
                raise SpecError(
                    f"Store name {name!r} cannot be used in volume names.",
                    key=f"stores.{name}",
                    hint="Use lower-case letters, digits, '_', '.' and '-'.",
                )
        for name in self.jobs:
            if not _NAME_RE.match(name):
                raise SpecError(
                    f"Job name {name!r} cannot be used in container names.",
                    key=f"jobs.{name}",
                    hint="Use lower-case letters, digits, '_', '.' and '-'.",
                )
        for name, store in self.stores.items():
            _check_store(name, store)
        for name, job in self.jobs.items():
            _check_job(name, job)
        for job_name in self.jobs:
            selected = self.stores_of(job_name)
            unknown = [s for s in selected if s not in self.stores]
            if unknown:
                raise SpecError(
                    f"Job {job_name!r} uses store {unknown[0]!r}, which is not declared.",
                    key=f"jobs.{job_name}.stores",
                    hint=f"Declare [stores.{unknown[0]}] or use one of: "
                    f"{', '.join(self.stores) or '(no stores declared)'}.",
                )
            checkpoints = [n for n in selected if self.stores[n].kind is StoreKind.CHECKPOINTS]
            if len(checkpoints) > 1 and any(self.stores[n].mirror for n in checkpoints):
                raise SpecError(
                    f"Job {job_name!r} mounts {len(checkpoints)} checkpoints stores and one has "
                    "a mirror; the mirror follows the job's one checkpoints store.",
                    key=f"jobs.{job_name}.stores",
                    hint="Give the job one checkpoints store (the mirrored one).",
                )
            for store_name in selected:
                store = self.stores[store_name]
                for what, location in (("mirror", store.mirror), ("repository", store.repository)):
                    if location is None or is_url(location):
                        continue
                    for other in selected:
                        target = self.stores[other].target.rstrip("/") or "/"
                        if (
                            location == target
                            or location.startswith(target + "/")
                            or target.startswith(location + "/")
                        ):
                            raise SpecError(
                                f"Store {store_name!r}: the {what} folder {location} overlaps "
                                f"store {other!r} mounted at {target}; the two mounts would "
                                "hide each other.",
                                key=f"stores.{store_name}.{what}",
                                hint="Keep the mirror in a folder of its own, or in s3://….",
                            )
            targets: dict[str, str] = {}
            for store_name in selected:
                target = self.stores[store_name].target
                if target in targets:
                    raise SpecError(
                        f"Stores {targets[target]!r} and {store_name!r} both mount at {target}.",
                        key=f"stores.{store_name}.target",
                        hint="Give each store its own target folder.",
                    )
                targets[target] = store_name
            for other, store_name in targets.items():
                for inner in targets:
                    if inner != other and inner.startswith(other.rstrip("/") + "/"):
                        raise SpecError(
                            f"Store {targets[inner]!r} at {inner} lies inside store "
                            f"{store_name!r} at {other}; the inner mount would hide part of the "
                            "outer one.",
                            key=f"stores.{targets[inner]}.target",
                            hint="Mount stores at folders that do not contain each other.",
                        )

    def stores_of(self, job: str) -> list[str]:
        """The store names a job mounts: its ``stores`` list, or every store."""
        selected = self.jobs[job].stores
        return list(self.stores) if selected is None else list(selected)

    def job_name(self, job: str | None) -> str:
        """Resolve an optional job name: the only job, or ``train``, when none is given.

        Raises:
            SpecError: the job is unknown, or several exist and none was named.
        """
        if job is not None:
            if job not in self.jobs:
                raise SpecError(
                    f"No job named {job!r} in {SPEC_FILENAME}.",
                    key=f"jobs.{job}",
                    hint=f"Jobs declared: {', '.join(self.jobs) or '(none)'}.",
                )
            return job
        if len(self.jobs) == 1:
            return next(iter(self.jobs))
        if "train" in self.jobs:
            return "train"
        raise SpecError(
            "Which job? The spec declares "
            + (f"several: {', '.join(self.jobs)}." if self.jobs else "none."),
            key="jobs",
            hint="Name the job on the command line, or add a [jobs.train] table.",
        )

    def host_path(self, value: str) -> Path:
        """Resolve a host path from the spec against the spec file's folder."""
        return (self.base_dir / Path(value).expanduser()).resolve()


def _check_store(name: str, store: StoreSpec) -> None:
    key = f"stores.{name}"
    if store.backing is Backing.BIND and store.source is None:
        raise SpecError(
            f"Store {name!r} is a bind mount but has no source folder.",
            key=f"{key}.source",
            hint='Add source = "./some/folder", or drop backing = "bind" to use a named volume.',
        )
    if store.backing is Backing.TMPFS and store.source is not None:
        raise SpecError(
            f'Store {name!r} has backing = "tmpfs" and a host source; a tmpfs starts empty.',
            key=f"{key}.source",
            hint='Remove source, or set backing = "volume" to copy the folder into a volume once.',
        )
    if (
        store.volume is not None
        and store.source is not None
        and store.backing is not Backing.VOLUME
    ):
        raise SpecError(
            f"Store {name!r} names both a host source and a volume.",
            key=f"{key}.volume",
            hint="Keep source for a bind mount, or volume for a named volume; with backing = "
            '"volume" the source is copied into the volume once.',
        )
    if store.backing is Backing.VOLUME and store.source is not None:
        if store.external:
            raise SpecError(
                f"Store {name!r} would seed an external volume from {store.source}.",
                key=f"{key}.source",
                hint="cargohold only seeds volumes it creates: drop external, or drop source.",
            )
        if store.kind is StoreKind.SCRATCH:
            raise SpecError(
                f"Scratch store {name!r} cannot be seeded from a host folder.",
                key=f"{key}.source",
                hint="Use a dataset or cache store for data copied in once.",
            )
    if store.source is not None and _docker_socket_inside(store.source):
        raise SpecError(
            f"Store {name!r} would give the job the Docker socket ({store.source}), and with it "
            "root on the host.",
            key=f"{key}.source",
            hint="Jobs never get the Docker socket: mount a folder that does not contain it.",
        )
    if _backing_guess(store) is Backing.TMPFS and store.source is not None:
        raise SpecError(
            f"Store {name!r} is a tmpfs and cannot have a source.",
            key=f"{key}.source",
            hint='Remove source, or set backing = "bind" if it must be a host folder.',
        )
    if store.size is not None and _backing_guess(store) is not Backing.TMPFS:
        raise SpecError(
            f"Store {name!r} sets size, which only a tmpfs store can honour.",
            key=f"{key}.size",
            hint='Remove size, or set backing = "tmpfs".',
        )
    if (store.driver or store.driver_opts) and _backing_guess(store) is not Backing.VOLUME:
        raise SpecError(
            f"Store {name!r} sets a volume driver but is not a named volume.",
            key=f"{key}.driver",
            hint='Remove driver/driver_opts, or set backing = "volume" and drop source.',
        )
    if store.mirror is not None and store.kind is not StoreKind.CHECKPOINTS:
        raise SpecError(
            f"Store {name!r} sets mirror, which only a checkpoints store has.",
            key=f"{key}.mirror",
            hint="Move mirror to the checkpoints store, or snapshot this store instead.",
        )
    if (store.snapshot is None) != (store.repository is None):
        raise SpecError(
            f"Store {name!r} sets only one of snapshot and repository.",
            key=f"{key}.{'repository' if store.repository is None else 'snapshot'}",
            hint='A dataset from a repository needs both: repository = "s3://bucket/repo", '
            'snapshot = "VOLUME@latest" (or an id or a tag).',
        )
    if store.snapshot is not None and (
        store.kind is not StoreKind.DATASET or _backing_guess(store) is not Backing.VOLUME
    ):
        raise SpecError(
            f"Store {name!r} restores a snapshot but is not a dataset in a named volume.",
            key=f"{key}.snapshot",
            hint="Only a dataset store without source can be filled from a repository.",
        )
    if (store.storage_class or store.capacity is not None) and _backing_guess(
        store
    ) is Backing.TMPFS:
        raise SpecError(
            f"Store {name!r} is a tmpfs; storage_class and capacity describe a persistent volume.",
            key=f"{key}.storage_class" if store.storage_class else f"{key}.capacity",
            hint="Remove them, or use size for a tmpfs.",
        )
    if store.kind is StoreKind.CHECKPOINTS and _backing_guess(store) is Backing.TMPFS:
        raise SpecError(
            f"Checkpoint store {name!r} is a tmpfs: every checkpoint would die with the container.",
            key=f"{key}.backing",
            hint='Use backing = "volume" (the default) or a bind source.',
        )
    if store.snapshots is not None:
        _check_schedule(name, store, store.snapshots)


def _check_schedule(name: str, store: StoreSpec, schedule: SnapshotScheduleSpec) -> None:
    key = f"stores.{name}.snapshots"
    backing = _backing_guess(store)
    if backing is Backing.TMPFS:
        raise SpecError(
            f"Store {name!r} is a tmpfs; a schedule of snapshots needs a named volume.",
            key=key,
            hint="Remove [stores.NAME.snapshots], or give the store a named volume.",
        )
    if backing is Backing.BIND:
        raise SpecError(
            f"Store {name!r} is a host folder (bind mount); scheduled snapshots are for named "
            "volumes.",
            key=key,
            hint="Snapshot the folder from the host instead: `cargohold snapshot "
            f"{store.source} --every {schedule.every} --repo {schedule.repo}`.",
        )
    if not is_url(schedule.repo) and _docker_socket_inside(schedule.repo):
        raise SpecError(
            f"Store {name!r}: the repository {schedule.repo} is or holds the Docker socket, "
            "which the sidecar would get with it.",
            key=f"{key}.repo",
            hint="Keep snapshots in a folder of their own, or in s3://bucket/prefix.",
        )


def _docker_socket_inside(source: str) -> bool:
    """The path is the Docker socket or a folder above it (as written; see check_host_paths)."""
    if not source.startswith("/"):
        return False
    path = PurePosixPath(os.path.normpath(source))
    return any(
        path == PurePosixPath(sock) or PurePosixPath(sock).is_relative_to(path)
        for sock in DOCKER_SOCKETS
    )


def _check_job(name: str, job: JobSpec) -> None:
    key = f"jobs.{name}"
    if job.ipc is IpcMode.HOST and job.shm_size is not None:
        raise SpecError(
            f'Job {name!r} sets shm_size and ipc = "host"; with the host\'s IPC namespace the '
            "container uses the host's /dev/shm and Docker ignores shm_size.",
            key=f"{key}.shm_size",
            hint="Remove one of them.",
        )
    env_secrets = sorted(set(job.secrets) & set(job.env))
    if env_secrets:
        raise SpecError(
            f"Job {name!r} lists {env_secrets[0]} in both env and secrets.",
            key=f"{key}.secrets",
            hint="Keep it in secrets only; its value comes from your environment.",
        )


def _backing_guess(store: StoreSpec) -> Backing:
    """The backing a store gets; the reasons live in plan.py, this is only the choice."""
    if store.backing is not None:
        return store.backing
    if store.kind is StoreKind.SCRATCH:
        return Backing.TMPFS
    if store.source is not None:
        return Backing.BIND
    if store.kind is StoreKind.ARTIFACTS:
        return Backing.BIND  # an artifacts store without source is refused by the planner
    return Backing.VOLUME


_UNION_TAG_RE = re.compile(
    r"^(int|float|str|bool|none|(list|dict)\[.*\]|function-.*|[A-Z]\w*Spec)$"
)


def _error_from_validation(exc: ValidationError) -> SpecError:
    """One paragraph for the first problem pydantic found, naming its key."""
    errors = exc.errors()
    # A misspelt key also makes the intended one "missing": name the misspelling first.
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    # A union's member type joins the location ("cpus.int"); the user wrote only "cpus".
    loc = [str(part) for part in err["loc"] if not _UNION_TAG_RE.match(str(part))]
    key = ".".join(loc) or "(top level)"
    kind = err["type"]
    if kind == "missing":
        return SpecError(
            f"{SPEC_FILENAME}: {key} is required but missing.",
            key=key,
            hint=_missing_hint(loc),
        )
    if kind == "extra_forbidden":
        return SpecError(
            f"{SPEC_FILENAME}: unknown key {key}.",
            key=key,
            hint="Check its spelling against `cargohold init`'s commented template.",
        )
    if kind == "enum":
        allowed = err.get("ctx", {}).get("expected", "")
        return SpecError(
            f"{SPEC_FILENAME}: {key} = {err['input']!r} is not one of {allowed}.",
            key=key,
            hint="Pick one of the listed values.",
        )
    message = str(err["msg"]).removeprefix("Value error, ")
    return SpecError(
        f"{SPEC_FILENAME}: {key}: {message}" + ("" if message.endswith(".") else "."),
        key=key,
        hint="Fix that value; `cargohold init` writes a commented example.",
    )


def _missing_hint(loc: list[str]) -> str:
    field = loc[-1]
    examples = {
        "name": '[project]\nname = "my-project"',
        "kind": 'kind = "dataset"   # or checkpoints, artifacts, cache, scratch',
        "target": 'target = "/data"   # where the store appears inside the container',
        "image": 'image = "my-image"',
        "project": '[project]\nname = "my-project"',
        "every": 'every = "1h"   # how often the sidecar snapshots the volume',
        "repo": 'repo = "s3://bucket/snapshots"   # or a folder, relative to this file',
    }
    if field in examples:
        return "Add it, for example:\n" + examples[field]
    return f"Add {field} to the table."


def parse_spec(text: str, *, base_dir: Path, source: str = SPEC_FILENAME) -> Spec:
    """Parse and validate spec text without touching the file system.

    Args:
        text: the TOML document.
        base_dir: the folder relative paths resolve against.
        source: a name for the text in error messages.

    Returns:
        The validated spec.

    Raises:
        SpecError: malformed TOML or an invalid spec.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(
            f"{source} is not valid TOML: {exc}.",
            hint="Fix the syntax at that line; strings need quotes, tables need [brackets].",
        ) from None
    if "base_dir" in data:
        raise SpecError(
            f"{source}: unknown key base_dir.",
            key="base_dir",
            hint="Relative paths already resolve against the spec file's folder.",
        )
    try:
        spec = Spec.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        raise _error_from_validation(exc) from None
    spec.check()
    return spec


def find_spec_file(start: Path | None = None) -> Path:
    """The nearest ``cargohold.toml`` in ``start`` or its parents.

    Raises:
        SpecError: none was found.
    """
    here = (start or Path.cwd()).resolve()
    if here.is_file():
        return here
    for folder in (here, *here.parents):
        candidate = folder / SPEC_FILENAME
        if candidate.is_file():
            return candidate
    raise SpecError(
        f"No {SPEC_FILENAME} in {here} or any folder above it.",
        hint="Run `cargohold init` to write one, or pass --file PATH.",
    )


def load_spec(path: Path | None = None) -> Spec:
    """Read, validate and check a spec file, including the host paths it names.

    Raises:
        SpecError: the file is missing, malformed or inconsistent, or a dataset folder is absent.
    """
    file = find_spec_file(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(
            f"Cannot read {file}: {exc}.", hint="Check the file's permissions."
        ) from None
    spec = parse_spec(text, base_dir=file.parent, source=str(file))
    check_host_paths(spec)
    return spec


def _holds_docker_socket(path: Path) -> bool:
    """The resolved host path is an engine's socket or a folder above one. The sockets are
    resolved too (``/var/run`` is usually a link to ``/run``), and ``DOCKER_HOST`` counts."""
    sockets = list(DOCKER_SOCKETS)
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        sockets.append(host.removeprefix("unix://"))
    # A rootless engine's socket, whether or not DOCKER_HOST names it.
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    sockets.append(f"{runtime_dir}/docker.sock")
    return any(
        path == real or real.is_relative_to(path)
        for real in (Path(os.path.realpath(sock)) for sock in sockets)
    )


def _host_owning_device_under(host: str) -> str | None:
    """The first disk or memory device that ``--device host`` would give a job: the device
    itself, or one under a folder (Docker maps a folder's devices recursively, links not
    followed). None when there is none (or the path does not exist here)."""
    try:
        st = os.stat(host)
    except (OSError, ValueError):
        return None
    if stat.S_ISBLK(st.st_mode) or _HOST_OWNING_DEVICE_RE.match(host):
        return host
    if not stat.S_ISDIR(st.st_mode):
        return None
    for folder, _dirs, files in os.walk(host):
        for file in files:
            path = os.path.join(folder, file)
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue
            if stat.S_ISBLK(mode) or (stat.S_ISCHR(mode) and _HOST_OWNING_DEVICE_RE.match(path)):
                return path
    return None


def check_host_paths(spec: Spec) -> None:
    """A bind source that does not exist is created by Docker as an empty, root-owned folder,
    which hides the mistake until training reads nothing. Refuse it here (artifacts excepted:
    the runner creates those, owned by the job's user).

    Raises:
        SpecError: naming the store whose source is missing.
    """
    for name, job in spec.jobs.items():
        for device in job.devices:
            host = device.split(":", 1)[0]
            found = _host_owning_device_under(host)
            if found is not None:
                raise SpecError(
                    f"Job {name!r}: {host} "
                    + (f"holds {found}, " if found != host else "is ")
                    + "a block device (a disk) or the host's memory: the job would own the "
                    "host's data.",
                    key=f"jobs.{name}.devices",
                    hint="Mount the data as a store instead; pass only devices like "
                    "/dev/infiniband or /dev/fuse.",
                )
        for env_file in job.env_file:
            path = spec.host_path(env_file)
            if not path.is_file():
                raise SpecError(
                    f"Job {name!r}: env file {path} "
                    + ("is not a file." if path.exists() else "does not exist."),
                    key=f"jobs.{name}.env_file",
                    hint="Create it (KEY=VALUE lines), or remove it from env_file.",
                )
    for name, store in spec.stores.items():
        schedule = store.snapshots
        if schedule is not None and not is_url(schedule.repo):
            repo = spec.host_path(schedule.repo)
            if _holds_docker_socket(repo):
                raise SpecError(
                    f"Store {name!r}: the repository {schedule.repo} resolves to {repo}, which "
                    "is or holds the Docker socket; the snapshot sidecar would get it.",
                    key=f"stores.{name}.snapshots.repo",
                    hint="Keep snapshots in a folder of their own, or in s3://bucket/prefix.",
                )
            if repo.exists() and not repo.is_dir():
                raise SpecError(
                    f"Store {name!r}: the repository {repo} is a file, not a folder.",
                    key=f"stores.{name}.snapshots.repo",
                    hint="Point repo at a folder (or an s3:// URL).",
                )
        if store.source is None:
            continue
        path = spec.host_path(store.source)
        if _holds_docker_socket(path):
            raise SpecError(
                f"Store {name!r}: {store.source} resolves to {path}, which is or holds the "
                "Docker socket; a job with it is root on the host.",
                key=f"stores.{name}.source",
                hint="Jobs never get the Docker socket: mount a folder that does not contain it.",
            )
        if store.kind is StoreKind.ARTIFACTS:
            if path.exists() and not path.is_dir():
                raise SpecError(
                    f"Store {name!r}: source {path} is a file; an artifacts store is a folder.",
                    key=f"stores.{name}.source",
                    hint="Point source at a folder (it is created when missing).",
                )
            continue
        try:
            mode = path.stat().st_mode
        except OSError:
            mode = None
        if mode is not None and stat.S_ISSOCK(mode):
            raise SpecError(
                f"Store {name!r}: source {path} is a socket, not a folder of data.",
                key=f"stores.{name}.source",
                hint="Jobs never get sockets of the host: point source at a folder.",
            )
        if mode is not None and not stat.S_ISDIR(mode):
            raise SpecError(
                f"Store {name!r}: source {path} is a file, not a folder; the job would see a "
                f"file at {store.target} instead of a folder of data.",
                key=f"stores.{name}.source",
                hint=f"Point source at the folder that holds it ({path.parent}), or move the "
                "file into a folder of its own.",
            )
        if not path.exists():
            raise SpecError(
                f"Store {name!r}: source {path} does not exist. Docker would create it as an "
                "empty folder owned by root and the job would see no data.",
                key=f"stores.{name}.source",
                hint=f"Create or download the data into {path}, or correct the path "
                f"(relative paths start at {spec.base_dir}).",
            )
