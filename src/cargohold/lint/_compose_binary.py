"""The real Compose binary's model, where one is installed, with our source lines laid over it.

Compose itself is the authority on what it would run: when its binary is found, lint asks it
(``config --format json``, every profile on) and takes mounts, environment, command, user and
the rest from its answer. Compose's JSON has no line numbers, so each value is matched to the
value the in-process resolver read from the source (a mount by its target, a variable by its
name, the command as a whole) and keeps that line. When Compose refuses the project (a missing
``env_file``, a required variable unset), lint says so and goes on with its own resolver.

The binary is ``$CARGOHOLD_COMPOSE`` (``none`` turns this off), else the one the
``docker-compose`` wheel ships, else Docker's CLI plugin -- never a ``docker-compose`` on
``PATH``, which may be a wrapper that hides Compose's exit code.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from cargohold.lint._model import Mount, Service, Text

__all__ = ["compose_binary", "compose_model", "overlay"]

_PLUGINS = (
    "~/.docker/cli-plugins/docker-compose",
    "/usr/local/lib/docker/cli-plugins/docker-compose",
    "/usr/libexec/docker/cli-plugins/docker-compose",
    "/usr/lib/docker/cli-plugins/docker-compose",
)


def compose_binary() -> Path | None:
    """The Compose binary lint may ask, or None."""
    chosen = os.environ.get("CARGOHOLD_COMPOSE")
    if chosen is not None:
        return None if chosen in ("", "none", "0") else Path(chosen)
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        wheel = Path(spec.origin).parent / "docker-compose"
        if wheel.is_file() and os.access(wheel, os.X_OK):
            return wheel
    for plugin in _PLUGINS:
        path = Path(os.path.expanduser(plugin))
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def compose_model(files: list[Path]) -> tuple[dict[str, Any] | None, str]:
    """Compose's resolved services, or None and why not."""
    binary = compose_binary()
    if binary is None:
        return None, ""
    args = [str(binary)]
    for path in files:  # absolute: Compose runs in the project's folder, not ours
        args += ["-f", str(path.resolve())]
    try:
        result = subprocess.run(
            [*args, "--profile", "*", "config", "--format", "json"],
            capture_output=True,
            text=True,
            cwd=files[0].resolve().parent,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"could not run {binary.name} ({exc})"
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if "level=warning" not in line]
        return None, (lines[-1] if lines else f"exit {result.returncode}")[:300]
    try:
        model = json.loads(result.stdout)
    except ValueError:
        return None, "Compose printed no JSON"
    services = model.get("services") if isinstance(model, dict) else None
    return (services, "") if isinstance(services, dict) else (None, "Compose printed no services")


def _at(value: object, like: Text | None, fallback: Text) -> Text:
    where = like if like is not None else fallback
    text = Text("" if value is None else str(value), where.file, where.line)
    text.rows = where.rows if like is not None and str(like) == text else ()
    return text


def _mounts(definition: dict[str, Any], ours: Service) -> list[Mount]:
    by_target = {str(m.target): m for m in ours.mounts}
    mounts: list[Mount] = []
    for volume in definition.get("volumes") or []:
        if not isinstance(volume, dict) or not volume.get("target"):
            continue
        kind = str(volume.get("type") or "volume")
        source = volume.get("source")
        mine = by_target.get(str(volume["target"]))
        target = _at(volume["target"], mine.target if mine else None, ours.where)
        if kind == "volume" and not source:
            mounts.append(Mount("anonymous", target, None, bool(volume.get("read_only"))))
        elif kind in ("bind", "volume", "tmpfs"):
            src = _at(source, mine.source if mine and mine.source else target, target)
            mounts.append(
                Mount(kind, target, src if source else None, bool(volume.get("read_only")))  # type: ignore[arg-type]
            )
    for entry in definition.get("tmpfs") or []:
        path = str(entry).split(":")[0]
        mine = by_target.get(path)
        mounts.append(Mount("tmpfs", _at(path, mine.target if mine else None, ours.where)))
    return mounts


def _words(value: Any, mine: list[Text], fallback: Text) -> list[Text]:
    words = [str(w) for w in value] if isinstance(value, list) else []
    if words == [str(w) for w in mine]:
        return mine
    first = mine[0] if mine else None
    return [_at(w, first, fallback) for w in words]


def overlay(services: list[Service], model: dict[str, Any]) -> list[Service]:
    """``services`` with Compose's values laid over them, each keeping its source line."""
    ours = {s.name: s for s in services}
    result: list[Service] = []
    for name, definition in model.items():
        mine = ours.get(name)
        if mine is None or not isinstance(definition, dict):
            continue  # a service only Compose sees has no source line to point at
        env = definition.get("environment") or {}
        mine.env = {
            str(k): _at(v, mine.env.get(str(k)), mine.where)
            for k, v in (env.items() if isinstance(env, dict) else [])
        }
        mine.mounts = _mounts(definition, mine)
        mine.command = _words(definition.get("command"), mine.command, mine.where)
        mine.entrypoint = _words(definition.get("entrypoint"), mine.entrypoint, mine.where)
        for key in ("image", "user", "working_dir"):
            value = definition.get(key)
            setattr(mine, key, _at(value, getattr(mine, key), mine.where) if value else None)
        shm = definition.get("shm_size")
        mine.shm = _at(shm, mine.shm, mine.where) if shm else None
        mine.ipc_host = definition.get("ipc") == "host"
        mine.privileged = (
            _at("true", mine.privileged, mine.where) if definition.get("privileged") else None
        )
        result.append(mine)
    seen = {s.name for s in result}
    return result + [s for s in services if s.name not in seen]
