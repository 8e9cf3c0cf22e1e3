"""``torch.distributed.checkpoint`` (DCP) writes the bytes; cargohold commits them.

    import torch.distributed.checkpoint as dcp
    from cargohold.checkpoint import CheckpointManager
    from cargohold.checkpoint.dcp import dcp_async_save, dcp_save

    ckpt = CheckpointManager(keep_last=3, metric="loss")   # every rank, after init_process_group
    latest = ckpt.restore_latest()                         # the same step on every rank
    if latest is not None:
        dcp.load(state_dict, checkpoint_id=latest.path)    # plain DCP: a cargohold step folder
    ...                                                    # is a DCP checkpoint
    dcp_save(ckpt, step, state_dict, metrics={"loss": loss})       # or:
    dcp_async_save(ckpt, step, state_dict)                 # returns after DCP's staging

DCP plans and writes the shards (resharding, deduplication of replicated tensors, DTensor and
FSDP state dicts, its own ``.metadata``) into the pending folder of a cargohold save. Then every
rank fsyncs and checksums its share of the files DCP's metadata lists, reports them durable,
and rank 0 commits the folder with one rename, applies retention and best-K. ``restore_latest``
verifies the checksums and every rank gets the same step.

Why a wrapper around ``dcp.save``/``dcp.async_save`` and not a ``StorageWriter``: the storage
interface of DCP (``set_up_storage_writer``, ``prepare_*_plan``, ``write_data``, ``finish``,
``storage_meta``...) has changed in most torch releases, and ``finish`` runs on the
coordinator before the other ranks learn the result -- a commit there would publish before the
ranks that must still fsync have done so. The wrapper uses only DCP's public ``checkpoint_id``
(its own ``FileSystemWriter`` writes the files, so ``dcp.load`` reads them as it always does)
and keeps cargohold's one commit protocol (``_ranks.py``) for both kinds of saves. The
collectives of DCP and of the commit run on the manager's private gloo group, which DCP's docs
ask for when saving in the background.

torch is imported only when these functions are called: the package stays standard library only.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cargohold.checkpoint._ranks import TorchCoordinator
from cargohold.checkpoint.manager import (
    Checkpoint,
    CheckpointManager,
    WritePart,
    _metrics,
    _Slot,
)
from cargohold.errors import CheckpointError

__all__ = ["dcp_async_save", "dcp_save"]

_METADATA = ".metadata"


def _torch_dcp() -> Any:
    return importlib.import_module("torch.distributed.checkpoint")


def _dcp_options(manager: CheckpointManager) -> dict[str, Any]:
    coordinator = manager._coordinator
    if manager.world_size == 1:
        return {"no_dist": True}
    if isinstance(coordinator, TorchCoordinator):
        return {"process_group": coordinator.save_group}
    raise CheckpointError(
        f"Rank {manager.rank}: DCP needs torch.distributed; no process group was initialised "
        "when the CheckpointManager was created.",
        hint="Call torch.distributed.init_process_group(...) before CheckpointManager(...).",
    )


@contextlib.contextmanager
def _single_process_is_intended(options: dict[str, Any]) -> Iterator[None]:
    """DCP warns that it assumes one process even when told so (``no_dist``): it is no news."""
    with warnings.catch_warnings():
        if options.get("no_dist"):
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _failures(dcp: Any) -> tuple[type[BaseException], ...]:
    """What a failed DCP call raises: its ``CheckpointException`` is a ``BaseException``."""
    special = getattr(dcp, "CheckpointException", None)
    return (Exception, special) if isinstance(special, type) else (Exception,)


def _plain(what: str, exc: BaseException) -> Exception:
    """An ``Exception`` the manager's save protocol handles like any writer's failure."""
    if isinstance(exc, Exception):
        return exc
    return RuntimeError(f"{what} failed: {exc}")


def _my_share(manager: CheckpointManager, folder: Path, metadata: Any) -> dict[str, Any]:
    """Fsync and checksum this rank's share of the files DCP wrote (round robin by name)."""
    storage = getattr(metadata, "storage_data", None) or {}
    names = {getattr(info, "relative_path", None) for info in storage.values()}
    everything = sorted({n for n in names if isinstance(n, str)} | {_METADATA})
    return manager._record_existing(folder, everything[manager.rank :: manager.world_size])


