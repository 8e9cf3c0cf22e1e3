"""Volume data mobility: cargohold against the recipes it replaces, measured in one run.

    python3 benchmarks/volumes.py [--images 10000] [--image-kb 50] [--checkpoint-mb 512]
                                  [--skip-slow] [--dir /var/tmp]

Generates a working set (image-like files plus two float32 checkpoint files, 1.5 GB by
default), then times, on this machine and this engine:

  baselines   cp -a + sync · docker cp into a volume · the `tar czf` backup recipe in a
              container · the `tar xzf` restore recipe
  cargohold   ingest · full snapshot · second snapshot (unchanged) · restore · (and the
              Engine-API path of ingest and snapshot, for machines where the volume's folder
              cannot be read)

and prints each time with its ratio to the baseline it replaces, the goals, and the peak
memory (max RSS) of every cargohold process. Needs root and a local engine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{result.stderr[-2000:]}")
    return result.stdout


PEAK_RSS_MB: dict[str, float] = {}


# A small process starts each measured command and reports its children's peak memory: read
# from this process, ru_maxrss would include what this one held when it forked.
_MEASURE = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter(); code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(code)\n"
)


def timed(*args: str, env: dict[str, str] | None = None, label: str = "") -> float:
    """Wall time of a command; its peak memory is kept under ``label``."""
    result = subprocess.run([sys.executable, "-c", _MEASURE, *args], capture_output=True,
                            text=True, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{result.stderr[-2000:]}")
    seconds, max_rss_kb = result.stdout.split()
    if label:
        PEAK_RSS_MB[label] = int(max_rss_kb) / 1024
    return float(seconds)


def cargohold(*args: str, env: dict[str, str] | None = None) -> float:
    return timed(sys.executable, "-m", "cargohold", *args, label=" ".join(args[:1]),
                 env={"PYTHONPATH": str(REPO / "src"), **(env or {})})


def drop_caches() -> None:
    os.sync()
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def make_working_set(root: Path, images: int, image_kb: int, checkpoint_mb: int) -> int:
    rng = np.random.default_rng(0)
    total = 0
    for i in range(images):
        folder = root / "dataset" / f"class-{i % 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        # Image-like: smooth structure plus noise, compressible only a little, like JPEG data.
        data = (rng.integers(0, 256, image_kb * 1024, dtype=np.uint8)).tobytes()
        (folder / f"img-{i:05d}.jpg").write_bytes(data)
        total += len(data)
    (root / "checkpoints").mkdir()
    for name in ("epoch-010.pt", "epoch-020.pt"):
        weights = rng.standard_normal(checkpoint_mb * 1024 * 1024 // 4, dtype=np.float32)
        weights.tofile(root / "checkpoints" / name)
        total += weights.nbytes
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--image-kb", type=int, default=50)
    parser.add_argument("--checkpoint-mb", type=int, default=512)
    parser.add_argument("--skip-slow", action="store_true",
                        help="skip the tar czf / tar xzf recipes (about 100 s)")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "src"))
    from cargohold.baseimage import ensure_base_image
    from cargohold.engine import connect

    image = ensure_base_image(connect())
    work = Path(tempfile.mkdtemp(prefix="cargohold-bench-", dir=args.dir))
    tag = secrets.token_hex(3)
    vols = {k: f"bench-{tag}-{k}" for k in ("dockercp", "recipe", "ingest", "restored",
                                             "archive", "untar", "rawcopy")}
    env = {"CARGOHOLD_REPO": str(work / "repo"), "XDG_CACHE_HOME": str(work / "cache")}
    results: dict[str, float] = {}
    try:
        source = work / "source"
        size = make_working_set(source, args.images, args.image_kb, args.checkpoint_mb)
        gb = size / 1e9
        print(f"working set: {args.images} image files + 2 x {args.checkpoint_mb} MB "
              f"checkpoints = {gb:.2f} GB in {source}")

        drop_caches()
        results["cp -a + sync"] = timed("sh", "-c", f"cp -a '{source}' '{work}/copy' && sync")
        shutil.rmtree(work / "copy")

        for v in vols.values():
            run("docker", "volume", "create", v)
        # The same raw copy, but into a volume's folder: on some hosts (this one) creating
        # files under /var/lib/docker costs far more than elsewhere on the same disk, and every
        # way into a volume pays that.
        mountpoint = run("docker", "volume", "inspect", "-f", "{{.Mountpoint}}",
                         vols["rawcopy"]).strip()
        drop_caches()
        results["cp -a into a volume + sync"] = timed(
            "sh", "-c", f"cp -a '{source}/.' '{mountpoint}/' && sync")
        drop_caches()
        helper = run("docker", "create", "-v", f"{vols['dockercp']}:/data", image, "true").strip()
        results["docker cp"] = timed("sh", "-c", f"docker cp '{source}/.' {helper}:/data && sync")
        run("docker", "rm", helper)

        drop_caches()
        results["ingest"] = cargohold("ingest", str(source), vols["ingest"], env=env)
        drop_caches()
        results["ingest (engine API)"] = cargohold(
            "ingest", str(source), vols["archive"], env={**env, "CARGOHOLD_VOLUME_ACCESS":
                                                         "archive"})

        if not args.skip_slow:
            drop_caches()
            results["tar czf recipe"] = timed(
                "docker", "run", "--rm", "-v", f"{vols['ingest']}:/data:ro", "-v",
                f"{work}:/backup", image, "tar", "czf", "/backup/backup.tar.gz", "-C", "/data",
                ".")
            drop_caches()
            results["tar xzf recipe"] = timed(
                "docker", "run", "--rm", "-v", f"{vols['untar']}:/data", "-v",
                f"{work}:/backup", image, "sh", "-c",
                "tar xzf /backup/backup.tar.gz -C /data && sync")

        drop_caches()
        results["snapshot (full)"] = cargohold("snapshot", vols["ingest"], env=env)
        results["snapshot (unchanged)"] = cargohold("snapshot", vols["ingest"], env=env)
        # The same again, read from the snapshot's own report: the work without the ~0.3 s of
        # Python start-up and imports that every command pays.
        again = json.loads(run(sys.executable, "-m", "cargohold", "snapshot", vols["ingest"],
                               "--json", env={"PYTHONPATH": str(REPO / "src"), **env}))
        results["snapshot (unchanged, in-process)"] = float(again["seconds"])
        drop_caches()
        results["snapshot (full, engine API)"] = cargohold(
            "snapshot", vols["archive"], "--repo", str(work / "repo-api"),
            env={**env, "CARGOHOLD_VOLUME_ACCESS": "archive"})
        snaps = json.loads(run(sys.executable, "-m", "cargohold", "snapshots", "--json",
                               env={"PYTHONPATH": str(REPO / "src"), **env}))
        drop_caches()
        results["restore"] = cargohold("restore", snaps[0]["id"], vols["restored"], env=env)

        print()
        print(f"{'operation':<30} {'seconds':>8} {'GB/s':>6}   ratio to its baseline")
        goals = [
            ("ingest", "docker cp", "faster than docker cp", lambda r: r < 1.0),
            ("snapshot (full)", "tar czf recipe", ">= 8x faster than tar czf",
             lambda r: r <= 1 / 8),
            ("snapshot (full)", "cp -a + sync", "within 2x of cp -a + sync", lambda r: r <= 2),
            ("snapshot (unchanged)", "snapshot (full)", "<= 10% of the first", lambda r: r <= 0.1),
            ("snapshot (unchanged, in-process)", "snapshot (full)", "<= 10% of the first",
             lambda r: r <= 0.1),
            ("restore", "cp -a + sync", "within 2x of cp -a + sync", lambda r: r <= 2),
            ("restore", "cp -a into a volume + sync", "within 2x of that raw copy",
             lambda r: r <= 2),
            ("ingest", "cp -a into a volume + sync", "(for reference)", lambda r: True),
            ("restore", "tar xzf recipe", "faster than tar xzf", lambda r: r < 1),
        ]
        for name, seconds in results.items():
            print(f"{name:<30} {seconds:8.2f} {gb / seconds:6.2f}")
        print()
        for name, base, goal, ok in goals:
            if name in results and base in results:
                ratio = results[name] / results[base]
                speedup = results[base] / results[name]
                print(f"{name:<22} vs {base:<16} {ratio:6.3f}x the time ({speedup:5.1f}x faster)"
                      f"  goal: {goal:<28} {'PASS' if ok(ratio) else 'FAIL'}")
        rss = max(PEAK_RSS_MB.values())
        each = ", ".join(f"{k} {v:.0f} MB" for k, v in PEAK_RSS_MB.items())
        print(f"\npeak memory (max RSS) of the cargohold processes: {each}")
        print(f"largest: {rss:.0f} MB  goal: < 300 MB  {'PASS' if rss < 300 else 'FAIL'}")
    finally:
        for v in vols.values():
            subprocess.run(["docker", "volume", "rm", "-f", v], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
