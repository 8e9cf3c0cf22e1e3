"""``docker run`` lines as people paste them, to services.

A line may start with ``sudo`` (and its options), ``VAR=value`` assignments, ``time``/``exec``/
``env``; run ``nvidia-docker``, ``podman`` or ``docker container run``; continue over lines with
``\\``; and go on after the container with ``&&``, ``||``, ``;`` or ``|``. Each ``run`` found is
one service; every word keeps the line it was written on.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from cargohold.errors import UsageError
from cargohold.lint._compose import parse_short_volume
from cargohold.lint._model import Mount, Service, Text

__all__ = ["docker_run_services", "find_docker_runs"]

_SEPARATORS = {"&&", "||", ";", "|", "&", ";;", "|&"}
_RUNNERS = {"docker", "podman", "nvidia-docker", "docker.io", "sudo-docker"}
_PREFIX_WORDS = {
    "sudo", "time", "exec", "env", "command", "nohup", "doas", "eval", "then", "else", "do",
    "if", "while", "until", "!", "$", "%", ">", "PS>", "#", "-", "*",
}  # fmt: skip
_SUDO_VALUED = {"-u", "-g", "-h", "-p", "-C", "-D", "-r", "-t", "-U", "--user", "--group"}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Flags of `docker run` / `podman run` that take a value (so the image is found after them).
_VALUED = set(
    [
        "-a",
        "--attach",
        "--add-host",
        "--annotation",
        "--blkio-weight",
        "--blkio-weight-device",
        "--cap-add",
        "--cap-drop",
        "--cgroup-parent",
        "--cgroupns",
        "--cidfile",
        "--cpu-period",
        "--cpu-quota",
        "--cpu-rt-period",
        "--cpu-rt-runtime",
        "--cpu-shares",
        "-c",
        "--cpus",
        "--cpuset-cpus",
        "--cpuset-mems",
        "--device",
        "--device-cgroup-rule",
        "--device-read-bps",
        "--device-read-iops",
        "--device-write-bps",
        "--device-write-iops",
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
        "--health-start-period",
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
        "--link-local-ip",
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
        "--net-alias",
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
        "--arch",
        "--os",
        "--variant",
        "--cgroups",
        "--pod",
        "--secret",
        "--uidmap",
        "--gidmap",
        "--hooks-dir",
        "--subuidname",
        "--subgidname",
        "--umask",
        "--requires",
        "--init-path",
        "--conmon-pidfile",
        "--chrootdirs",
        "--passwd-entry",
        "--preserve-fds",
        "--timeout",
        "--sdnotify",
        "--personality",
        "--decryption-key",
        "--authfile",
        "--cert-dir",
        "--creds",
    ]
)


def _lines(text: str) -> list[tuple[str, int]]:
    """Logical lines (continuations joined), each with the physical line it starts on."""
    result: list[tuple[str, int]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.replace("\r\n", "\n").split("\n"), 1):
        line = raw.rstrip()
        if not pending:
            start = number
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending += line[:-1] + f" \x00{number + 1}\x00 "
            continue
        result.append((pending + line, start))
        pending = ""
    if pending:
        result.append((pending, start))
    return result


def _tokens(line: str, start: int, file: str) -> list[Text]:
    """Words and separators of one logical line, each with its physical line."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words: list[Text] = []
    current = start
    try:
        for word in lexer:
            marker = re.fullmatch(r"\x00(\d+)\x00", word)
            if marker:
                current = int(marker.group(1))
                continue
            if "\x00" in word:
                word = re.sub(r" ?\x00\d+\x00 ?", " ", word)
            words.append(Text(word, file, current))
    except ValueError:  # an unclosed quote: fall back to whitespace
        words = [Text(w, file, current) for w in line.split() if "\x00" not in w]
    return words


def _commands(words: list[Text]) -> list[list[Text]]:
    commands: list[list[Text]] = [[]]
    for word in words:
        if word in _SEPARATORS:
            commands.append([])
        else:
            commands[-1].append(word)
    return [c for c in commands if c]


def _run_args(command: list[Text]) -> tuple[str, list[Text]] | None:
    """(runner, the words after ``run``) if ``command`` is a ``docker run``."""
    i = 0
    while i < len(command):
        word = command[i]
        base = os.path.basename(word)
        if word.startswith("@"):  # a Makefile's silent command
            word = word.derive(word[1:])
            base = os.path.basename(word)
            if base in _RUNNERS:
                break
        if _ASSIGNMENT.match(word) or base in _PREFIX_WORDS or word.startswith("-"):
            if base in ("sudo", "doas"):
                i += 1
                while i < len(command) and command[i].startswith("-"):
                    i += 2 if command[i] in _SUDO_VALUED else 1
                continue
            i += 1
            continue
        break
    if i >= len(command):
        return None
    runner = os.path.basename(command[i].lstrip("@"))
    if runner not in _RUNNERS:
        return None
    rest = command[i + 1 :]
    if rest[:1] == ["run"]:
        return runner, rest[1:]
    if rest[:2] in (["container", "run"], ["container", "create"]) or rest[:1] == ["create"]:
        return runner, rest[2:] if rest[0] == "container" else rest[1:]
    return None


