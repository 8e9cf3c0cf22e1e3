"""Facts from a local Dockerfile: the last stage's USER, WORKDIR, ENV, VOLUME, CMD/ENTRYPOINT.

A service built from a local Dockerfile is no longer an unknown image: its working directory
resolves relative output paths, its user decides who owns what it writes, and its CMD is the
workload when the service sets no command.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path, PurePosixPath

from cargohold.lint._images import know
from cargohold.lint._model import ImageFacts, Text

__all__ = ["dockerfile_facts"]


def _instructions(text: str) -> list[tuple[str, str, int]]:
    """(INSTRUCTION, arguments, line) with continuations joined and comments dropped."""
    result: list[tuple[str, str, int]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = (pending + stripped).strip()
        pending = ""
        word, _, rest = whole.partition(" ")
        result.append((word.upper(), rest.strip(), start))
    return result


def _words(args: str, file: str, line: int) -> tuple[Text, ...]:
    if args.startswith("["):
        try:
            parsed = json.loads(args)
            if isinstance(parsed, list):
                return tuple(Text(str(w), file, line) for w in parsed)
        except ValueError:
            pass
    return (Text("/bin/sh", file, line), Text("-c", file, line), Text(args, file, line))


def _env_pairs(args: str) -> list[tuple[str, str]]:
    try:
        words = shlex.split(args)
    except ValueError:
        words = args.split()
    if words and "=" not in words[0]:
        return [(words[0], " ".join(words[1:]))]
    return [tuple(w.split("=", 1)) for w in words if "=" in w]  # type: ignore[misc]


def dockerfile_facts(path: Path) -> ImageFacts | None:
    """What the last stage of the Dockerfile at ``path`` says, or None if it cannot be read."""
    try:
        if not path.is_file() or path.stat().st_size > 1 << 20:
            return None
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    file = str(path)
    stages: dict[str, ImageFacts] = {}
    user: str | None = None
    workdir: str | None = None
    command: tuple[Text, ...] = ()
    entrypoint: tuple[Text, ...] = ()
    env: dict[str, Text] = {}
    volumes: list[str] = []
    source = ""
    alias = ""
    for word, args, line in _instructions(text):
        if word == "FROM":
            if alias:
                stages[alias] = ImageFacts(
                    user, workdir, entrypoint + command, tuple(env.items()), tuple(volumes), source
                )
            parts = args.split()
            base = next((p for p in parts if not p.startswith("--")), "")
            alias = parts[-1].lower() if len(parts) >= 3 and parts[-2].upper() == "AS" else ""
            inherited = stages.get(base.lower())
            known = know(base)
            user = (
                inherited.user
                if inherited
                else (
                    None if known is None else ("root" if known.user != "non-root" else "non-root")
                )
            )
            workdir = inherited.workdir if inherited else (known.workdir if known else None)
            command = inherited.command if inherited else ()
            entrypoint = ()
            env = dict(inherited.env) if inherited else {}
            volumes = list(inherited.volumes) if inherited else []
            source = f"{path.name}: FROM {base}"
            continue
        if word == "USER":
            user = args.split()[0] if args else user
            source = f"{path.name} line {line}: USER {user}"
        elif word == "WORKDIR" and args:
            target = args.strip().strip("\"'")
            # WORKDIR $HOME/app: a build argument lint cannot know makes the folder unknown
            workdir = None if "$" in target else str(PurePosixPath(workdir or "/") / target)
        elif word == "ENV":
            for key, value in _env_pairs(args):
                env[key] = Text(value, file, line)
        elif word == "VOLUME":
            listed = _words(args, file, line) if args.startswith("[") else args.split()
            volumes += [str(v) for v in listed]
        elif word == "CMD":
            command = _words(args, file, line)
        elif word == "ENTRYPOINT":
            entrypoint = _words(args, file, line)
    return ImageFacts(
        user=user,
        workdir=workdir,
        command=entrypoint + command,
        env=tuple(env.items()),
        volumes=tuple(volumes),
        source=source or path.name,
    )
