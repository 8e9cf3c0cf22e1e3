"""Shared by the repository benchmarks: timing with peak memory, and the peers (restic, borg,
cp -a) driven the same way as cargohold, on the same folder, in the same run."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "benchmark-password"

# A small process runs each measured command and reports its children's peak memory.
_MEASURE = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter(); code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(code)\n"
)


@dataclass
class Measured:
    seconds: dict[str, float] = field(default_factory=dict)
    peak_mb: dict[str, float] = field(default_factory=dict)
    size: dict[str, int] = field(default_factory=dict)


def timed(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of a command; exits on failure."""
    full = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    result = subprocess.run([sys.executable, "-c", _MEASURE, *args], capture_output=True,
                            text=True, env=full)
    if result.returncode not in (0, 4):  # 4: cargohold's "some files changed while read"
        sys.exit(f"failed: {' '.join(args)}\n{result.stderr[-3000:]}")
    seconds, peak_kb = result.stdout.split()[-2:]
    return float(seconds), int(peak_kb) / 1024


def settle() -> None:
    """Flush dirty pages between runs, so one tool does not pay for another's writes. The page
    cache is kept warm for all alike (a cold cache mostly measures Python's imports)."""
    os.sync()


@contextlib.contextmanager
def fresh_file_system(where: Path, files: int, copies: int, extra_gb: int = 0) -> Iterator[Path]:
    """A new ext4 file system on a sparse image under ``where``, mounted; removed afterwards
    (room for ``copies`` of ``files`` small files and ``extra_gb`` more). For minutes after a
    mass deletion, ext4 here creates files up to 10x slower (``recently_deleted`` in its inode
    allocator): on a file system used before, whichever command ran after a deletion paid."""
    image = where / f"cargohold-bench-{os.getpid()}.img"
    mount = Path(tempfile.mkdtemp(prefix="cargohold-bench-fs-", dir=where))
    # every copy of every file in a block of its own, the repositories, room to spare
    gigabytes = files * copies * 4096 // 10**9 + files * 4000 // 10**9 + extra_gb + 4
    subprocess.run(["truncate", "-s", f"{gigabytes}G", str(image)], check=True)
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", "-N", str(files * copies + 200_000), str(image)],
                       check=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
        try:
            yield mount
        finally:
            subprocess.run(["umount", "-l", str(mount)], check=False)
    finally:
        image.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            mount.rmdir()


def ensure_peers() -> None:
    """restic and borg from Debian when missing."""
    missing = [p for p, cmd in (("restic", "restic"), ("borgbackup", "borg"))
               if shutil.which(cmd) is None]
    if missing:
        subprocess.run(["apt-get", "install", "-y", *missing], check=True,
                       stdout=subprocess.DEVNULL)


def tree_bytes(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


class Tool:
    name = ""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.repo = work / f"repo-{self.name}"

    def env(self) -> dict[str, str]:
        return {}

    def init(self) -> None: ...

    def backup(self, source: Path) -> list[str]:
        raise NotImplementedError

    def restore(self, target: Path) -> list[str]:
        raise NotImplementedError

    def size(self) -> int:
        return tree_bytes(self.repo)


class Cargohold(Tool):
    name = "cargohold"

    def __init__(self, work: Path, url: str | None = None, extra_env: dict[str, str] | None = None
                 ) -> None:
        super().__init__(work)
        self.url = url or str(self.repo)
        self.extra_env = extra_env or {}

    def env(self) -> dict[str, str]:
        return {"CARGOHOLD_REPO": self.url, "XDG_CACHE_HOME": str(self.work / "cache"),
                **self.extra_env}

    def init(self) -> None:
        subprocess.run([sys.executable, "-m", "cargohold", "repo", "init"], check=True,
                       env={**os.environ, "PYTHONPATH": str(REPO / "src"), **self.env()},
                       stdout=subprocess.DEVNULL)

    def backup(self, source: Path) -> list[str]:
        self.source = source
        return [sys.executable, "-m", "cargohold", "snapshot", str(source)]

    def restore(self, target: Path) -> list[str]:
        return [sys.executable, "-m", "cargohold", "restore", f"{self.source}@latest", "--to",
                str(target)]


class Restic(Tool):
    name = "restic"

    def __init__(self, work: Path, url: str | None = None, extra_env: dict[str, str] | None = None
                 ) -> None:
        super().__init__(work)
        self.url = url or str(self.repo)
        self.extra_env = extra_env or {}

    def env(self) -> dict[str, str]:
        return {"RESTIC_REPOSITORY": self.url, "RESTIC_PASSWORD": PASSWORD,
                "RESTIC_CACHE_DIR": str(self.work / "restic-cache"), **self.extra_env}

    def init(self) -> None:
        subprocess.run(["restic", "init"], check=True, env={**os.environ, **self.env()},
                       stdout=subprocess.DEVNULL)

    def backup(self, source: Path) -> list[str]:
        return ["restic", "backup", "--quiet", str(source)]

    def restore(self, target: Path) -> list[str]:
        return ["restic", "restore", "latest", "--target", str(target)]


class Borg(Tool):
    name = "borg"
    count = 0

    def env(self) -> dict[str, str]:
        return {"BORG_REPO": str(self.repo), "BORG_PASSPHRASE": PASSWORD,
                "BORG_BASE_DIR": str(self.work / "borg-base"),
                "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes"}

    def init(self) -> None:
        subprocess.run(["borg", "init", "-e", "none"], check=True,
                       env={**os.environ, **self.env()}, stdout=subprocess.DEVNULL)

    def backup(self, source: Path) -> list[str]:
        self.count += 1
        self.source = source
        return ["borg", "create", f"::a{self.count}", str(source)]

    def restore(self, target: Path) -> list[str]:
        target.mkdir(parents=True, exist_ok=True)
        # borg extracts into the current folder, with the source's absolute path below it.
        return ["sh", "-c", f'cd "{target}" && exec borg extract ::a{self.count}']


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}x"


def size_text(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
