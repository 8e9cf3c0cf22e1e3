"""Progress of long transfers (ingest, export, clone, snapshot, restore, rescue) on stderr.

The library reports through ``archive.Progress``: bytes as they move, files as they complete,
and the size of the whole when it is known (restore: the snapshot record's counts, exact) or
can be guessed (snapshot: the previous snapshot of the same source, shown with "≈"). Nothing
is walked twice to find a total: where none comes for free (ingest, export, clone) the line
shows counts and rates without a percentage or an ETA.

A ``Meter`` counts and computes (thread-safe: writers report from their pools; the clock is
injected, so rates and ETAs are tested without waiting). What it shows goes to stderr only,
so ``--json`` output and the one-line summaries on stdout stay as they are:

* on a terminal, one self-overwriting line (spinner, counts, rates, a bar once a total is known),
  gone when the transfer ends;
* elsewhere (CI logs, ``docker logs``, a scheduled snapshot) a plain line every
  ``CARGOHOLD_PROGRESS_INTERVAL`` seconds (default 15; 0 turns them off). The first comes after
  one interval, so a short run prints none.

Rates are measured over the last ``WINDOW`` seconds, so an ETA follows the current speed (a
snapshot that skips unchanged files races, then slows where files changed). The ETA is the
larger of the bytes' and the files' ETAs: many small files are bounded by files per second, a
few big ones by bytes per second, and the one further from done decides.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from rich.console import Console, RenderableType
from rich.text import Text

from cargohold.kinds import format_size

__all__ = [
    "DEFAULT_INTERVAL",
    "WINDOW",
    "Meter",
    "Reading",
    "describe",
    "describe_short",
    "progress_on",
]

DEFAULT_INTERVAL = 15.0  # seconds between plain progress lines where stderr is not a terminal
WINDOW = 30.0  # seconds of history the rates are measured over
_SAMPLE_EVERY = 0.5  # at most one sample per this many seconds is kept
_MIN_SPAN = 0.2  # seconds: over less, a rate is noise


@dataclass(frozen=True)
class Reading:
    """What a meter shows at one moment."""

    files: int
    bytes: int
    elapsed: float
    files_per_s: float | None  # None: not measured yet
    bytes_per_s: float | None
    total_files: int | None  # None: unknown
    total_bytes: int | None
    exact: bool  # the totals are known, not estimated
    fraction: float | None  # 0..1 once a total is known (None past an estimate)
    eta: float | None  # seconds; None when unknown


class Meter:
    """Counts what a transfer moved; an ``archive.Progress``.

    Args:
        clock: monotonic seconds (``time.monotonic``; tests pass a fake one).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._files = 0
        self._bytes = 0
        self._total: tuple[int, int, bool] | None = None
        self._start = clock()
        self._samples: deque[tuple[float, int, int]] = deque([(self._start, 0, 0)])

    def __call__(self, nbytes: int, /, *, files: int = 0) -> None:
        with self._lock:
            self._bytes += nbytes
            self._files += files

    def expect(self, *, files: int, nbytes: int, exact: bool) -> None:
        with self._lock:
            self._total = (files, nbytes, exact)

    def read(self) -> Reading:
        """The counts now, with rates over the last ``WINDOW`` seconds and an ETA."""
        now = self._clock()
        with self._lock:
            files, nbytes, total = self._files, self._bytes, self._total
            if now - self._samples[-1][0] >= _SAMPLE_EVERY:
                self._samples.append((now, files, nbytes))
            while len(self._samples) > 2 and now - self._samples[1][0] >= WINDOW:
                self._samples.popleft()
            since, files_then, bytes_then = self._samples[0]
        span = now - since
        measured = span >= _MIN_SPAN
        files_rate = (files - files_then) / span if measured else None
        bytes_rate = (nbytes - bytes_then) / span if measured else None
        fraction = eta = None
        total_files = total_bytes = None
        exact = False
        if total is not None:
            total_files, total_bytes, exact = total
            fraction, eta = _fraction_and_eta(
                (files, total_files, files_rate), (nbytes, total_bytes, bytes_rate), exact
            )
        return Reading(
            files=files,
            bytes=nbytes,
            elapsed=now - self._start,
            files_per_s=files_rate,
            bytes_per_s=bytes_rate,
            total_files=total_files,
            total_bytes=total_bytes,
            exact=exact,
            fraction=fraction,
            eta=eta,
        )


