"""The status line of long steps: overwrites itself on a terminal, silent in a pipe."""

from __future__ import annotations

import io

from rich.console import Console

from cargohold.cli._status import StatusLine


def console(terminal: bool) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=terminal, width=30), buffer


def test_on_a_terminal_each_update_overwrites_the_last() -> None:
    term, buffer = console(terminal=True)
    status = StatusLine(term)
    status.update("Step 1/7 : ARG BASE_IMAGE")
    status.update("Step 2/7 : FROM [bold]${BASE_IMAGE}\n and a very long tail that does not fit")
    status.clear()
    status.clear()  # nothing shown: nothing to clear
    written = buffer.getvalue()
    assert written.split("\r\x1b[K") == [
        "",
        "cargohold: Step 1/7 : ARG BAS",  # the width less one: no wrap
        "cargohold: Step 2/7 : FROM [b",  # literal text, on one line
        "",
    ]


def test_in_a_pipe_nothing_is_shown() -> None:
    pipe, buffer = console(terminal=False)
    status = StatusLine(pipe)
    assert not status.active
    status.update("Step 1/7 : ARG BASE_IMAGE")
    status.clear()
    assert buffer.getvalue() == ""


def test_a_kept_line_clears_the_status_first() -> None:
    term, buffer = console(terminal=True)
    status = StatusLine(term)
    kept: list[str] = []
    say = status.first_clearing(kept.append)
    status.update("Step 1/2")
    say("Built it")
    assert kept == ["Built it"]
    assert buffer.getvalue() == "\r\x1b[Kcargohold: Step 1/2\r\x1b[K"
