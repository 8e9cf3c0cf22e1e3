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
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

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
) -> str:
    """The name of a usable Python base image: ``wanted`` if present or pullable, else the local
    Debian-built one (built now if missing).

    Raises:
        ImageNotFound: neither can be had (no registry, and debootstrap cannot run here).
    """
    if engine.image_exists(wanted):
        return wanted
    if engine.image_exists(LOCAL_BASE):
        log.info("using local base image %s in place of %s", LOCAL_BASE, wanted)
        return LOCAL_BASE
    if on_output:
        on_output(f"Pulling {wanted} …")
    if engine.pull(wanted):
        return wanted
    if on_output:
        on_output(
            f"{wanted} cannot be pulled; building {LOCAL_BASE} from Debian packages "
            "(about a minute, once)"
        )
    build_local_base(engine, on_output=on_output)
    return LOCAL_BASE


def build_local_base(
    engine: Engine,
    *,
    name: str = LOCAL_BASE,
    mirror: str = DEBIAN_MIRROR,
    on_output: Callable[[str], None] | None = None,
) -> None:
    """debootstrap a minimal Debian bookworm with Python, and import it as ``name``.

    Raises:
        ImageNotFound: debootstrap is missing, we are not root, or the build failed.
    """
    debootstrap = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if os.path.exists("/usr/sbin/debootstrap") else None
    )
    if debootstrap is None or os.geteuid() != 0:
        raise ImageNotFound(
            f"No Python base image: {DEFAULT_BASE} cannot be pulled and {name} cannot be built "
            + ("(debootstrap is not installed)." if debootstrap is None else "(needs root)."),
            hint="As root: `apt-get install -y debootstrap && cargohold base-image`; or load an "
            f"image with `docker load` and tag it {DEFAULT_BASE}.",
        )
    workdir = Path(tempfile.mkdtemp(prefix="cargohold-rootfs-"))
    rootfs = workdir / "rootfs"
    try:
        command = [
            debootstrap,
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            "bookworm",
            str(rootfs),
            mirror,
        ]
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            assert proc.stdout is not None
            tail: list[str] = []
            for line in proc.stdout:
                tail = [*tail[-20:], line.rstrip()]
                if on_output and line.startswith("I: "):
                    on_output(line.rstrip())
        if proc.returncode != 0:
            raise ImageNotFound(
                f"debootstrap failed (exit {proc.returncode}):\n" + "\n".join(tail),
                hint=f"Check that {mirror} is reachable (CARGOHOLD_DEBIAN_MIRROR sets another).",
            )
        python = rootfs / "usr/bin/python"
        if not python.exists():
            python.symlink_to("python3")
        # Smaller image, and no apt state pointing at a mirror the image may never reach.
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / cache, ignore_errors=True)
        if on_output:
            on_output(f"Importing the root file system as {name}")
        with subprocess.Popen(
            ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE
        ) as tar:
            assert tar.stdout is not None
            engine.import_image(tar.stdout, name, _IMAGE_CHANGES)
        if tar.returncode != 0:
            engine.remove_image(name)
            raise ImageNotFound(
                f"Packing the root file system failed (tar exit {tar.returncode}).",
                hint="Check free space in the temporary folder.",
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
