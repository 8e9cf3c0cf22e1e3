"""Docker's JSON → cargohold's values, with pydantic at the edge.

The models name only the keys cargohold reads; everything else the engine sends is ignored, and
a missing or mistyped key fails here (as an ``EngineError``), never as a KeyError in a caller.
Tested against JSON recorded from a real engine (``tests/fixtures/docker``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cargohold.engine.types import ContainerInfo, ContainerStop, EngineInfo, VolumeInfo
from cargohold.errors import EngineError

__all__ = [
    "parse_changes",
    "parse_container",
    "parse_container_summary",
    "parse_engine_info",
    "parse_stop",
    "parse_volume",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


_M = TypeVar("_M", bound=_Model)


class _Version(_Model):
    version: str = Field(alias="Version")
    api_version: str = Field(alias="ApiVersion")


class _Info(_Model):
    operating_system: str = Field("", alias="OperatingSystem")
    driver: str = Field("", alias="Driver")
    root_dir: str = Field("", alias="DockerRootDir")
    security_options: list[str] | None = Field(None, alias="SecurityOptions")
    runtimes: dict[str, Any] | None = Field(None, alias="Runtimes")
    cpus: int = Field(0, alias="NCPU")
    memory: int = Field(0, alias="MemTotal")


class _Volume(_Model):
    name: str = Field(alias="Name")
    driver: str | None = Field("local", alias="Driver")
    labels: dict[str, str] | None = Field(None, alias="Labels")
    mountpoint: str | None = Field("", alias="Mountpoint")
    created: str | None = Field("", alias="CreatedAt")
    options: dict[str, str] | None = Field(None, alias="Options")


class _State(_Model):
    status: str = Field(alias="Status")
    exit_code: int | None = Field(None, alias="ExitCode")


class _GraphDriver(_Model):
    name: str = Field("", alias="Name")
    data: dict[str, str] | None = Field(None, alias="Data")


class _InspectMount(_Model):
    type: str = Field("", alias="Type")
    name: str | None = Field(None, alias="Name")


class _Config(_Model):
    image: str = Field("", alias="Image")
    labels: dict[str, str] | None = Field(None, alias="Labels")


class _Container(_Model):
    id: str = Field(alias="Id")
    name: str = Field(alias="Name")
    created: str = Field("", alias="Created")
    state: _State = Field(alias="State")
    config: _Config = Field(alias="Config")
    graph_driver: _GraphDriver | None = Field(None, alias="GraphDriver")
    mounts: list[_InspectMount] | None = Field(None, alias="Mounts")


class _Summary(_Model):
    id: str = Field(alias="Id")
    names: list[str] | None = Field(None, alias="Names")
    image: str = Field("", alias="Image")
    state: str = Field("", alias="State")
    status: str = Field("", alias="Status")
    labels: dict[str, str] | None = Field(None, alias="Labels")
    mounts: list[_InspectMount] | None = Field(None, alias="Mounts")
    created: float = Field(0.0, alias="Created")


class _Change(_Model):
    path: str = Field(alias="Path")
    kind: int = Field(alias="Kind")


class _Actor(_Model):
    id: str = Field("", alias="ID")
    attributes: dict[str, str] | None = Field(None, alias="Attributes")


class _Event(_Model):
    id: str | None = Field(None, alias="id")
    actor: _Actor | None = Field(None, alias="Actor")


def _validate(model: type[_M], data: object, what: str) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise EngineError(
            f"The engine's description of {what} is not what cargohold understands: "
            f"{exc.errors()[0]['msg']} at {'.'.join(str(p) for p in exc.errors()[0]['loc'])}.",
            hint="Check the engine's version (`docker version`); cargohold needs API 1.41 or "
            "newer.",
        ) from None


def parse_engine_info(version: object, info: object) -> EngineInfo:
    v = _validate(_Version, version, "itself")
    i = _validate(_Info, info, "itself")
    return EngineInfo(
        version=v.version,
        api_version=v.api_version,
        operating_system=i.operating_system,
        storage_driver=i.driver,
        root_dir=i.root_dir,
        security_options=tuple(i.security_options or ()),
        runtimes=tuple(sorted(i.runtimes or {})),
        cpus=i.cpus,
        memory=i.memory,
    )


def parse_volume(data: object) -> VolumeInfo:
    v = _validate(_Volume, data, "a volume")
    return VolumeInfo(
        name=v.name,
        driver=v.driver or "local",
        labels=dict(v.labels or {}),
        mountpoint=v.mountpoint or "",
        created=v.created or "",
        options=dict(v.options or {}),
    )


def _epoch(text: str) -> float:
    # The engine writes nanoseconds ("…:54.290010098Z"); fromisoformat takes microseconds.
    head, dot, tail = text.rstrip("Z").partition(".")
    try:
        stamp = f"{head}.{tail[:6]}+00:00" if dot else f"{head}+00:00"
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return 0.0


def parse_container(data: object) -> ContainerInfo:
    """An inspect (GET /containers/{id}/json)."""
    c = _validate(_Container, data, "a container")
    driver = c.graph_driver or _GraphDriver.model_validate({})
    return ContainerInfo(
        id=c.id,
        name=c.name.lstrip("/"),
        image=c.config.image,
        state=c.state.status,
        status=c.state.status,
        exit_code=c.state.exit_code if c.state.status == "exited" else None,
        labels=dict(c.config.labels or {}),
        volumes=tuple(m.name for m in c.mounts or () if m.type == "volume" and m.name),
        created=_epoch(c.created),
        storage_driver=driver.name,
        upper_dir=(driver.data or {}).get("UpperDir") if driver.name == "overlay2" else None,
    )


def parse_container_summary(data: object) -> ContainerInfo:
    """One entry of a listing (GET /containers/json)."""
    c = _validate(_Summary, data, "a container")
    return ContainerInfo(
        id=c.id,
        name=(c.names or [c.id[:12]])[0].lstrip("/"),
        image=c.image,
        state=c.state,
        status=c.status,
        exit_code=None,
        labels=dict(c.labels or {}),
        volumes=tuple(m.name for m in c.mounts or () if m.type == "volume" and m.name),
        created=c.created,
    )


def parse_changes(data: object) -> list[str]:
    """Paths added (1) or modified (0) in a container's layer, from GET …/changes."""
    if data is None:
        return []
    if not isinstance(data, list):
        raise EngineError(
            "The engine's list of a container's changes is not a list.",
            hint="Check the engine's version (`docker version`).",
        )
    changes = [_validate(_Change, item, "a container's changes") for item in data]
    return sorted(c.path for c in changes if c.kind in (0, 1))


def parse_stop(data: object) -> ContainerStop:
    e = _validate(_Event, data, "an event")
    actor = e.actor or _Actor.model_validate({})
    return ContainerStop(id=e.id or actor.id, name=(actor.attributes or {}).get("name", ""))
