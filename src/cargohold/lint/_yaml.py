"""YAML to plain data whose every string remembers its line, with merge keys and interpolation.

PyYAML's node API keeps line numbers but leaves ``<<`` merge keys to the constructor; this
loader walks the nodes itself so that a service inheriting ``<<: *base`` gets the base's
values *with the base's lines*. Compose's ``!reset`` and ``!override`` tags come out as
:data:`RESET` and :class:`Override`, for the merge of override files and ``extends`` to honour
(and :func:`settle` to remove). Values are interpolated the way Compose does it (``$$``,
``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?err}``, ``${VAR:+alt}``, ``$VAR``);
a variable with no value and no default leaves the value marked ``unresolved``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cargohold.errors import UsageError
from cargohold.lint._model import Text

__all__ = [
    "RESET",
    "LDict",
    "LList",
    "Override",
    "Reset",
    "interpolate",
    "load_yaml",
    "read_env_file",
    "settle",
]

_MERGE = "tag:yaml.org,2002:merge"
_NULL = "tag:yaml.org,2002:null"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class LDict(dict[str, Any]):
    """A mapping with the line it starts on."""

    line: int = 0
    file: str = ""
    key_lines: dict[str, int]


class LList(list[Any]):
    """A sequence with the line it starts on."""

    line: int = 0
    file: str = ""


class Reset:
    """``!reset``: the key is dropped, also from what this file overrides or extends."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "!reset"


RESET = Reset()


