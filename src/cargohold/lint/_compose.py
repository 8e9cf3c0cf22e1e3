"""Compose files to services, resolved the way Compose resolves them.

Lint what Compose would run: merge keys (in :mod:`._yaml`), ``${VAR}`` interpolation from the
environment and the project's ``.env``, ``include``, override files (``-f a -f b``, and
``compose.override.yaml`` beside a default-named file, as ``docker compose up`` finds it),
``extends`` (same file or another), ``!reset``/``!override``, ``env_file``, ``volumes_from``,
and a local Dockerfile's facts. Every value keeps the file and line it was written on. A test
compares this resolver with the real Compose binary's ``config --format json`` on the whole
corpus.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from cargohold.errors import UsageError
from cargohold.lint._dockerfile import dockerfile_facts
from cargohold.lint._model import Mount, Service, Text, at
from cargohold.lint._yaml import LDict, LList, Override, Reset, load_yaml, read_env_file, settle

__all__ = ["add_image_volumes", "compose_services", "override_for", "parse_short_volume"]

_DEFAULT_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
_KEYED_LISTS = ("volumes", "tmpfs")
_MAPS = ("environment", "labels", "extra_hosts", "sysctls")
_REPLACED = ("command", "entrypoint", "healthcheck")


def override_for(path: Path) -> Path | None:
    """The override file ``docker compose up`` would add to a default-named file, if any."""
    if path.name not in _DEFAULT_NAMES:
        return None
    stem = path.name.rsplit(".", 1)[0]
    for ext in ("yaml", "yml"):
        candidate = path.with_name(f"{stem}.override.{ext}")
        if candidate.is_file():
            return candidate
    return None


def _environment(project_dir: Path) -> dict[str, str]:
    values = read_env_file(project_dir / ".env")
    values.update(os.environ)  # the shell wins over .env, as in Compose
    return values


def _as_map(value: Any) -> dict[str, Any]:
    """``environment``-style values (a mapping or a ``KEY=VALUE`` list) as a mapping."""
    if isinstance(value, dict):
        return dict(value)
    result: dict[str, Any] = {}
    if isinstance(value, list):
        for item in value:
            if isinstance(item, Text):
                key, eq, rest = item.partition("=")
                result[key.strip()] = item.derive(rest) if eq else None
    return result


def _target_of(item: Any) -> str:
    if isinstance(item, dict):
        return str(item.get("target", ""))
    if isinstance(item, Text):
        parts = _split_volume(str(item))
        return parts[1] if len(parts) > 1 else parts[0]
    return ""


def _merge(base: Any, over: Any, key: str = "") -> Any:
    """Compose's merge of a service definition ``over`` onto ``base``."""
    if isinstance(base, Override):
        base = base.value
    if isinstance(over, Reset | Override) or isinstance(base, Reset):
        return over  # `!reset` drops the key, `!override` replaces it (see settle)
    if key in _REPLACED:
        return over
    if key in _MAPS:
        merged = _as_map(base)
        merged.update(_as_map(over))
        return merged
    if key in _KEYED_LISTS and isinstance(base, list) and isinstance(over, list):
        by_target: dict[str, Any] = {_target_of(i): i for i in base}
        by_target.update({_target_of(i): i for i in over})
        out = LList(by_target.values())
        out.line, out.file = getattr(over, "line", 0), getattr(over, "file", "")
        return out
    if isinstance(base, dict) and isinstance(over, dict):
        result = LDict(base)
        result.line, result.file = getattr(over, "line", 0), getattr(over, "file", "")
        for name, value in over.items():
            result[name] = _merge(base[name], value, name) if name in base else value
        return result
    if isinstance(base, list) and isinstance(over, list):
        out = LList([*base, *(i for i in over if i not in base)])
        out.line, out.file = getattr(over, "line", 0), getattr(over, "file", "")
        return out
    return over