def _check_step(step: int, state_dict: Mapping[str, Any]) -> None:
    if not isinstance(step, int) or step < 0:
        raise CheckpointError(
            f"step must be a non-negative integer, not {step!r}.",
            hint="Pass the epoch or global step as an int.",
        )
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise CheckpointError(
            "dcp_save needs a non-empty state dict.",
            hint='Pass {"model": model.state_dict(), "optim": optimizer.state_dict()}.',
        )


@contextlib.contextmanager
def _claimed(
    manager: CheckpointManager, step: int, state_dict: Mapping[str, Any]
) -> Iterator[tuple[_Slot, dict[str, Any]]]:
    """The folder of the next save, once the previous one is done (the manager's save steps)."""
    _check_step(step, state_dict)
    options = _dcp_options(manager)
    with manager._operation():
        manager.wait()
        coordinator = manager._coordinator
        if isinstance(coordinator, TorchCoordinator) and coordinator.broken is not None:
            # DCP's collectives on a group that failed may wait for the dead until timeout.
            raise CheckpointError(
                f"Rank {manager.rank}: no DCP save of step {step}: the process group broke "
                f"earlier. {coordinator.broken}",
                hint="Restart all ranks: every rank resumes from the last committed checkpoint.",
            )
        yield manager._begin(step), options


def dcp_save(
    manager: CheckpointManager,
    step: int,
    state_dict: Mapping[str, Any],
    metrics: Mapping[str, float] | None = None,
    *,
    planner: Any = None,
) -> Checkpoint:
    """Save ``state_dict`` with ``dcp.save`` as cargohold checkpoint ``step``, on every rank.

    Raises:
        CheckpointError: DCP failed on some rank, or a rank did not finish.
    """
    dcp = _torch_dcp()
    values = _metrics(metrics)
    with _claimed(manager, step, state_dict) as (slot, options):

        def write(folder: Path) -> dict[str, Any]:
            try:
                with _single_process_is_intended(options):
                    metadata = dcp.save(
                        dict(state_dict), checkpoint_id=str(folder), planner=planner, **options
                    )
            except _failures(dcp) as exc:
                raise _plain("dcp.save", exc) from exc
            return _my_share(manager, folder, metadata)

        return manager._finish(slot, values, write)


def dcp_async_save(
    manager: CheckpointManager,
    step: int,
    state_dict: Mapping[str, Any],
    metrics: Mapping[str, float] | None = None,
    *,
    planner: Any = None,
) -> None:
    """Start ``dcp.async_save`` into checkpoint ``step``; return after DCP has staged the state.

    The write, the fsyncs, the wait for every rank and the commit run in the background; the
    next save, ``wait()`` or ``close()`` raises their error.

    Raises:
        CheckpointError: the previous asynchronous save failed.
    """
    dcp = _torch_dcp()
    values = _metrics(metrics)
    with _claimed(manager, step, state_dict) as (slot, options):
        try:
            with _single_process_is_intended(options):
                started = dcp.async_save(
                    dict(state_dict), checkpoint_id=str(slot.folder), planner=planner, **options
                )
        except _failures(dcp) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            error = CheckpointError(
                f"dcp.async_save failed on rank {manager.rank}: {first}.",
                hint="See the error above; the previous checkpoints are untouched.",
            )

            def failed(folder: Path) -> dict[str, Any]:
                raise error

            write: WritePart = failed
        else:
            # Newer torch returns a response with the upload's future when given a stager.
            future = getattr(started, "upload_completion", started)

            def write(folder: Path) -> dict[str, Any]:
                try:
                    metadata = future.result()
                except _failures(dcp) as exc:
                    raise _plain("dcp.async_save", exc) from exc
                return _my_share(manager, folder, metadata)

        manager._in_background(slot, values, write)
