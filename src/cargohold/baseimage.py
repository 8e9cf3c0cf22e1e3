"""A Python base image without a registry.

Air-gapped machines (and this project's CI) cannot ``docker pull python:3.11-slim``. cargohold
then builds an equivalent image from Debian packages: ``debootstrap`` a minimal bookworm root with
Python 3.11 and NumPy, and ``docker import`` it. Built once, reused after.

A Dockerfile opts in by naming its base through a build argument::

    ARG BASE_IMAGE=python:3.11-slim
    FROM ${BASE_IMAGE}

``cargohold run`` passes ``BASE_IMAGE`` = whichever of the two images is available.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO

from cargohold.buildlog import default_log_path
from cargohold.engine import Engine
from cargohold.errors import ImageNotFound

__all__ = [
    "BASE_ARG",
    "DEFAULT_BASE",
    "LOCAL_BASE",
    "build_local_base",
    "dockerfile_base_default",
    "ensure_base_image",
]

log = logging.getLogger(__name__)

DEFAULT_BASE = "python:3.11-slim"
LOCAL_BASE = "cargohold/python:3.11-bookworm"
BASE_ARG = "BASE_IMAGE"
DEBIAN_MIRROR = os.environ.get("CARGOHOLD_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("python3", "python3-numpy", "libopenblas0-pthread", "ca-certificates")
_IMAGE_CHANGES = [
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    "ENV PYTHONUNBUFFERED=1",
    'CMD ["python3"]',
    "LABEL cargohold.base=debootstrap-bookworm",
]


def dockerfile_base_default(dockerfile: Path) -> str | None:
    """The default of ``ARG BASE_IMAGE=…`` in a Dockerfile, or None when it does not use it."""
    try:
        text = dockerfile.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(rf"^\s*ARG\s+{BASE_ARG}\s*=\s*(\S+)\s*$", text, re.MULTILINE | re.I)
    return match.group(1).strip("\"'") if match else None


def ensure_base_image(
    engine: Engine,
    wanted: str = DEFAULT_BASE,
    *,
    on_output: Callable[[str], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
    log_path: Path | None = None,
) -> str:
    """The name of a usable Python base image: ``wanted`` if present or pullable, else the local
    Debian-built one (built now if missing).

    Args:
        engine: the Docker engine.
        wanted: the image a Dockerfile asks for.
        on_output: told a few milestones (what is built, where its log is).
        on_progress: told each step of a build, for a status line that overwrites itself.
        log_path: where a build writes its full log (default: in the user's cache folder).

    Raises:
        ImageNotFound: neither can be had (no registry, and debootstrap cannot run here).
    """
    if engine.image_exists(wanted):
        return wanted
    if engine.image_exists(LOCAL_BASE):
        log.info("using local base image %s in place of %s", LOCAL_BASE, wanted)
        return LOCAL_BASE
    if on_progress:
        on_progress(f"pulling {wanted}")
    if engine.pull(wanted):
        return wanted
    build_local_base(engine, on_output=on_output, on_progress=on_progress, log_path=log_path)
    return LOCAL_BASE


def _find_debootstrap() -> str | None:
    found = shutil.which("debootstrap")
    if found is None and os.access("/usr/sbin/debootstrap", os.X_OK):
        found = "/usr/sbin/debootstrap"
    return found


def _needs_root_error(name: str, debootstrap: str | None) -> ImageNotFound:
    """What to run, exactly, when this process may not build the base image itself."""
    # The interpreter running now has cargohold (the project's .venv, say); root can run it.
    cargohold = f"{shlex.quote(sys.executable)} -m cargohold base-image"
    steps = [] if debootstrap else ["apt-get install -y debootstrap"]
    if os.geteuid() != 0:
        steps = [f"sudo {step}" for step in [*steps, cargohold]]
    else:
        steps.append(cargohold)
    why = "debootstrap is not installed" if debootstrap is None else "debootstrap needs root"
    return ImageNotFound(
        f"No Python base image: {DEFAULT_BASE} cannot be pulled (no registry answers) and "
        f"building {name} from Debian packages cannot start here ({why}).",
        hint="Run once: `"
        + " && ".join(steps)
        + f"`; or load a Python 3.11 image with `docker load` and tag it {DEFAULT_BASE}.",
    )


# debootstrap's per-package verbs, as a status line says them.
_DEBOOTSTRAP_PHASES = {
    "Retrieving": "downloading",
    "Validating": "checking",
    "Extracting": "extracting",
    "Unpacking": "unpacking",
    "Configuring": "configuring",
}


class _DebootstrapStatus:
    """Turns debootstrap's ``I: Retrieving libc6 2.36-9`` lines into a short status: the phase,
    how many packages it has done (of how many were downloaded, once that is known), which one."""

    def __init__(self) -> None:
        self.done: dict[str, int] = {}

    def update(self, line: str) -> str | None:
        if not line.startswith("I: "):
            return None
        text = line[3:].strip().removesuffix("...")
        verb, _, rest = text.partition(" ")
        phase = _DEBOOTSTRAP_PHASES.get(verb)
        package = rest.split(" ")[0].split(":")[0]
        general = rest.endswith("packages") or rest.startswith("the ") or rest[:1].isupper()
        if phase is None or not package or general:
            return f"debootstrap: {text}"
        self.done[phase] = self.done.get(phase, 0) + 1
        count = str(self.done[phase])
        total = self.done.get("downloading", 0)
        if phase != "downloading" and self.done[phase] <= total:
            count += f"/{total}"
        return f"debootstrap: {phase} packages ({count}): {package}"


def build_local_base(
    engine: Engine,
    *,
    name: str = LOCAL_BASE,
    mirror: str = DEBIAN_MIRROR,
    on_output: Callable[[str], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
    log_path: Path | None = None,
    debootstrap: str | None = None,
) -> None:
    """debootstrap a minimal Debian bookworm with Python, and import it as ``name``.

    debootstrap's full output (hundreds of lines) goes to ``log_path``; ``on_progress`` gets a
    short status per line, ``on_output`` the few lines worth keeping.

    Raises:
        ImageNotFound: debootstrap is missing, we are not root (both found before anything is
            attempted), or the build failed (the message ends with the log's tail).
    """
    debootstrap = debootstrap or _find_debootstrap()
    if debootstrap is None or os.geteuid() != 0:
        raise _needs_root_error(name, debootstrap)
    log_path = log_path or default_log_path("base-image")
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("w", encoding="utf-8")
    except OSError as exc:
        raise ImageNotFound(
            f"Cannot write the build log {log_path}: {exc.strerror or exc}.",
            hint="Set XDG_CACHE_HOME to a writable folder, or pass --log.",
        ) from exc
    if on_output:
        on_output(
            f"{DEFAULT_BASE} cannot be pulled; building {name} from Debian packages "
            f"(about a minute, once). Full log: {log_path}"
        )
    workdir = Path(tempfile.mkdtemp(prefix="cargohold-rootfs-"))
    rootfs = workdir / "rootfs"
    with log_file:
        try:
            _debootstrap(debootstrap, rootfs, mirror, log_file, log_path, on_progress)
            python = rootfs / "usr/bin/python"
            if not python.exists():
                python.symlink_to("python3")
            # Smaller image, and no apt state pointing at a mirror the image may never reach.
            for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
                shutil.rmtree(rootfs / cache, ignore_errors=True)
            if on_progress:
                on_progress(f"importing the root file system as {name}")
            with subprocess.Popen(
                ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
                stdout=subprocess.PIPE,
                stderr=log_file,
            ) as tar:
                assert tar.stdout is not None
                engine.import_image(tar.stdout, name, _IMAGE_CHANGES)
            if tar.returncode != 0:
                engine.remove_image(name)
                raise ImageNotFound(
                    f"Packing the root file system failed (tar exit {tar.returncode}); "
                    f"see {log_path}.",
                    hint="Check free space in the temporary folder.",
                )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    if on_output:
        on_output(f"Built {name}")


def _debootstrap(
    debootstrap: str,
    rootfs: Path,
    mirror: str,
    log_file: IO[str],
    log_path: Path,
    on_progress: Callable[[str], None] | None,
) -> None:
    command = [
        debootstrap,
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        "bookworm",
        str(rootfs),
        mirror,
    ]
    status = _DebootstrapStatus()
    tail: deque[str] = deque(maxlen=15)
    try:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
    except OSError as exc:
        raise ImageNotFound(
            f"Cannot start {debootstrap}: {exc.strerror or exc}.",
            hint="As root: `apt-get install -y debootstrap`.",
        ) from exc
    with proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log_file.write(line)
            tail.append(line.rstrip())
            shown = status.update(line)
            if on_progress and shown:
                on_progress(shown)
    log_file.flush()
    if proc.returncode != 0:
        raise ImageNotFound(
            f"debootstrap failed (exit {proc.returncode}). The end of {log_path}:\n"
            + "\n".join(tail),
            hint=f"Check that {mirror} is reachable (CARGOHOLD_DEBIAN_MIRROR sets another).",
        )
