"""`cargohold run` finds the newest whole checkpoint for every user (issue 8 defect 11): through
the Engine API's archive stream (the path of a non-root user or a remote engine, forced here with
``CARGOHOLD_VOLUME_ACCESS=archive``) as through the volume's folder, with an incomplete and a
hostile newer checkpoint in the store and an image that has no python3."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, SRC, Resources, run_cli
from tests.integration.test_newcomer import (
    _as,
    _docker_socket_is_for_the_group,
    _system_python,
    _wheelhouse,
    newcomer,  # noqa: F401 - a fixture
)
from tests.integration.test_run import SAVER, write_project

# Planted by a container, as a job could: 9 never finished (no manifest), 8 names a host file
# through ".." and holds a link to a device that never ends, 7 has a manifest that is a number.
_HOSTILE_MANIFEST = json.dumps({
    "format": "cargohold-checkpoint", "version": 1, "step": 8, "created": 0, "metrics": {},
    "files": {"../../../../etc/hostname": {"size": 1, "crc32": "00000000"},
              "w.bin": {"size": 10, "crc32": "00000000"}},
})
PLANT = f"""
set -e
mkdir -p /ckpt/step-0000000009 /ckpt/step-0000000008 /ckpt/step-0000000007
echo half > /ckpt/step-0000000009/w.bin
ln -s /dev/zero /ckpt/step-0000000008/w.bin
cat > /ckpt/step-0000000008/manifest.json <<'EOF'
{_HOSTILE_MANIFEST}
EOF
echo 42 > /ckpt/step-0000000007/manifest.json
"""
SHOW = ("command -v python3 || echo no-python; "
        "echo RESUME=$CARGOHOLD_RESUME FROM=$CARGOHOLD_RESUME_FROM")


def _store_with_hostile_checkpoints(project: Path, steps: int, job_image: str,
                                    resources: Resources, client: Any) -> str:
    """A project whose job saved ``steps`` checkpoints with the real library (as root), then
    planted the hostile ones (``PLANT``), and now runs an image without python3; its volume."""
    write_project(project, resources.project, job_image)
    saved = run_cli("run", "--", "python3", "-c", SAVER, str(steps), "0", "0", cwd=project)
    assert saved.returncode == 0, saved.stderr
    volume = f"{resources.project}-checkpoints"
    client.containers.run(job_image, ["sh", "-c", PLANT], remove=True,
                          volumes={volume: {"bind": "/ckpt", "mode": "rw"}})
    image = f"{resources.project}-nopython:1"
    resources.images.append(image)
    context = project / "nopython"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {job_image}\nRUN rm -f /usr/bin/python3* /usr/local/bin/python3*\n")
    client.images.build(path=str(context), tag=image, rm=True)
    spec = project / "cargohold.toml"
    spec.write_text(spec.read_text().replace(f'image = "{job_image}"', f'image = "{image}"'))
    return volume


def test_every_access_path_resumes_from_the_newest_whole_checkpoint(
    tmp_path: Path, job_image: str, docker_resources: Resources, docker_client: Any
) -> None:
    _store_with_hostile_checkpoints(tmp_path, 3, job_image, docker_resources, docker_client)
    for access in ("archive", "local"):
        result = run_cli("run", "--", "sh", "-c", SHOW, cwd=tmp_path, timeout=120,
                         env={"CARGOHOLD_VOLUME_ACCESS": access})
        assert result.returncode == 0, (access, result.stderr)
        assert result.stdout.splitlines() == [
            "no-python", "RESUME=auto FROM=/ckpt/step-0000000003"], (access, result.stdout)
        assert "Resuming from /ckpt/step-0000000003" in result.stderr

    # A FIFO in place of the newest checkpoint's file: read directly it is never opened and that
    # checkpoint is not whole; in the engine's stream the tar reader refuses the whole store, so
    # nothing is promised and the job's library picks (CARGOHOLD_RESUME=auto). Never a hang.
    volume = f"{docker_resources.project}-checkpoints"
    docker_client.containers.run(
        job_image, ["sh", "-c", "cd /ckpt/step-0000000003 && rm w.bin && mkfifo w.bin"],
        remove=True, volumes={volume: {"bind": "/ckpt", "mode": "rw"}})
    for access, expected in (("archive", ""), ("local", "/ckpt/step-0000000002")):
        result = run_cli("run", "--", "sh", "-c", SHOW, cwd=tmp_path, timeout=120,
                         env={"CARGOHOLD_VOLUME_ACCESS": access})
        assert result.returncode == 0, (access, result.stderr)
        assert result.stdout.splitlines() == ["no-python", f"RESUME=auto FROM={expected}"], (
            access, result.stdout)


@pytest.fixture(scope="session")
def user_cargohold() -> Iterator[Path]:
    """What any user can run cargohold from, with the system's python3: the test python's
    site-packages live under /root, which no other user may read, so its dependencies are
    installed (``pip --target``, from the newcomer test's local wheel cache) beside a copy of
    this checkout's sources in a folder under /var/tmp. Made once per session, removed at its
    end."""
    _system_python()
    wheels = _wheelhouse()
    folder = Path(f"/var/tmp/cargohold-test-user-{secrets.token_hex(4)}")
    try:
        deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
        installed = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-index",
             "--find-links", str(wheels), "--target", str(folder / "site"), *deps],
            capture_output=True, text=True, timeout=300)
        assert installed.returncode == 0, installed.stderr[-2000:]
        shutil.copytree(SRC, folder / "src", ignore=shutil.ignore_patterns("__pycache__"))
        # Compiled once here: the user cannot write __pycache__ in a folder root owns.
        subprocess.run([str(_system_python()), "-m", "compileall", "-q", str(folder / "src")],
                       check=True, capture_output=True, timeout=120)
        for path in [folder, *folder.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o755 if path.is_dir() else path.stat().st_mode | 0o444)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_non_root_user_gets_the_resume_path_from_an_image_without_python(
    job_image: str,
    docker_resources: Resources,
    docker_client: Any,
    newcomer: pwd.struct_passwd,  # noqa: F811 - the fixture imported above
    user_cargohold: Path,
) -> None:
    """Issue 8 defect 11 as it was met: an ordinary user in the docker group, who cannot read
    /var/lib/docker, runs a job whose image has no python3 and gets CARGOHOLD_RESUME_FROM."""
    _docker_socket_is_for_the_group()
    project = Path(newcomer.pw_dir) / "project"
    project.mkdir()
    volume = _store_with_hostile_checkpoints(project, 2, job_image, docker_resources,
                                             docker_client)
    for path in [project, *project.rglob("*")]:
        os.lchown(path, newcomer.pw_uid, newcomer.pw_gid)
    mountpoint = docker_client.volumes.get(volume).attrs["Mountpoint"]
    readable = subprocess.run([*_as(newcomer, {}), "test", "-r", mountpoint])
    assert readable.returncode != 0, "the user can read the volume's folder: not the case tested"

    env = {"PYTHONPATH": f"{user_cargohold / 'src'}:{user_cargohold / 'site'}",
           "DOCKER_HOST": os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")}
    result = subprocess.run(
        [*_as(newcomer, env), str(_system_python()), "-m", "cargohold", "run", "--", "sh", "-c",
         SHOW],
        cwd=project, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "no-python", "RESUME=auto FROM=/ckpt/step-0000000002"], result.stdout
