"""Many ranks, one checkpoint, without torch: plain processes with RANK/WORLD_SIZE coordinating
through the shared folder alone. Real processes, real files, real SIGKILLs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cargohold.checkpoint import CheckpointError, CheckpointManager
from cargohold.checkpoint._ranks import detect_ranks
from tests.conftest import SRC

WORLD = 4

WORKER = textwrap.dedent(
    """
    import json, os, random, sys, time
    from cargohold.checkpoint import CheckpointError, CheckpointManager

    def payload(step, rank):
        rnd = random.Random(step * 1009 + rank)
        return rnd.randbytes(rnd.randint(0, 1 << 20))

    folder, steps, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    ckpt = CheckpointManager(folder, keep_last=2, metric="loss", timeout=timeout,
                             warn_ephemeral=False)
    rank = ckpt.rank
    if os.environ.get("FINAL"):
        step = 0
        ckpt.handle_sigterm(lambda: ckpt.save(step, {f"shard-{rank}.bin": payload(step, rank),
                                                     f"final-{rank}": b"yes"}))
    latest = ckpt.restore_latest()
    if latest is not None:  # every rank checks every shard, bit for bit
        for r in range(ckpt.world_size):
            if latest.read_bytes(f"shard-{r}.bin") != payload(latest.step, r):
                print("MISMATCH", latest.step, r, flush=True)
                sys.exit(3)
    print(json.dumps({"rank": rank, "resumed": None if latest is None else latest.step}),
          flush=True)
    step = 0 if latest is None else latest.step + 1
    try:
        while step < steps:
            files = {f"shard-{rank}.bin": payload(step, rank)}
            if step % 2:
                ckpt.save_async(step, files, metrics={"loss": 1 / (1 + step)})
            else:
                ckpt.save(step, files, metrics={"loss": 1 / (1 + step)})
            if os.environ.get("FINAL"):
                ckpt.preemption_point()
            step += 1
        ckpt.close()
    except CheckpointError as exc:
        print("CHECKPOINT-ERROR", exc, flush=True)
        sys.exit(4)
    print("done", flush=True)
    """
)


def _payload(step: int, rank: int) -> bytes:
    rnd = random.Random(step * 1009 + rank)
    return rnd.randbytes(rnd.randint(0, 1 << 20))


def _start(folder: Path, steps: int, timeout: float = 20.0,
           extra: dict[str, str] | None = None) -> list[subprocess.Popen[str]]:
    procs = []
    for rank in range(WORLD):
        env = {**os.environ, "PYTHONPATH": str(SRC), "RANK": str(rank),
               "WORLD_SIZE": str(WORLD), **(extra or {})}
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(folder), str(steps), str(timeout)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _resumed(procs: list[subprocess.Popen[str]]) -> list[int | None]:
    steps = []
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("{"), (line, proc.stderr.read() if proc.stderr else "")
        steps.append(json.loads(line)["resumed"])
    return steps


def _finish(procs: list[subprocess.Popen[str]], timeout: float = 60) -> list[tuple[int, str]]:
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results.append((proc.returncode, out + err))
    return results


def _committed(folder: Path) -> list[int]:
    manager = CheckpointManager(folder, keep_last=0, warn_ephemeral=False, rank=0, world_size=1)
    try:
        return [c.step for c in manager.list()]
    finally:
        manager.close()


def test_rank_from_launcher_environments() -> None:
    assert detect_ranks(None, None, {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == (
        detect_ranks(3, 8).__class__(3, 8, 1))
    assert detect_ranks(None, None, {"SLURM_PROCID": "2", "SLURM_NTASKS": "4"}).rank == 2
    assert detect_ranks(None, None, {"OMPI_COMM_WORLD_RANK": "1",
                                     "OMPI_COMM_WORLD_SIZE": "2"}).world_size == 2
    assert detect_ranks(None, None, {}).world_size == 1
    with pytest.raises(CheckpointError, match="not integers"):
        detect_ranks(None, None, {"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(CheckpointError, match="not a valid rank"):
        detect_ranks(4, 4)


def test_four_ranks_commit_one_checkpoint_per_step(tmp_path: Path) -> None:
    procs = _start(tmp_path, steps=6)
    assert _resumed(procs) == [None] * WORLD
    for code, output in _finish(procs):
        assert code == 0, output
    # The ended session keeps no pile of answers (one per save would grow without end).
    session = next(tmp_path.glob(".session-*"))
    assert len(list(session.glob("outcome-*"))) == 1, os.listdir(session)
    assert _committed(tmp_path) == [4, 5]
    manifest = json.loads((tmp_path / "step-0000000005" / "manifest.json").read_text())
    assert manifest["world_size"] == WORLD
    assert manifest["ranks"] == {str(r): [f"shard-{r}.bin"] for r in range(WORLD)}
    for rank in range(WORLD):
        assert (tmp_path / "step-0000000005" / f"shard-{rank}.bin").read_bytes() == _payload(
            5, rank)
    # Only committed checkpoints and the (dead) session pointer remain: no pending folder.
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith(".")) == [".session.json"]
    # The next start resumes every rank from the same step.
    procs = _start(tmp_path, steps=8)
    assert _resumed(procs) == [5] * WORLD
    for code, output in _finish(procs):
        assert code == 0, output
    assert _committed(tmp_path) == [6, 7]


def test_a_rank_killed_mid_save_fails_the_others_naming_it(tmp_path: Path) -> None:
    procs = _start(tmp_path, steps=10**6, timeout=30.0)
    _resumed(procs)
    time.sleep(0.5)
    procs[2].send_signal(signal.SIGKILL)
    results = _finish(procs, timeout=60)
    assert results[2][0] == -signal.SIGKILL
    for rank in (0, 1, 3):
        code, output = results[rank]
        assert code == 4, output
        assert "rank 2" in output, output
    before = _committed(tmp_path)
    # The survivors noticed a dead rank long before the 30 s timeout: its lock was free.
    # Restart: the dead session's pending folder is removed, every rank resumes the same step.
    procs = _start(tmp_path, steps=before[-1] + 3)
    assert _resumed(procs) == [before[-1]] * WORLD
    for code, output in _finish(procs):
        assert code == 0, output
    assert not [n for n in os.listdir(tmp_path) if n.startswith((".pending-", ".tmp-"))]


def test_a_rank_that_never_answers_times_out_with_its_name(tmp_path: Path) -> None:
    ranks = [CheckpointManager(tmp_path, rank=r, world_size=2, timeout=1.0,
                               warn_ephemeral=False) for r in (0, 1)]
    # Rank 1 is alive (it holds its lock) but never saves: rank 0 must give up, naming it.
    began = time.monotonic()
    with pytest.raises(CheckpointError, match=r"rank 1 did not finish within 1 s"):
        ranks[0].save(1, {"shard-0": b"x"})
    assert time.monotonic() - began < 10
    assert _committed(tmp_path) == []
    for manager in ranks:
        manager.close()


def test_two_ranks_writing_the_same_name_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC), "WORLD_SIZE": "2"}
    script = textwrap.dedent(
        """
        import sys
        from cargohold.checkpoint import CheckpointError, CheckpointManager
        ckpt = CheckpointManager(sys.argv[1], timeout=20, warn_ephemeral=False)
        try:
            ckpt.save(1, {"model.pt": b"same name on every rank"})
        except CheckpointError as exc:
            print("ERROR", exc, exc.hint)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)],
                              env={**env, "RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert all("ERROR" in o for o in outputs), outputs
    assert any("already written by another rank" in o for o in outputs), outputs
    assert _committed(tmp_path) == []


def test_a_single_process_reader_never_deletes_a_live_ranked_save(tmp_path: Path) -> None:
    # Rank 1 never joins: closing waits `timeout` for it (a short run's slow rank), so short.
    leader = CheckpointManager(tmp_path, rank=0, world_size=2, timeout=2, warn_ephemeral=False)
    session = leader._coordinator.session  # type: ignore[union-attr]
    pending = tmp_path / f".pending-{session}-000000-step-0000000001"
    pending.mkdir()
    (pending / "shard-1").write_bytes(b"in flight")
    reader = CheckpointManager(tmp_path, warn_ephemeral=False, rank=0, world_size=1)
    assert reader.restore_latest() is None
    assert (pending / "shard-1").exists()
    reader.close()
    leader.close()  # the session ends: now its leftovers are debris
    CheckpointManager(tmp_path, warn_ephemeral=False, rank=0, world_size=1).close()
    assert not pending.exists()


# With the gloo ranks' kills (test_checkpoint_torch.py) and the deterministic deaths there and
# above, well over 30 SIGKILLs across the suite.
KILLS = 30


def test_sigkill_a_random_rank_at_random_moments(tmp_path: Path) -> None:
    """Seeded: kill one random rank at a random moment, restart all ranks, check every shard."""
    rng = random.Random(110011)
    last = -1
    kills_mid_save = 0
    for _ in range(KILLS):
        procs = _start(tmp_path, steps=10**6, timeout=15.0)
        resumed = _resumed(procs)
        assert len(set(resumed)) == 1, f"ranks resumed from different steps: {resumed}"
        step = resumed[0]
        if step is not None:
            assert step >= last, "the resumed step went backwards"
            last = step
        time.sleep(rng.uniform(0.05, 0.8))
        victim = rng.randrange(WORLD)
        procs[victim].send_signal(signal.SIGKILL)
        kills_mid_save += any(n.startswith(".pending-") for n in os.listdir(tmp_path))
        results = _finish(procs, timeout=60)
        for rank, (code, output) in enumerate(results):
            assert "MISMATCH" not in output, output
            if rank == victim:
                assert code == -signal.SIGKILL, output
            else:  # the survivors save in a loop: each fails its save, naming the dead rank
                assert code == 4, output
                assert f"rank {victim}" in output and "died" in output, output
    final = _start(tmp_path, steps=0)
    resumed = _resumed(final)
    assert len(set(resumed)) == 1 and resumed[0] is not None and resumed[0] >= last
    for code, output in _finish(final):
        assert code == 0, output
    assert last >= KILLS // 2, "the job hardly ever got a checkpoint committed"
    assert kills_mid_save >= KILLS // 2, f"only {kills_mid_save} kills hit a save in flight"


def test_sigterm_on_every_rank_commits_the_final_checkpoint_once(tmp_path: Path) -> None:
    procs = _start(tmp_path, steps=10**6, extra={"FINAL": "1"})
    _resumed(procs)
    time.sleep(0.7)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    results = _finish(procs, timeout=60)
    assert [code for code, _ in results] == [143] * WORLD, results
    ckpt = CheckpointManager(tmp_path, keep_last=0, warn_ephemeral=False, rank=0, world_size=1)
    latest = ckpt.restore_latest()
    assert latest is not None
    for rank in range(WORLD):
        assert latest.read_bytes(f"final-{rank}") == b"yes"
        assert latest.read_bytes(f"shard-{rank}.bin") == _payload(latest.step, rank)
    finals = [c.step for c in ckpt.list() if (c.path / "final-0").exists()]
    assert finals == [latest.step]


@pytest.mark.parametrize(("record", "reason"), [
    ({"rank": 1, "step": 1, "files": {"../escape": {"size": 1, "crc32": "0"}}}, "plain relative"),
    ({"rank": 1, "step": 1, "files": {"shard-0": {"size": 1, "crc32": "0"}}}, "two ranks"),
    ({"rank": 1, "step": 2, "files": {}}, "saved step 2"),
    ({"rank": 1, "step": 1, "files": {"shard-1": {"size": 99, "crc32": "0"}}}, "99"),
    ({"rank": 1, "step": 1, "files": "not a mapping"}, "lists no files"),
    ("not even an object", "unreadable"),
])
def test_a_hostile_rank_record_never_gets_committed(tmp_path: Path, record: object,
                                                    reason: str) -> None:
    """Whoever can write the shared folder can forge a rank's record: rank 0 judges it."""
    import threading

    leader = CheckpointManager(tmp_path, rank=0, world_size=2, timeout=10, warn_ephemeral=False)
    session = leader._coordinator.session  # type: ignore[union-attr]
    failure: list[BaseException] = []

    def save() -> None:
        try:
            leader.save(1, {"shard-0": b"x"})
        except CheckpointError as exc:
            failure.append(exc)

    saving = threading.Thread(target=save)
    saving.start()
    pending = tmp_path / f".pending-{session}-000000-step-0000000001"
    deadline = time.monotonic() + 10
    while not (pending / ".rank-00000.json").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    (pending / "shard-1").write_bytes(b"y")
    (pending / ".rank-00001.json").write_text(json.dumps(record))
    saving.join(timeout=30)
    assert failure and failure[0].hint, "a forged record was committed"
    assert reason in str(failure[0])
    leader.close()
    assert not (tmp_path / "step-0000000001").exists()
    assert not (tmp_path.parent / "escape").exists()