def _flags(words: list[Text], service: Service, cwd: Path) -> int:
    """Reads the options into ``service``; returns the index of the image."""
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("-") or word == "-":
            return i
        if word == "--":
            return i + 1
        flag, eq, inline = word.partition("=")
        value: Text | None = word.derive(inline) if eq else None
        if not eq and len(flag) > 2 and flag[1] != "-":
            # combined short flags: -it, -itd, -dit, -itv /x:/y
            last = "-" + flag[-1]
            if last in _VALUED:
                flag = last
                value = words[i + 1] if i + 1 < len(words) else None
                i += 1
            _apply(service, flag, value, word, cwd)
            i += 1
            continue
        if value is None and flag in _VALUED:
            value = words[i + 1] if i + 1 < len(words) else word.derive("")
            i += 1
        _apply(service, flag, value, word, cwd)
        i += 1
    return i


def _pwd(text: Text, cwd: Path) -> Text:
    """``$(pwd)``, ``${PWD}``, ``$PWD`` and backquoted pwd: the directory the line runs in."""
    value = re.sub(r"\$\(\s*pwd\s*\)|\$\{PWD\}|\$PWD\b|`pwd`|%cd%", str(cwd), str(text))
    unresolved = "$" in value or "`" in value
    return text.derive(value, unresolved=unresolved)


def _apply(service: Service, flag: str, value: Text | None, word: Text, cwd: Path) -> None:
    if flag in ("-v", "--volume") and value:
        service.mounts.append(parse_short_volume(_pwd(value, cwd), cwd))
    elif flag == "--mount" and value:
        fields: dict[str, str] = {}
        for part in value.split(","):
            key, _, val = part.partition("=")
            fields[key.strip()] = val.strip()
        kind = fields.get("type", "volume")
        source = fields.get("source", fields.get("src", ""))
        target = fields.get("target", fields.get("destination", fields.get("dst", "")))
        readonly = "readonly" in fields or "ro" in fields
        readonly = readonly and fields.get("readonly", fields.get("ro", "true")) != "false"
        if kind == "bind":
            resolved = _pwd(value.derive(source), cwd)
            if str(resolved).startswith("."):
                resolved = resolved.derive(os.path.normpath(str(cwd / str(resolved))))
            service.mounts.append(Mount("bind", value.derive(target), resolved, readonly))
        elif kind == "tmpfs":
            service.mounts.append(Mount("tmpfs", value.derive(target)))
        elif kind == "volume":
            service.mounts.append(
                Mount("volume", value.derive(target), value.derive(source), readonly)
                if source
                else Mount("anonymous", value.derive(target), None, readonly)
            )
    elif flag == "--tmpfs" and value:
        service.mounts.append(Mount("tmpfs", value.derive(value.split(":")[0])))
    elif flag in ("-e", "--env") and value:
        name, eq, env_value = value.partition("=")
        if eq:
            service.env[name] = value.derive(env_value)
    elif flag in ("-u", "--user") and value is not None:
        service.user = value
    elif flag in ("-w", "--workdir") and value:
        service.working_dir = value
    elif flag == "--shm-size":
        service.shm = value or word
    elif flag == "--ipc":
        service.ipc_host = value == "host"
    elif flag == "--privileged" and (value is None or value == "true"):
        service.privileged = word
    elif flag == "--gpus" and value:
        service.gpu = value.derive(f"--gpus {value}")
    elif flag == "--runtime" and value and "nvidia" in value:
        service.gpu = value.derive(f"--runtime {value}")
    elif flag == "--device" and value and "nvidia" in value:
        service.gpu = value.derive(f"--device {value}")
    elif flag == "--rm":
        service.removed_on_exit = True
    elif flag == "--entrypoint" and value:
        service.entrypoint = [value]


def find_docker_runs(text: str, file: str) -> list[tuple[str, list[Text]]]:
    """Every ``docker run`` in ``text``: (runner, words after ``run``)."""
    found = []
    for line, start in _lines(text):
        for command in _commands(_tokens(line, start, file)):
            run = _run_args(command)
            if run is not None:
                found.append(run)
    return found


def docker_run_services(text: str, file: str, cwd: Path | None = None) -> list[Service]:
    """A service per ``docker run`` in ``text``.

    Raises:
        UsageError: no ``docker run`` in the text, or one without an image.
    """
    cwd = cwd or Path.cwd()
    runs = find_docker_runs(text, file)
    if not runs:
        raise UsageError(
            f"No `docker run` found in {file}.",
            hint='Give the whole line: --docker-run "docker run [OPTIONS] IMAGE [COMMAND]".',
        )
    services = []
    for number, (runner, words) in enumerate(runs, 1):
        where = words[0] if words else Text("run", file, 1)
        name = "docker-run" if len(runs) == 1 else f"docker-run-{number}"
        service = Service(name=name, where=where, base_dir=cwd)
        if runner == "nvidia-docker":
            service.gpu = where.derive("nvidia-docker")
        index = _flags(words, service, cwd)
        if index >= len(words):
            raise UsageError(
                f"{file} line {where.line}: the `{runner} run` has no image.",
                hint="Check the line: options that take a value need one.",
            )
        service.image = words[index]
        service.command = list(words[index + 1 :])
        services.append(service)
    if file != "docker-run":  # a script in its project: its $(pwd) is the script's folder
        here = cwd.resolve()
        checkout = any(
            Path(str(m.source)).exists()
            for s in services
            for m in s.mounts
            if m.kind == "bind" and m.source and here in Path(str(m.source)).parents
        )
        for service in services:
            service.checkout = checkout
    return services
