"""Full logs of long builds (the base image, a job's image), kept in a file.

A build prints hundreds of lines that nobody reads unless it fails. The user sees a one-line
status (on a terminal) and the few lines worth keeping; everything goes to a log file in the
user's cache folder, whose path is said before the build starts and shown again if it fails.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = ["LineLog", "default_log_path"]


def default_log_path(name: str) -> Path:
    """``$XDG_CACHE_HOME/cargohold/<name>.log``, else under ``~/.cache``, else the temporary
    folder. ``name`` is made safe for a file name (an image name has ``/`` and ``:``)."""
    cache = os.environ.get("XDG_CACHE_HOME")
    if not cache:
        try:
            cache = str(Path.home() / ".cache")
        except RuntimeError:  # no HOME and no passwd entry
            cache = tempfile.gettempdir()
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-") or "build"
    return Path(cache) / "cargohold" / f"{safe}.log"


class LineLog:
    """Writes each line to a log file and passes it on to ``then`` (a status line), as a context
    manager. When ``path`` cannot be written (a home folder that is not writable), the log goes
    to a new file in the temporary folder instead; only when neither can be written do lines
    reach ``then`` alone, and ``path`` is None."""

    def __init__(self, path: Path, then: Callable[[str], None] | None = None) -> None:
        self._then = then
        self._file: IO[str] | None = None
        self.path: Path | None = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("w", encoding="utf-8", errors="replace")
        except OSError:
            try:
                fd, name = tempfile.mkstemp(prefix="cargohold-" + path.stem + "-", suffix=".log")
                self._file = os.fdopen(fd, "w", encoding="utf-8", errors="replace")
                self.path = Path(name)
            except OSError:
                self.path = None

    def __call__(self, line: str) -> None:
        if self._file is not None:
            self._file.write(line.rstrip("\n") + "\n")
        if self._then is not None:
            self._then(line)

    def record(self, text: str) -> None:
        """Write ``text`` to the log file only (an error that did not come as a line)."""
        if self._file is not None:
            self._file.write(text.rstrip("\n") + "\n")

    def __enter__(self) -> LineLog:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()
