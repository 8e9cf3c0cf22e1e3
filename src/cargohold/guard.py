"""Guard against the classic loss: ML data written into a container's own writable layer.

``scan`` lists what a container wrote outside its mounts: where the overlay's upper folder is
readable here, by walking it (folder descriptors, links never followed: the same confined walk
as a volume's); else by asking the engine (the ``changes`` endpoint, sizes through the archive
endpoint). It ranks the files: checkpoints and weights first, then datasets, then everything
else, logs last. ``rescue`` copies the files worth keeping out -- from the upper folder, or
through the archive endpoint, one request per top-level folder -- which works on stopped
containers, and verifies each copy's sha256 as soon as it is written (nothing is kept per file
but the scan's own list, so a layer of a million files is rescued in bounded memory).
``remove_container`` refuses while unsaved ML data is inside;
``watch`` follows the engine's events and rescues containers that stop with ML data inside.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import re
import stat
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

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
from cargohold.archive.confined import ConfinedDir, ConfinedReader
from cargohold.engine import ContainerInfo, Engine
from cargohold.errors import (
    ChecksumMismatch,
    ContainerNotFound,
    EngineError,
    TransferError,
    UsageError,
)
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
    "shown",
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


@dataclass(frozen=True, slots=True)
class AtRisk:
    path: str
    category: str  # checkpoint | dataset | other | log
    size: int
    reason: str


def _rank_key(f: AtRisk) -> tuple[int, int, str]:
    """ML files first, then the largest, then by path."""
    return RANK[f.category], -f.size, f.path


def _close_all(files: list[IO[str]]) -> None:
    for f in files:
        f.close()


class _Ranking:
    """Every file of a layer, ranked, in bounded memory: runs of ``RUN`` files are sorted in
    memory and spilled to unnamed temporary files (a JSON line per file), then merged each time
    the ranking is iterated. A layer of a million files costs a few MB of memory here, where a
    sorted list of them cost ~220 bytes a file."""

    RUN = 50_000

    def __init__(self, items: Iterable[AtRisk]) -> None:
        self._runs: list[IO[str]] = []
        self._memory: list[AtRisk] = []
        weakref.finalize(self, _close_all, self._runs)  # the files go with the ranking
        run: list[AtRisk] = []
        for item in items:
            run.append(item)
            if len(run) >= self.RUN:
                self._spill(run)
                run = []
        if self._runs:
            self._spill(run)
        else:
            self._memory = sorted(run, key=_rank_key)

    def _spill(self, run: list[AtRisk]) -> None:
        run.sort(key=_rank_key)
        # open as long as the ranking lives (unnamed: gone with it, or with the process)
        spilled = tempfile.TemporaryFile("w+", encoding="ascii")  # noqa: SIM115
        for f in run:
            spilled.write(json.dumps([f.path, f.category, f.size, f.reason]) + "\n")
        self._runs.append(spilled)

    def __iter__(self) -> Iterator[AtRisk]:
        """The ranking from its start (one iteration at a time: the runs are read in place)."""
        if not self._runs:
            return iter(self._memory)
        return heapq.merge(*(self._read(run) for run in self._runs), key=_rank_key)

    @staticmethod
    def _read(run: IO[str]) -> Iterator[AtRisk]:
        run.seek(0)
        for line in run:
            path, category, size, reason = json.loads(line)
            yield AtRisk(path, category, size, reason)


@dataclass(frozen=True)
class ContainerScan:
    """A layer's files, ranked: all of them, or only the first few (``scan_container``'s
    ``keep``) with the counts of all."""

    container: str
    id: str
    status: str
    files: Iterable[AtRisk] = field(default_factory=list)  # a list, or every file ranked
    count: int = 0  # files in the layer
    keeping: int = 0  # of them worth keeping
    at_risk_bytes: int = 0  # their bytes
    total_bytes: int = 0  # bytes of every file

    @property
    def worth_keeping(self) -> list[AtRisk]:
        """Those listed in ``files`` that are worth keeping (``keeping`` counts them all)."""
        return [f for f in self.files if f.category in WORTH_KEEPING]

    @property
    def bytes_at_risk(self) -> int:
        return self.at_risk_bytes


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


@dataclass
class _Facts:
    """What classifying a path needs to know about the other paths: per folder, so that it is
    gathered in one pass and kept per folder, not per file."""

    folders_with_config: set[str] = field(default_factory=set)
    images_per_folder: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # one string per image folder

    def add(self, path: str) -> None:
        parent, _, name = path.rpartition("/")
        if name == "config.json":
            self.folders_with_config.add(parent or "/")
        if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES:
            parent = parent or "/"
            self.images_per_folder[parent] = self.images_per_folder.get(parent, 0) + 1


_CHECKPOINT_FOLDER = re.compile(r"^checkpoint[-_]?\d+$")


def _category(path: str, facts: _Facts) -> tuple[str, str]:
    pure = PurePosixPath(path)
    suffix = pure.suffix.lower()
    parent = str(pure.parent)
    if any(_CHECKPOINT_FOLDER.match(part) for part in pure.parts[:-1]):
        return "checkpoint", "inside a checkpoint-* folder"
    if suffix in WEIGHT_SUFFIXES:
        return "checkpoint", f"model weights or checkpoint ({suffix})"
    if suffix == ".bin" and parent in facts.folders_with_config:
        return "checkpoint", "weights (.bin beside a config.json)"
    if suffix in DATASET_SUFFIXES:
        return "dataset", f"dataset file ({suffix})"
    images = facts.images_per_folder.get(parent, 0)
    if suffix in IMAGE_SUFFIXES and images >= IMAGE_FOLDER_MIN:
        reason = facts.reasons.get(parent)
        if reason is None:
            reason = facts.reasons[parent] = f"one of {images} images in {parent}"
        return "dataset", reason
    if suffix in LOG_SUFFIXES or "tfevents" in pure.name or "/logs/" in path:
        return "log", "log"
    return "other", "written to the container's layer"


def classify(paths: list[str]) -> dict[str, tuple[str, str]]:
    """Category and reason for each changed file path (absolute, in the container)."""
    facts = _Facts()
    for p in paths:
        facts.add(p)
    return {p: _category(p, facts) for p in paths}


def _upper_dir(info: ContainerInfo) -> str | None:
    """The overlay's upper folder when this process can read it; else None (go through the
    engine). ``CARGOHOLD_VOLUME_ACCESS=archive`` forces the engine path here too."""
    if os.environ.get(ACCESS_ENV) == "archive" or not engine_is_local():
        return None
    upper = info.upper_dir
    if upper and os.access(upper, os.R_OK | os.X_OK):
        return upper
    return None


def scan_container(engine: Engine, name: str, *, keep: int | None = None) -> ContainerScan:
    """What a container wrote to its own layer, ML files first: every file, or the first
    ``keep`` of the ranking (with counts of all) -- a layer of a million files is then scanned
    in bounded memory.

    Raises:
        EngineError: no such container.
    """
    info = engine.inspect_container(name)
    count = keeping = at_risk = total = 0

    def counted() -> Iterator[AtRisk]:
        nonlocal count, keeping, at_risk, total
        for item in _layer(engine, info):
            count += 1
            total += item.size
            if item.category in WORTH_KEEPING:
                keeping += 1
                at_risk += item.size
            yield item

    ranked: Iterable[AtRisk]
    if keep is None:
        ranked = _Ranking(counted())
    elif keep <= 0:  # (nsmallest(0, …) would not even read the layer: only its counts)
        ranked = []
        for _ in counted():
            pass
    else:
        ranked = heapq.nsmallest(keep, counted(), key=_rank_key)
    return ContainerScan(info.name, info.id, info.state, ranked, count, keeping, at_risk, total)


def _layer(engine: Engine, info: ContainerInfo) -> Iterator[AtRisk]:
    """The files of a container's layer, classified, in the order they are found."""
    name = info.id
    upper = _upper_dir(info)
    files: Callable[[], Iterable[tuple[str, int]]]
    if upper is not None:
        # Walked twice (a walk of metadata is cheap): once for the per-folder facts, once
        # for the list -- rather than holding every path twice.
        files = lambda: _layer_files(upper)  # noqa: E731
    else:
        paths = [p for p in engine.container_changes(name) if not _NOISE.search(p)]
        listed = _sizes_through_archive(engine, name, paths)
        files = lambda: listed  # noqa: E731
    facts = _Facts()
    for path, _ in files():
        facts.add(path)
    for path, size in files():
        category, reason = _category(path, facts)
        yield AtRisk(path, category, size, reason)


