"""Beyond one host, for real: the cargohold image built without a registry, and Swarm.

Swarm tests run `docker swarm init` on the CI engine when it is not already in a swarm, and
`docker swarm leave --force` at the end (only when they initialised it); every stack, service,
container and volume they create is removed, pass or fail.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def cargohold_image(docker_client: Any, base_image: str) -> Iterator[str]:
    """`cargohold image` under a unique tag; removed at the end."""
    tag = f"cargohold-test-image:{secrets.token_hex(4)}"
    try:
        built = run_cli("image", "--tag", tag, timeout=600)
        assert built.returncode == 0, built.stderr
        assert built.stdout.strip() == tag
        yield tag
    finally:
        with contextlib.suppress(Exception):
            docker_client.images.remove(tag, force=True)


def test_the_cargohold_image_runs_the_cli_without_a_network(
    cargohold_image: str, docker_client: Any
) -> None:
    from cargohold import __version__

    image = docker_client.images.get(cargohold_image)
    assert image.labels.get("cargohold.image") == __version__
    script = (
        "import s3fs, cargohold.snapshots; "
        "from cargohold.cli import main; raise SystemExit(main(['version']))"
    )
    output = docker_client.containers.run(
        cargohold_image, ["python3", "-c", script], network_mode="none", remove=True
    )
    assert output.decode().strip() == __version__
    helped = docker_client.containers.run(
        cargohold_image, ["cargohold", "image", "--help"], network_mode="none", remove=True,
        user="12345:12345",  # any uid, as a pod's securityContext may choose
    )
    assert b"--tag" in helped
