"""Guard against the classic loss: ML data written into a container's own writable layer.

``scan`` asks the engine what a container changed outside its mounts (the ``changes``
endpoint: the engine walks the layer itself), sizes each file (directly from the overlay's
upper folder when it is readable here, else through the archive endpoint), and ranks them:
checkpoints and weights first, then datasets, then everything else, logs last. ``rescue`` copies
the files worth keeping out through the archive endpoint -- which works on stopped containers --
and verifies each copy's sha256. ``remove_container`` refuses while unsaved ML data is inside;
``watch`` follows the engine's events and rescues containers that stop with ML data inside.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cargohold.archive import (
    CHUNK,
    Entry,
    FolderReader,
    Opener,
    Progress,
    TarReader,
    TreeWriter,
    no_progress,
)
from cargohold.engine import ContainerInfo, Engine
from cargohold.errors import ChecksumMismatch, ContainerNotFound, EngineError, UsageError
from cargohold.volumes import ACCESS_ENV, check_volume_name, engine_is_local, open_volume

__all__ = [
    "AtRisk",
    "ContainerScan",
    "Rescue",
    "RescueTarget",
    "classify",
    "default_rescue_dir",
    "remove_container",
    "rescue_container",
    "scan_container",
    "scan_containers",
    "watch",
]

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = {
    ".pt",
    ".pth",
    ".ckpt",
    ".safetensors",
    ".h5",
    ".hdf5",
    ".keras",
    ".onnx",
    ".npz",
    ".pkl",
    ".pickle",
    ".joblib",
    ".gguf",
    ".tflite",
    ".msgpack",
}
DATASET_SUFFIXES = {
    ".parquet",
    ".arrow",
    ".tfrecord",
    ".tfrecords",
    ".feather",
    ".lance",
    ".zarr",
    ".npy",
    ".csv",
    ".jsonl",
    ".h5ad",
    ".mds",
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".wav", ".flac"}
LOG_SUFFIXES = {".log", ".out", ".err"}
IMAGE_FOLDER_MIN = 50  # this many images in one folder make it a dataset
# Written by package managers and interpreters, never training output.
_NOISE = re.compile(
    r"(^/(proc|sys|dev|run)/)|(/__pycache__/)|(\.pyc$)|(^/var/(lib/(apt|dpkg)|cache|log/apt)/)"
    r"|(^/root/\.cache/pip/)|(^/etc/)|(^/usr/)|(^/tmp/\.)"
)
RANK = {"checkpoint": 0, "dataset": 1, "other": 2, "log": 3}
WORTH_KEEPING = {"checkpoint", "dataset"}


@dataclass(frozen=True)
class AtRisk:
    path: str
    category: str  # checkpoint | dataset | other | log
    size: int
    reason: str


@dataclass(frozen=True)
class ContainerScan:
    container: str
    id: str
    status: str
    files: list[AtRisk] = field(default_factory=list)

    @property
    def worth_keeping(self) -> list[AtRisk]:
        return [f for f in self.files if f.category in WORTH_KEEPING]

    @property
    def bytes_at_risk(self) -> int:
        return sum(f.size for f in self.worth_keeping)


@dataclass(frozen=True)
class RescueTarget:
    """Where a rescue goes: a host folder, or a volume. A volume is always written
    ``volume:NAME``; a bare name is a folder (relative to here), never guessed to be a volume
    because one of that name happens to exist."""

    folder: Path | None = None
    volume: str | None = None

    @classmethod
    def parse(cls, text: str) -> RescueTarget:
        """``volume:NAME`` or a folder.

        Raises:
            UsageError: an empty destination, or a volume name Docker would refuse.
        """
        if text.startswith("volume:"):
            return cls(volume=check_volume_name(text.removeprefix("volume:")))
        if not text.strip():
            raise UsageError("--to is empty.", hint="Name a host folder, or volume:NAME.")
        return cls(folder=Path(text).expanduser())

    def for_container(self, scan: ContainerScan) -> RescueTarget:
        """A folder per container under a folder (``watch`` rescues many); a volume keeps
        each container's files under its name already."""
        if self.folder is None:
            return self
        return RescueTarget(folder=self.folder / f"{scan.container}-{scan.id[:12]}")


@dataclass(frozen=True)
class Rescue:
    container: str
    destination: str
    files: int
    bytes: int


