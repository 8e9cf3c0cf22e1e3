"""Scanning a container's writable layer: `cargohold scan` on a container with many changed
files, against `docker diff` (which only lists paths) in the same run.

    python3 benchmarks/scan.py [--files 10000]

Goal: a scan of 10,000 changed files in under 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

WRITE = """
import os, sys
n = int(sys.argv[1])
for i in range(n):
    folder = f"/workspace/run/shard-{i % 100:03d}"
    os.makedirs(folder, exist_ok=True)
    suffix = ".pt" if i % 10 == 0 else ".jpg"
    with open(f"{folder}/item-{i:05d}{suffix}", "wb") as f:
        f.write(b"x" * 256)
"""


def timed(*args: str) -> tuple[float, str]:
    began = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    elapsed = time.perf_counter() - began
    if result.returncode not in (0, 1):
        sys.exit(f"failed: {' '.join(args)}\n{result.stderr[-2000:]}")
    return elapsed, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from cargohold.baseimage import ensure_base_image
    from cargohold.engine import connect

    image = ensure_base_image(connect())
    name = f"bench-scan-{secrets.token_hex(3)}"
    try:
        subprocess.run(["docker", "run", "--name", name, image, "python3", "-c", WRITE,
                        str(args.files)], check=True, capture_output=True)
        diff_time, diff_out = timed("docker", "diff", name)
        scan_time, scan_out = timed(sys.executable, "-m", "cargohold", "scan", name, "--json")
        report = json.loads(scan_out)[0]
        print(f"container with {args.files} changed files "
              f"({len(diff_out.splitlines())} paths in docker diff)")
        print(f"docker diff (paths only)      : {diff_time:6.2f} s")
        print(f"cargohold scan (sized, ranked): {scan_time:6.2f} s  "
              f"= {scan_time / diff_time:.1f}x docker diff; {len(report['files'])} files, "
              f"{report['worth_keeping']} worth keeping")
        print(f"goal: under 2 s for 10,000 files  {'PASS' if scan_time < 2 else 'FAIL'}")
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


if __name__ == "__main__":
    main()
