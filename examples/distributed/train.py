"""Data-parallel training under torchrun, with checkpoints that survive any rank dying.

    torchrun --standalone --nproc-per-node 2 train.py --steps 60

Each rank is one process; ``CheckpointManager`` reads RANK/WORLD_SIZE from torchrun and, as a
process group is initialised, agrees with the other ranks over private gloo groups. DCP writes
the shards (``dcp_async_save``), cargohold commits them once every rank's part is durable,
keeps the last three and the best, and ``restore_latest`` gives every rank the same step.
On SIGTERM (``docker stop``) every rank saves the same final step at ``preemption_point``.
"""

from __future__ import annotations

import argparse
import os
import signal

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.nn.parallel import DistributedDataParallel

from cargohold.checkpoint import CheckpointManager
from cargohold.checkpoint.dcp import dcp_async_save, dcp_save


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic synthetic regression batch per step and rank."""
    g = torch.Generator().manual_seed(step * 1000 + rank)
    x = torch.randn(64, 32, generator=g)
    return x, x[:, :4].sin()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--save-every", type=int, default=5)
    parser.add_argument(
        "--kill-rank-at",
        type=int,
        default=None,
        help="testing: the last rank SIGKILLs itself at this step (first run)",
    )
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.Tanh(), torch.nn.Linear(128, 4))
    model = DistributedDataParallel(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def state() -> dict[str, object]:
        model_state, optim_state = get_state_dict(model, optimizer)
        return {"model": model_state, "optim": optim_state}

    ckpt = CheckpointManager(keep_last=3, metric="loss")  # folder: $CARGOHOLD_CHECKPOINT_DIR
    step = 0
    ckpt.handle_sigterm(lambda: dcp_save(ckpt, step, state()))
    latest = ckpt.restore_latest()
    start = 0
    if latest is not None:
        loaded = state()
        dcp.load(loaded, checkpoint_id=latest.path)  # plain DCP reads a cargohold checkpoint
        set_state_dict(
            model, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"]
        )
        start = latest.step + 1
    if rank == 0:
        print(
            f"world {world}: " + (f"resumed from step {latest.step}" if latest else "fresh start"),
            flush=True,
        )

    loss = torch.tensor(0.0)
    for step in range(start, args.steps):
        x, y = batch(step, rank)
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.save_every == 0 or step == args.steps - 1:
            dcp_async_save(ckpt, step, state(), metrics={"loss": loss.item()})
            if (
                args.kill_rank_at is not None
                and step >= args.kill_rank_at
                and latest is None
                and rank == world - 1
            ):
                os.kill(os.getpid(), signal.SIGKILL)  # a rank dies in the middle of a save
        ckpt.preemption_point()
    ckpt.close()
    if rank == 0:
        print(f"done: step {args.steps - 1}, loss {loss.item():.4f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
