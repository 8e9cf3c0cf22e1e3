"""Millions of small files (issue 16): cargohold against borg and cp -a, peak memory included.

    python3 benchmarks/many_files.py [--files 200000] [--per-folder 1000] [--dir /var/tmp]
                                     [--skip-borg] [--skip-volumes] [--no-fresh-fs]

Generates a tree of small files (0.2-2 KB, image-dataset-like folders), then times first
snapshot, unchanged snapshot and restore for cargohold and borg, and ``cp -a`` of the same tree
into the same file system; then ``cargohold ingest`` of the tree into a new Docker volume and
``cargohold export`` of it back to a folder, each against ``cp -a`` doing the same copy (into
and out of another volume's folder). One table with ratios and each process's peak memory.
``--files 1000000`` is the issue's scale (a few minutes and ~2 GB of disk per copy).

The copies (restore, ingest, export and their ``cp -a``) run twice each, taking turns, and the
better time counts. As root, everything runs on a new ext4 file system (a sparse image on a
loop device, the volumes' folders bind-mounted onto it): for minutes after a mass deletion,
ext4 here creates files up to 10x slower (``recently_deleted`` in its inode allocator), so on
a file system used before, whichever command ran after a deletion paid for it. (Through a
loop device writeback costs the writer's CPU: cargohold's restore and ingest sync their data,
``cp -a`` does not, so these ratios are if anything unkind to cargohold.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _peers
from _peers import Borg, Cargohold, Measured, Tool, ratio, size_text, timed


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
        _peers.settle()
        m.seconds[label], m.peak_mb[label] = timed(tool.backup(source), env)
    m.size["repository"] = tool.size()
    return m


RUNS = 2  # of each copy (1 from LARGE files on: the disk holds a copy per run and command)
LARGE = 500_000
COPIES_PER_RUN = 7  # restores by cargohold, borg and cp; ingest and its cp; export and its cp


def best(results: dict[str, Measured], key: str, commands: dict[str, object], runs: int) -> None:
    """Each command ``runs`` times, taking turns; the best time (and its peak memory) counts.
    Nothing is deleted in between (see the module docstring)."""
    for attempt in range(runs):
        for name, make in commands.items():
            args, env = make(attempt)  # type: ignore[operator]
            _peers.settle()
            seconds, peak = timed(args, env)
            m = results[name]
            if key not in m.seconds or seconds < m.seconds[key]:
                m.seconds[key], m.peak_mb[key] = seconds, peak


def volumes(
    source: Path, work: Path, results: dict[str, Measured], fresh: bool, runs: int
) -> None:
    """ingest into a new volume and export out of it, each against cp -a of the same copy."""
    env = {"XDG_CACHE_HOME": str(work / "cache")}
    names = [f"cargohold-bench-{os.getpid()}-{n}" for n in ("ingest", "peer")]
    mounted: list[str] = []
    try:
        points = []
        for name in names:
            subprocess.run(["docker", "volume", "create", name], check=True,
                           stdout=subprocess.DEVNULL)
            inspected = subprocess.run(["docker", "volume", "inspect", name], check=True,
                                       capture_output=True, text=True).stdout
            point = json.loads(inspected)[0]["Mountpoint"]
            if fresh:  # the volume's folder on the fresh file system too
                folder = work / f"volume-{name}"
                folder.mkdir()
                subprocess.run(["mount", "--bind", str(folder), point], check=True)
                mounted.append(point)
            points.append(point)
        ours, peer = points
        best(results, "ingest", {
            "cargohold": lambda i: ([sys.executable, "-m", "cargohold", "ingest", str(source),
                                     f"{names[0]}:copy-{i}"], env),
            "cp -a": lambda i: (["cp", "-a", str(source), f"{peer}/copy-{i}"], None),
        }, runs)
        best(results, "export", {
            "cargohold": lambda i: ([sys.executable, "-m", "cargohold", "export",
                                     f"{names[0]}:copy-0", str(work / f"exported-{i}")], env),
            "cp -a": lambda i: (["cp", "-a", f"{ours}/copy-0", str(work / f"cp-exported-{i}")],
                                None),
        }, runs)
    finally:
        for point in mounted:
            subprocess.run(["umount", "-l", point], check=False)
        subprocess.run(["docker", "volume", "rm", "-f", *names], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--per-folder", type=int, default=1000)
    parser.add_argument("--dir", default="/var/tmp")
    parser.add_argument("--skip-borg", action="store_true")
    parser.add_argument("--skip-volumes", action="store_true", help="no Docker: no ingest/export")
    parser.add_argument("--no-fresh-fs", action="store_true",
                        help="run in --dir itself (the default as root is a new ext4 there)")
    args = parser.parse_args()
    if not args.skip_borg:
        _peers.ensure_peers()
    fresh = not args.no_fresh_fs and os.geteuid() == 0 and shutil.which("mkfs.ext4") is not None
    runs = RUNS if args.files < LARGE else 1
    with contextlib.ExitStack() as stack:
        where = Path(args.dir)
        if fresh:
            copies = 1 + COPIES_PER_RUN * runs
            where = stack.enter_context(_peers.fresh_file_system(where, args.files, copies))
        work = Path(tempfile.mkdtemp(prefix="cargohold-many-", dir=where))
        if not fresh:  # (a fresh file system goes whole: deleting millions of files takes long)
            stack.callback(shutil.rmtree, work, True)
        report(args, work, fresh, runs)


def report(args: argparse.Namespace, work: Path, fresh: bool, runs: int) -> None:
    source = work / "dataset"
    make_tree(source, args.files, args.per_folder)
    tools: dict[str, Tool] = {"cargohold": Cargohold(work)}
    if not args.skip_borg:
        tools["borg"] = Borg(work)
    results = {name: run(tool, source, work) for name, tool in tools.items()}
    results["cp -a"] = Measured()
    best(results, "restore", {
        **{name: (lambda i, t=tool: (t.restore(work / f"restore-{t.name}-{i}"), t.env()))
           for name, tool in tools.items()},
        "cp -a": lambda i: (["cp", "-a", str(source), str(work / f"cp-copy-{i}")], None),
    }, runs)
    if not args.skip_volumes:
        volumes(source, work, results, fresh, runs)
    ours = results["cargohold"]
    where = "a new ext4 file system" if fresh else str(Path(args.dir))
    print(f"\n{args.files} files in folders of {args.per_folder}, on {where}; "
          f"copies: the best of {runs} run(s)")
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


if __name__ == "__main__":
    main()
