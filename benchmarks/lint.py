"""How fast `cargohold lint` is on one file, start-up included, against its peers.

Run on demand::

    python3 benchmarks/lint.py [--repeat 5]

Prints CPU time (user + system; steady when the machine is shared), medians of --repeat:
  - python: a bare ``python3 -c pass`` (the floor any Python CLI pays);
  - compose: the real Compose binary's ``config --format json`` on the same file (the peer
    that resolves the same model);
  - cargohold version: the CLI's own start-up (typer, rich), the floor of every command;
  - cargohold lint: the whole command on one corpus file, start-up included -- goal: well
    under a second;
  - in-process: the time to lint each corpus file once the modules are loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "lint_corpus"
FILE = CORPUS / "mlflow-postgres-minio.yml"


def _cpu(args: list[str], repeat: int) -> float:
    """Median CPU time (user + system) of the command: steady on a loaded machine."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    times = []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(args, env=env, capture_output=True, check=False, cwd=CORPUS)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        times.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    python = _cpu([sys.executable, "-c", "pass"], repeat)
    version = _cpu([sys.executable, "-m", "cargohold", "version"], repeat)
    lint = _cpu([sys.executable, "-m", "cargohold", "lint", FILE.name], repeat)
    try:
        import compose

        binary = Path(compose.__file__).parent / "docker-compose"
        peer: float | None = _cpu([str(binary), "-f", FILE.name, "config", "--format", "json"],
                                   repeat)  # fmt: skip
    except ImportError:
        peer = None
    sys.path.insert(0, str(ROOT / "src"))
    from cargohold.errors import UsageError
    from cargohold.lint import lint as run_lint

    files = sorted(p for p in CORPUS.rglob("*") if p.suffix in (".yml", ".yaml", ".sh"))
    began = time.perf_counter()
    for path in files:
        with contextlib.suppress(UsageError):  # override fragments are not whole projects
            run_lint([path], [])
    each = (time.perf_counter() - began) / len(files)
    print("CPU time (user + system), median of", repeat)
    print(f"python -c pass        {python * 1000:7.0f} ms")
    print(f"cargohold version     {version * 1000:7.0f} ms   (the CLI's start-up)")
    if peer is not None:
        print(f"compose config        {peer * 1000:7.0f} ms")
    print(
        f"cargohold lint (CLI)  {lint * 1000:7.0f} ms   {lint / version:.2f}x cargohold version"
        + (f", {lint / peer:.1f}x compose config" if peer else "")
    )
    print(f"in-process, per file  {each * 1000:7.1f} ms   ({len(files)} corpus files)")
    print(f"load average          {os.getloadavg()[0]:.1f} (2 cores: figures above scale with it)")


if __name__ == "__main__":
    main()