def shown(path: str) -> str:
    """A path read from a layer, printable: bytes that are not UTF-8 (kept by the walk as
    surrogates) become U+FFFD instead of failing the terminal's encoder."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _layer_files(upper: str) -> Iterator[tuple[str, int]]:
    """(path in the container, size) of every regular file in a layer's upper folder, by a
    confined walk (a link is never followed, whatever the container swaps in meanwhile);
    overlay's whiteouts (device files) and what vanishes are not files."""
    base = ConfinedDir.open(Path(upper), follow=True)
    try:
        for entry, _, st in ConfinedReader(base).walk():
            if entry.kind in ("file", "hardlink") and st is not None:
                path = "/" + entry.path
                if not _NOISE.search(path):
                    yield path, st.st_size
    finally:
        base.close()


def _sizes_through_archive(engine: Engine, name: str, paths: list[str]) -> list[tuple[str, int]]:
    """Without access to the layer's folder: the archives of the changed top folders, read for
    their headers (file data is skipped, not stored)."""
    return [(full, entry.size) for full, entry, _ in _archived_files(engine, name, paths)]


def _archived_files(
    engine: Engine, name: str, paths: Iterable[str]
) -> Iterator[tuple[str, Entry, Opener | None]]:
    """(path in the container, entry, data) of each of ``paths`` that is a file, from one
    archive per top-level folder holding some (not one per file); the data must be read before
    the next item is taken (it is the archive's stream). Names are matched as ``shown`` prints
    them: the engine's list of changes has a name that is not UTF-8 with U+FFFD where the
    archive has the raw bytes; what is yielded is the archive's own name."""
    by_top: dict[str, set[str]] = {}
    for path in paths:
        parts = PurePosixPath(path).parts
        if len(parts) > 1:
            by_top.setdefault(shown("/" + parts[1]), set()).add(shown(path))
    for top in sorted(by_top):
        wanted = by_top.pop(top)
        for entry, data in _archive_entries(engine, name, top):
            full = f"{top}/{entry.path}" if entry.path else top
            if entry.kind == "file" and shown(full) in wanted:
                yield full, entry, data


