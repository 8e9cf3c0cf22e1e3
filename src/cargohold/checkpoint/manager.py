"""``CheckpointManager``: atomic saves, verified restores, retention, async saves, preemption.

Standard library only: this runs inside training images. The on-disk format and the rules for a
valid checkpoint live in ``_format.py``; the commit protocol in ``_atomic.py``.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import secrets
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import Any, BinaryIO, Literal

from cargohold.checkpoint import _format
from cargohold.checkpoint._atomic import (
    ChecksumWriter,
    fsync_and_checksum,
    fsync_dir,
    remove_atomically,
)
from cargohold.checkpoint._locks import (
    LOCK_PREFIX,
    LivenessLock,
    is_alive,
    lock_path,
    remove_if_dead,
)
from cargohold.checkpoint.sources import FileSource, StagingPool, as_source
from cargohold.checkpoint.storage import StorageReport, warn_if_ephemeral
from cargohold.errors import CheckpointError

__all__ = ["Checkpoint", "CheckpointManager", "CorruptCheckpointWarning"]


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint was skipped because it is incomplete or its data does not match."""


@dataclass(frozen=True)
class Checkpoint:
    """A finished checkpoint on disk."""

    step: int
    path: Path
    metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    created: float = 0.0

    def read_bytes(self, name: str) -> bytes:
        return self.files[name].read_bytes()

    def open(self, name: str) -> BinaryIO:
        return open(self.files[name], "rb")


def _checkpoint_from(folder: Path, manifest: dict[str, Any]) -> Checkpoint:
    return Checkpoint(
        step=int(manifest["step"]),
        path=folder,
        metrics={k: float(v) for k, v in (manifest.get("metrics") or {}).items()},
        files={name: folder / name for name in manifest["files"]},
        created=float(manifest.get("created", 0.0)),
    )


def _safe_name(name: str) -> str:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or str(path) in (".", _format.MANIFEST):
        raise CheckpointError(
            f"Checkpoint file name {name!r} is not a plain relative name.",
            hint=f"Use names like 'model.pt' or 'optim/state.pt' (not {_format.MANIFEST!r}).",
        )
    return str(path)


