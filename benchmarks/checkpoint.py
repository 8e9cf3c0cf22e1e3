"""Checkpoint save speed: cargohold.checkpoint against plain ``torch.save`` + fsync.

Run on demand (needs torch: ``pip install torch==2.13.0``)::

    python3 benchmarks/checkpoint.py [--mb 500] [--repeat 3] [--dir PATH] [--ranks 4]

Prints, from one run on one disk:
  - baseline: ``torch.save`` of the state dict to a file, flush, fsync;
  - sync: ``CheckpointManager.save`` (temporary folder, fsync of every file, sha256, manifest,
    rename, fsync of the parent) -- goal: throughput >= 0.9x the baseline;
  - async: how long ``save_async`` blocks the training loop -- goal: <= 10% of the sync save.
With ``--ranks N`` (N > 1): N processes on a gloo process group, each holding 1/N of the state,
save the same sharded state with cargohold (its own files), with DCP ``save``/``async_save``
and with DCP writing under cargohold's commit (``dcp_save``/``dcp_async_save``): total bytes
on disk and the per-rank blocking time (mean and worst rank), side by side.
Each figure is the median of --repeat runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
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


def _rank_bench(rank: int, world: int, port: int, args: argparse.Namespace, root: Path) -> None:
    """One rank of the --ranks case; writes its timings to root/result-<rank>.json."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    from cargohold.checkpoint.dcp import dcp_async_save, dcp_save

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    background = dist.new_group(backend="gloo")  # DCP's advice for async_save
    torch.manual_seed(rank)
    shard = {f"rank{rank}.{k}": v for k, v in state_dict(max(1, args.mb // world)).items()}
    times: dict[str, list[float]] = {}

    def timed(name: str, call: Callable[..., object], *args: object, **kwargs: object) -> object:
        dist.barrier()
        if rank == 0:
            os.sync()  # no dirty pages of the previous save in this one's time
        dist.barrier()
        began = time.perf_counter()
        result = call(*args, **kwargs)
        times.setdefault(name, []).append(time.perf_counter() - began)
        return result

    ours = CheckpointManager(root / "cargohold", keep_last=1, warn_ephemeral=False)
    under = CheckpointManager(root / "cargohold-dcp", keep_last=1, warn_ephemeral=False)
    for step in range(args.repeat):
        timed("cargohold sync", ours.save, step, {f"model-{rank}.pt": torch_file(shard)})
        ours.wait()
        timed("dcp sync", dcp.save, shard, checkpoint_id=str(root / "dcp" / str(step)))
        timed("cargohold+dcp sync", dcp_save, under, step, shard)
        under.wait()
    base = args.repeat
    for step in range(base, base + args.repeat + 1):
        timed("cargohold async", ours.save_async, step, {f"model-{rank}.pt": torch_file(shard)})
        train_a_little(shard, args.train_seconds)
        ours.wait()
    for step in range(base, base + args.repeat + 1):
        folder = str(root / "dcp" / str(step))
        started = timed("dcp async", dcp.async_save, shard, checkpoint_id=folder,
                        process_group=background)
        train_a_little(shard, args.train_seconds)
        started.result()  # type: ignore[attr-defined]
    for step in range(base, base + args.repeat + 1):
        timed("cargohold+dcp async", dcp_async_save, under, step, shard)
        train_a_little(shard, args.train_seconds)
        under.wait()
    ours.close()
    under.close()
    for name in [n for n in times if "async" in n]:
        times[name] = times[name][1:]  # the first also allocates staging buffers, once
    (root / f"result-{rank}.json").write_text(json.dumps(times))
    dist.destroy_process_group()


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def ranks_case(args: argparse.Namespace, root: Path) -> None:
    """Fork --ranks processes (torch is imported once), gather their timings, print them."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    pids = []
    for rank in range(args.ranks):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _rank_bench(rank, args.ranks, port, args, root)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    failed = [pid for pid in pids if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0]
    if failed:
        raise SystemExit(f"{len(failed)} rank(s) failed")
    results = [json.loads((root / f"result-{r}.json").read_text()) for r in range(args.ranks)]
    latest = {
        "cargohold": max((p for p in (root / "cargohold").glob("step-*")), default=root),
        "dcp": root / "dcp" / str(2 * args.repeat),
        "cargohold+dcp": max((p for p in (root / "cargohold-dcp").glob("step-*")), default=root),
    }
    size = {name: _folder_bytes(folder) / 1e6 for name, folder in latest.items()}
    print(f"{args.ranks} ranks (gloo), {args.mb} MB of state in all, {args.mb / args.ranks:.0f} MB"
          f" per rank; per-rank time, median of {args.repeat}: mean over ranks / worst rank")
    print(f"{'':16s} {'sync save (s)':>18s} {'async blocks (s)':>20s} {'on disk (MB)':>14s}")
    for name in ("cargohold", "dcp", "cargohold+dcp"):
        cells = []
        for kind in ("sync", "async"):
            per_rank = [statistics.median(r[f"{name} {kind}"]) for r in results]
            cells.append(f"{statistics.mean(per_rank):7.3f} / {max(per_rank):7.3f}")
        print(f"{name:16s} {cells[0]:>18s} {cells[1]:>20s} {size[name]:14.1f}")
    ours = statistics.mean(statistics.median(r["cargohold async"]) for r in results)
    theirs = statistics.mean(statistics.median(r["dcp async"]) for r in results)
    print(f"cargohold save_async blocks {ours / theirs:.2f}x as long as DCP async_save")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500, help="state dict size in MB")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--train-seconds", type=float, default=2.0,
                        help="training time between two saves")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to write (default: a temporary folder on /var/tmp)")
    parser.add_argument("--ranks", type=int, default=1,
                        help="N > 1: the multi-rank case against DCP instead")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="cargohold-bench-", dir=args.dir or "/var/tmp"))
    if args.ranks > 1:
        try:
            ranks_case(args, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return
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