def _archive_entries(engine: Engine, name: str, path: str) -> TarReader:
    """The entries under ``path`` in a container, relative to it (read from the engine's tar
    stream, never trusted: the reader judges every member name; FIFOs and devices a job left
    are passed over, as the walk of the upper folder passes over them)."""
    return TarReader(engine.container_archive(name, path), strip=1, skip_special=True)


def scan_containers(
    engine: Engine, names: list[str] | None = None, *, keep: int | None = None
) -> list[ContainerScan]:
    """Scan the named containers, or every container (running or stopped)."""
    targets = names if names else engine.container_names()
    return [scan_container(engine, n, keep=keep) for n in targets]


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
    info = engine.inspect_container(name)
    upper = _upper_dir(info)
    # A readable upper folder is walked again for the copy (only the counts are kept); through
    # the engine the layer is listed once -- that list is per file anyway -- and each archive
    # streamed is one of the copy's.
    scan = scan_container(engine, name, keep=0 if upper is not None else None)
    if not (scan.count if everything else scan.keeping):
        return Rescue(scan.container, "", 0, 0)
    volume = to.volume if to is not None else None
    staging = to.folder if to is not None and to.folder is not None else default_rescue_dir(scan)
    if volume is not None:
        import tempfile

        staging = Path(tempfile.mkdtemp(prefix="cargohold-rescue-"))
    total = count = 0
    # The scan sized every file a moment ago: the copy's length is known.
    progress.expect(
        files=scan.count if everything else scan.keeping,
        nbytes=scan.total_bytes if everything else scan.at_risk_bytes,
        exact=True,
    )
    # One file at a time (workers=1: ``add`` returns with the file written), so each copy is
    # checked at once and no digest is kept per file.
    writer = TreeWriter(staging, progress=progress)
    layer = _layer(engine, info) if upper is not None else iter(scan.files)
    chosen = (f for f in layer if everything or f.category in WORTH_KEEPING)
    for entry, data in _chosen_entries(engine, name, upper, chosen):
        hashing = _Hashing(data)
        _ensure_parents(staging, entry.path)
        writer.add(entry, hashing)
        if _sha256(staging / entry.path) != hashing.digest.hexdigest():
            raise ChecksumMismatch(
                f"{entry.path}: the rescued copy differs from the container's file.",
                hint="Run the rescue again; check the disk if it repeats.",
            )
        total += entry.size
        count += 1
    writer.finish()
    destination = str(staging)
    if volume is not None:
        if not engine.volume_exists(volume):
            engine.create_volume(volume, {"cargohold.rescued-from": scan.container})
        open_volume(engine, volume).write(FolderReader(staging), scan.container)
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        destination = f"volume {volume}:{scan.container}"
    return Rescue(scan.container, destination, count, total)


