"""The one table from Docker SDK (and transport) errors to cargohold's errors.

Every call into the SDK runs inside ``translate(what)``, and every stream the SDK hands back is
iterated inside ``translated(stream, what)``: an engine that dies in the middle of a 50 GB
transfer fails the same way as one that was never there. The first row whose exception class
matches wins, so subclasses come before their bases. A call that knows what "not found" means
at that place (a container, a volume, a path) passes ``not_found``. The only other place that
names ``docker.errors`` is ``_docker.py``, where one SDK error means an answer rather than a
failure: removing what is already gone, a pull that no registry can serve (False), a build
whose failure the SDK reports in its output, and the best-effort removal of a helper container
(a dead engine is cleaned up at the next connection).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import NoReturn, TypeVar

import docker.errors
import requests.exceptions
import urllib3.exceptions

from cargohold.errors import (
    BuildFailed,
    CargoholdError,
    EngineError,
    EngineUnavailable,
    ImageNotFound,
)

__all__ = ["START_HINT", "describe", "translate", "translated"]

START_HINT = (
    "Start a Docker engine (as root: `dockerd >/var/log/dockerd.log 2>&1 &`, or "
    "`systemctl start docker`), or point DOCKER_HOST at a running one; `cargohold doctor` "
    "checks the connection."
)
_T = TypeVar("_T")


def describe(exc: BaseException) -> str:
    """The engine's own words for an error, one line."""
    if isinstance(exc, docker.errors.APIError) and exc.explanation:
        return str(exc.explanation).strip().splitlines()[0][:300]
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _build_failed(exc: BaseException, what: str) -> CargoholdError:
    assert isinstance(exc, docker.errors.BuildError)
    tail = "".join(str(item.get("stream", item.get("error", ""))) for item in exc.build_log)
    return BuildFailed(
        f"{what}: {exc.msg}\n{tail[-2000:]}".rstrip(),
        hint="Fix the Dockerfile step shown above and run again.",
    )


_UNREACHABLE = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)

# (SDK or transport exception, what cargohold raises instead), first match wins.
TABLE: tuple[
    tuple[
        type[BaseException] | tuple[type[BaseException], ...],
        Callable[[BaseException, str], CargoholdError],
    ],
    ...,
] = (
    (
        docker.errors.ImageNotFound,
        lambda exc, what: ImageNotFound(
            f"{what}: image not found ({describe(exc)}).",
            hint="Build it (set `build` in the job) or check the image name.",
        ),
    ),
    (
        docker.errors.NotFound,
        lambda exc, what: EngineError(
            f"{what}: not found ({describe(exc)}).",
            hint="It may have been removed meanwhile; run the command again.",
        ),
    ),
    (docker.errors.BuildError, _build_failed),
    (
        docker.errors.APIError,
        lambda exc, what: EngineError(
            f"{what}: the Docker engine refused: {describe(exc)}.",
            hint="Check the engine's log; `cargohold doctor` checks the set-up.",
        ),
    ),
    (
        _UNREACHABLE,
        lambda exc, what: EngineUnavailable(
            f"{what}: cannot reach the Docker engine ({describe(exc)}).",
            hint=START_HINT,
        ),
    ),
)


def _fail(exc: BaseException, what: str, not_found: CargoholdError | None) -> NoReturn:
    if (
        not_found is not None
        and isinstance(exc, docker.errors.NotFound)
        and not isinstance(exc, docker.errors.ImageNotFound)
    ):
        raise not_found from None
    for kinds, make in TABLE:
        if isinstance(exc, kinds):
            raise make(exc, what) from None
    raise exc


@contextlib.contextmanager
def translate(what: str, *, not_found: CargoholdError | None = None) -> Iterator[None]:
    """Run SDK calls; their errors leave as cargohold's (``what`` says what was being done)."""
    try:
        yield
    except _UNREACHABLE as exc:
        _fail(exc, what, not_found)


def translated(stream: Iterable[_T], what: str) -> Iterator[_T]:
    """Iterate an SDK stream with its errors translated (the engine may die mid-stream)."""
    with translate(what):
        yield from stream