class _Project:
    def __init__(self, files: list[Path]) -> None:
        self.project_dir = files[0].resolve().parent
        self.env = _environment(self.project_dir)
        self.keys: dict[str, Text] = {}  # service -> where its key is written
        self.docs: dict[Path, Any] = {}

    def load(self, path: Path, depth: int = 0) -> dict[str, Any]:
        """The services of ``path`` with its ``include``s, as name -> definition."""
        if depth > 10:
            raise UsageError(f"{path}: include nests more than 10 deep.", hint="Is it a cycle?")
        data = load_yaml(path, self.env)
        if not isinstance(data, dict):
            raise UsageError(
                f"{path} is not a compose file (not a mapping).",
                hint="Lint compose files (with a top-level `services:` key).",
            )
        self.docs[path.resolve()] = data
        services: dict[str, Any] = {}
        for entry in data.get("include") or []:
            target = entry.get("path") if isinstance(entry, dict) else entry
            for one in target if isinstance(target, list) else [target]:
                if isinstance(one, Text) and not one.unresolved:
                    included = Path(os.path.normpath(path.parent / str(one)))
                    if included.is_file():
                        services.update(self.load(included, depth + 1))
        raw = data.get("services")
        if raw is None and not services and "include" not in data:
            raise UsageError(
                f"{path} has no services: it is not a compose file.",
                hint="Lint compose files (with a top-level `services:` key).",
            )
        if isinstance(raw, dict):
            for name, definition in raw.items():
                if isinstance(definition, dict):
                    services[name] = definition
                    line = raw.key_lines.get(name, 1) if isinstance(raw, LDict) else 1
                    self.keys.setdefault(name, Text(name, str(path), line))
        return services

    def extend(
        self, name: str, definition: dict[str, Any], services: dict[str, Any], seen: set[str]
    ) -> dict[str, Any]:
        spec = definition.get("extends")
        if spec is None:
            return definition
        base_name = spec.get("service") if isinstance(spec, dict) else spec
        base_file = spec.get("file") if isinstance(spec, dict) else None
        key = f"{base_file}:{base_name}"
        if key in seen or len(seen) > 20:
            raise UsageError(
                f"Service {name} extends itself (through {base_name}).",
                hint="Break the extends cycle.",
            )
        base: Any = None
        if isinstance(base_file, Text) and not base_file.unresolved:
            where = Path(definition.get("extends", LDict()).file or ".").parent
            other = Path(os.path.normpath(where / str(base_file)))
            if other.is_file():
                doc = self.docs.get(other.resolve()) or load_yaml(other, self.env)
                self.docs[other.resolve()] = doc
                others = doc.get("services") if isinstance(doc, dict) else None
                if isinstance(others, dict):
                    base = others.get(str(base_name))
                    if isinstance(base, dict):
                        base = self.extend(str(base_name), base, others, {*seen, key})
        elif base_name is not None:
            base = services.get(str(base_name))
            if isinstance(base, dict):
                base = self.extend(str(base_name), base, services, {*seen, key})
        if not isinstance(base, dict):
            return definition  # Compose would refuse; lint what is there
        own = LDict({k: v for k, v in definition.items() if k != "extends"})
        own.line, own.file = getattr(definition, "line", 0), getattr(definition, "file", "")
        merged = _merge({k: v for k, v in base.items() if k not in ("depends_on",)}, own)
        return dict(merged)


def _split_volume(text: str) -> list[str]:
    """A short volume string into its parts; a Windows drive letter stays with its path."""
    parts, depth, current = [], 0, ""
    for char in text:  # colons inside an unresolved ${VAR:-…} are not separators
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == ":" and depth <= 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    windows = len(parts) > 2 and parts[1].startswith(("\\", "/")) and parts[2].startswith("/")
    if len(parts[0]) == 1 and parts[0].isalpha() and (windows or parts[1:2] == ["\\"]):
        parts = [parts[0] + ":" + parts[1], *parts[2:]]
    return parts


