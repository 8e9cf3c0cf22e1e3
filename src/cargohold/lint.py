"""Data-loss and safety rules for compose files and ``docker run`` lines.

Both inputs are reduced to the same model -- services, each with its mounts, environment,
command, user, shm size and privileges, every value carrying the line it came from -- and the
rules run on that model only, so a rule is written once for both. Compose files are read with
PyYAML's node API, which keeps line numbers.

| id    | severity | finding                                                               |
|-------|----------|-----------------------------------------------------------------------|
| CH001 | error    | outputs or checkpoints written to a path that is not on a mount       |
| CH002 | warning  | caches (HF_HOME, TORCH_HOME, XDG_CACHE_HOME, …) not on a mount        |
| CH003 | warning  | anonymous volume: nameless, hard to find, deleted by `down -v`/`--rm` |
| CH004 | warning  | dataset mounted writable                                              |
| CH005 | error    | checkpoints or outputs on a tmpfs                                     |
| CH006 | warning  | bind source that does not exist (Docker creates it, owned by root)    |
| CH007 | warning  | host folders bound without `user`: files come out owned by root       |
| CH008 | warning  | PyTorch data loading without `shm_size` (Docker's default is 64 MB)   |
| CH009 | error    | the Docker socket mounted: root on the host for anything in the job   |
| CH010 | error    | privileged container                                                  |
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from cargohold.errors import UsageError

__all__ = ["RULES", "Finding", "lint_compose_file", "lint_docker_run", "sarif"]

RULES: dict[str, tuple[str, str]] = {
    "CH001": ("error", "output-not-on-mount"),
    "CH002": ("warning", "cache-not-on-mount"),
    "CH003": ("warning", "anonymous-volume"),
    "CH004": ("warning", "writable-dataset"),
    "CH005": ("error", "checkpoints-on-tmpfs"),
    "CH006": ("warning", "missing-bind-source"),
    "CH007": ("warning", "bind-without-user"),
    "CH008": ("warning", "missing-shm-size"),
    "CH009": ("error", "docker-socket-mounted"),
    "CH010": ("error", "privileged"),
}
SEVERITY_ORDER = {"error": 0, "warning": 1, "note": 2}

OUTPUT_FLAGS = re.compile(
    r"^--?(output[-_]?dir|out[-_]?dir|save[-_]?dir|save[-_]?path|checkpoint[-_a-z]*|ckpt[-_a-z]*|"
    r"model[-_]?dir|logging[-_]?dir|log[-_]?dir|work[-_]?dir|export[-_]?dir|results?[-_]?dir)$",
    re.IGNORECASE,
)
CACHE_ENV = (
    "HF_HOME",
    "TRANSFORMERS_CACHE",
    "HF_DATASETS_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "TORCH_HOME",
    "XDG_CACHE_HOME",
    "PIP_CACHE_DIR",
    "KERAS_HOME",
    "WANDB_DIR",
)
DATASET_WORDS = re.compile(
    r"(^|[/_.-])(data|dataset|datasets|corpus|imagenet|coco)([/_.-]|$)", re.IGNORECASE
)
CHECKPOINT_WORDS = re.compile(r"(ckpt|checkpoint|output|model|result|save|artifact)", re.IGNORECASE)
TORCH_HINTS = re.compile(
    r"(torch|pytorch|accelerate|deepspeed|lightning|num[-_]workers|"
    r"dataloader|torchrun|--workers)",
    re.IGNORECASE,
)
SOCKET = re.compile(r"docker\.sock$")


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    name: str
    message: str
    fix: str
    file: str
    line: int
    service: str


@dataclass
class _Mount:
    kind: str  # bind | volume | tmpfs | anonymous
    source: str
    target: str
    readonly: bool
    line: int


@dataclass
class _Service:
    name: str
    line: int
    image: str = ""
    image_line: int = 0
    command: list[tuple[str, int]] = field(default_factory=list)
    env: dict[str, tuple[str, int]] = field(default_factory=dict)
    mounts: list[_Mount] = field(default_factory=list)
    user: str | None = None
    shm: bool = False
    ipc_host: bool = False
    privileged: int = 0  # the line, or 0
    base_dir: Path = Path(".")


# -- compose ---------------------------------------------------------------------------------


def _scalar(node: yaml.Node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else ""


def _mapping(node: yaml.Node | None) -> dict[str, yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return {_scalar(k): v for k, v in node.value}
    return {}


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _parse_short_volume(text: str, line: int, base: Path) -> _Mount:
    parts = text.split(":")
    if len(parts) == 1:
        return _Mount("anonymous", "", parts[0], False, line)
    source, target = parts[0], parts[1]
    readonly = len(parts) > 2 and "ro" in parts[2].split(",")
    is_path = source.startswith(("/", ".", "~", "$"))
    return _Mount("bind" if is_path else "volume", source, target, readonly, line)


def _compose_services(path: Path) -> list[_Service]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"Cannot read {path}: {exc.strerror}.", hint="Check the path.") from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise UsageError(
            f"{path} is not valid YAML: {exc}.".replace("\n", " "),
            hint="Fix the syntax at that line.",
        ) from None
    top = _mapping(root)
    services_node = top.get("services")
    if not isinstance(services_node, yaml.MappingNode):
        raise UsageError(
            f"{path} has no services: it is not a compose file.",
            hint="Lint compose files (with a top-level `services:` key).",
        )
    named_volumes = set(_mapping(top.get("volumes")))
    services = []
    for key, node in services_node.value:
        spec = _mapping(node)
        service = _Service(name=_scalar(key), line=_line(key), base_dir=path.parent)
        if "image" in spec:
            service.image, service.image_line = _scalar(spec["image"]), _line(spec["image"])
        command = spec.get("command") or spec.get("entrypoint")
        if isinstance(command, yaml.SequenceNode):
            service.command = [(_scalar(n), _line(n)) for n in command.value]
        elif command is not None:
            service.command = [(w, _line(command)) for w in _split(_scalar(command))]
        env = spec.get("environment")
        if isinstance(env, yaml.MappingNode):
            service.env = {_scalar(k): (_scalar(v), _line(k)) for k, v in env.value}
        elif isinstance(env, yaml.SequenceNode):
            for item in env.value:
                name, _, value = _scalar(item).partition("=")
                service.env[name] = (value, _line(item))
        volumes = spec.get("volumes")
        if isinstance(volumes, yaml.SequenceNode):
            for item in volumes.value:
                if isinstance(item, yaml.ScalarNode):
                    mount = _parse_short_volume(_scalar(item), _line(item), path.parent)
                else:
                    long = _mapping(item)
                    kind = _scalar(long["type"]) if "type" in long else "volume"
                    source = _scalar(long["source"]) if "source" in long else ""
                    readonly = (
                        _scalar(long.get("read_only", yaml.ScalarNode("", ""))).lower() == "true"
                    )
                    mount = _Mount(
                        kind if source or kind != "volume" else "anonymous",
                        source,
                        _scalar(long.get("target", yaml.ScalarNode("", ""))),
                        readonly,
                        _line(item),
                    )
                if (
                    mount.kind == "volume"
                    and mount.source not in named_volumes
                    and not mount.source.startswith("$")
                ):
                    mount.kind = "volume"  # an undeclared name: compose will refuse it anyway
                service.mounts.append(mount)
        tmpfs = spec.get("tmpfs")
        tmpfs_items = (
            tmpfs.value
            if isinstance(tmpfs, yaml.SequenceNode)
            else ([tmpfs] if isinstance(tmpfs, yaml.ScalarNode) else [])
        )
        for item in tmpfs_items:
            service.mounts.append(
                _Mount("tmpfs", "", _scalar(item).split(":")[0], False, _line(item))
            )
        if "user" in spec:
            service.user = _scalar(spec["user"])
        service.shm = "shm_size" in spec
        service.ipc_host = _scalar(spec.get("ipc", yaml.ScalarNode("", ""))) == "host"
        if _scalar(spec.get("privileged", yaml.ScalarNode("", ""))).lower() == "true":
            service.privileged = _line(spec["privileged"])
        services.append(service)
    return services


def _split(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


# -- docker run --------------------------------------------------------------------------------

# Flags of `docker run` that take a value (so that the image is found after them).
_VALUED = {
    "-a",
    "--attach",
    "--add-host",
    "--blkio-weight",
    "--cap-add",
    "--cap-drop",
    "--cgroupns",
    "--cidfile",
    "--cpu-period",
    "--cpu-quota",
    "--cpu-shares",
    "-c",
    "--cpus",
    "--cpuset-cpus",
    "--cpuset-mems",
    "--device",
    "--dns",
    "--dns-option",
    "--dns-search",
    "--domainname",
    "--entrypoint",
    "-e",
    "--env",
    "--env-file",
    "--expose",
    "--gpus",
    "--group-add",
    "--health-cmd",
    "--health-interval",
    "--health-retries",
    "--health-timeout",
    "-h",
    "--hostname",
    "--ipc",
    "--ip",
    "--ip6",
    "--isolation",
    "--kernel-memory",
    "-l",
    "--label",
    "--label-file",
    "--link",
    "--log-driver",
    "--log-opt",
    "--mac-address",
    "-m",
    "--memory",
    "--memory-reservation",
    "--memory-swap",
    "--memory-swappiness",
    "--mount",
    "--name",
    "--network",
    "--net",
    "--network-alias",
    "--oom-score-adj",
    "--pid",
    "--pids-limit",
    "--platform",
    "-p",
    "--publish",
    "--pull",
    "--restart",
    "--runtime",
    "--security-opt",
    "--shm-size",
    "--stop-signal",
    "--stop-timeout",
    "--storage-opt",
    "--sysctl",
    "--tmpfs",
    "--ulimit",
    "-u",
    "--user",
    "--userns",
    "--uts",
    "-v",
    "--volume",
    "--volume-driver",
    "--volumes-from",
    "-w",
    "--workdir",
}


def _docker_run_service(line: str) -> _Service:
    words = _split(line)
    if words[:2] == ["docker", "run"]:
        words = words[2:]
    elif words[:3] == ["docker", "container", "run"]:
        words = words[3:]
    service = _Service(name="docker-run", line=1, base_dir=Path.cwd())
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("-") or word == "-":
            break
        flag, eq, inline = word.partition("=")
        value = inline if eq else None
        if value is None and flag in _VALUED:
            i += 1
            value = words[i] if i < len(words) else ""
        position = i + 1
        if flag in ("-v", "--volume") and value is not None:
            service.mounts.append(_parse_short_volume(value, position, service.base_dir))
        elif flag == "--mount" and value is not None:
            fields = dict(([*f.split("=", 1), ""])[:2] for f in value.split(","))
            kind = fields.get("type", "volume")
            source = fields.get("source", fields.get("src", ""))
            target = fields.get("target", fields.get("destination", fields.get("dst", "")))
            readonly = "readonly" in fields or "ro" in fields or fields.get("readonly") == "true"
            service.mounts.append(
                _Mount(
                    "anonymous" if kind == "volume" and not source else kind,
                    source,
                    target,
                    readonly,
                    position,
                )
            )
        elif flag == "--tmpfs" and value is not None:
            service.mounts.append(_Mount("tmpfs", "", value.split(":")[0], False, position))
        elif flag in ("-e", "--env") and value is not None:
            name, _, env_value = value.partition("=")
            service.env[name] = (env_value, position)
        elif flag in ("-u", "--user"):
            service.user = value
        elif flag == "--shm-size":
            service.shm = True
        elif flag == "--ipc":
            service.ipc_host = value == "host"
        elif flag == "--privileged" and value in (None, "true"):
            service.privileged = position
        i += 1
    if i < len(words):
        service.image, service.image_line = words[i], i + 1
        service.command = [(w, i + 2 + n) for n, w in enumerate(words[i + 1 :])]
    return service


# -- rules -------------------------------------------------------------------------------------


def _on_mount(path: str, mounts: list[_Mount]) -> bool:
    pure = PurePosixPath(path)
    for mount in mounts:
        if mount.kind == "tmpfs" or not mount.target:
            continue
        target = PurePosixPath(mount.target)
        if pure == target or target in pure.parents:
            return True
    return False


def _tmpfs_for(path: str, mounts: list[_Mount]) -> _Mount | None:
    pure = PurePosixPath(path)
    for mount in mounts:
        target = PurePosixPath(mount.target) if mount.target else None
        if mount.kind == "tmpfs" and target and (pure == target or target in pure.parents):
            return mount
    return None


def _absolute_in_container(value: str, service: _Service) -> str | None:
    if not value or value.startswith(("$", "s3://", "gs://", "http")):
        return None
    if value.startswith("/"):
        return value
    workdir = "/"  # unknown working directory: relative outputs land in the image's layer
    return str(PurePosixPath(workdir) / value)


def _rules(service: _Service, file: str) -> list[Finding]:
    found: list[Finding] = []

    def add(rule: str, line: int, message: str, fix: str) -> None:
        severity, name = RULES[rule]
        found.append(Finding(rule, severity, name, message, fix, file, line, service.name))

    mounts = service.mounts
    words = [w for w, _ in service.command]
    for index, (word, line) in enumerate(service.command):
        flag, eq, inline = word.partition("=")
        if not OUTPUT_FLAGS.match(flag):
            continue
        value = inline if eq else (words[index + 1] if index + 1 < len(words) else "")
        path = _absolute_in_container(value, service)
        if path is None:
            continue
        tmpfs = _tmpfs_for(path, mounts)
        if tmpfs is not None:
            add(
                "CH005",
                line,
                f"{flag} {value} is on the tmpfs at {tmpfs.target}: checkpoints "
                "and outputs there vanish when the container stops.",
                f"Mount a named volume at {tmpfs.target} instead of a tmpfs.",
            )
        elif not _on_mount(path, mounts):
            add(
                "CH001",
                line,
                f"{flag} {value} writes into the container's own layer; "
                "`docker rm` deletes it with the container.",
                f"Mount a volume or host folder at {path} (e.g. `-v outputs:{path}`).",
            )
    for name, (value, line) in service.env.items():
        if name not in CACHE_ENV:
            continue
        path = _absolute_in_container(value, service)
        if path is not None and not _on_mount(path, mounts):
            add(
                "CH002",
                line,
                f"{name}={value} keeps downloads in the container's layer: they "
                "are fetched again by every new container.",
                f"Mount a named cache volume at {path}.",
            )
    for mount in mounts:
        if mount.kind == "anonymous":
            add(
                "CH003",
                mount.line,
                f"Anonymous volume at {mount.target}: it has no name, is "
                "hard to find again, and `docker compose down -v` or `--rm` deletes it.",
                f"Give it a name: `NAME:{mount.target}`.",
            )
        if (
            mount.kind in ("bind", "volume")
            and not mount.readonly
            and (DATASET_WORDS.search(mount.target) or DATASET_WORDS.search(mount.source))
            and not CHECKPOINT_WORDS.search(mount.target)
        ):
            add(
                "CH004",
                mount.line,
                f"The dataset at {mount.target} is mounted writable: a bug "
                "in training can modify or delete it.",
                "Mount it read-only (`:ro`, or `read_only: true`).",
            )
        if mount.kind == "tmpfs" and CHECKPOINT_WORDS.search(mount.target):
            add(
                "CH005",
                mount.line,
                f"tmpfs at {mount.target}: checkpoints or outputs there "
                "vanish when the container stops.",
                f"Use a named volume at {mount.target}.",
            )
        if mount.kind == "bind" and SOCKET.search(mount.source):
            add(
                "CH009",
                mount.line,
                "The Docker socket is mounted: anything in the job can take over the host.",
                "Remove the docker.sock mount.",
            )
        elif mount.kind == "bind" and not mount.source.startswith(("$", "~")):
            source = Path(os.path.expanduser(mount.source))
            source = source if source.is_absolute() else service.base_dir / source
            if not source.exists():
                add(
                    "CH006",
                    mount.line,
                    f"Bind source {mount.source} does not exist: Docker "
                    "creates it as an empty folder owned by root, and the job sees no data.",
                    f"Create {mount.source} first (or fix the path).",
                )
    binds = [m for m in mounts if m.kind == "bind" and not SOCKET.search(m.source)]
    if binds and service.user is None and any(not m.readonly for m in binds):
        add(
            "CH007",
            binds[0].line,
            "Host folders are bound writable but no user is set: files "
            "the job writes there will be owned by root.",
            'Set `user: "${UID}:${GID}"` (compose) or `--user $(id -u):$(id -g)`.',
        )
    text = " ".join([service.image, *words])
    if TORCH_HINTS.search(text) and not service.shm and not service.ipc_host:
        add(
            "CH008",
            service.image_line or service.line,
            "PyTorch data loading with Docker's "
            "default 64 MB /dev/shm: DataLoader workers crash with 'bus error'.",
            "Set `shm_size: 2g` (compose) or `--shm-size 2g`.",
        )
    if service.privileged:
        add(
            "CH010",
            service.privileged,
            "The container is privileged: it can do anything on the host.",
            "Drop privileged; grant specific devices or capabilities instead.",
        )
    return found


def _sorted(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (f.file, f.line, SEVERITY_ORDER[f.severity], f.rule))


def lint_compose_file(path: Path) -> list[Finding]:
    """Findings for every service of a compose file.

    Raises:
        UsageError: the file is unreadable or not a compose file.
    """
    return _sorted([f for s in _compose_services(path) for f in _rules(s, str(path))])


def lint_docker_run(line: str) -> list[Finding]:
    """Findings for one ``docker run`` line.

    Raises:
        UsageError: the line has no image.
    """
    service = _docker_run_service(line)
    if not service.image:
        raise UsageError(
            "No image found in the docker run line.",
            hint='Quote the whole line: --docker-run "docker run … IMAGE CMD".',
        )
    return _sorted(_rules(service, "docker-run"))


def sarif(findings: list[Finding]) -> dict[str, Any]:
    """A SARIF 2.1.0 log, for code-scanning tools."""
    level = {"error": "error", "warning": "warning", "note": "note"}
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "cargohold lint",
                        "rules": [
                            {
                                "id": rid,
                                "name": name,
                                "defaultConfiguration": {"level": level[severity]},
                            }
                            for rid, (severity, name) in RULES.items()
                        ],
                    }
                },
                "results": [
                    {
                        "ruleId": f.rule,
                        "level": level[f.severity],
                        "message": {"text": f"{f.message} Fix: {f.fix}"},
                        "locations": [
                            {
                                "physicalLocation": {
                                    "artifactLocation": {"uri": f.file},
                                    "region": {"startLine": f.line},
                                }
                            }
                        ],
                    }
                    for f in findings
                ],
            }
        ],
    }
