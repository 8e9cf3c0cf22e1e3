"""The on-disk checkpoint format, and how to tell a whole checkpoint from debris.

    <dir>/step-0000000042/            one finished checkpoint per step
        manifest.json                 written last: format, step, time, metrics, size + checksum
        model.pt ...                  of every file. No manifest, no checkpoint.
                                      Checksums are crc32 by default (integrity against torn
                                      writes and bit rot at 3+ GB/s; sha256 on request).
    <dir>/.tmp-step-0000000042-<token>/  a save in progress (or killed mid-way)
    <dir>/.lock-<token>               held (fcntl) by the writer of everything named <token>:
                                      its liveness, valid across containers (see _locks.py)
    <dir>/.trash-<token>-step-.../    a deletion in progress (renamed first, then removed)
    <dir>/.replaced-<token>-step-.../ an older copy of a step being saved again

A manifest is read in one place, ``Manifest.parse``, into a typed record (or a ``ValueError``
saying why it is not one): the library (``CheckpointManager``, ``latest_valid``), the mirror
and ``cargohold run``'s host-side lookup (``cargohold.resume``, which reads a store that a
container wrote and so treats it as hostile) all judge a manifest by the same rules. Hence this
module imports nothing from cargohold and nothing outside the standard library.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

__all__ = [
    "CHECKSUMS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST",
    "MAX_MANIFEST",
    "FileEntry",
    "Manifest",
    "check_folder",
    "latest_valid",
    "normal_name",
    "read_manifest",
]

FORMAT_NAME = "cargohold-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST = 16 << 20  # a manifest of a million files is ~100 MB of JSON; ours are far less
STEP_DIR_RE = re.compile(r"^step-(\d{10,})$")
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
REPLACED_PREFIX = ".replaced-"
CHECKSUMS = ("crc32", "sha256")
_CHUNK = 4 * 1024 * 1024
_LARGEST = 2**63 - 1  # steps, sizes and rank counts beyond this are a forgery, not a number


def step_dir_name(step: int) -> str:
    return f"step-{step:010d}"


def checksum_file(path: Path | str, algorithm: str) -> str:
    """The file's checksum as hex: ``crc32`` (zlib) or ``sha256``."""
    if algorithm not in CHECKSUMS:
        raise ValueError(f"unknown checksum {algorithm!r}")
    digest = hashlib.sha256() if algorithm == "sha256" else None
    crc = 0
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        while True:
            n = f.readinto(buffer)
            if not n:
                break
            if digest is not None:
                digest.update(view[:n])
            else:
                crc = zlib.crc32(view[:n], crc)
    return digest.hexdigest() if digest is not None else f"{crc:08x}"


def normal_name(name: object) -> str:
    """A checkpoint file's name as a plain relative POSIX path inside its folder.

    ``a//b`` and ``./a`` are normalised to ``a/b`` and ``a``; what would leave the folder or
    take the manifest's place is refused.

    Raises:
        ValueError: not a string, empty, absolute, with ``..`` or a NUL byte, or the manifest.
    """
    if not isinstance(name, str):
        raise ValueError(f"a file name must be a string, not {_kind(name)}")
    if "\0" in name:
        raise ValueError(f"file name {_show(name)} has a NUL byte")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise ValueError(f"file name {_show(name)} is absolute")
    parts = [p for p in path.parts if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"file name {_show(name)} climbs out of the folder ('..')")
    if not parts:
        raise ValueError(f"file name {_show(name)} names no file")
    normal = "/".join(parts)
    if normal == MANIFEST:
        raise ValueError(f"file name {_show(name)} is the manifest's own")
    return normal


def _show(value: object) -> str:
    """A value for an error message, never longer than a line."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**30 else "a huge number"
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "null"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


def _count(value: object, what: str) -> int:
    """A JSON integer >= 0 that fits 64 bits, as every step and size does (not a boolean)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what} is {_show(value)}, not a non-negative integer")
    if value > _LARGEST:
        raise ValueError(f"{what} is {_show(value)}, larger than any can be")
    return value


def _number(value: object, what: str) -> float:
    """A JSON number (or boolean, as old writers passed them) as a float."""
    if not isinstance(value, (int, float)):
        raise ValueError(f"{what} is {_kind(value)}, not a number")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{what} is too large a number") from None


