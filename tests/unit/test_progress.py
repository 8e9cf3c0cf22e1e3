"""Progress of long transfers: the meter's rates and ETA on a fake clock, the lines it prints,
and the writers' file counts."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from rich.console import Console

from cargohold.archive import FolderReader, TarWriter, TreeWriter
from cargohold.cli._progress import Meter, describe, describe_short, progress_on


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """An ``archive.Progress`` that remembers what it was told."""

    def __init__(self) -> None:
        self.files = 0
        self.bytes = 0
        self.expected: list[tuple[int, int, bool]] = []
        self._lock = threading.Lock()

    def __call__(self, nbytes: int, /, *, files: int = 0) -> None:
        with self._lock:
            self.bytes += nbytes
            self.files += files

    def expect(self, *, files: int, nbytes: int, exact: bool) -> None:
        self.expected.append((files, nbytes, exact))


def _run(meter: Meter, clock: Clock, seconds: int, files_per_s: int, bytes_per_s: int) -> None:
    for _ in range(seconds):
        clock.now += 1
        meter(bytes_per_s, files=files_per_s)
        meter.read()  # the renderer samples as it shows


# -- the meter ------------------------------------------------------------------------------


def test_without_a_total_there_are_counts_and_rates_but_no_eta() -> None:
    clock = Clock()
    meter = Meter(clock)
    _run(meter, clock, 10, 100, 1_000_000)
    reading = meter.read()
    assert (reading.files, reading.bytes) == (1000, 10_000_000)
    assert reading.files_per_s == pytest.approx(100)
    assert reading.bytes_per_s == pytest.approx(1_000_000)
    assert reading.fraction is None and reading.eta is None
    assert describe(reading) == "1,000 files, 10.0 MB in 0:10 (100 files/s, 1.0 MB/s)"


def test_no_rate_before_anything_was_measured() -> None:
    reading = Meter(Clock()).read()
    assert reading.files_per_s is None and reading.bytes_per_s is None
    assert describe(reading) == "0 files, 0 B in 0:00"


def test_an_exact_total_gives_a_percentage_and_an_eta() -> None:
    clock = Clock()
    meter = Meter(clock)
    meter.expect(files=4000, nbytes=40_000_000, exact=True)
    _run(meter, clock, 10, 100, 1_000_000)
    reading = meter.read()
    assert reading.fraction == pytest.approx(0.25)
    assert reading.eta == pytest.approx(30)
    assert describe(reading).endswith("; 25% of 4,000 files, 40.0 MB, ETA 0:30")
    assert describe_short(reading).startswith("25% ETA 0:30 · 1,000 files 10.0 MB")


def test_an_estimate_is_marked_and_the_slower_of_files_and_bytes_decides() -> None:
    clock = Clock()
    meter = Meter(clock)
    # Bytes would be done in 10 s more; files (many small ones still to come) in 90 s.
    meter.expect(files=10_000, nbytes=20_000_000, exact=False)
    _run(meter, clock, 10, 100, 1_000_000)
    reading = meter.read()
    assert reading.eta == pytest.approx(90)
    assert describe(reading).endswith("; 50% of ≈10,000 files, ≈20.0 MB, ETA ≈1:30")


def test_past_an_estimate_there_is_no_percentage_and_no_eta() -> None:
    clock = Clock()
    meter = Meter(clock)
    meter.expect(files=10, nbytes=1000, exact=False)
    _run(meter, clock, 3, 10, 1000)
    reading = meter.read()
    assert reading.fraction is None and reading.eta is None
    assert describe(reading).endswith("; past the estimate of ≈10 files, ≈1.0 kB")


def test_past_exact_counts_is_done_not_over() -> None:
    clock = Clock()
    meter = Meter(clock)
    meter.expect(files=10, nbytes=1000, exact=True)
    _run(meter, clock, 2, 5, 600)
    assert meter.read().fraction == 1.0


def test_a_stalled_transfer_has_no_eta() -> None:
    clock = Clock()
    meter = Meter(clock)
    meter.expect(files=100, nbytes=100, exact=True)
    meter(10, files=10)
    _run(meter, clock, 60, 0, 0)  # nothing moves for longer than the window
    reading = meter.read()
    assert reading.fraction == pytest.approx(0.1)
    assert reading.files_per_s == 0 and reading.eta is None


def test_rates_follow_the_current_speed() -> None:
    clock = Clock()
    meter = Meter(clock)
    _run(meter, clock, 60, 1000, 100_000_000)  # fast: unchanged files skipped
    _run(meter, clock, 60, 10, 1_000_000)  # slow: changed files read
    reading = meter.read()
    assert reading.files_per_s == pytest.approx(10, rel=0.05)
    assert reading.bytes_per_s == pytest.approx(1_000_000, rel=0.05)


def test_hours_are_shown_as_hours() -> None:
    clock = Clock()
    meter = Meter(clock)
    meter.expect(files=1_000_000, nbytes=0, exact=True)
    _run(meter, clock, 10, 10, 0)
    assert describe(meter.read()).endswith("ETA 27:46:30")


def test_reports_from_many_threads_all_count() -> None:
    meter = Meter()

    def report() -> None:
        for _ in range(10_000):
            meter(3, files=1)

    threads = [threading.Thread(target=report) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (meter.read().files, meter.read().bytes) == (40_000, 120_000)


# -- where stderr is not a terminal ----------------------------------------------------------


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=200), buffer


def test_plain_lines_come_every_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARGOHOLD_PROGRESS_INTERVAL", "0.05")
    console, buffer = _console()
    with progress_on(console, "snapshot /data") as meter:
        meter.expect(files=10, nbytes=10, exact=True)
        meter(5, files=5)
        threading.Event().wait(0.3)
    lines = buffer.getvalue().splitlines()
    assert len(lines) >= 2
    assert lines[0].startswith("cargohold: snapshot /data: 5 files, 5 B in 0:00")
    assert "50% of 10 files, 10 B" in lines[-1]


def test_a_short_run_prints_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CARGOHOLD_PROGRESS_INTERVAL", raising=False)
    console, buffer = _console()
    with progress_on(console, "export v") as meter:
        meter(5, files=5)
    assert buffer.getvalue() == ""


def test_interval_zero_turns_the_lines_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARGOHOLD_PROGRESS_INTERVAL", "0")
    console, buffer = _console()
    with progress_on(console, "export v") as meter:
        meter(5, files=5)
        threading.Event().wait(0.1)
    assert buffer.getvalue() == ""


# -- the writers count files -----------------------------------------------------------------


def _tree(root: Path, files: int) -> Path:
    for i in range(files):
        sub = root / f"d{i % 7}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}").write_bytes(b"x" * i)
    (root / "d0" / "link").symlink_to("f0")
    (root / "empty").mkdir()
    return root


@pytest.mark.parametrize("workers", [1, 4])
def test_a_folder_writer_counts_each_file_once_done(tmp_path: Path, workers: int) -> None:
    source = _tree(tmp_path / "src", 300)
    seen = Recorder()
    writer = TreeWriter(tmp_path / "dst", progress=seen, workers=workers)
    writer.write_all(FolderReader(source))
    assert (seen.files, seen.bytes) == (300, sum(range(300)))
    assert (writer.files, writer.bytes) == (seen.files, seen.bytes)


def test_a_tar_writer_counts_each_file(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src", 50)
    seen = Recorder()
    writer = TarWriter(io.BytesIO(), progress=seen)
    writer.write_all(FolderReader(source))
    assert (seen.files, seen.bytes) == (50, sum(range(50)))


def test_snapshots_count_files_and_restores_know_the_total(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cargohold.snapshots import (
        init_repository,
        open_repository,
        restore_to_path,
        snapshot_path,
    )

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = _tree(tmp_path / "src", 200)
    repo = init_repository(str(tmp_path / "repo"))
    first = Recorder()
    info = snapshot_path(source, repo, progress=first)
    assert first.expected == []  # nothing to estimate from
    assert (first.files, first.bytes) == (info.files, info.bytes) == (200, sum(range(200)))

    (source / "d1" / "f1").write_bytes(b"changed")
    again = Recorder()
    info = snapshot_path(source, repo, progress=again)
    assert again.expected == [(200, sum(range(200)), False)]  # the previous one, an estimate
    assert (again.files, again.bytes) == (info.files, info.bytes)

    restored = Recorder()
    fresh = open_repository(str(tmp_path / "repo"))  # this one's index predates the snapshots
    result = restore_to_path(fresh, info.id, tmp_path / "out", progress=restored)
    assert restored.expected == [(info.files, info.bytes, True)]
    assert (restored.files, restored.bytes) == (result.files, result.bytes) == (200, info.bytes)