def parse_short_volume(text: Text, base_dir: Path | None) -> Mount:
    """``[SOURCE:]TARGET[:MODE]`` as Compose and ``docker run -v`` read it."""
    parts = _split_volume(str(text))

    def part(value: str) -> Text:  # only a part that still holds a variable is unknown
        return text.derive(value, unresolved=text.unresolved and ("$" in value or "`" in value))

    if len(parts) == 1 or (len(parts) == 2 and parts[1] in ("ro", "rw")):
        return Mount("anonymous", part(parts[0]), None, len(parts) == 2 and parts[1] == "ro")
    source, target = parts[0], parts[1]
    readonly = len(parts) > 2 and "ro" in parts[2].split(",")
    is_path = source.startswith(("/", ".", "~", "$", "`")) or "\\" in source or ":" in source
    if is_path:
        return Mount("bind", part(target), part(_host_path(source, base_dir)), readonly)
    return Mount("volume", part(target), part(source), readonly)


def _host_path(source: str, base_dir: Path | None) -> str:
    if source.startswith("~"):
        return os.path.expanduser(source)
    if source.startswith(".") and base_dir is not None:
        return os.path.normpath(str(base_dir.resolve() / source))
    return source


def _words(value: Any) -> list[Text]:
    if isinstance(value, list):
        return [at(w) for w in value if w is not None]
    if isinstance(value, Text):
        try:
            words = shlex.split(str(value))
        except ValueError:
            words = str(value).split()
        return value.split_into(words)
    return []


def _true(value: Any) -> bool:
    return isinstance(value, Text) and value.strip().lower() in ("true", "yes", "on", "1")


def _gpu(definition: dict[str, Any]) -> Text | None:
    runtime = definition.get("runtime")
    if isinstance(runtime, Text) and "nvidia" in runtime.lower():
        return runtime.derive(f"runtime: {runtime}")
    gpus = definition.get("gpus")
    if isinstance(gpus, Text | list) and gpus:
        return at(gpus[0] if isinstance(gpus, list) and gpus else gpus).derive("gpus")
    deploy = definition.get("deploy")
    resources = deploy.get("resources") if isinstance(deploy, dict) else None
    reservations = resources.get("reservations") if isinstance(resources, dict) else None
    devices = reservations.get("devices") if isinstance(reservations, dict) else None
    for device in devices if isinstance(devices, list) else []:
        if not isinstance(device, dict):
            continue
        caps = device.get("capabilities") or []
        driver = device.get("driver")
        if any(str(c) == "gpu" for c in caps) or (isinstance(driver, Text) and driver == "nvidia"):
            return Text(
                "a GPU reservation (deploy.resources.reservations.devices)",
                getattr(device, "file", ""),
                getattr(device, "line", 0),
            )
    for device in definition.get("devices") or []:  # CDI (nvidia.com/gpu=all) or /dev/nvidia0
        if isinstance(device, Text) and ("nvidia.com/gpu" in device or "/dev/nvidia" in device):
            return device.derive(f"devices: {device}")
    env = _as_map(definition.get("environment"))
    visible = env.get("NVIDIA_VISIBLE_DEVICES")
    if isinstance(visible, Text) and visible.strip() not in ("", "void", "none"):
        return visible.derive(f"NVIDIA_VISIBLE_DEVICES={visible}")
    return None


def _mounts(definition: dict[str, Any], named: set[str]) -> list[Mount]:
    mounts: list[Mount] = []
    for item in definition.get("volumes") or []:
        if isinstance(item, Text):
            mount = parse_short_volume(item, Path(item.file).parent if item.file else None)
        elif isinstance(item, dict):
            kind = str(item.get("type") or "volume")
            source = item.get("source")
            file, line = getattr(item, "file", ""), getattr(item, "line", 0)
            target = at(item.get("target"), file, line)
            readonly = _true(item.get("read_only"))
            if kind == "bind" and isinstance(source, Text):
                source = source.derive(_host_path(str(source), Path(source.file).parent))
            if kind == "volume" and not source:
                mount = Mount("anonymous", target, None, readonly)
            elif kind in ("bind", "volume", "tmpfs"):
                mount = Mount(kind, target, at(source) if source else None, readonly)  # type: ignore[arg-type]
            else:
                continue
        else:
            continue
        mounts.append(mount)
    tmpfs = definition.get("tmpfs")
    for item in tmpfs if isinstance(tmpfs, list) else [tmpfs] if tmpfs else []:
        if isinstance(item, Text):
            mounts.append(Mount("tmpfs", item.derive(item.split(":")[0])))
    del named
    return mounts