def classify(paths: list[str]) -> dict[str, tuple[str, str]]:
    """Category and reason for each changed file path (absolute, in the container)."""
    folders_with_config = {
        str(PurePosixPath(p).parent) for p in paths if PurePosixPath(p).name == "config.json"
    }
    images_per_folder: dict[str, int] = {}
    for p in paths:
        if PurePosixPath(p).suffix.lower() in IMAGE_SUFFIXES:
            parent = str(PurePosixPath(p).parent)
            images_per_folder[parent] = images_per_folder.get(parent, 0) + 1
    result: dict[str, tuple[str, str]] = {}
    for p in paths:
        pure = PurePosixPath(p)
        suffix = pure.suffix.lower()
        parts = pure.parts
        if any(re.match(r"^checkpoint[-_]?\d+$", part) for part in parts[:-1]):
            result[p] = ("checkpoint", "inside a checkpoint-* folder")
        elif suffix in WEIGHT_SUFFIXES:
            result[p] = ("checkpoint", f"model weights or checkpoint ({suffix})")
        elif suffix == ".bin" and str(pure.parent) in folders_with_config:
            result[p] = ("checkpoint", "weights (.bin beside a config.json)")
        elif suffix in DATASET_SUFFIXES:
            result[p] = ("dataset", f"dataset file ({suffix})")
        elif (
            suffix in IMAGE_SUFFIXES
            and images_per_folder.get(str(pure.parent), 0) >= IMAGE_FOLDER_MIN
        ):
            result[p] = (
                "dataset",
                f"one of {images_per_folder[str(pure.parent)]} images in {pure.parent}",
            )
        elif suffix in LOG_SUFFIXES or "tfevents" in pure.name or "/logs/" in p:
            result[p] = ("log", "log")
        else:
            result[p] = ("other", "written to the container's layer")
    return result


def _upper_dir(info: ContainerInfo) -> str | None:
    """The overlay's upper folder when this process can read it; else None (go through the
    engine). ``CARGOHOLD_VOLUME_ACCESS=archive`` forces the engine path here too."""
    if os.environ.get(ACCESS_ENV) == "archive" or not engine_is_local():
        return None
    upper = info.upper_dir
    if upper and os.access(upper, os.R_OK | os.X_OK):
        return upper
    return None


def scan_container(engine: Engine, name: str) -> ContainerScan:
    """What a container wrote to its own layer, ML files first.

    Raises:
        EngineError: no such container.
    """
    info = engine.inspect_container(name)
    changes = engine.container_changes(name)
    upper = _upper_dir(info)
    files: list[tuple[str, int]] = []
    for path in changes:
        if _NOISE.search(path):
            continue
        if upper is not None:
            try:
                st = os.lstat(upper + path)
            except OSError:
                continue
            if not _is_regular(st.st_mode):
                continue
            files.append((path, st.st_size))
        else:
            files.append((path, -1))
    if upper is None:
        files = _sizes_through_archive(engine, name, [p for p, _ in files])
    categories = classify([p for p, _ in files])
    at_risk = [AtRisk(p, categories[p][0], size, categories[p][1]) for p, size in files]
    at_risk.sort(key=lambda f: (RANK[f.category], -f.size, f.path))
    return ContainerScan(info.name, info.id, info.state, at_risk)


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def _sizes_through_archive(engine: Engine, name: str, paths: list[str]) -> list[tuple[str, int]]:
    """Without access to the layer's folder: one archive of the changed top folders, read for
    its headers (file data is skipped, not stored)."""
    wanted = set(paths)
    tops = sorted(
        {"/" + PurePosixPath(p).parts[1] for p in paths if len(PurePosixPath(p).parts) > 1}
    )
    found: list[tuple[str, int]] = []
    for top in tops:
        for entry, _ in _archive_entries(engine, name, top):
            full = f"{top}/{entry.path}" if entry.path else top
            if entry.kind == "file" and full in wanted:
                found.append((full, entry.size))
    return found


def _archive_entries(engine: Engine, name: str, path: str) -> TarReader:
    """The entries under ``path`` in a container, relative to it (read from the engine's tar
    stream, never trusted: the reader judges every member name)."""
    return TarReader(engine.container_archive(name, path), strip=1)


def scan_containers(engine: Engine, names: list[str] | None = None) -> list[ContainerScan]:
    """Scan the named containers, or every container (running or stopped)."""
    targets = names if names else engine.container_names()
    return [scan_container(engine, n) for n in targets]


def default_rescue_dir(scan: ContainerScan) -> Path:
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data) / "cargohold" / "rescued" / f"{scan.container}-{scan.id[:12]}"


class _Hashing:
    """Wraps an opener so that the bytes read through it are hashed."""

    def __init__(self, opener: Opener) -> None:
        self._opener = opener
        self.digest = hashlib.sha256()

    def __call__(self) -> Any:
        stream = self._opener()
        hasher = self.digest

        class _Reader:
            def __enter__(self) -> _Reader:
                return self

            def __exit__(self, *exc: object) -> None:
                stream.close()

            def read(self, size: int = -1) -> bytes:
                data = stream.read(size)
                hasher.update(data)
                return data

        return _Reader()