class Override:
    """``!override VALUE``: replaces what it overrides instead of merging with it."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"!override {self.value!r}"


def settle(value: Any) -> Any:
    """``value`` once merging is done: ``!reset`` keys and items gone, ``!override`` unwrapped
    (copies; lines kept)."""
    if isinstance(value, Override):
        return settle(value.value)
    if isinstance(value, LDict):
        result = LDict()
        result.line, result.file = value.line, value.file
        result.key_lines = dict(getattr(value, "key_lines", {}))
        result.update({k: settle(v) for k, v in value.items() if not isinstance(v, Reset)})
        return result
    if isinstance(value, dict):
        return {k: settle(v) for k, v in value.items() if not isinstance(v, Reset)}
    if isinstance(value, LList):
        items = LList(settle(v) for v in value if not isinstance(v, Reset))
        items.line, items.file = value.line, value.file
        return items
    if isinstance(value, list):
        return [settle(v) for v in value if not isinstance(v, Reset)]
    return value


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


_BUDGET = 200_000  # values one file may expand to: aliases can multiply a small file


def _convert(
    node: yaml.Node,
    file: str,
    env: Mapping[str, str],
    depth: int = 0,
    spent: list[int] | None = None,
) -> Any:
    spent = [0] if spent is None else spent
    spent[0] += 1
    if spent[0] > _BUDGET:
        raise UsageError(
            f"{file} expands to more than {_BUDGET} values through its aliases.",
            hint="Is it a compose file? (a YAML alias bomb would look like this)",
        )
    if depth > 64:
        raise UsageError(f"{file} nests deeper than 64 levels.", hint="Is it a compose file?")
    if node.tag == "!reset":
        return RESET
    if node.tag == "!override":
        return Override(_node(node, file, env, depth, spent))
    return _node(node, file, env, depth, spent)


def _node(node: yaml.Node, file: str, env: Mapping[str, str], depth: int, spent: list[int]) -> Any:
    if isinstance(node, yaml.ScalarNode):
        if node.tag == _NULL:
            return None
        text = Text(str(node.value), file, _line(node))
        if node.end_mark.line > node.start_mark.line and node.start_mark.buffer:
            raw = node.start_mark.buffer[node.start_mark.pointer : node.end_mark.pointer]
            text.rows = tuple(raw.split("\n"))
        return interpolate(text, env)
    if isinstance(node, yaml.SequenceNode):
        items = LList(_convert(n, file, env, depth + 1, spent) for n in node.value)
        items.line, items.file = _line(node), file
        return items
    if isinstance(node, yaml.MappingNode):
        result = LDict()
        result.line, result.file, result.key_lines = _line(node), file, {}
        merged: list[dict[str, Any]] = []
        for key, value in node.value:
            if key.tag == _MERGE:
                sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
                for source in sources:
                    converted = _convert(source, file, env, depth + 1, spent)
                    if isinstance(converted, dict):
                        merged.append(converted)
                continue
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else ""
            result[name] = _convert(value, file, env, depth + 1, spent)
            result.key_lines[name] = _line(key)
        # Explicit keys win over merged ones; of several merged maps, the first wins. Compose
        # drops a `!reset` key before it merges `<<`, so the merged value comes back.
        for source in merged:
            for name, value in source.items():
                if name not in result or isinstance(result[name], Reset):
                    result[name] = value
        return result
    return None


def load_yaml(path: Path, env: Mapping[str, str]) -> Any:
    """The file's data, every string a :class:`Text`.

    Raises:
        UsageError: unreadable, too big, or not YAML.
    """
    try:
        if path.stat().st_size > 4 << 20:
            raise UsageError(f"{path} is over 4 MiB: not a compose file.", hint="Check the path.")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text.", hint="Lint compose files.") from None
    except OSError as exc:
        raise UsageError(
            f"Cannot read {path}: {exc.strerror or exc}.", hint="Check the path."
        ) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise UsageError(
            f"{path} is not valid YAML: {exc}.".replace("\n", " "),
            hint="Fix the syntax at that line.",
        ) from None
    except RecursionError:
        raise UsageError(f"{path} nests too deeply.", hint="Is it a compose file?") from None
    return None if root is None else _convert(root, str(path), env)


def _lookup(name: str, env: Mapping[str, str]) -> str | None:
    return env.get(name)


def _substitute(text: str, env: Mapping[str, str]) -> tuple[str, bool]:
    """``text`` with its variables replaced; the flag says whether one had no value."""
    out: list[str] = []
    unresolved = False
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 >= len(text):
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
            continue
        if nxt == "{":
            depth, j = 1, i + 2
            while j < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            if depth:  # unclosed: Compose refuses it; keep it as written and unknown
                out.append(text[i:])
                return "".join(out), True
            body = text[i + 2 : j - 1]
            value, missing = _expand(body, env)
            out.append(value)
            unresolved |= missing
            i = j
            continue
        match = _NAME.match(text, i + 1)
        if match:
            found = _lookup(match.group(), env)
            if found is None:
                out.append(text[i : match.end()])
                unresolved = True
            else:
                out.append(found)
            i = match.end()
            continue
        out.append(char)
        i += 1
    return "".join(out), unresolved


def _expand(body: str, env: Mapping[str, str]) -> tuple[str, bool]:
    match = _NAME.match(body)
    if not match:
        return "${" + body + "}", True
    name, rest = match.group(), body[match.end() :]
    value = _lookup(name, env)
    for op in (":-", "-", ":?", "?", ":+", "+"):
        if rest.startswith(op):
            arg = rest[len(op) :]
            if value is None or (op.startswith(":") and value == ""):
                if op in (":-", "-"):
                    return _substitute(arg, env)
                return ("${" + body + "}", True) if "?" in op else ("", False)
            return _substitute(arg, env) if "+" in op else (value, False)
    if rest:
        return "${" + body + "}", True
    if value is None:
        return "${" + name + "}", True
    return value, False


def interpolate(text: Text, env: Mapping[str, str]) -> Text:
    """``text`` with Compose's variable syntax resolved against ``env``."""
    if "$" not in text:
        return text
    value, unresolved = _substitute(str(text), env)
    return text.derive(value, unresolved=unresolved or text.unresolved)


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a ``.env``-style file; a missing or unreadable file is empty."""
    values: dict[str, str] = {}
    try:
        if not path.is_file() or path.stat().st_size > 1 << 20:
            return values
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return values
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, eq, value = line.partition("=")
        if not eq or not _NAME.fullmatch(key.strip()):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key.strip()] = value
    return values
