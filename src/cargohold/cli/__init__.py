"""The ``cargohold`` command. Each command parses, calls one library function, and renders.

Errors become exit codes here and only here: 0 ok, 1 findings (or a failed transfer, checksum
or checkpoint), 2 usage or spec error (and refused mirror credentials), 3 engine error (and an
unreachable mirror), 4 a snapshot that completed while some paths changed under it, 5 a
repository password missing or wrong, 130 interrupted. No traceback reaches the user;
``CARGOHOLD_DEBUG=1`` shows one.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.text import Text

from cargohold.cli import (  # noqa: F401 - they register commands
    _cluster,
    _commands,
    _data,
    _guard,
    _lint,
    _snapshots,
)
from cargohold.errors import CargoholdError

try:  # typer >= 0.16 carries its own copy of click; older ones use click itself
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_errors  # type: ignore[no-redef]

_NoArgsIsHelp = getattr(click_errors, "NoArgsIsHelpError", ())

__all__ = ["main"]

_stderr = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)

_OS_HINTS = {
    errno.ENOSPC: "Free space on that disk (or write somewhere else); what was being written "
    "was not published.",
    errno.EDQUOT: "You are over your disk quota there; free space or write elsewhere.",
    errno.EACCES: "Check the permissions of that path (or run as a user that may write it).",
    errno.EPERM: "Check the permissions of that path (or run as a user that may write it).",
    errno.EROFS: "That file system is read-only; write somewhere else.",
    errno.ENOENT: "Check that the path exists.",
}


def _print_error(message: str, hint: str | None) -> None:
    # Messages and hints carry user text (paths, names, a job's output): never markup.
    _stderr.print(Text.assemble(("error:", "bold red"), " ", message))
    if hint:
        _stderr.print(Text.assemble(("hint:", "yellow"), " ", hint))


class _Interrupt:
    """Whether Ctrl-C ended the command. typer turns a KeyboardInterrupt into a silent
    ``Exit(130)``, which looks like any command returning 130; this handler remembers the
    signal (and raises KeyboardInterrupt as Python's own does, so every ``finally`` and
    ``except BaseException`` below still cleans up) so that ``main`` can say why it stopped."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, signum: int, frame: object) -> None:
        self.seen = True
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        # Only where Python's own handler is in place: an ignored SIGINT (a background job of
        # a non-interactive shell) stays ignored, and signals belong to the main thread.
        if (
            threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        ):
            yield
            return
        signal.signal(signal.SIGINT, self)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script. Returns the exit code (and exits with it when run as
    the script)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if argv is None:
        # What the imports made lives as long as the process: no collection needs to walk it
        # again. Collections come less often: a snapshot of a million files makes millions of
        # short-lived objects without cycles, and each full collection walked all that lived
        # (7% of an unchanged snapshot of 200,000 files).
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)
    logging.basicConfig(
        level=logging.DEBUG if os.environ.get("CARGOHOLD_DEBUG") else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    interrupt = _Interrupt()
    try:
        with interrupt.installed():
            result = _commands.app(args=args, prog_name="cargohold", standalone_mode=False)
        code = result if isinstance(result, int) else 0
        if interrupt.seen and code == 130:
            _print_error("interrupted", None)
    except (CargoholdError, OSError) as exc:
        if os.environ.get("CARGOHOLD_DEBUG"):
            raise
        if interrupt.seen:
            # An error on the way out of an interrupted command (a descriptor closed under a
            # reader by the unwinding) is the interruption's, not a failure of its own.
            _print_error("interrupted", None)
            code = 130
        elif isinstance(exc, CargoholdError):
            _print_error(exc.message, exc.hint)
            code = exc.exit_code
        else:
            # The file system said no (full disk, permissions, a vanished path): say it plainly.
            where = f" ({exc.filename})" if exc.filename else ""
            _print_error(
                f"{exc.strerror or exc}{where}.",
                _OS_HINTS.get(
                    exc.errno or 0,
                    "Check the path and try again; CARGOHOLD_DEBUG=1 shows the details.",
                ),
            )
            code = 1
    except RecursionError:
        # Where a reader of hostile input did not name it (each names what it read): JSON or
        # YAML nested thousands deep is a crafted file, never a traceback.
        if os.environ.get("CARGOHOLD_DEBUG"):
            raise
        _print_error(
            "Something read was nested too deeply to be read (likely a damaged or crafted file).",
            "CARGOHOLD_DEBUG=1 shows where it was read.",
        )
        code = 1
    except _NoArgsIsHelp as exc:  # `cargohold`, `cargohold volume`: show what there is
        sys.stdout.write(exc.ctx.get_help() + "\n" if exc.ctx else "")
        code = 2
    except click_errors.UsageError as exc:
        command = exc.ctx.command_path.partition(" ")[2] if exc.ctx else ""
        _print_error(
            exc.format_message(),
            f"`cargohold {command} --help` lists the options.".replace("  ", " "),
        )
        code = 2
    except click_errors.ClickException as exc:
        _print_error(exc.format_message(), None)
        code = exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        _print_error("interrupted", None)
        code = 130
    if argv is None:
        # The process ends here. The interpreter's last collection would walk every object the
        # command left behind (0.2-0.3 s after a snapshot to S3); nothing needs it: files,
        # sessions and locks are closed explicitly, and finalizers registered with atexit run.
        gc.freeze()
        sys.exit(code)
    return code
