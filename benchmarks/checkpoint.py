"""Checkpoint save speed: cargohold.checkpoint against plain ``torch.save`` + fsync.

Run on demand (needs torch: ``pip install torch==2.13.0``)::

    python3 benchmarks/checkpoint.py [--mb 500] [--repeat 3] [--dir PATH]

Prints, from one run on one disk:
  - baseline: ``torch.save`` of the state dict to a file, flush, fsync;
  - sync: ``CheckpointManager.save`` (temporary folder, fsync of every file, sha256, manifest,
    rename, fsync of the parent) -- goal: throughput >= 0.9x the baseline;
  - async: how long ``save_async`` blocks the training loop -- goal: <= 10% of the sync save.
Each figure is the median of --repeat runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cargohold.checkpoint import CheckpointManager, torch_file


def state_dict(megabytes: int) -> dict[str, torch.Tensor]:
    """A model-like state dict: a few large layers and many small ones."""
    total = megabytes * 1024 * 1024 // 4
    sizes = [total // 4, total // 4, total // 8, total // 8] + [total // 64] * 16
    state = {f"layer{i}.weight": torch.randn(n) for i, n in enumerate(sizes)}
    return state


def baseline(state: dict[str, torch.Tensor], folder: Path, step: int) -> float:
    path = folder / f"plain-{step}.pt"
    began = time.perf_counter()
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    elapsed = time.perf_counter() - began
    path.unlink()
    return elapsed


def train_a_little(state: dict[str, torch.Tensor], seconds: float) -> None:
    """Stand-in for the training between two saves: real compute, and the weights change."""
    a = torch.randn(512, 512)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        a = torch.tanh(a @ a)
    for tensor in state.values():
        tensor.add_(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500, help="state dict size in MB")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--train-seconds", type=float, default=2.0,
                        help="training time between two saves")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to write (default: a temporary folder on /var/tmp)")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="cargohold-bench-", dir=args.dir or "/var/tmp"))
    try:
        state = state_dict(args.mb)
        size = sum(t.numel() * t.element_size() for t in state.values())
        mb = size / 1e6
        print(f"state dict: {len(state)} tensors, {mb:.0f} MB; writing to {root}")

        # Synchronous: the baseline and cargohold's save, alternating, same disk.
        sync_ckpt = CheckpointManager(root / "sync", keep_last=1, warn_ephemeral=False)
        plain, sync = [], []
        for step in range(args.repeat):
            # Each timing starts with no dirty pages left by the one before (os.sync), and the
            # order alternates, so neither side pays for the other's writeback.
            for which in ((0, 1) if step % 2 == 0 else (1, 0)):
                os.sync()
                if which == 0:
                    plain.append(baseline(state, root, step))
                else:
                    began = time.perf_counter()
                    sync_ckpt.save(step, {"model.pt": torch_file(state)})
                    sync.append(time.perf_counter() - began)
                    sync_ckpt.wait()  # the old checkpoint's background deletion, untimed
        sync_ckpt.close()

        # Asynchronous, inside a training loop: how long each save_async call holds it up.
        async_ckpt = CheckpointManager(root / "async", keep_last=1, warn_ephemeral=False)
        blocked = []
        for step in range(args.repeat + 1):
            os.sync()
            began = time.perf_counter()
            async_ckpt.save_async(step, {"model.pt": torch_file(state)})
            blocked.append(time.perf_counter() - began)
            train_a_little(state, args.train_seconds)
        async_ckpt.close()
        first, blocked = blocked[0], blocked[1:]

        t_plain, t_sync, t_blocked = (statistics.median(x) for x in (plain, sync, blocked))
        ratio = t_plain / t_sync
        share = t_blocked / t_sync
        print(f"baseline torch.save + fsync : {t_plain:6.2f} s  {mb / t_plain:7.0f} MB/s")
        print(f"cargohold save (sync)       : {t_sync:6.2f} s  {mb / t_sync:7.0f} MB/s"
              f"  = {ratio:.2f}x baseline throughput (goal >= 0.90)"
              f"  {'PASS' if ratio >= 0.9 else 'FAIL'}")
        print(f"cargohold save_async blocks : {t_blocked:6.3f} s  = {share:.1%} of the sync save"
              f" (goal <= 10%)  {'PASS' if share <= 0.10 else 'FAIL'}")
        print(f"  (the first save_async also allocates its staging buffers: {first:.2f} s, once)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