def _lenient_number(value: object) -> float | None:
    """A metric as a float: a JSON number, or text that reads as one; else None."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return None if math.isnan(number) else number
    try:
        return _number(value, "a metric")
    except ValueError:
        return None


@dataclass(frozen=True)
class FileEntry:
    """What the manifest promises about one file: its size and one checksum."""

    size: int
    algorithm: str  # one of CHECKSUMS
    digest: str

    @classmethod
    def from_json(cls, name: str, value: object) -> FileEntry:
        """Raises: ValueError."""
        if not isinstance(value, dict):
            raise ValueError(f"the manifest's entry for {name} is {_kind(value)}, not an object")
        size = _count(value.get("size"), f"the size of {name}")
        # The first checksum of a known algorithm counts; unknown keys are a newer writer's.
        algorithm = next((a for a in CHECKSUMS if a in value), None)
        if algorithm is None:
            raise ValueError(f"{name} has no checksum in the manifest")
        digest = value[algorithm]
        if not isinstance(digest, str) or not digest:
            raise ValueError(f"the {algorithm} checksum of {name} is {_show(digest)}")
        return cls(size, algorithm, digest)

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, self.algorithm: self.digest}


def _frozen(mapping: Mapping[Any, Any]) -> Mapping[Any, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Manifest:
    """A checkpoint's ``manifest.json``, checked. Build it with ``parse`` or ``from_json``.

    Read tolerantly where that is safe: keys this version does not know are ignored at every
    level (a newer writer may add some), ``created`` and ``metrics`` may be absent, a version
    written as ``1.0`` is version 1. Everything the library relies on is checked: the format's
    name, a version it can read, the step, every file's name (a plain relative name inside the
    folder), size and checksum, and for many ranks that every rank's files are listed, together
    exactly ``files``.
    """

    step: int
    files: Mapping[str, FileEntry]
    created: float = 0.0
    metrics: Mapping[str, float] = field(default_factory=lambda: _frozen({}))
    world_size: int | None = None  # saved by many ranks: how many, and ...
    ranks: Mapping[int, tuple[str, ...]] | None = None  # ... each rank's files
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    @classmethod
    def parse(cls, raw: bytes | str) -> Manifest:
        """The manifest in ``raw`` (the bytes of a ``manifest.json``).

        Raises:
            ValueError: with the reason it is not a checkpoint manifest.
        """
        if len(raw) > MAX_MANIFEST:
            raise ValueError(f"manifest is larger than {MAX_MANIFEST >> 20} MiB")
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            raise ValueError("manifest is not valid JSON") from None
        return cls.from_json(value)

    @classmethod
    def from_json(cls, value: object) -> Manifest:
        """The manifest from its decoded JSON.

        Raises:
            ValueError: with the reason it is not a checkpoint manifest.
        """
        if not isinstance(value, dict):
            raise ValueError(f"manifest is {_kind(value)}, not a JSON object")
        if value.get("format") != FORMAT_NAME:
            raise ValueError("manifest is not a cargohold checkpoint manifest")
        version = _version(value.get("version"))
        step = _count(value.get("step"), "the manifest's step")
        created = _number(value.get("created", 0.0), "the manifest's time")
        raw_metrics = value.get("metrics")
        if raw_metrics is None:
            raw_metrics = {}
        if not isinstance(raw_metrics, dict):
            raise ValueError(f"the manifest's metrics are {_kind(raw_metrics)}, not an object")
        # Metrics are not integrity data: one an old writer stored as text ("0.25") is read as
        # its number, and one that is no number at all is dropped, never the checkpoint.
        metrics = {}
        for key, raw_value in raw_metrics.items():
            number = _lenient_number(raw_value)
            if number is not None:
                metrics[str(key)] = number
        raw_files = value.get("files")
        if not isinstance(raw_files, dict):
            raise ValueError(f"the manifest's file list is {_kind(raw_files)}, not an object")
        files: dict[str, FileEntry] = {}
        for name, entry in raw_files.items():
            if normal_name(name) != name:
                raise ValueError(f"file name {_show(name)} is not in its plain form")
            files[name] = FileEntry.from_json(name, entry)
        world_size, ranks = _ranks(value, files)
        return cls(
            step=step,
            files=_frozen(files),
            created=created,
            metrics=_frozen(metrics),
            world_size=world_size,
            ranks=None if ranks is None else _frozen(ranks),
            format=FORMAT_NAME,
            version=version,
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON table ``parse`` reads back as this manifest."""
        value: dict[str, Any] = {
            "format": self.format,
            "version": self.version,
            "step": self.step,
            "created": self.created,
            "metrics": dict(self.metrics),
            "files": {name: entry.to_json() for name, entry in self.files.items()},
        }
        if self.world_size is not None and self.ranks is not None:
            value["world_size"] = self.world_size
            value["ranks"] = {str(r): list(names) for r, names in self.ranks.items()}
        return value


