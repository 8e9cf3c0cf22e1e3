"""Millions of small files (issue 16): cargohold against borg and cp -a, peak memory included.

    python3 benchmarks/many_files.py [--files 200000] [--per-folder 1000] [--dir /var/tmp]
                                     [--skip-borg]

Generates a tree of small files (0.2-2 KB, image-dataset-like folders), then times first
snapshot, unchanged snapshot and restore for cargohold and borg, and ``cp -a`` of the same tree
into the same file system, and prints one table with ratios and each process's peak memory.
``--files 1000000`` is the issue's scale (a few minutes and ~2 GB of disk per copy).
"""

from __future__ import annotations

import argparse
import random
import shutil
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
    shutil.rmtree(target, ignore_errors=True)
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--per-folder", type=int, default=1000)
    parser.add_argument("--dir", default="/var/tmp")
    parser.add_argument("--skip-borg", action="store_true")
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
        ours = results["cargohold"]
        print(f"\n{args.files} files in folders of {args.per_folder}")
        print(f"{'':<20}" + "".join(f"{n:>18}" for n in results) + "   cargohold vs borg / cp -a")
        for title, key in (("first snapshot", "first"), ("unchanged snapshot", "unchanged"),
                           ("restore (cp -a)", "restore")):
            cells = [f"{r.seconds[key]:.1f} s {r.peak_mb[key]:.0f} MB" if key in r.seconds
                     else "—" for r in results.values()]
            vs = " / ".join(ratio(ours.seconds.get(key), results[p].seconds.get(key))
                            for p in ("borg", "cp -a") if p in results)
            print(f"{title:<20}" + "".join(f"{c:>18}" for c in cells) + f"   {vs}")
        sizes = [size_text(r.size["repository"]) if "repository" in r.size else "—"
                 for r in results.values()]
        print(f"{'repository size':<20}" + "".join(f"{s:>18}" for s in sizes))
        print("\ngoals: first <= 0.8x borg, unchanged <= 0.5x borg, restore <= 1.2x cp -a, "
              "peak memory < 300 MB whatever the file count")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
