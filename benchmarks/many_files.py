"""Millions of small files (issue 16): cargohold against borg and cp -a, peak memory included.

    python3 benchmarks/many_files.py [--files 200000] [--per-folder 1000] [--dir /var/tmp]
                                     [--skip-borg]

Generates a tree of small files (0.2-2 KB, image-dataset-like folders), then times first
snapshot, unchanged snapshot and restore for cargohold and borg, and ``cp -a`` of the same tree
into the same file system; then ``cargohold ingest`` of the tree into a new Docker volume and
``cargohold export`` of it back to a folder, each against ``cp -a`` doing the same copy (into
and out of another volume's folder). One table with ratios and each process's peak memory.
``--files 1000000`` is the issue's scale (a few minutes and ~2 GB of disk per copy).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import Borg, Cargohold, Measured, Tool, ensure_peers, ratio, settle, size_text, timed


def make_tree(root: Path, files: int, per_folder: int) -> None:
    rng = random.Random(16)
    for i in range(files):
        folder = root / f"class-{i // per_folder:05}"
        if i % per_folder == 0:
            folder.mkdir(parents=True)
        size = rng.randint(200, 2000)
        # Half random, half repeated: compresses somewhat, like encoded images with headers.
        (folder / f"{i:08}.jpg").write_bytes(rng.randbytes(size // 2) * 2)


def compressed_size(root: Path) -> int:
    """The data as cargohold stores it at the least: each file zstd level 1, or as it is when
    that does not shrink it -- the base of the repository's overhead."""
    import zstandard

    level1 = zstandard.ZstdCompressor(level=1)
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            data = Path(dirpath, name).read_bytes()
            total += min(len(data), len(level1.compress(data)))
    return total


def run(tool: Tool, source: Path, work: Path) -> Measured:
    m = Measured()
    tool.init()
    env = tool.env()
    for label in ("first", "unchanged"):
        settle()
        m.seconds[label], m.peak_mb[label] = timed(tool.backup(source), env)
    m.size["repository"] = tool.size()
    target = work / f"restore-{tool.name}"
    settle()
    m.seconds["restore"], m.peak_mb["restore"] = timed(tool.restore(target), env)
    # (kept until the end: ext4 allocates inodes slowly for minutes next to ones just freed,
    # and whichever tool ran after a deletion of 200,000 files paid for it, up to 10x)
    return m


def volumes(source: Path, work: Path, ours: Measured, cp: Measured) -> None:
    """ingest into a new volume and export out of it, each against cp -a of the same copy."""
    env = {"XDG_CACHE_HOME": str(work / "cache")}
    names = [f"cargohold-bench-{os.getpid()}-{n}" for n in ("ingest", "peer")]
    try:
        subprocess.run(["docker", "volume", "create", names[1]], check=True,
                       stdout=subprocess.DEVNULL)
        inspected = subprocess.run(["docker", "volume", "inspect", names[1]], check=True,
                                   capture_output=True, text=True).stdout
        peer = json.loads(inspected)[0]["Mountpoint"]
        settle()
        ours.seconds["ingest"], ours.peak_mb["ingest"] = timed(
            [sys.executable, "-m", "cargohold", "ingest", str(source), names[0]], env)
        settle()
        cp.seconds["ingest"], cp.peak_mb["ingest"] = timed(["cp", "-a", f"{source}/.", peer])
        settle()
        ours.seconds["export"], ours.peak_mb["export"] = timed(
            [sys.executable, "-m", "cargohold", "export", names[0], str(work / "exported")], env)
        settle()
        cp.seconds["export"], cp.peak_mb["export"] = timed(
            ["cp", "-a", f"{peer}/.", str(work / "cp-exported")])
    finally:
        subprocess.run(["docker", "volume", "rm", "-f", *names], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--per-folder", type=int, default=1000)
    parser.add_argument("--dir", default="/var/tmp")
    parser.add_argument("--skip-borg", action="store_true")
    parser.add_argument("--skip-volumes", action="store_true", help="no Docker: no ingest/export")
    args = parser.parse_args()
    if not args.skip_borg:
        ensure_peers()
    work = Path(tempfile.mkdtemp(prefix="cargohold-many-", dir=args.dir))
    try:
        source = work / "dataset"
        make_tree(source, args.files, args.per_folder)
        results = {"cargohold": run(Cargohold(work), source, work)}
        if not args.skip_borg:
            results["borg"] = run(Borg(work), source, work)
        settle()
        cp = Measured()
        cp.seconds["restore"], cp.peak_mb["restore"] = timed(
            ["cp", "-a", str(source), str(work / "cp-copy")]
        )
        results["cp -a"] = cp
        if not args.skip_volumes:
            volumes(source, work, results["cargohold"], cp)
        ours = results["cargohold"]
        print(f"\n{args.files} files in folders of {args.per_folder}")
        print(f"{'':<20}" + "".join(f"{n:>18}" for n in results) + "   cargohold vs borg / cp -a")
        for title, key in (("first snapshot", "first"), ("unchanged snapshot", "unchanged"),
                           ("restore (cp -a)", "restore"), ("ingest (cp -a)", "ingest"),
                           ("export (cp -a)", "export")):
            cells = [f"{r.seconds[key]:.1f} s {r.peak_mb[key]:.0f} MB" if key in r.seconds
                     else "—" for r in results.values()]
            vs = " / ".join(ratio(ours.seconds.get(key), results[p].seconds.get(key))
                            for p in ("borg", "cp -a") if p in results)
            print(f"{title:<20}" + "".join(f"{c:>18}" for c in cells) + f"   {vs}")
        sizes = [size_text(r.size["repository"]) if "repository" in r.size else "—"
                 for r in results.values()]
        print(f"{'repository size':<20}" + "".join(f"{s:>18}" for s in sizes))
        base = compressed_size(source)
        print(f"{'over the data':<20}" + "".join(
            f"{(r.size['repository'] - base) / base:>+18.1%}" if "repository" in r.size else
            f"{'—':>18}" for r in results.values()) + f"   (the data zstd -1: {size_text(base)})")
        print("\ngoals: first <= 0.8x borg, unchanged <= 0.5x borg, restore, ingest and export "
              "<= 1.2x cp -a, peak memory < 300 MB whatever the file count, repository <= 10% over "
              "the compressed data")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
