"""What finding the resume point costs `cargohold run`, per access path, against the library's own
lookup, measured in one run.

    python3 benchmarks/resume.py [--checkpoints 3] [--mb 256] [--repeat 3]

Saves ``--checkpoints`` checkpoints of ``--mb`` MB each (crc32, the library's default) into a
fresh volume with the checkpoint library, then times, best of ``--repeat``:

  peer        the library's own choice on this host (``_format.latest_valid``: every checksum of
              the newest checkpoint), what a job does under CARGOHOLD_RESUME=auto
  local       ``cargohold run``'s lookup through the volume's folder (sizes and checksums of the
              newest candidate)
  archive     ``cargohold run``'s lookup through the Engine API's archive stream (the whole
              store streams once; sizes, structure and crc32 as it passes)

and prints each with its ratio to the peer. Needs root and a local engine. The volume is removed
at the end, pass or fail.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from cargohold.checkpoint import CheckpointManager, _format  # noqa: E402
from cargohold.engine import connect  # noqa: E402
from cargohold.resume import latest_whole_checkpoint  # noqa: E402
from cargohold.volumes import ACCESS_ENV, open_volume  # noqa: E402


def best_of(repeat: int, call: Callable[[], object]) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - began)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    engine = connect()
    name = f"cargohold-bench-resume-{secrets.token_hex(4)}"
    engine.create_volume(name, {})
    try:
        mountpoint = Path(engine.volume(name).mountpoint or "")
        manager = CheckpointManager(str(mountpoint), keep_last=0, warn_ephemeral=False)
        for step in range(1, args.checkpoints + 1):
            manager.save(step, {"model.bin": os.urandom(args.mb << 20)})
        manager.close()
        os.sync()

        def lookup(access: str) -> Callable[[], object]:
            def call() -> object:
                os.environ[ACCESS_ENV] = access
                with open_volume(engine, name).entries() as entries:
                    return latest_whole_checkpoint(entries)

            return call

        peer, found = best_of(args.repeat, lambda: _format.latest_valid(mountpoint))
        assert isinstance(found, Path)
        rows = [("peer: library's latest_valid (checksums)", peer, found.name)]
        for access in ("local", "archive"):
            took, answer = best_of(args.repeat, lookup(access))
            rows.append((f"cargohold run lookup, {access}", took, str(answer)))
        total = args.checkpoints * args.mb
        print(f"{args.checkpoints} checkpoints x {args.mb} MB ({total} MB), best of {args.repeat}")
        for label, took, answer in rows:
            print(f"  {label:44} {took:8.3f} s  x{took / peer:5.2f}  -> {answer}")
    finally:
        engine.remove_volume(name)


if __name__ == "__main__":
    main()
