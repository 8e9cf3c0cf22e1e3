"""Progress and Ctrl-C on real runs (plain folders and a folder repository: no Docker needed).

Where stderr is not a terminal, progress is a plain line every CARGOHOLD_PROGRESS_INTERVAL
seconds; the tests set it short. A SIGINT mid-run exits 130 with one line and publishes nothing
half-written: the repository stays sound, the restore target unchanged or marked.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

from cargohold.archive.confined import ConfinedDir
from cargohold.archive.staging import MARKER, read_marker
from tests.conftest import SRC, run_cli
from tests.trees import listing

# Rates appear once there is something to measure them over (a fifth of a second).
_LINE = re.compile(
    r"^cargohold: (?P<what>.+?): (?P<files>[\d,]+) files, [\d.]+ k?[MGT]?B in \d+:\d\d"
    r"(?P<rates> \([\d,]+ files/s, [\d.]+ k?[MGT]?B/s\))?(?P<rest>.*)$"
)


def _env(tmp_path: Path, interval: str = "0.05") -> dict[str, str]:
    return {
        "CARGOHOLD_REPO": str(tmp_path / "repo"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "CARGOHOLD_PROGRESS_INTERVAL": interval,
    }


def _fill(root: Path, files: int, *, most: int) -> Path:
    rng = random.Random(files)
    for i in range(files):
        sub = root / f"part-{i % 16}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}.bin").write_bytes(rng.randbytes(rng.randint(0, most)))
    return root


def _progress_lines(stderr: str) -> list[re.Match[str]]:
    found = [_LINE.match(line) for line in stderr.splitlines()]
    return [m for m in found if m]


def test_progress_lines_show_files_bytes_rates_and_for_a_restore_an_eta(tmp_path: Path) -> None:
    # (enough that a run lasts the fifth of a second rates need: 3,000 files once did)
    source = _fill(tmp_path / "data", 12000, most=8000)
    env = _env(tmp_path)

    taken = run_cli("snapshot", str(source), "--json", env=env)
    assert taken.returncode == 0, taken.stderr
    info = json.loads(taken.stdout)  # progress never reaches stdout
    assert info["files"] == 12000
    lines = _progress_lines(taken.stderr)
    assert lines, taken.stderr
    assert all(m["what"] == f"snapshot {source}" for m in lines)
    assert int(lines[-1]["files"].replace(",", "")) <= 12000
    assert any(m["rates"] for m in lines), taken.stderr

    again = run_cli("snapshot", str(source), env=env)  # the first one is its estimate
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("snapshot 2") and "12000 files" in again.stdout
    estimated = [m["rest"] for m in _progress_lines(again.stderr)]
    assert all("≈12,000 files" in rest for rest in estimated), again.stderr

    restored = run_cli("restore", info["id"], "--to", str(tmp_path / "out"), env=env)
    assert restored.returncode == 0, restored.stderr
    assert restored.stdout.startswith(f"restored {info['id']} (12000 files,")
    shown = _progress_lines(restored.stderr)
    assert any(m["rates"] for m in shown), restored.stderr
    rests = [m["rest"] for m in shown]
    assert all(re.match(r"; \d+% of 12,000 files, [\d.]+ MB(, ETA \d+:\d\d)?$", r) for r in rests)
    assert any("ETA" in r for r in rests), restored.stderr


def test_a_short_run_prints_no_progress(tmp_path: Path) -> None:
    source = _fill(tmp_path / "data", 10, most=100)
    taken = run_cli("snapshot", str(source), env=_env(tmp_path, interval="30"))
    assert taken.returncode == 0 and taken.stderr == "", taken.stderr


def _interrupted(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run cargohold, and send SIGINT once its first progress line shows it is under way."""
    full = {**os.environ, **env, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cargohold", *args],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()  # stderr is line-buffered: this is the first progress line
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(args, proc.returncode, out, first + err)


def _assert_interrupted(result: subprocess.CompletedProcess[str]) -> None:
    assert _LINE.match(result.stderr.splitlines()[0]), result.stderr
    assert result.returncode == 130, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == "error: interrupted", result.stderr
    assert result.stdout == ""  # no summary: it did not finish


def test_ctrl_c_during_a_snapshot_publishes_nothing(tmp_path: Path) -> None:
    source = _fill(tmp_path / "data", 4000, most=32000)
    env = _env(tmp_path)

    _assert_interrupted(_interrupted(["snapshot", str(source)], env))

    checked = run_cli("repo", "check", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("0 snapshots"), checked.stdout
    assert run_cli("snapshots", env=env).stdout.strip() == "no snapshots"
    again = run_cli("snapshot", str(source), env=env)  # and the next one just works
    assert again.returncode == 0, again.stderr


def test_ctrl_c_during_a_restore_leaves_the_folder_unchanged_or_marked(tmp_path: Path) -> None:
    source = _fill(tmp_path / "data", 4000, most=32000)
    env = _env(tmp_path)
    taken = run_cli("snapshot", str(source), "--json", env=env)
    assert taken.returncode == 0, taken.stderr
    snap = json.loads(taken.stdout)["id"]
    target = tmp_path / "target"
    target.mkdir()
    (target / "old.txt").write_text("the state before the restore\n")
    before = listing(target)

    _assert_interrupted(_interrupted(["restore", snap, "--to", str(target), "--force"], env))

    names = set(os.listdir(target))
    if MARKER in names:  # interrupted while swapping in: marked, and the rerun finishes it
        with ConfinedDir.open(target) as root:
            assert read_marker(root) is not None
    else:
        assert listing(target) == before, names
    checked = run_cli("repo", "check", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    rerun = run_cli("restore", snap, "--to", str(target), "--force", env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert listing(target) == listing(source)
