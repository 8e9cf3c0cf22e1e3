"""``CheckpointManager``: atomic saves, verified restores, retention, async saves, preemption.

Standard library only: this runs inside training images. The on-disk format and the rules for a
valid checkpoint live in ``_format.py``; the commit protocol in ``_atomic.py``.
"""

from __future__ import annotations

import builtins
import contextlib
import io
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
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO, Literal

from cargohold.checkpoint import _format, _ranks
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
from cargohold.checkpoint._ranks import (
    PENDING_PREFIX,
    SESSION_PREFIX,
    Coordinator,
    detect_ranks,
    make_coordinator,
    rank_record_name,
    write_json_atomically,
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


def _checkpoint_from(folder: Path, manifest: _format.Manifest) -> Checkpoint:
    return Checkpoint(
        step=manifest.step,
        path=folder,
        metrics=dict(manifest.metrics),
        files={name: folder / name for name in manifest.files},
        created=manifest.created,
    )


WritePart = Callable[[Path], dict[str, dict[str, Any]]]
"""Writes this process's files of a save into a folder; returns their manifest entries."""


@dataclass
class _Slot:
    """One save in flight: where its files go and what names its liveness."""

    step: int
    folder: Path  # the temporary (one process) or pending (many ranks) folder
    final: Path
    seq: int  # the how-many-th save or restore of the session (many ranks)
    token: str  # names the lock held while this save is alive
    liveness: LivenessLock | None  # held by this process (one process only)


def _checked(folder: Path, verify: bool, what: str, hint: str) -> Checkpoint:
    """The checkpoint in ``folder``, or a CheckpointError: ``what``, the reason, ``hint``."""
    try:
        manifest = _format.check_folder(folder, verify=verify)
    except ValueError as exc:
        raise CheckpointError(f"{what}: {exc}.", hint=hint) from None
    return _checkpoint_from(folder, manifest)


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    with open(folder / _format.MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(folder)


def _safe_name(name: str) -> str:
    try:
        return _format.normal_name(name)
    except ValueError:
        raise CheckpointError(
            f"Checkpoint file name {name!r} is not a plain relative name.",
            hint=f"Use names like 'model.pt' or 'optim/state.pt' (not {_format.MANIFEST!r}).",
        ) from None


def _metrics(metrics: Mapping[str, object] | None) -> dict[str, float]:
    """The metrics as the manifest keeps them: numbers (a tensor's or a string's float)."""
    found: dict[str, float] = {}
    for name, value in (metrics or {}).items():
        try:
            found[str(name)] = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            raise CheckpointError(
                f"Metric {name!r} is {value!r}, not a number.",
                hint="Pass metrics as numbers, e.g. metrics={'loss': loss.item()}.",
            ) from None
    return found


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
        rank: this process's rank; default from ``torch.distributed`` when a process group is
            initialised, else ``$RANK`` (torchrun), ``$SLURM_PROCID``, Open MPI or PMI.
        world_size: the number of ranks, found the same way; 1 without a launcher.
        timeout: seconds a rank waits for the others before a save fails.

    With more than one rank, every rank creates its manager on the same shared folder and calls
    ``save``/``save_async``/``restore_latest`` in the same order with the same steps, each with
    its own file names; rank 0 commits, keeps retention and removes debris (see ``_ranks.py``).

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
        rank: int | None = None,
        world_size: int | None = None,
        timeout: float = 600.0,
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
        if not timeout > 0:
            raise CheckpointError(
                f"timeout must be a positive number of seconds, not {timeout!r}.",
                hint="The default, 600, suits most jobs.",
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
        self._final_exit_code: int | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(
                f"Cannot create checkpoint folder {self.directory}: {exc.strerror}.",
                hint="Check that the folder is on a writable mount owned by this user "
                f"(uid {os.getuid()}).",
            ) from None
        ranks = detect_ranks(rank, world_size)
        self.rank = ranks.rank
        self.world_size = ranks.world_size
        self.local_rank = ranks.local_rank
        self.timeout = timeout
        self.storage: StorageReport | None = (
            warn_if_ephemeral(self.directory) if warn_ephemeral and self.rank == 0 else None
        )
        self._coordinator: Coordinator | None = None
        self._seq = 0  # saves and restores made so far: every rank counts the same
        if self.world_size > 1:
            try:
                self._coordinator = make_coordinator(self.directory, ranks, timeout)
            except OSError as exc:
                raise CheckpointError(
                    f"Rank {self.rank}: cannot coordinate through {self.directory}: "
                    f"{exc.strerror or exc}.",
                    hint="All ranks need the same writable shared folder, with working "
                    "fcntl locks (local disk, a volume, NFSv4).",
                ) from None
        if self.rank == 0:
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
        return _checked(
            self.directory / _format.step_dir_name(step),
            verify,
            f"Checkpoint of step {step} in {self.directory} cannot be used",
            "`restore_latest()` falls back to the newest valid checkpoint.",
        )

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
        coordinator = self._coordinator
        if coordinator is None:
            return self._choose_restore(verify)
        # Rank 0 chooses (and verifies); every rank gets the same step, by construction.
        seq, self._seq = self._seq, self._seq + 1
        if self.rank == 0:
            try:
                chosen = self._choose_restore(verify)
                answer: dict[str, Any] = {"path": str(chosen.path) if chosen else None}
            except CheckpointError as exc:
                answer = {"error": exc.message, "hint": exc.hint}
            answer = coordinator.broadcast(f"restore-{seq}", answer)
        else:
            answer = coordinator.broadcast(f"restore-{seq}", None)
        if not isinstance(answer, dict):
            raise CheckpointError("Rank 0 sent no restore decision.", hint="Restart all ranks.")
        if "error" in answer:
            raise CheckpointError(str(answer["error"]), hint=answer.get("hint"))
        if answer.get("path") is None:
            return None
        folder = Path(str(answer["path"]))
        chosen_by_user = os.environ.get("CARGOHOLD_RESUME") == "path" and folder == Path(
            os.environ.get("CARGOHOLD_RESUME_FROM", "")
        )
        if not chosen_by_user and (
            folder.parent != self.directory or not _format.STEP_DIR_RE.match(folder.name)
        ):
            raise CheckpointError(
                f"Rank {self.rank}: rank 0's restore decision names {folder}, which is not a "
                f"checkpoint of {self.directory}.",
                hint="Something else writes into the checkpoint folder's session files.",
            )
        # Rank 0 verified the checksums already; every rank checks that every file is there.
        return _checked(
            folder,
            False,
            f"Rank {self.rank} cannot use the checkpoint rank 0 chose, {folder}",
            "Every rank must see the same shared folder.",
        )

    def _choose_restore(self, verify: bool) -> Checkpoint | None:
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
                    stacklevel=3,
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
            values = _metrics(metrics)
            slot = self._begin(step)
            return self._finish(slot, values, self._file_writer(sources))

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
        With many ranks the background thread also waits for the others and the commit.

        Raises:
            CheckpointError: the previous asynchronous save failed.
        """
        with self._operation():
            self.wait()
            sources = self._prepare(step, files)
            values = _metrics(metrics)
            # The previous save is finished (wait() above), so its staging buffers are free.
            captured = {
                name: src.capture(self._staging.area(name)) for name, src in sources.items()
            }
            slot = self._begin(step)
            self._in_background(slot, values, self._file_writer(captured))

    def _in_background(self, slot: _Slot, metrics: dict[str, float], write: WritePart) -> None:
        def work() -> None:
            try:
                self._finish(slot, metrics, write)
            except BaseException as exc:  # surfaced by wait()
                self._error = exc

        self._thread = threading.Thread(
            target=work, name=f"cargohold-save-{slot.step}", daemon=False
        )
        self._thread.start()

    def _file_writer(self, sources: dict[str, FileSource]) -> WritePart:
        exclusive = self._coordinator is not None  # another rank's name must not be overwritten
        return lambda folder: self._write_files(folder, sources, exclusive=exclusive)

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
        """Finish the in-flight save; raise its error if it failed. Ends a multi-rank session."""
        try:
            self.wait()
        finally:
            if self._coordinator is not None:
                self._coordinator.close()
                self._coordinator = None

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _prepare(self, step: int, files: Mapping[str, object]) -> dict[str, FileSource]:
        if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < 2**63:
            raise CheckpointError(
                f"step must be a non-negative integer below 2**63, not {step!r}.",
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

    def _begin(self, step: int) -> _Slot:
        """Claim the folder this save writes into; in the caller's thread, in call order."""
        final = self.directory / _format.step_dir_name(step)
        coordinator = self._coordinator
        if coordinator is not None:
            seq, self._seq = self._seq, self._seq + 1
            pending = self.directory / (
                f"{PENDING_PREFIX}{coordinator.session}-{seq:06d}-{final.name}"
            )
            # Every rank creates it (whoever comes first); failures are this rank's error,
            # reported to rank 0 through its record in _finish.
            with contextlib.suppress(OSError):
                pending.mkdir(exist_ok=True)
            return _Slot(step, pending, final, seq, coordinator.session, None)
        token = secrets.token_hex(8)
        tmp = self.directory / f"{_format.TMP_PREFIX}{final.name}-{token}"
        try:
            # Held until the folder is published: tells any cleaner, in any container, that
            # this temporary folder is a live save and not debris.
            liveness = LivenessLock(lock_path(self.directory, token))
        except OSError as exc:
            raise self._save_failed(step, exc) from None
        try:
            tmp.mkdir()
        except OSError as exc:
            liveness.release()
            raise self._save_failed(step, exc) from None
        return _Slot(step, tmp, final, 0, token, liveness)

    def _finish(self, slot: _Slot, metrics: dict[str, float], write: WritePart) -> Checkpoint:
        """Write this process's files into the slot and commit (or, on rank > 0, see it done)."""
        if self._coordinator is not None:
            return self._finish_ranked(self._coordinator, slot, metrics, write)
        assert slot.liveness is not None
        with self._lock:
            try:
                files = write(slot.folder)
                manifest = _format.Manifest.from_json(
                    {
                        "format": _format.FORMAT_NAME,
                        "version": _format.FORMAT_VERSION,
                        "step": slot.step,
                        "created": time.time(),
                        "metrics": metrics,
                        "files": files,
                    }
                )
                _write_manifest(slot.folder, manifest.to_json())
                self._publish(slot.folder, slot.final, slot.token)
            except OSError as exc:
                shutil.rmtree(slot.folder, ignore_errors=True)
                slot.liveness.release()
                raise self._save_failed(slot.step, exc) from None
            except BaseException:
                shutil.rmtree(slot.folder, ignore_errors=True)
                slot.liveness.release()
                raise
            slot.liveness.release()
            checkpoint = _checkpoint_from(slot.final, manifest)
            self._apply_retention()
            return checkpoint

    def _finish_ranked(
        self,
        coordinator: Coordinator,
        slot: _Slot,
        metrics: dict[str, float],
        write: WritePart,
    ) -> Checkpoint:
        """This rank's part of a save; on rank 0 also the commit (protocol in ``_ranks.py``)."""
        step, pending = slot.step, slot.folder
        with self._lock:
            record: dict[str, Any] = {"rank": self.rank, "step": step}
            failure: Exception | None = None  # this rank's own, kept as the error's cause
            try:
                record["files"] = write(pending)
            except OSError as exc:
                record["error"] = (
                    f"rank {self.rank} could not write its files: {exc.strerror or exc}"
                )
            except CheckpointError as exc:
                record["error"] = exc.message
            except Exception as exc:
                # A writer's own bug, or DCP's collectives failing because a peer died: either
                # way the others learn it below (and a dead peer is named there), never a
                # raw error on this rank alone while the others wait.
                failure = exc
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                record["error"] = (
                    f"rank {self.rank} could not write its files: {type(exc).__name__}: {first}"
                )
            try:
                write_json_atomically(pending / rank_record_name(self.rank), record)
            except OSError as exc:  # rank 0 reports it; the others are missed by rank 0
                record.setdefault("error", f"rank {self.rank} could not record its part: {exc}")
            try:
                outcome = self._agree(coordinator, slot, metrics, record)
            except CheckpointError as exc:
                if failure is not None and exc.__cause__ is None:
                    exc.__cause__ = failure
                raise
            if not isinstance(outcome, dict) or not outcome.get("ok"):
                message = outcome.get("message") if isinstance(outcome, dict) else None
                hint = outcome.get("hint") if isinstance(outcome, dict) else None
                raise CheckpointError(
                    str(message or f"The checkpoint of step {step} was not committed."),
                    hint=str(hint or "Check free space and the other ranks' errors."),
                ) from failure
            try:
                manifest = _format.Manifest.from_json(outcome.get("manifest"))
            except ValueError as exc:
                raise CheckpointError(
                    f"Rank {self.rank}: rank 0's answer for step {step} holds no valid "
                    f"manifest: {exc}.",
                    hint="Something else writes into the checkpoint folder's session files.",
                ) from None
            return _checkpoint_from(slot.final, manifest)

    def _agree(
        self,
        coordinator: Coordinator,
        slot: _Slot,
        metrics: dict[str, float],
        record: dict[str, Any],
    ) -> Any:
        """Wait for every rank's part; rank 0 commits and answers. The outcome, on every rank.

        Raises:
            CheckpointError: on a rank other than 0, when rank 0 or the agreement failed.
        """
        step, seq, pending = slot.step, slot.seq, slot.folder
        if self.rank != 0:
            coordinator.all_durable(pending, "error" not in record, self.timeout)
            return coordinator.broadcast(f"outcome-{seq}", None)
        try:
            coordinator.all_durable(pending, "error" not in record, self.timeout)
            if "error" in record:  # its own record may be unwritable (a full disk)
                raise CheckpointError(
                    f"The checkpoint of step {step} failed on rank 0: {record['error']}.",
                    hint="Free space on the shared folder; the previous checkpoints are intact.",
                )
            manifest = self._commit_ranked(coordinator, pending, slot.final, step, metrics)
            outcome: dict[str, Any] = {"ok": True, "manifest": manifest.to_json()}
        except CheckpointError as exc:
            outcome = {"ok": False, "message": exc.message, "hint": exc.hint}
        except OSError as exc:
            outcome = {"ok": False, "message": str(self._save_failed(step, exc))}
        if not outcome["ok"]:
            # First free what this save holds: on a full disk the answer needs room.
            shutil.rmtree(pending, ignore_errors=True)
        self._tell_outcome(coordinator, seq, step, outcome)
        if outcome["ok"]:
            self._apply_retention()
        return outcome

    def _tell_outcome(
        self, coordinator: Coordinator, seq: int, step: int, outcome: dict[str, Any]
    ) -> None:
        """Rank 0 answers the others. On a full disk the answer itself may not fit until
        another rank has removed its partial files, so it is retried for ``timeout``; a rank
        that never hears it fails at its own timeout, and nothing is committed either way.

        When the answer cannot go out because a rank died (the collectives of a process group
        fail), a failed save keeps its own reason: that is what rank 0 raises, not the broken
        messenger."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                coordinator.broadcast(f"outcome-{seq}", outcome)
                return
            except CheckpointError as exc:
                if outcome["ok"]:
                    raise CheckpointError(
                        f"The checkpoint of step {step} was committed, but rank 0 could not "
                        f"tell the other ranks: {exc.message}",
                        hint="Restart all ranks: every rank resumes from this checkpoint.",
                    ) from exc
                return  # rank 0 raises its own failure, which says why
            except OSError as exc:
                if time.monotonic() > deadline:
                    if outcome["ok"]:
                        raise CheckpointError(
                            f"The checkpoint of step {step} was committed, but rank 0 could "
                            f"not tell the other ranks: {exc.strerror or exc}.",
                            hint="Free space on the checkpoint folder; the other ranks fail "
                            "this save at their timeout and resume finds the checkpoint.",
                        ) from None
                    return  # this rank raises its own failure below
                time.sleep(0.05)

    def _commit_ranked(
        self,
        coordinator: Coordinator,
        pending: Path,
        final: Path,
        step: int,
        metrics: dict[str, float],
    ) -> _format.Manifest:
        """Merge every rank's record into one manifest and publish the folder (rank 0)."""
        files: dict[str, Any] = {}
        ranks: dict[str, list[str]] = {}
        for rank in range(self.world_size):
            record = _ranks.read_json(pending / rank_record_name(rank))
            if not isinstance(record, dict):
                raise CheckpointError(
                    f"Rank {rank}'s record of checkpoint step {step} is missing or unreadable.",
                    hint="Restart all ranks; the last committed checkpoint is intact.",
                )
            if "error" in record:
                raise CheckpointError(
                    f"The checkpoint of step {step} failed on rank {rank}: {record['error']}.",
                    hint="Free space on the shared folder; the previous checkpoints are intact.",
                )
            if record.get("step") != step:
                raise CheckpointError(
                    f"Rank {rank} saved step {record.get('step')!r} where rank 0 saved {step}.",
                    hint="Every rank must call save() with the same steps, in the same order.",
                )
            if not isinstance(record.get("files"), dict):
                raise CheckpointError(
                    f"Rank {rank}'s record of checkpoint step {step} lists no files.",
                    hint="Restart all ranks; the last committed checkpoint is intact.",
                )
            for name, entry in record["files"].items():
                if _safe_name(name) in files or not isinstance(entry, dict):
                    raise CheckpointError(
                        f"Checkpoint file {name!r} comes from two ranks.",
                        hint="Give every rank its own file names.",
                    )
                files[name] = entry
            ranks[str(rank)] = sorted(record["files"])
        manifest = {
            "format": _format.FORMAT_NAME,
            "version": _format.FORMAT_VERSION,
            "step": step,
            "created": time.time(),
            "metrics": metrics,
            "world_size": self.world_size,
            "ranks": ranks,
            "files": files,
        }
        for rank in range(self.world_size):
            (pending / rank_record_name(rank)).unlink()
        _write_manifest(pending, manifest)
        try:
            checked = _format.check_folder(pending, verify=False)
        except ValueError as exc:
            raise CheckpointError(
                f"The checkpoint of step {step} is not whole: {exc}.",
                hint="A rank's file changed after it reported it durable.",
            ) from None
        self._publish(pending, final, coordinator.session)
        return checked

    def _write_files(
        self, folder: Path, sources: dict[str, FileSource], *, exclusive: bool
    ) -> dict[str, dict[str, Any]]:
        """Write, fsync and checksum every file into ``folder``; their manifest entries.

        On failure the files written so far are removed: on a full disk the space they hold
        is what the other ranks need to record the failure.
        """
        paths: dict[str, Path] = {}
        known: dict[Path, str] = {}
        try:
            for name, source in sources.items():
                path = folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    raw = open(path, "xb" if exclusive else "wb", buffering=0)  # noqa: SIM115
                except FileExistsError:
                    raise CheckpointError(
                        f"Rank {self.rank}: checkpoint file {name!r} was already written by "
                        "another rank of the same save.",
                        hint="Give every rank its own file names, e.g. f'model-rank{rank}.pt'.",
                    ) from None
                paths[name] = path
                with raw:
                    if getattr(source, "stream_only", False):
                        # Our own sources only call write(): checksum on the way to disk.
                        writer = ChecksumWriter(raw, self.checksum, self._checksummer)
                        source.write(writer)  # type: ignore[arg-type]
                        known[path] = writer.hexdigest()
                    else:
                        # A user's writer may want a real file (fileno, seek): read back later.
                        with io.BufferedWriter(raw) as buffered:
                            source.write(buffered)
                            buffered.flush()
            digests = fsync_and_checksum(paths.values(), self.checksum, known)
            for sub in {p.parent for p in paths.values()}:
                fsync_dir(sub)
        except BaseException:
            for path in paths.values():
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        return {
            name: {"size": path.stat().st_size, self.checksum: digests[path]}
            for name, path in paths.items()
        }

    def _record_existing(self, folder: Path, names: builtins.list[str]) -> dict[str, Any]:
        """Manifest entries of files another writer (DCP) put into ``folder``, made durable."""
        paths = {_safe_name(name): folder / name for name in names}
        digests = fsync_and_checksum(paths.values(), self.checksum, {})
        for sub in {p.parent for p in paths.values()}:
            fsync_dir(sub)
        return {
            name: {"size": path.stat().st_size, self.checksum: digests[path]}
            for name, path in paths.items()
        }

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
            elif name.startswith((PENDING_PREFIX, SESSION_PREFIX)):
                # A multi-rank save or session: alive as long as its rank 0 holds the lock.
                token = name.split("-", 2)[1]
                if not is_alive(lock_path(self.directory, token)):
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

        With many ranks the handler only records the signal: ``final_save`` runs on every rank
        at the ``preemption_point()`` where they agree to stop (see there). A loop that never
        calls it is not stopped by SIGTERM.
        """

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            self.preempted = True
            if self._final_started:
                return  # a second SIGTERM while the final save runs: it is already coming
            if self._coordinator is not None:
                self._coordinator.preempted_now()
                return  # many ranks: all save the same step, at preemption_point()
            if self._busy:
                self._final_pending = True  # run by _operation() when the save returns
                return
            self._run_final()

        self._final_save = final_save
        self._final_exit_code = exit_code
        signal.signal(signal.SIGTERM, on_sigterm)

    def preemption_point(self) -> bool:
        """Call once per training step, where the model state is consistent.

        One process: True once SIGTERM arrived (``handle_sigterm`` has saved already). Many
        ranks: the orchestrator signals every rank, but each is at its own point of the step,
        so the final save cannot happen inside the signal handler (it would save different
        steps, or wait in a collective for a rank that is inside its handler). Instead the
        ranks agree here: once any rank is preempted, this returns True on every rank at the
        same call; with ``handle_sigterm(final_save)``, every rank runs ``final_save`` there
        (committed once, complete) and exits with the handler's exit code.

        Raises:
            CheckpointError: the ranks could not agree (one died or never got the signal).
        """
        if self._coordinator is None:
            return self.preempted
        stop = self._coordinator.any_preempted(self.preempted)
        if stop and self._final_exit_code is not None and not self._final_started:
            self._run_final()
        return stop

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
            raise SystemExit(self._final_exit_code or 143)

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
