"""Fault injection: a process saving checkpoints in a loop is SIGKILLed at random moments.

After every kill, the newest checkpoint must restore with exactly the data saved for its step,
the restored step must never go backwards, and no debris may pile up.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from cargohold.checkpoint import CheckpointManager
from tests.conftest import SRC

KILLS = 40

WRITER = textwrap.dedent(
    """
    import random, sys
    from cargohold.checkpoint import CheckpointManager

    def payload(step, part):
        rnd = random.Random(step * 7919 + part)
        return rnd.randbytes(rnd.randint(0, 3 << 20))

    ckpt = CheckpointManager(sys.argv[1], keep_last=2, metric="loss", warn_ephemeral=False)
    latest = ckpt.restore_latest()
    step = latest.step + 1 if latest else 0
    print("start", step, flush=True)
    while True:
        ckpt.save(step, {"model.bin": payload(step, 0), "optim/state.bin": payload(step, 1)},
                  metrics={"loss": 1.0 / (1 + step)})
        step += 1
    """
)


def _payload(step: int, part: int) -> bytes:
    rnd = random.Random(step * 7919 + part)
    return rnd.randbytes(rnd.randint(0, 3 << 20))


def test_sigkill_at_random_moments_never_loses_or_corrupts(tmp_path: Path) -> None:
    rng = random.Random(20261127)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    last_step = -1
    saved_any = 0
    killed_mid_save = 0
    for _ in range(KILLS):
        with subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
            assert child.stdout is not None
            assert child.stdout.readline().startswith(b"start")
            time.sleep(rng.uniform(0.0, 0.4))
            child.send_signal(signal.SIGKILL)
            child.communicate()
        assert child.returncode == -signal.SIGKILL
        killed_mid_save += any(n.startswith(".") for n in os.listdir(tmp_path))

        ckpt = CheckpointManager(tmp_path, keep_last=2, metric="loss", warn_ephemeral=False)
        latest = ckpt.restore_latest()
        if latest is None:
            assert last_step == -1, "a checkpoint disappeared"
            continue
        saved_any += 1
        assert latest.step >= last_step, "the restored step went backwards"
        last_step = latest.step
        assert latest.read_bytes("model.bin") == _payload(latest.step, 0)
        assert latest.read_bytes("optim/state.bin") == _payload(latest.step, 1)
        names = os.listdir(tmp_path)
        assert not [n for n in names if n.startswith(".")], f"debris left: {names}"
        # keep_last=2, plus the best by loss (the newest here), plus one in-flight replace.
        assert len(names) <= 3, names
    assert saved_any >= KILLS // 2, "the writer hardly ever got a checkpoint out"
    # The kills must really land inside saves, or this test proves nothing.
    assert killed_mid_save >= KILLS // 4, f"only {killed_mid_save} kills hit a save in flight"
