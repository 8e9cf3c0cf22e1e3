"""The cargohold image: the CLI inside a container, for initContainers, sidecars and Swarm tasks.

Built without any network: the base is the Python image ``cargohold base-image`` provides
(pulled, or made from Debian packages), and cargohold with its dependencies is copied from the
Python that runs this command -- the very code being run, and installed distributions of the same
interpreter version (3.11, glibc wheels, which the Debian base runs as they are). No registry, no
package index. The cluster then pulls the image from the user's registry: ``docker tag`` and
``docker push`` it there, and pass that name to ``render kubernetes --image``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata as metadata
import logging
import re
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

from cargohold import __version__
from cargohold.baseimage import ensure_base_image
from cargohold.engine import Engine
from cargohold.errors import ImageNotFound

__all__ = [
    "DEFAULT_TAG",
    "IMAGE_LABEL",
    "SOURCE_LABEL",
    "build_cargohold_image",
    "image_is_current",
    "runtime_distributions",
    "source_stamp",
]

log = logging.getLogger(__name__)

DEFAULT_TAG = f"cargohold:{__version__}"
IMAGE_LABEL = "cargohold.image"
SOURCE_LABEL = "cargohold.source"  # source_stamp() of the code the image was built from
# What the CLI needs at run time, and s3fs for s3:// repositories and mirrors.
_EXTRAS = ("s3",)
_SKIP_PARTS = ("__pycache__",)

_DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY site-packages/ /usr/local/lib/python3.11/dist-packages/
COPY cargohold-cli /usr/local/bin/cargohold
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
CMD ["cargohold", "--help"]
"""
_LAUNCHER = """\
#!/usr/bin/python3
import sys
from cargohold.cli import main
sys.exit(main())
"""


def _name_of(requirement: str) -> tuple[str, str]:
    """A requirement line → (distribution name, its marker or "")."""
    head, _, marker = requirement.partition(";")
    name = re.split(r"[\s\[<>=!~(]", head.strip(), maxsplit=1)[0]
    return name, marker.strip()


def _extra_of(marker: str) -> str | None:
    match = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
    return match.group(1) if match else None


def _declared_requirements(root: str) -> list[str]:
    """cargohold's requirements: those of the pyproject.toml beside the running code (a checkout
    or an editable install, whose installed metadata may be older), else the installed ones."""
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
        if project.get("name") == root:
            extras = project.get("optional-dependencies", {})
            return [
                *project.get("dependencies", []),
                *(f"{r}; extra == {e!r}" for e in _EXTRAS for r in extras.get(e, [])),
            ]
    return list(metadata.requires(root) or [])


def runtime_distributions(root: str = "cargohold") -> list[metadata.Distribution]:
    """cargohold's run-time requirement closure (with the s3 extra), as installed here.

    Raises:
        ImageNotFound: a requirement is not installed in this Python.
    """
    # Environment markers are not evaluated (that needs `packaging`): a requirement under a marker
    # is taken when it is installed and skipped when not; one that only an extra asks for is
    # skipped, except cargohold's own s3 extra.
    queue: list[tuple[str, bool]] = []
    for requirement in _declared_requirements(root):
        name, marker = _name_of(requirement)
        extra = _extra_of(marker)
        if extra is None or extra in _EXTRAS:
            queue.append((name, extra is None and not marker))
    found: dict[str, metadata.Distribution] = {}
    while queue:
        name, required = queue.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if not required:
                continue
            raise ImageNotFound(
                f"{name}, which cargohold needs, is not installed in {sys.executable}.",
                hint=f"`{sys.executable} -m pip install 'cargohold[s3]'` and build again.",
            ) from None
        found[key] = dist
        for requirement in dist.requires or []:
            dep, marker = _name_of(requirement)
            if _extra_of(marker) is None:
                queue.append((dep, not marker))
    return sorted(found.values(), key=lambda d: d.metadata["Name"].lower())


def _files_of(dist: metadata.Distribution) -> Iterator[tuple[Path, Path]]:
    """(installed file, path relative to site-packages) for every file inside site-packages."""
    base = Path(str(dist.locate_file(""))).resolve()
    for file in dist.files or []:
        if file.parts[0] == ".." or any(p in _SKIP_PARTS for p in file.parts):
            continue  # scripts in bin/, caches
        source = Path(str(dist.locate_file(file)))
        if source.is_file():
            yield source, source.resolve().relative_to(base)


def _stage(context: Path) -> int:
    """Fill a build context; returns the number of files copied."""
    site = context / "site-packages"
    site.mkdir()
    copied = 0
    for dist in runtime_distributions():
        for source, relative in _files_of(dist):
            target = site / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            copied += 1
    # The running code itself, whatever way it is installed (editable, a wheel, a checkout).
    package = Path(__file__).resolve().parent
    shutil.copytree(
        package, site / "cargohold", ignore=shutil.ignore_patterns(*_SKIP_PARTS), dirs_exist_ok=True
    )
    (context / "cargohold-cli").write_text(_LAUNCHER)
    (context / "cargohold-cli").chmod(0o755)
    (context / "Dockerfile").write_text(_DOCKERFILE)
    return copied


def source_stamp() -> str:
    """A fingerprint of the cargohold code installed here. An image of the same tag built from
    other code (an older build of this version: images outlive upgrades) is rebuilt rather
    than reused -- a sidecar running older code could refuse a newer repository."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def image_is_current(engine: Engine, tag: str = DEFAULT_TAG) -> bool:
    """Whether ``tag`` exists and was built from the code installed here."""
    return engine.image_label(tag, SOURCE_LABEL) == source_stamp()


def build_cargohold_image(
    engine: Engine, tag: str = DEFAULT_TAG, *, on_output: Callable[[str], None] | None = None
) -> str:
    """Build the cargohold image from the local base image, with no network.

    Args:
        engine: where to build.
        tag: the image's name.
        on_output: receives progress lines.

    Returns:
        The tag.

    Raises:
        ImageNotFound: no base image can be had, or a dependency is not installed here.
        BuildFailed: the build failed.
    """
    base = ensure_base_image(engine, on_output=on_output)
    with tempfile.TemporaryDirectory(prefix="cargohold-image-") as folder:
        context = Path(folder)
        files = _stage(context)
        if on_output:
            on_output(f"Building {tag} from {base} ({files} files of dependencies, no network)")
        engine.build(
            context=str(context),
            tag=tag,
            dockerfile=None,
            buildargs={"BASE_IMAGE": base},
            labels={IMAGE_LABEL: __version__, SOURCE_LABEL: source_stamp()},
            on_output=on_output,
        )
    return tag
