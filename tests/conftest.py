"""Shared fixtures. Integration fixtures talk to the real Docker engine.

Every Docker test gets its own project name; its teardown removes every container and volume
labelled with that project (and the images it built), whether the test passed or not. In CI
(``CI=true``) a missing engine fails the tests instead of skipping them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # any failure to reach the engine
        message = f"no Docker engine: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI needs one: .ci/run starts dockerd)")
        pytest.skip(message)
    yield client
    client.close()


@pytest.fixture(scope="session", autouse=True)
def _helper_image_cleanup(request: pytest.FixtureRequest) -> Iterator[None]:
    """cargohold makes a tiny helper image on first use of the Engine-API path; when this
    session's tests made it, this session removes it."""
    import docker
    import docker.errors

    from cargohold.engine import HELPER_IMAGE

    # A client per use, closed at once: one held open for the whole session leaves an idle
    # socket that the engine closes and the garbage collector reports (filterwarnings=error).
    try:
        client = docker.from_env(timeout=60)
        try:
            existed = bool(client.images.list(name=HELPER_IMAGE))
        finally:
            client.close()
    except docker.errors.DockerException:
        yield
        return
    yield
    if not existed:
        with contextlib.suppress(docker.errors.DockerException):
            client = docker.from_env(timeout=60)
            try:
                client.images.remove(HELPER_IMAGE, force=True)
            finally:
                client.close()


@pytest.fixture(scope="session")
def base_image(docker_client: object) -> str:
    from cargohold.baseimage import ensure_base_image
    from cargohold.engine import connect

    # A build cache like a pulled image: made once by `cargohold base-image` (.ci/run does it),
    # reused by every run, never removed by a test.
    return ensure_base_image(connect())


@pytest.fixture(scope="session")
def job_image(docker_client: object, base_image: str) -> Iterator[str]:
    """A small image with Python, NumPy and cargohold's checkpoint library; removed at the end."""
    from cargohold.engine import connect

    tag = f"cargohold-test-job:{secrets.token_hex(4)}"
    engine = connect()
    engine.build(
        context=str(REPO),
        tag=tag,
        dockerfile="tests/integration/Dockerfile",
        buildargs={"BASE_IMAGE": base_image},
        labels={"cargohold.test": "true"},
    )
    yield tag
    engine.remove_image(tag)


@pytest.fixture(scope="session")
def cargohold_image(docker_client: Any, base_image: str) -> Iterator[str]:
    """The image `cargohold image` builds (the one `cargohold run` uses for its mirror), built
    once through the CLI; removed at the end if this session built it."""
    from cargohold.engine import connect
    from cargohold.image import DEFAULT_TAG, image_is_current

    # (an image of this tag built from older code -- images outlive runs -- is rebuilt)
    existed = image_is_current(connect(), DEFAULT_TAG)
    if not existed:
        built = run_cli("image", "--tag", DEFAULT_TAG, timeout=900)
        assert built.returncode == 0, built.stderr
        assert built.stdout.strip() == DEFAULT_TAG
    yield DEFAULT_TAG
    if not existed:
        with contextlib.suppress(Exception):
            docker_client.images.remove(DEFAULT_TAG, force=True)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[dict[str, str]]:
    """A real S3 server: radosgw on loopback, started for the session (about 15 s) unless
    CARGOHOLD_TEST_S3_ENDPOINT names one already running. Its packages are cached in
    /var/tmp/cargohold-radosgw between runs."""
    keys = {
        "AWS_ACCESS_KEY_ID": os.environ.get("S3_ACCESS_KEY", "cargoholdtest"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("S3_SECRET_KEY", "cargoholdtestsecret"),
    }
    if os.environ.get("CARGOHOLD_TEST_S3_ENDPOINT"):
        yield {**keys, "CARGOHOLD_S3_ENDPOINT": os.environ["CARGOHOLD_TEST_S3_ENDPOINT"]}
        return
    script = REPO / "tests" / "services" / "radosgw.sh"
    folder = os.environ.get("CARGOHOLD_TEST_RADOSGW_DIR", "/var/tmp/cargohold-radosgw")
    started = subprocess.run(
        ["bash", str(script), "start", folder], capture_output=True, text=True, timeout=600
    )
    if started.returncode != 0:
        message = f"radosgw did not start: {started.stderr[-2000:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    endpoint = next(
        w.split("=", 1)[1] for w in started.stdout.split() if w.startswith("S3_ENDPOINT=")
    )
    try:
        yield {**keys, "CARGOHOLD_S3_ENDPOINT": endpoint}
    finally:
        subprocess.run(["bash", str(script), "stop", folder], capture_output=True, timeout=120)


class Resources:
    """What one test created in Docker, removed in teardown."""

    def __init__(self, client: Any, project: str) -> None:
        self.client = client
        self.project = project
        self.volumes: list[str] = []
        self.containers: list[str] = []
        self.images: list[str] = []

    def cleanup(self) -> None:
        import docker.errors

        label = {"label": f"cargohold.project={self.project}"}
        containers = [c.name for c in self.client.containers.list(all=True, filters=label)]
        for name in [*containers, *self.containers]:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.containers.get(name).remove(force=True)
        volumes = [v.name for v in self.client.volumes.list(filters=label)]
        for name in [*volumes, *self.volumes]:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.volumes.get(name).remove(force=True)
        for name in self.images:
            with contextlib.suppress(docker.errors.ImageNotFound):
                self.client.images.remove(name, force=True)


@pytest.fixture
def docker_resources(docker_client: Any) -> Iterator[Resources]:
    resources = Resources(docker_client, f"cht-{secrets.token_hex(4)}")
    try:
        yield resources
    finally:
        resources.cleanup()


def s3_filesystem(s3_endpoint: dict[str, str]) -> Any:
    """An s3fs file system on the test S3 server (for setting up and removing buckets)."""
    import s3fs

    return s3fs.S3FileSystem(key=s3_endpoint["AWS_ACCESS_KEY_ID"],
                             secret=s3_endpoint["AWS_SECRET_ACCESS_KEY"],
                             client_kwargs={"endpoint_url": s3_endpoint["CARGOHOLD_S3_ENDPOINT"]})


def remove_bucket(fs: Any, bucket: str) -> None:
    """Remove a test's bucket and all in it (the S3 server's memory is small)."""
    import time

    for _ in range(5):  # radosgw may list a just-deleted object for a moment
        try:
            if fs.exists(bucket):
                fs.rm(bucket, recursive=True)
            return
        except OSError:
            time.sleep(1)


def run_cli(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the real `cargohold` console entry point in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(SRC) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "cargohold", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


# Linux keeps the larger of a process's peak RSS before and after exec, and a forked child
# starts with its parent's RSS: a child of this (large, late in the suite) pytest process would
# report pytest's own size. So a small interpreter forks cargohold and reports its rusage.
_MEASURE = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n"
)


def peak_rss_mb(
    args: list[str], env: dict[str, str], log: Path, *, codes: tuple[int, ...] = (0,)
) -> float:
    """Peak RSS of one cargohold process, measured by a small parent (see _MEASURE); its exit
    code must be one of ``codes``."""
    full = {**os.environ, **env, "PYTHONPATH": str(SRC)}
    with log.open("w") as errors:
        measured = subprocess.run(
            [sys.executable, "-c", _MEASURE, sys.executable, "-m", "cargohold", *args],
            env=full, stdout=subprocess.PIPE, stderr=errors, text=True, check=False,
        )
    code, maxrss_kb = measured.stdout.split()
    assert measured.returncode == 0 and int(code) in codes, log.read_text()
    return int(maxrss_kb) / 1024