def _chosen_entries(
    engine: Engine, name: str, upper: str | None, chosen: Iterable[AtRisk]
) -> Iterator[tuple[Entry, Opener]]:
    """The chosen files as entries (paths relative to the container's root) with their data:
    opened in the upper folder without following links, or read from the engine's archive of
    each top-level folder that holds some (one request per folder, not per file)."""
    if upper is not None:
        base = ConfinedDir.open(Path(upper), follow=True)
        try:
            for item in chosen:
                rel = item.path.lstrip("/")
                st = base.lstat(rel)
                if st is None or not stat.S_ISREG(st.st_mode):
                    continue  # gone since the scan
                entry = Entry(
                    rel,
                    "file",
                    stat.S_IMODE(st.st_mode),
                    st.st_uid,
                    st.st_gid,
                    st.st_mtime_ns,
                    st.st_size,
                )
                yield entry, (lambda r=rel: base.open_file(r))  # type: ignore[misc]
        finally:
            base.close()
        return
    for full, entry, data in _archived_files(engine, name, (f.path for f in chosen)):
        if data is not None:
            rel = full.lstrip("/")
            yield (
                Entry(rel, "file", entry.mode, entry.uid, entry.gid, entry.mtime_ns, entry.size),
                data,
            )


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
    scan = scan_container(engine, name, keep=5)
    rescued = None
    if scan.keeping and not force:
        if not rescue:
            listing = ", ".join(f"{shown(f.path)} ({f.size} B)" for f in scan.worth_keeping[:5])
            more = scan.keeping - 5
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
            scan = scan_container(engine, event.id, keep=0)
        except (ContainerNotFound, TransferError) as exc:  # (its layer went with it)
            on_event(
                f"{name} stopped and is already gone ({exc}); --rm containers cannot be rescued"
            )
            continue
        if not scan.keeping:
            on_event(f"{scan.container} stopped; nothing worth keeping in its layer")
            continue
        destination = to.for_container(scan) if to is not None else None
        try:
            result = rescue_container(engine, event.id, to=destination)
        except (EngineError, TransferError) as exc:  # (gone while copied: --rm)
            on_event(f"{scan.container}: rescue failed ({exc})")
            continue
        on_event(
            f"{scan.container} stopped with {scan.keeping} ML files in its "
            f"layer: rescued {result.files} files to {result.destination}"
        )
        yield result
