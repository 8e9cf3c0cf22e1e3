"""The one model every rule reads: services with their mounts, command, environment and user.

Compose files and ``docker run`` lines are both reduced to it, so a rule is written once. Every
string that came from an input is a :class:`Text`: a ``str`` that remembers the file and line it
was written on, through merge keys, ``extends``, override files and ``include`` -- that is how a
finding on a resolved model still points at the source line a person can edit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

MountKind = Literal["bind", "volume", "tmpfs", "anonymous"]


class Text(str):
    """A string from an input, with where it was written.

    ``unresolved`` is set when it still holds a ``${VAR}`` that had no value and no default:
    such a value is unknown, and rules never draw conclusions from it.
    """

    file: str
    line: int
    unresolved: bool
    rows: tuple[str, ...]  # the source lines of a value written over several lines

    def __new__(cls, value: str, file: str = "", line: int = 0, unresolved: bool = False) -> Text:
        self = super().__new__(cls, value)
        self.file, self.line, self.unresolved, self.rows = file, line, unresolved, ()
        return self

    def derive(self, value: str, *, unresolved: bool | None = None) -> Text:
        """A new value written at the same place."""
        text = Text(
            value, self.file, self.line, self.unresolved if unresolved is None else unresolved
        )
        text.rows = self.rows
        return text

    def split_into(self, words: list[str]) -> list[Text]:
        """``words`` (split from this value), each at the line it is written on."""
        if not self.rows:
            return [self.derive(w) for w in words]
        result, row = [], 0
        for word in words:
            found = next((r for r in range(row, len(self.rows)) if word in self.rows[r]), None)
            text = Text(word, self.file, self.line + (row if found is None else found))
            text.unresolved = self.unresolved
            if found is None:  # it spans lines (a quoted `sh -c` string): keep them
                text.rows = self.rows[row:]
            row = row if found is None else found
            result.append(text)
        return result


def at(value: object, file: str = "", line: int = 0) -> Text:
    """``value`` as a :class:`Text`, keeping its place if it already has one."""
    if isinstance(value, Text):
        return value
    return Text("" if value is None else str(value), file, line)


@dataclass(frozen=True)
class Mount:
    """One mount of a service, as Compose would create it."""

    kind: MountKind
    target: Text
    source: Text | None = None
    readonly: bool = False

    @property
    def path(self) -> PurePosixPath:
        return PurePosixPath(self.target)

    def holds(self, path: PurePosixPath) -> bool:
        """Whether ``path`` in the container lies on this mount."""
        return path == self.path or self.path in path.parents


@dataclass(frozen=True)
class ImageFacts:
    """What is known about the image a service runs: from a local Dockerfile, or well-known."""

    user: str | None = None  # None: unknown
    workdir: str | None = None
    command: tuple[Text, ...] = ()
    env: tuple[tuple[str, Text], ...] = ()
    volumes: tuple[str, ...] = ()
    source: str = ""  # where the facts come from, for evidence


@dataclass
class Service:
    """One container to be run: a compose service or a ``docker run`` line."""

    name: str
    where: Text  # the service's key (or the start of the docker run line)
    image: Text | None = None
    build: ImageFacts | None = None  # from a local Dockerfile, if there is one
    entrypoint: list[Text] = field(default_factory=list)
    command: list[Text] = field(default_factory=list)
    env: dict[str, Text] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    user: Text | None = None
    working_dir: Text | None = None
    shm: Text | None = None
    ipc_host: bool = False
    privileged: Text | None = None
    gpu: Text | None = None  # the evidence of a GPU, where it is written
    removed_on_exit: bool = False  # docker run --rm
    base_dir: Path = Path(".")
    # Whether the folder the input sits in is the project it was written for: some relative
    # path it names (a bind source, a build context, an env file) exists here. Only then is a
    # missing bind source evidence of anything.
    checkout: bool = False