def rescue_container(
    engine: Engine,
    name: str,
    *,
    to: RescueTarget | None = None,
    everything: bool = False,
    progress: Progress = no_progress,
) -> Rescue:
    """Copy a container's at-risk files out (paths kept) and verify every copy's sha256.

    Args:
        to: a host folder or a volume; default a per-container folder under the user's data
            folder.
        everything: every file of the layer, not only ML data.

    Raises:
        ChecksumMismatch: a copy differs from what was read.
    """
    scan = scan_container(engine, name)
    chosen = scan.files if everything else scan.worth_keeping
    if not chosen:
        return Rescue(scan.container, "", 0, 0)
    volume = to.volume if to is not None else None
    staging = to.folder if to is not None and to.folder is not None else default_rescue_dir(scan)
    if volume is not None:
        import tempfile

        staging = Path(tempfile.mkdtemp(prefix="cargohold-rescue-"))
    total = count = 0
    # The scan sized every file a moment ago: the copy's length is known.
    progress.expect(files=len(chosen), nbytes=sum(f.size for f in chosen), exact=True)
    writer = TreeWriter(staging, progress=progress)
    hashes: dict[str, str] = {}
    for item in chosen:
        for entry, data in _archive_entries(engine, name, item.path):
            if entry.kind != "file" or data is None:
                continue
            rel = item.path.lstrip("/")
            target = Entry(
                rel, "file", entry.mode, entry.uid, entry.gid, entry.mtime_ns, entry.size
            )
            hashing = _Hashing(data)
            _ensure_parents(staging, rel)
            writer.add(target, hashing)
            hashes[rel] = hashing.digest.hexdigest()
            total += entry.size
            count += 1
    writer.finish()
    for rel, digest in hashes.items():
        if _sha256(staging / rel) != digest:
            raise ChecksumMismatch(
                f"{rel}: the rescued copy differs from the container's file.",
                hint="Run the rescue again; check the disk if it repeats.",
            )
    destination = str(staging)
    if volume is not None:
        if not engine.volume_exists(volume):
            engine.create_volume(volume, {"cargohold.rescued-from": scan.container})
        open_volume(engine, volume).write(FolderReader(staging), scan.container)
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        destination = f"volume {volume}:{scan.container}"
    return Rescue(scan.container, destination, count, total)


def _ensure_parents(root: Path, rel: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def remove_container(
    engine: Engine,
    name: str,
    *,
    force: bool = False,
    rescue: bool = False,
    to: RescueTarget | None = None,
) -> tuple[ContainerScan, Rescue | None]:
    """Remove a container unless its layer holds unsaved ML data.

    Raises:
        UsageError: ML data would be lost (neither ``force`` nor ``rescue``).
    """
    scan = scan_container(engine, name)
    rescued = None
    if scan.worth_keeping and not force:
        if not rescue:
            listing = ", ".join(f"{f.path} ({f.size} B)" for f in scan.worth_keeping[:5])
            more = len(scan.worth_keeping) - 5
            raise UsageError(
                f"Refusing to remove {scan.container}: its own layer holds ML data that "
                f"would be lost: {listing}" + (f" and {more} more" if more > 0 else "") + ".",
                hint=f"`cargohold rescue {scan.container}` copies it out first (or "
                f"`cargohold rm {scan.container} --rescue`); --force removes it anyway.",
            )
        rescued = rescue_container(engine, name, to=to)
    engine.remove_container(name, force=True)
    return scan, rescued


def watch(
    engine: Engine,
    *,
    on_event: Callable[[str], None],
    to: RescueTarget | None = None,
    stop_after: float | None = None,
) -> Iterator[Rescue]:
    """Follow container stops; rescue the ML data of each container that stops with some.

    Containers started with ``--rm`` are deleted by the engine as they stop: they may be gone
    before the rescue starts, and such rescues fail (and are reported).
    """
    deadline = None if stop_after is None else time.monotonic() + stop_after
    for event in engine.container_stops(until=deadline):
        name = event.name or event.id
        try:
            scan = scan_container(engine, event.id)
        except ContainerNotFound as exc:
            on_event(
                f"{name} stopped and is already gone ({exc}); --rm containers cannot be rescued"
            )
            continue
        if not scan.worth_keeping:
            on_event(f"{scan.container} stopped; nothing worth keeping in its layer")
            continue
        destination = to.for_container(scan) if to is not None else None
        try:
            result = rescue_container(engine, event.id, to=destination)
        except EngineError as exc:
            on_event(f"{scan.container}: rescue failed ({exc})")
            continue
        on_event(
            f"{scan.container} stopped with {len(scan.worth_keeping)} ML files in its "
            f"layer: rescued {result.files} files to {result.destination}"
        )
        yield result