def _version(value: object) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 1.0 is 1
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"the manifest's format version is {_show(value)}, not a number")
    if value > FORMAT_VERSION:
        raise ValueError(
            f"checkpoint format version {_show(value)} is newer than this cargohold reads "
            f"({FORMAT_VERSION}): upgrade cargohold"
        )
    if value < 1:
        raise ValueError(f"unknown checkpoint format version {_show(value)}")
    return value


def _ranks(
    value: dict[str, Any], files: Mapping[str, FileEntry]
) -> tuple[int | None, dict[int, tuple[str, ...]] | None]:
    """A many-rank manifest's ``world_size`` and ``ranks``: every rank 0..world_size-1 listed,
    their lists together exactly ``files``, no file twice."""
    if "world_size" not in value and "ranks" not in value:
        return None, None
    world = _count(value.get("world_size"), "the manifest's world size")
    raw = value.get("ranks")
    if world < 1:
        raise ValueError("the manifest's world size is 0")
    if not isinstance(raw, dict):
        raise ValueError(f"the manifest's rank lists are {_kind(raw)}, not an object")
    if world > len(raw) or set(raw) != {str(r) for r in range(world)}:
        raise ValueError(f"the manifest does not list the files of every one of {world} ranks")
    ranks: dict[int, tuple[str, ...]] = {}
    listed: set[str] = set()
    for key, names in raw.items():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"the manifest's file list of rank {key} is not a list of names")
        if listed.intersection(names) or len(set(names)) != len(names):
            raise ValueError("the manifest lists a file under two ranks")
        listed.update(names)
        ranks[int(key)] = tuple(names)
    if listed != set(files):
        raise ValueError("the manifest's rank lists and its files differ")
    return world, ranks


def read_manifest(folder: Path) -> Manifest:
    """Read and check a checkpoint folder's manifest.

    Only a regular file of at most ``MAX_MANIFEST`` bytes is read: a FIFO or a device in its
    place is refused, never opened for a read that would not end.

    Raises:
        ValueError: with the reason the folder is not a checkpoint.
    """
    try:
        fd = os.open(folder / MANIFEST, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ValueError("no manifest (the save never finished)") from None
    except OSError as exc:
        raise ValueError(f"manifest unreadable: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("manifest is not a regular file")
        with open(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_MANIFEST + 1)
    except OSError as exc:
        raise ValueError(f"manifest unreadable: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return Manifest.parse(raw)


def check_folder(folder: Path, *, verify: bool) -> Manifest:
    """The manifest of a whole checkpoint.

    Args:
        folder: a ``step-…`` folder.
        verify: also recompute every file's checksum (else sizes only).

    Raises:
        ValueError: with the reason the checkpoint cannot be trusted.
    """
    manifest = read_manifest(folder)
    named = STEP_DIR_RE.fullmatch(folder.name)
    if named is not None and int(named.group(1)) != manifest.step:
        # A step-3 folder claiming step 1000 would restore as 1000 and confuse retention.
        raise ValueError(f"the manifest says step {manifest.step}, the folder {folder.name}")
    for name, entry in manifest.files.items():
        path = folder / name
        try:
            found = path.stat()
        except OSError:
            raise ValueError(f"{name} is missing") from None
        if not stat.S_ISREG(found.st_mode):
            raise ValueError(f"{name} is not a regular file")
        if found.st_size != entry.size:
            raise ValueError(f"{name} has {found.st_size} bytes, the manifest says {entry.size}")
        if verify:
            if entry.algorithm not in CHECKSUMS:  # pragma: no cover - FileEntry checks it
                raise ValueError(f"{name} has no checksum in the manifest")
            try:
                actual = checksum_file(path, entry.algorithm)
            except OSError as exc:
                raise ValueError(f"{name} cannot be read: {exc.strerror or exc}") from None
            if actual != entry.digest:
                raise ValueError(f"{name} does not match its {entry.algorithm} checksum (corrupt)")
    return manifest


def step_folders(directory: Path) -> list[tuple[int, Path]]:
    """Every ``step-…`` folder, newest step first (whole or not)."""
    found = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = STEP_DIR_RE.match(entry.name)
        if match and entry.is_dir(follow_symlinks=False):
            found.append((int(match.group(1)), Path(entry.path)))
    found.sort(reverse=True)
    return found


def latest_valid(directory: Path | str, *, verify: bool = True) -> Path | None:
    """The newest checkpoint folder whose manifest and files hold, or None."""
    for _, folder in step_folders(Path(directory)):
        try:
            check_folder(folder, verify=verify)
        except ValueError:
            continue
        return folder
    return None


if __name__ == "__main__":  # python -m cargohold.checkpoint._format DIR: for a shell script
    import sys

    found = latest_valid(sys.argv[1])
    print(found.name if found else "")  # noqa: T201 - the command's answer
