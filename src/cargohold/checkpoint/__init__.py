"""Crash-proof checkpoints inside the training container. Standard library only.

    from cargohold.checkpoint import CheckpointManager, torch_file
    ckpt = CheckpointManager(keep_last=3, metric="val_loss")   # folder from the environment
    start = ckpt.restore_latest()                               # None on a fresh start
    ckpt.save(step, {"model.pt": torch_file(model.state_dict())}, metrics={"val_loss": 0.12})

Under torchrun, Slurm or MPI every rank creates its manager on the same shared folder: each
saves its own files, rank 0 commits once all are durable, ``restore_latest()`` gives every rank
the same step, and ``preemption_point()`` makes all ranks save one final step on SIGTERM (see
``_ranks.py``). ``cargohold.checkpoint.dcp`` lets ``torch.distributed.checkpoint`` write the
shards under that commit.

``pip install --no-deps cargohold`` is enough inside any image: nothing here imports a package
outside the standard library (a test proves it); the PyTorch, NumPy and safetensors helpers
import their framework only when used.
"""

from cargohold.checkpoint._format import latest_valid
from cargohold.checkpoint.manager import Checkpoint, CheckpointManager, CorruptCheckpointWarning
from cargohold.checkpoint.sources import (
    FileSource,
    numpy_file,
    safetensors_file,
    torch_file,
)
from cargohold.checkpoint.storage import EphemeralStorageWarning, StorageReport, storage_report
from cargohold.errors import CheckpointError

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointManager",
    "CorruptCheckpointWarning",
    "EphemeralStorageWarning",
    "FileSource",
    "StorageReport",
    "latest_valid",
    "numpy_file",
    "safetensors_file",
    "storage_report",
    "torch_file",
]