class CheckpointManager:
    """Save and restore checkpoints in one folder.

    Args:
        directory: the checkpoint folder; default ``$CARGOHOLD_CHECKPOINT_DIR``.
        keep_last: keep the newest N checkpoints (0: keep all).
        keep_best: also keep the best K by ``metric``.
        keep_every: also keep every checkpoint whose step is a multiple of this.
        metric: the metric that ranks checkpoints; the best one is never deleted.
        mode: ``"min"`` or ``"max"``: which way the metric improves.
        checksum: ``"crc32"`` (fast; catches torn writes and bit rot) or ``"sha256"``.
        warn_ephemeral: warn once when the folder dies with the container.

    Raises:
        CheckpointError: no folder given and none in the environment, or bad settings.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        keep_last: int = 3,
        keep_best: int = 0,
        keep_every: int | None = None,
        metric: str | None = None,
        mode: Literal["min", "max"] = "min",
        checksum: Literal["crc32", "sha256"] = "crc32",
        warn_ephemeral: bool = True,
    ) -> None:
        if directory is None:
            directory = os.environ.get("CARGOHOLD_CHECKPOINT_DIR")
            if not directory:
                raise CheckpointError(
                    "No checkpoint folder: none given and CARGOHOLD_CHECKPOINT_DIR is not set.",
                    hint="Pass CheckpointManager('/path') or run the job with `cargohold run`, "
                    "which sets CARGOHOLD_CHECKPOINT_DIR to the checkpoints store.",
                )
        if mode not in ("min", "max"):
            raise CheckpointError(
                f"mode must be 'min' or 'max', not {mode!r}.",
                hint="Use 'min' for a loss, 'max' for an accuracy.",
            )
        if keep_last < 0 or keep_best < 0 or (keep_every is not None and keep_every <= 0):
            raise CheckpointError(
                "keep_last and keep_best must be >= 0, keep_every > 0.",
                hint="Use keep_last=0 to keep every checkpoint.",
            )
        if checksum not in _format.CHECKSUMS:
            raise CheckpointError(
                f"checksum must be one of {_format.CHECKSUMS}, not {checksum!r}.",
                hint="Use 'crc32' (the default) or 'sha256'.",
            )
        if keep_best and metric is None:
            raise CheckpointError(
                "keep_best needs a metric to rank checkpoints by.",
                hint="Pass metric='val_loss' (and mode='min') or similar.",
            )
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.keep_every = keep_every
        self.metric = metric
        self.mode = mode
        self.checksum = checksum
        self.preempted = False
        self._staging = StagingPool()
        self._checksummer = ThreadPoolExecutor(1, thread_name_prefix="cargohold-checksum")
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._removals: builtins.list[threading.Thread] = []
        self._busy = 0
        self._final_pending = False
        self._final_started = False
        self._final_save: Callable[[], object] | None = None
        self._final_exit_code = 143
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(
                f"Cannot create checkpoint folder {self.directory}: {exc.strerror}.",
                hint="Check that the folder is on a writable mount owned by this user "
                f"(uid {os.getuid()}).",
            ) from None
        self.storage: StorageReport | None = (
            warn_if_ephemeral(self.directory) if warn_ephemeral else None
        )
        self._clean_debris()

    # -- reading --------------------------------------------------------------------------

    def list(self) -> list[Checkpoint]:
        """Finished checkpoints (manifest present and readable), oldest first. Not verified."""
        found = []
        for _, folder in reversed(_format.step_folders(self.directory)):
            try:
                manifest = _format.read_manifest(folder)
            except ValueError:
                continue
            found.append(_checkpoint_from(folder, manifest))
        return found

    def get(self, step: int, *, verify: bool = True) -> Checkpoint:
        """The checkpoint of one step.

        Raises:
            CheckpointError: it does not exist or fails verification.
        """
        folder = self.directory / _format.step_dir_name(step)
        try:
            manifest = _format.check_folder(folder, verify=verify)
        except ValueError as exc:
            raise CheckpointError(
                f"Checkpoint of step {step} in {self.directory} cannot be used: {exc}.",
                hint="`restore_latest()` falls back to the newest valid checkpoint.",
            ) from None
        return _checkpoint_from(folder, manifest)

    def best(self) -> Checkpoint | None:
        """The finished checkpoint with the best ``metric``, or None."""
        if self.metric is None:
            return None
        ranked = [c for c in self.list() if self.metric in c.metrics]
        if not ranked:
            return None
        pick = min if self.mode == "min" else max
        return pick(ranked, key=lambda c: (c.metrics[str(self.metric)], -c.step))

    def restore_latest(self, verify: bool = True) -> Checkpoint | None:
        """The newest checkpoint whose manifest and checksums hold; None on a fresh start.

        Corrupt or partial checkpoints are skipped with a ``CorruptCheckpointWarning``. Honours
        ``cargohold run --resume``: ``CARGOHOLD_RESUME=never`` gives None, and
        ``CARGOHOLD_RESUME=path`` gives the checkpoint in ``CARGOHOLD_RESUME_FROM``.

        Raises:
            CheckpointError: a checkpoint asked for by path is not valid.
        """
        self.wait()
        policy = os.environ.get("CARGOHOLD_RESUME", "auto")
        if policy == "never":
            return None
        if policy == "path":
            wanted = Path(os.environ.get("CARGOHOLD_RESUME_FROM", ""))
            try:
                manifest = _format.check_folder(wanted, verify=verify)
            except ValueError as exc:
                raise CheckpointError(
                    f"The checkpoint to resume from, {wanted}, cannot be used: {exc}.",
                    hint="Pick another with --resume PATH, or use --resume auto.",
                ) from None
            return _checkpoint_from(wanted, manifest)
        for step, folder in _format.step_folders(self.directory):
            try:
                manifest = _format.check_folder(folder, verify=verify)
            except ValueError as exc:
                warnings.warn(
                    f"Skipping checkpoint of step {step} in {folder.parent}: {exc}.",
                    CorruptCheckpointWarning,
                    stacklevel=2,
                )
                continue
            return _checkpoint_from(folder, manifest)
        return None

    # -- writing --------------------------------------------------------------------------

    def save(
        self,
        step: int,
        files: Mapping[str, object],
        metrics: Mapping[str, float] | None = None,
    ) -> Checkpoint:
        """Write one checkpoint atomically, then apply retention.

        Args:
            step: the training step (or epoch); a later save of the same step replaces it.
            files: relative names → bytes, a function writing to a binary file, or a helper
                such as ``torch_file(model.state_dict())``.
            metrics: numbers to record (and rank by, for ``keep_best``).

        Raises:
            CheckpointError: the save failed (nothing partial is left visible).
        """
        with self._operation():
            self.wait()
            sources = self._prepare(step, files)
            return self._save_now(step, sources, dict(metrics or {}))

    def save_async(
        self,
        step: int,
        files: Mapping[str, object],
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """Capture the data now and write it in the background; return at once.

        One save is in flight at a time: this waits for the previous one first, and raises its
        error if it failed. Bytes are kept as they are, writer functions run now into memory,
        framework helpers copy their tensors now; serialising and flushing happen later.

        Raises:
            CheckpointError: the previous asynchronous save failed.
        """
        with self._operation():
            self.wait()
            sources = self._prepare(step, files)
            # The previous save is finished (wait() above), so its staging buffers are free.
            captured = {
                name: src.capture(self._staging.area(name)) for name, src in sources.items()
            }
            frozen_metrics = dict(metrics or {})

            def work() -> None:
                try:
                    self._save_now(step, captured, frozen_metrics)
                except BaseException as exc:  # surfaced by wait()
                    self._error = exc

            self._thread = threading.Thread(
                target=work, name=f"cargohold-save-{step}", daemon=False
            )
            self._thread.start()

    def wait(self) -> None:
        """Block until the in-flight asynchronous save is done.

        Raises:
            CheckpointError: it failed.
        """
        thread = self._thread
        if thread is not None:
            thread.join()
            self._thread = None
        # Deletions of old checkpoints run in the background; by the next save they are done
        # (or nearly), and afterwards the folder holds exactly what list() says.
        while self._removals:
            self._removals.pop().join()
        error, self._error = self._error, None
        if error is not None:
            if isinstance(error, CheckpointError):
                raise error
            raise CheckpointError(
                f"The background checkpoint save failed: {error}.",
                hint="Check free space and permissions of the checkpoint folder.",
            ) from error

    def close(self) -> None:
        """Finish the in-flight save; raise its error if it failed."""
        self.wait()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prepare(self, step: int, files: Mapping[str, object]) -> dict[str, FileSource]:
        if not isinstance(step, int) or step < 0:
            raise CheckpointError(
                f"step must be a non-negative integer, not {step!r}.",
                hint="Pass the epoch or global step as an int.",
            )
        if not files:
            raise CheckpointError(
                "A checkpoint needs at least one file.", hint='Pass files={"model.pt": ...}.'
            )
        try:
            return {_safe_name(name): as_source(value) for name, value in files.items()}
        except TypeError as exc:
            raise CheckpointError(
                str(exc) + ".", hint="See cargohold.checkpoint.sources."
            ) from None

    def _save_now(
        self, step: int, sources: dict[str, FileSource], metrics: dict[str, float]
    ) -> Checkpoint:
        with self._lock:
            final = self.directory / _format.step_dir_name(step)
            token = secrets.token_hex(8)
            tmp = self.directory / f"{_format.TMP_PREFIX}{final.name}-{token}"
            try:
                # Held until the folder is published: tells any cleaner, in any container,
                # that this temporary folder is a live save and not debris.
                liveness = LivenessLock(lock_path(self.directory, token))
            except OSError as exc:
                raise self._save_failed(step, exc) from None
            try:
                tmp.mkdir()
                paths: dict[str, Path] = {}
                known: dict[Path, str] = {}
                for name, source in sources.items():
                    path = tmp / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    if getattr(source, "stream_only", False):
                        # Our own sources only call write(): checksum on the way to disk.
                        with open(path, "wb", buffering=0) as raw:
                            writer = ChecksumWriter(raw, self.checksum, self._checksummer)
                            source.write(writer)  # type: ignore[arg-type]
                        known[path] = writer.hexdigest()
                    else:
                        # A user's writer may want a real file (fileno, seek): read back later.
                        with open(path, "wb") as f:
                            source.write(f)
                    paths[name] = path
                digests = fsync_and_checksum(paths.values(), self.checksum, known)
                manifest = {
                    "format": _format.FORMAT_NAME,
                    "version": _format.FORMAT_VERSION,
                    "step": step,
                    "created": time.time(),
                    "metrics": metrics,
                    "files": {
                        name: {"size": path.stat().st_size, self.checksum: digests[path]}
                        for name, path in paths.items()
                    },
                }
                manifest_path = tmp / _format.MANIFEST
                with open(manifest_path, "w", encoding="utf-8") as f:
                    json.dump(manifest, f, indent=1, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                for folder in {p.parent for p in paths.values()} | {tmp}:
                    fsync_dir(folder)
                self._publish(tmp, final, token)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                liveness.release()
                raise self._save_failed(step, exc) from None
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                liveness.release()
                raise
            liveness.release()
            checkpoint = _checkpoint_from(final, manifest)
            self._apply_retention()
            return checkpoint

    def _save_failed(self, step: int, exc: OSError) -> CheckpointError:
        return CheckpointError(
            f"Saving the checkpoint of step {step} into {self.directory} failed: "
            f"{exc.strerror or exc}. The previous checkpoints are untouched.",
            hint="Free space on that volume (`cargohold volume du`) or lower keep_last.",
        )

    def _publish(self, tmp: Path, final: Path, token: str) -> None:
        if final.exists():
            # Saving a step again: move the old copy aside first; the debris cleaner puts it
            # back if we die before the new one is in place (the token names our lock).
            aside = final.with_name(f"{_format.REPLACED_PREFIX}{token}-{final.name}")
            os.rename(final, aside)
            os.rename(tmp, final)
            fsync_dir(self.directory)
            self._remove_in_background(aside)
        else:
            os.rename(tmp, final)
            fsync_dir(self.directory)

    # -- retention and debris -------------------------------------------------------------

    def _keep(self, checkpoints: builtins.list[Checkpoint]) -> set[int]:
        steps = [c.step for c in checkpoints]
        keep = set(steps if self.keep_last == 0 else steps[-self.keep_last :])
        if self.keep_every:
            keep |= {s for s in steps if s % self.keep_every == 0}
        if self.metric is not None:
            ranked = sorted(
                (c for c in checkpoints if self.metric in c.metrics),
                key=lambda c: c.metrics[str(self.metric)],
                reverse=self.mode == "max",
            )
            keep |= {c.step for c in ranked[: max(self.keep_best, 1)]}  # never lose the best
        return keep

    def _apply_retention(self) -> None:
        checkpoints = self.list()
        keep = self._keep(checkpoints)
        for checkpoint in checkpoints:
            if checkpoint.step not in keep:
                self._remove_in_background(checkpoint.path)

    def _remove_in_background(self, folder: Path) -> None:
        thread = remove_atomically(folder, background=True)
        if thread is not None:
            self._removals.append(thread)

    def _clean_debris(self) -> None:
        """Remove what killed writers left behind, and only that."""
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return
        for entry in entries:
            name = entry.name
            if name.startswith(LOCK_PREFIX) and entry.is_file(follow_symlinks=False):
                # A writer killed between creating its lock and its folder, or right after
                # publishing: removed only while we hold its lock (see _locks.py).
                with contextlib.suppress(OSError):
                    remove_if_dead(Path(entry.path))
                continue
            if not entry.is_dir(follow_symlinks=False):
                continue
            if name.startswith(_format.TMP_PREFIX):
                token = name.rsplit("-", 1)[-1]
                if is_alive(lock_path(self.directory, token)):
                    continue  # a live writer, maybe in another container, is still at it
                shutil.rmtree(entry.path, ignore_errors=True)
                with contextlib.suppress(OSError):
                    remove_if_dead(lock_path(self.directory, token))
            elif name.startswith(_format.TRASH_PREFIX):
                shutil.rmtree(entry.path, ignore_errors=True)
            elif name.startswith(_format.REPLACED_PREFIX):
                token, _, original_name = name[len(_format.REPLACED_PREFIX) :].partition("-")
                if not _format.STEP_DIR_RE.match(original_name):
                    continue  # not ours
                if is_alive(lock_path(self.directory, token)):
                    continue  # its writer is between moving it aside and publishing the new one
                original = self.directory / original_name
                if original.exists():
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.rename(entry.path, original)
        fsync_dir(self.directory)

    # -- preemption -----------------------------------------------------------------------

    def handle_sigterm(
        self, final_save: Callable[[], object] | None = None, *, exit_code: int = 143
    ) -> None:
        """Opt in: on SIGTERM, finish the in-flight save, call ``final_save`` once, then exit.

        ``docker stop`` sends SIGTERM and kills after a grace period (10 s by default, set with
        ``--stop-timeout``); keep ``final_save`` well inside it. ``self.preempted`` turns True
        first, for training loops that prefer to poll.

        The handler runs in the main thread, between two of its bytecodes: if that thread is in
        the middle of ``save()`` or ``save_async()``, running ``final_save`` there would re-enter
        the save under its own lock (a deadlock until SIGKILL). So the final save is deferred to
        the moment that call returns: it still happens, once, within the time of one save.
        """

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            self.preempted = True
            if self._final_started:
                return  # a second SIGTERM while the final save runs: it is already coming
            self._final_save = final_save
            self._final_exit_code = exit_code
            if self._busy:
                self._final_pending = True  # run by _operation() when the save returns
                return
            self._run_final()

        signal.signal(signal.SIGTERM, on_sigterm)

    def _run_final(self) -> None:
        self._final_started = True
        self._final_pending = False
        try:
            with contextlib.suppress(CheckpointError):
                self.wait()  # an in-flight save that failed must not cost the final one
            if self._final_save is not None:
                self._final_save()
            self.wait()
        finally:
            raise SystemExit(self._final_exit_code)

    @contextlib.contextmanager
    def _operation(self) -> Iterator[None]:
        """Mark the main thread as inside a save, so that SIGTERM defers the final save."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            if not self._busy and self._final_pending:
                self._run_final()