def _fraction_and_eta(
    files: tuple[int, int, float | None], nbytes: tuple[int, int, float | None], exact: bool
) -> tuple[float | None, float | None]:
    """How far along (by bytes; by files when there are no bytes to move) and how long to go.

    Each of ``files`` and ``nbytes`` is (done, total, rate per second or None).
    """
    done, total, _ = nbytes if nbytes[1] > 0 else files
    if total <= 0:
        return None, None
    if done > total:
        # Past an estimate nothing is known about the rest; past exact counts (a file grew
        # while it was snapshotted) the end is close.
        return (1.0, None) if exact else (None, None)
    etas = []
    for part_done, part_total, rate in (files, nbytes):
        if part_done >= part_total:
            continue
        if not rate:
            return done / total, None
        etas.append((part_total - part_done) / rate)
    return done / total, max(etas, default=0.0)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _count(n: float) -> str:
    return f"{n:,.0f}"


def describe(reading: Reading) -> str:
    """One line: counts, rates, and (with a total) the percentage, the total and the ETA.

    ``12,000 files, 1.2 GB in 0:31 (390 files/s, 39.0 MB/s); 40% of ≈30,000 files, ≈3.0 GB,
    ETA ≈0:46``
    """
    elapsed = _duration(reading.elapsed)
    line = f"{_count(reading.files)} files, {format_size(reading.bytes)} in {elapsed}"
    if reading.files_per_s is not None and reading.bytes_per_s is not None:
        line += f" ({_count(reading.files_per_s)} files/s, {format_size(reading.bytes_per_s)}/s)"
    if reading.total_files is None or reading.total_bytes is None:
        return line
    about = "" if reading.exact else "≈"
    of = f"{about}{_count(reading.total_files)} files, {about}{format_size(reading.total_bytes)}"
    if reading.fraction is None:
        return line if reading.exact else f"{line}; past the estimate of {of}"
    line += f"; {reading.fraction:.0%} of {of}"
    if reading.eta is not None:
        line += f", ETA {about}{_duration(reading.eta)}"
    return line


def describe_short(reading: Reading) -> str:
    """The same for a terminal's single line, what matters most first: ``40% ETA 0:46 ·
    12,000 files 1.2 GB · 390 files/s 39.0 MB/s``."""
    about = "" if reading.exact else "≈"
    parts = []
    if reading.fraction is not None:
        eta = f" ETA {about}{_duration(reading.eta)}" if reading.eta is not None else ""
        parts.append(f"{reading.fraction:.0%}{eta}")
    parts.append(f"{_count(reading.files)} files {format_size(reading.bytes)}")
    if reading.files_per_s is not None and reading.bytes_per_s is not None:
        parts.append(f"{_count(reading.files_per_s)} files/s {format_size(reading.bytes_per_s)}/s")
    return " · ".join(parts)


class _Live:
    """The terminal's line: spinner, a bar once a total is known, description, counts and
    rates -- one line, cut (never wrapped) at the terminal's width. rich renders it from its
    refresh thread."""

    _FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
    _BAR = 16

    def __init__(self, description: str, meter: Meter) -> None:
        self._description = description
        self._meter = meter

    def __rich__(self) -> RenderableType:
        reading = self._meter.read()
        frame = self._FRAMES[int(reading.elapsed * 10) % len(self._FRAMES)]
        line = Text(frame + " ", style="green", no_wrap=True, overflow="ellipsis")
        if reading.fraction is not None:
            filled = round(reading.fraction * self._BAR)
            line.append("━" * filled, style="magenta")
            line.append("━" * (self._BAR - filled) + " ", style="grey35")
        line.append(f"{self._description}: {describe_short(reading)}")
        return line


def _interval() -> float:
    raw = os.environ.get("CARGOHOLD_PROGRESS_INTERVAL", "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


@contextlib.contextmanager
def progress_on(console: Console, description: str) -> Iterator[Meter]:
    """A meter for one transfer, shown on ``console`` (stderr) while the block runs."""
    meter = Meter()
    if console.is_terminal:
        from rich.live import Live

        with Live(_Live(description, meter), console=console, transient=True, refresh_per_second=4):
            yield meter
        return
    interval = _interval()
    if interval <= 0:
        yield meter
        return
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(interval):
            console.print(f"cargohold: {description}: {describe(meter.read())}", markup=False)

    reporter = threading.Thread(target=report, name="cargohold-progress", daemon=True)
    reporter.start()
    try:
        yield meter
    finally:
        stop.set()
        reporter.join()
