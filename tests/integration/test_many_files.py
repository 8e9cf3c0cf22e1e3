"""Datasets of many small files (issue 16): every data command's peak memory stays under
300 MB and does not grow with the number of files.

Each command runs at 10,000 and at 100,000 files (``CARGOHOLD_MANY_FILES`` changes the larger;
``benchmarks/many_files.py`` shows 1,000,000) on real volumes, a real container's writable layer
and a real repository; its peak RSS is measured by a small parent process (``peak_rss_mb``).
"Does not grow" is asserted as: 90,000 more files add less than 20 MB (~220 bytes a file; a
per-file record kept for the whole run costs more than that)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import Resources, peak_rss_mb

_GROWTH_MB = 20.0
_BOUND_MB = 300.0

# A dataset laid out like an image dataset: folders of 1,000 files of 0.2-2 KB.
_GENERATE = """if True:
    import os, random, sys
    root, count = sys.argv[1], int(sys.argv[2])
    rng = random.Random(16)
    for i in range(count):
        folder = os.path.join(root, f"class-{i // 1000:04}")
        if i % 1000 == 0:
            os.makedirs(folder)
        size = rng.randint(200, 2000)
        with open(os.path.join(folder, f"{i:08}.jpg"), "wb") as f:
            f.write(rng.randbytes(size // 2) * 2)
"""


def _count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def _peaks(n: int, tmp: Path, resources: Resources, client: Any, image: str) -> dict[str, float]:
    """Peak RSS (MB) of each data command on a dataset of ``n`` files."""
    source = tmp / f"source-{n}"
    subprocess.run([sys.executable, "-c", _GENERATE, str(source), str(n)], check=True)
    volumes = [f"{resources.project}-{kind}-{n}" for kind in ("in", "clone", "restored")]
    resources.volumes += volumes
    env = {"CARGOHOLD_REPO": str(tmp / f"repo-{n}"), "XDG_CACHE_HOME": str(tmp / "cache")}
    log = tmp / "stderr"
    peaks: dict[str, float] = {}

    def measure(label: str, *args: str, codes: tuple[int, ...] = (0,)) -> None:
        started = time.monotonic()
        peaks[label] = peak_rss_mb(list(args), env, log, codes=codes)
        print(f"{n} files: {label} {peaks[label]:.0f} MB in {time.monotonic() - started:.1f} s")

    measure("ingest", "ingest", str(source), volumes[0])
    measure("volume du", "volume", "du", volumes[0])
    measure("volume files", "volume", "files", volumes[0])
    measure("clone", "clone", volumes[0], volumes[1])
    measure("export", "export", volumes[1], str(tmp / f"exported-{n}"))
    measure("snapshot", "snapshot", volumes[0])
    measure("restore", "restore", f"{volumes[0]}@latest", volumes[2])
    assert _count_files(tmp / f"exported-{n}") == n

    # A job that wrote the dataset into its container's writable layer: scan and rescue it.
    name = f"{resources.project}-layer-{n}"
    resources.containers.append(name)
    container = client.containers.run(
        image, ["python3", "-c", _GENERATE, "/workspace/data", str(n)], name=name, detach=True
    )
    assert container.wait(timeout=600)["StatusCode"] == 0, container.logs()
    measure("scan", "scan", name, codes=(0, 1))
    measure("scan --json", "scan", name, "--json", codes=(0, 1))  # every file, ranked
    measure("rescue", "rescue", name, "--all", "--to", str(tmp / f"rescued-{n}"))
    assert _count_files(tmp / f"rescued-{n}") == n
    return peaks


def test_every_data_command_keeps_memory_flat_with_many_files(
    tmp_path: Path, docker_resources: Resources, docker_client: Any, base_image: str
) -> None:
    files = int(os.environ.get("CARGOHOLD_MANY_FILES", "100000"))
    small = _peaks(files // 10, tmp_path, docker_resources, docker_client, base_image)
    large = _peaks(files, tmp_path, docker_resources, docker_client, base_image)
    report = {k: (round(small[k]), round(large[k])) for k in large}
    for command, peak in large.items():
        assert peak < _BOUND_MB, (command, report)
        assert peak - small[command] < _GROWTH_MB, (command, report)
