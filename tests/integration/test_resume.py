"""`cargohold run` finds the newest whole checkpoint for every user (issue 8 defect 11): through
the Engine API's archive stream (the path of a non-root user or a remote engine, forced here with
``CARGOHOLD_VOLUME_ACCESS=archive``) as through the volume's folder, with an incomplete and a
hostile newer checkpoint in the store and an image that has no python3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import Resources, run_cli
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


def test_every_access_path_resumes_from_the_newest_whole_checkpoint(
    tmp_path: Path, job_image: str, docker_resources: Resources, docker_client: Any
) -> None:
    write_project(tmp_path, docker_resources.project, job_image)
    saved = run_cli("run", "--", "python3", "-c", SAVER, "3", "0", "0", cwd=tmp_path)
    assert saved.returncode == 0, saved.stderr
    volume = f"{docker_resources.project}-checkpoints"
    docker_client.containers.run(job_image, ["sh", "-c", PLANT], remove=True,
                                 volumes={volume: {"bind": "/ckpt", "mode": "rw"}})

    image = f"{docker_resources.project}-nopython:1"
    docker_resources.images.append(image)
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(
        f"FROM {job_image}\nRUN rm -f /usr/bin/python3* /usr/local/bin/python3*\n")
    docker_client.images.build(path=str(tmp_path / "ctx"), tag=image, rm=True)
    spec = tmp_path / "cargohold.toml"
    spec.write_text(spec.read_text().replace(f'image = "{job_image}"', f'image = "{image}"'))

    for access in ("archive", "local", "auto"):
        result = run_cli("run", "--", "sh", "-c", SHOW, cwd=tmp_path, timeout=120,
                         env={"CARGOHOLD_VOLUME_ACCESS": access})
        assert result.returncode == 0, (access, result.stderr)
        assert result.stdout.splitlines() == [
            "no-python", "RESUME=auto FROM=/ckpt/step-0000000003"], (access, result.stdout)
        assert "Resuming from /ckpt/step-0000000003" in result.stderr
