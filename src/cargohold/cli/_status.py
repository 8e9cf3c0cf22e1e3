"""One status line on a terminal for a long step (a base image or an image being built): each
update overwrites the last, and the line is cleared before anything else is printed. In a pipe
it shows nothing: logs and CI output stay free of progress noise."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console

__all__ = ["StatusLine"]


class StatusLine:
    """A self-overwriting line on ``console`` (when it is a terminal)."""

    def __init__(self, console: Console, prefix: str = "cargohold: ") -> None:
        self._console = console
        self._prefix = prefix
        self._shown = False

    @property
    def active(self) -> bool:
        """Whether updates are shown at all (only on a terminal)."""
        return self._console.is_terminal

    def update(self, text: str) -> None:
        """Show ``text`` (literally, cut to the terminal's width) in place of the last status."""
        text = " ".join(text.split())
        if not self.active or not text:
            return
        line = (self._prefix + text)[: max(self._console.width - 1, 10)]
        self._console.file.write("\r\033[K" + line)
        self._console.file.flush()
        self._shown = True

    def clear(self) -> None:
        """Remove the status, so that the next line printed starts on a clean line."""
        if self._shown:
            self._console.file.write("\r\033[K")
            self._console.file.flush()
            self._shown = False

    def first_clearing(self, say: Callable[[str], None]) -> Callable[[str], None]:
        """``say``, clearing the status first: its line is kept, the status comes back after."""

        def clear_then_say(message: str) -> None:
            self.clear()
            say(message)

        return clear_then_say