def _service(name: str, key: Text, definition: dict[str, Any], named: set[str]) -> Service:
    service = Service(name=name, where=key)
    image = definition.get("image")
    service.image = image if isinstance(image, Text) else None
    build = definition.get("build")
    if build is not None:
        context = build if isinstance(build, Text) else build.get("context", Text(".", "", 0))
        dockerfile = build.get("dockerfile") if isinstance(build, dict) else None
        if isinstance(context, Text) and not context.unresolved and "://" not in context:
            base = Path(context.file or key.file).parent
            path = (base / str(context)) / str(dockerfile or "Dockerfile")
            service.build = dockerfile_facts(path)
    service.entrypoint = _words(definition.get("entrypoint"))
    service.command = _words(definition.get("command"))
    env: dict[str, Text] = {}
    env_files = definition.get("env_file")
    for entry in env_files if isinstance(env_files, list) else [env_files] if env_files else []:
        env_path = entry.get("path") if isinstance(entry, dict) else entry
        if isinstance(env_path, Text) and not env_path.unresolved:
            file = Path(env_path.file).parent / str(env_path)
            for k, v in read_env_file(file).items():
                env[k] = Text(v, str(file), 1)
    for k, v in _as_map(definition.get("environment")).items():
        if v is not None:
            env[k] = at(v)
    service.env = env
    service.mounts = _mounts(definition, named)
    user = definition.get("user")
    service.user = user if isinstance(user, Text) and str(user) else None
    working_dir = definition.get("working_dir")
    service.working_dir = working_dir if isinstance(working_dir, Text) else None
    shm = definition.get("shm_size")
    service.shm = shm if isinstance(shm, Text) else None
    ipc = definition.get("ipc")
    service.ipc_host = isinstance(ipc, Text) and ipc == "host"
    privileged = definition.get("privileged")
    service.privileged = privileged if _true(privileged) else None
    service.gpu = _gpu(definition)
    service.base_dir = Path(key.file).parent if key.file else Path(".")
    return service


def compose_services(files: list[Path]) -> list[Service]:
    """The services of the project made of ``files`` (later files override earlier ones).

    Raises:
        UsageError: a file is unreadable, not YAML, or not a compose file.
    """
    project = _Project(files)
    services: dict[str, Any] = {}
    for path in files:
        for name, definition in project.load(path).items():
            services[name] = _merge(services[name], definition) if name in services else definition
    named: set[str] = set()
    for doc in project.docs.values():
        if isinstance(doc, dict) and isinstance(doc.get("volumes"), dict):
            named |= set(doc["volumes"])
    resolved = {n: settle(project.extend(n, d, services, set())) for n, d in services.items()}
    result = {n: _service(n, project.keys[n], d, named) for n, d in resolved.items()}
    for name, definition in resolved.items():
        for ref in definition.get("volumes_from") or []:
            other = str(ref).split(":")[0] if not str(ref).startswith("container:") else ""
            if other in result and other != name:
                result[name].mounts += result[other].mounts
    checkout = any(s.build is not None for s in result.values()) or any(
        Path(str(m.source)).exists()
        for s in result.values()
        for m in s.mounts
        if m.kind == "bind" and m.source and not m.source.unresolved
        and _inside(Path(str(m.source)), project.project_dir)
    )  # fmt: skip
    for service in result.values():
        service.checkout = checkout
        service.base_dir = project.project_dir
    return list(result.values())


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def add_image_volumes(services: list[Service]) -> None:
    """The ``VOLUME``s of a local Dockerfile, as the anonymous volumes Docker gives them."""
    for service in services:
        for volume in service.build.volumes if service.build else ():
            if not volume.startswith("/"):
                continue
            if not any(m.target == volume for m in service.mounts):
                service.mounts.append(Mount("anonymous", Text(volume)))
