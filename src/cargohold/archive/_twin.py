"""A second process for a copy between two local folders: ingest, export and clone of a dataset
of small files at the speed of ``cp -a`` on two cores (issue 16).

Copying a small file is a handful of system calls and ~10 us of Python; Python threads hand
the GIL over around every call, so on two cores threads writing small files were slower than
one (the sys time of an ingest of 100,000 files went from 3.8 s to 6-7 s, with per-folder
batches handed to a pool). Two processes share no GIL: two halves of the same copy run in
parallel.

So when a ``ConfinedWriter`` with a pool copies a walk of a local folder (``ConfinedReader``,
also behind ``FolderReader`` or ``staging.Visible``) and has written ``TWIN_AFTER`` files -- a
small copy never pays for a process -- it starts a *twin*: ``python -P -m
cargohold.archive._twin`` with the source's and the target's folder descriptors (``pass_fds``:
the twin reaches nothing by path, the same confinement holds; ``-P``: it imports nothing from
the working folder). Both walk the whole tree; past the position where the split starts
(``Share``), each copies the files and links of the folders that are its own (``Share``:
crc32 of the folder's path), a hardlink going with the file it links to; folders are made by
whichever process needs one first. The first process sets the folders' attributes once the
twin is done, and it alone decides when the write is complete: the caller's staging, swap and
``syncfs`` are unchanged.

The twin reports progress as lines on its standard output (``p FILES BYTES``), then
``done FILES BYTES``, or ``error {json}`` and exit 1 with the message and hint of what
failed. A failure of either process fails the write; the first process stops the twin before
anything is cleaned up, and the kernel stops it with a killed first process.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cargohold import errors
from cargohold.archive._entries import Progress
from cargohold.archive.confined import (
    ConfinedDir,
    ConfinedReader,
    ConfinedWriter,
    Share,
    TwinSource,
)
from cargohold.errors import CargoholdError, TransferError

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["TWIN_AFTER", "Twin", "source_of"]

TWIN_AFTER = 5000  # files written before a twin is worth its start (~0.2 s of a core)
_REPORT_EVERY = 0.25  # seconds between two progress lines of the twin
_ENV = "CARGOHOLD_TWIN"  # "0": never start one


def source_of(entries: Iterable[Any]) -> TwinSource | None:
    """The walk ``entries`` is, if a twin can share it (and this machine has two cores)."""
    if os.environ.get(_ENV) == "0" or _cores() < 2:
        return None
    ask = getattr(entries, "twin_source", None)
    return ask() if ask is not None else None


def _cores() -> int:
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


class Twin:
    """The first process's side: start, follow, wait for or stop a twin."""

    def __init__(self, process: subprocess.Popen[str], progress: Progress) -> None:
        self._process = process
        self._progress = progress
        self._done: tuple[int, int] | None = None
        self._error: dict[str, str] | None = None
        self.failed = False  # the twin said it failed (the first process stops there)
        self._stderr: deque[str] = deque(maxlen=20)  # (read as it comes: a full pipe blocks)
        self._reader = threading.Thread(target=self._follow, name="cargohold-twin", daemon=True)
        self._reader.start()
        self._errors = threading.Thread(target=self._drain, name="cargohold-twin", daemon=True)
        self._errors.start()

    def _drain(self) -> None:
        if self._process.stderr is not None:
            for line in self._process.stderr:
                self._stderr.append(line)

    @classmethod
    def start(
        cls, source: TwinSource, start: str, writer: ConfinedWriter, progress: Progress
    ) -> Twin | None:
        """A twin copying its share of the walk from the folder ``start`` on; from now on the
        first process copies only its own share."""
        spec = {
            "source_fd": source.base.fd,
            "source_path": str(source.base.path),
            "rel": source.rel,
            "visible": source.visible,
            "start": start,
            "target_fd": writer.root.fd,
            "target_path": str(writer.root.path),
            "workers": writer.workers,
            "parent": os.getpid(),
        }
        try:
            process = subprocess.Popen(
                # -P: nothing imported from the working folder (it may be a copied volume's)
                [sys.executable, "-P", "-m", "cargohold.archive._twin", json.dumps(spec)],
                pass_fds=(source.base.fd, writer.root.fd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, _ENV: "0"},
            )
        except OSError:  # no process to be had (a limit): the first one copies everything
            return None
        try:
            twin = cls(process, progress)
        except BaseException:
            process.kill()
            process.wait()
            raise
        source.share.start = start
        source.share.active = True
        return twin

    def _follow(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        for line in stdout:
            kind, _, rest = line.rstrip("\n").partition(" ")
            try:
                if kind == "p":
                    files, nbytes = (int(x) for x in rest.split())
                    self._progress(nbytes, files=files)
                elif kind == "done":
                    files, nbytes = (int(x) for x in rest.split())
                    self._done = (files, nbytes)
                elif kind == "error":
                    self._error = json.loads(rest)
                    self.failed = True
            except Exception:  # a bad line or a failing display: read on (a pipe left
                continue  # unread would block the twin)

    def wait(self) -> tuple[int, int]:
        """The twin's files and bytes once it is done.

        Raises:
            TransferError: the twin failed (its message and hint).
        """
        code = self._process.wait()
        self._reader.join()
        self._errors.join()
        if code == 0 and self._done is not None:
            return self._done
        if self._error is not None:
            raise _rebuilt(self._error)
        last = [line.strip() for line in self._stderr if line.strip()][-1:] or [f"exit code {code}"]
        raise TransferError(
            f"The second process of the copy failed: {last[0]}",
            hint="Nothing was published; run the command again (CARGOHOLD_TWIN=0: one process).",
        )

    def stop(self) -> None:
        """After a failure or an interruption of the first process: the twin stops before
        anything is cleaned up."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._reader.join(5)
        self._errors.join(5)
        for stream in (self._process.stdout, self._process.stderr):
            if stream is not None:
                stream.close()


def _rebuilt(failed: dict[str, Any]) -> Exception:
    """The twin's error as the first process would have raised it (same class, message and
    hint; an OSError with its errno, for the callers' own wording)."""
    message = str(failed.get("message") or "The copy failed.")
    if failed.get("kind") == "OSError":
        errno_ = failed.get("errno")
        filename = failed.get("filename")
        return OSError(
            int(errno_) if isinstance(errno_, int) else 0,
            message,
            filename if isinstance(filename, str) else None,
        )
    kind = getattr(errors, str(failed.get("kind")), None)
    if not (isinstance(kind, type) and issubclass(kind, CargoholdError)):
        kind = TransferError
    hint = failed.get("hint")
    try:
        return kind(message, hint=hint if isinstance(hint, str) else None)
    except TypeError:  # a class that takes more than a message
        return TransferError(message, hint=hint if isinstance(hint, str) else None)


class _Reporter:
    """The twin's progress: counted from any thread, written out every ``_REPORT_EVERY``."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._files = self._bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def __call__(self, nbytes: int, /, *, files: int = 0) -> None:
        with self._lock:
            self._files += files
            self._bytes += nbytes

    def expect(self, *, files: int, nbytes: int, exact: bool) -> None:
        pass

    def _flush(self) -> None:
        with self._lock:
            files, nbytes, self._files, self._bytes = self._files, self._bytes, 0, 0
        if files or nbytes:
            self._out.write(f"p {files} {nbytes}\n")
            self._out.flush()

    def _run(self) -> None:
        while not self._stop.wait(_REPORT_EVERY):
            self._flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._flush()


def _twin_main(spec: dict[str, Any]) -> tuple[int, int]:
    source = ConfinedDir(int(spec["source_fd"]), Path(spec["source_path"]))
    target = ConfinedDir(int(spec["target_fd"]), Path(spec["target_path"]))
    reader = ConfinedReader(
        source, str(spec["rel"]), share=Share(1, before=False, start=str(spec["start"]))
    )
    entries: Any = reader
    if spec["visible"]:
        from cargohold.archive.staging import Visible

        entries = Visible(reader)
    reporter = _Reporter(sys.stdout)
    writer = ConfinedWriter(
        target, progress=reporter, workers=int(spec["workers"]), folder_attrs=False
    )
    try:
        writer.write_all(entries)
    finally:
        reporter.close()
    return writer.files, writer.bytes


def _die_with_parent(parent: int) -> None:
    """A twin whose first process was killed (SIGKILL: no chance to stop it) must not go on
    writing into a staging folder the next run will remove: the kernel kills it with its
    parent (``PR_SET_PDEATHSIG``), and one whose parent is already gone exits."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:
        sys.exit(1)


_SPEC = {
    "source_fd",
    "source_path",
    "rel",
    "visible",
    "start",
    "target_fd",
    "target_path",
    "workers",
    "parent",
}  # what Twin.start hands over


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        spec = json.loads(argv[1])
        if not isinstance(spec, dict) or not spec.keys() >= _SPEC:
            raise ValueError(spec)
        _die_with_parent(int(spec["parent"]))
    except (IndexError, ValueError, TypeError):
        sys.stderr.write("cargohold.archive._twin is started by cargohold itself, not by hand.\n")
        return 2
    try:
        files, nbytes = _twin_main(spec)
    except KeyboardInterrupt:
        return 130
    except SystemExit as exc:
        return int(exc.code or 1)
    except CargoholdError as exc:
        _say("error", {"kind": type(exc).__name__, "message": exc.message, "hint": exc.hint})
        return 1
    except OSError as exc:
        filename = exc.filename if isinstance(exc.filename, str) else None
        message = exc.strerror or str(exc)
        _say(
            "error",
            {"kind": "OSError", "errno": exc.errno, "message": message, "filename": filename},
        )
        return 1
    _say(f"done {files} {nbytes}")
    return 0


def _say(line: str, failed: dict[str, Any] | None = None) -> None:
    sys.stdout.write(line + ("" if failed is None else " " + json.dumps(failed)) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
