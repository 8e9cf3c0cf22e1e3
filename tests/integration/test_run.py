"""`cargohold run` against the real engine: ownership, read-only datasets, tmpfs scratch,
checkpoints that outlive `docker rm -f`, restart with resume, and parity of the rendered
`docker run` line and compose file with what `cargohold run` does (compared by `docker inspect`).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Resources, run_cli

UID, GID = 1000, 1000


def write_project(folder: Path, project: str, image: str, *, extra_job: str = "",
                  restart: int = 0, user: str = f"{UID}:{GID}") -> Path:
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "train.csv").write_text("x,y\n1,2\n")
    spec = folder / "cargohold.toml"
    spec.write_text(textwrap.dedent(f"""
        [project]
        name = "{project}"

        [stores.dataset]
        kind = "dataset"
        source = "./data"
        target = "/data"

        [stores.checkpoints]
        kind = "checkpoints"
        target = "/ckpt"

        [stores.models]
        kind = "artifacts"
        source = "./out/models"
        target = "/artifacts"

        [stores.tmp]
        kind = "scratch"
        target = "/scratch"
        size = "64m"

        [jobs.train]
        image = "{image}"
        command = ["python3", "-c", "print('hello')"]
        user = "{user}"
        shm_size = "128m"
        restart = {{ max = {restart} }}
        env = {{ SEED = "7" }}
        {extra_job}
    """))
    return spec


def test_non_root_job_writes_its_stores_and_cannot_touch_the_dataset(
    tmp_path: Path, job_image: str, docker_resources: Resources, docker_client: Any
) -> None:
    write_project(tmp_path, docker_resources.project, job_image)
    script = (
        "set -u; id -u; "
        "echo ckpt > /ckpt/written-by-job && echo ok-ckpt; "
        "echo model > /artifacts/model.bin && echo ok-artifacts; "
        "if echo x > /data/evil 2>/dev/null; then echo dataset-WRITABLE; "
        "else echo dataset-readonly; fi; "
        "grep ' /scratch ' /proc/mounts; "
        "df -k /dev/shm | tail -1; "
        "echo SEED=$SEED CKPT=$CARGOHOLD_CHECKPOINT_DIR STORE=$CARGOHOLD_STORE_MODELS"
    )
    result = run_cli("run", "--", "sh", "-c", script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Read-only file system" in result.stderr  # the job's stderr stays stderr
    lines = result.stdout.splitlines()
    assert lines[0] == str(UID)
    assert "ok-ckpt" in lines and "ok-artifacts" in lines
    assert "dataset-readonly" in lines
    scratch = next(line for line in lines if " /scratch " in line)
    assert scratch.split()[2] == "tmpfs" and "size=65536k" in scratch
    shm = next(line for line in lines if "/dev/shm" in line)
    assert shm.split()[1] == str(128 * 1024)
    assert "SEED=7 CKPT=/ckpt STORE=/artifacts" in lines

    model = tmp_path / "out" / "models" / "model.bin"
    assert model.read_text() == "model\n"
    assert (model.stat().st_uid, model.stat().st_gid) == (UID, GID)
    for folder in (tmp_path / "out", tmp_path / "out" / "models"):
        assert folder.stat().st_uid == UID  # created for the job's user
    assert not (tmp_path / "data" / "evil").exists()

    volume = docker_client.volumes.get(f"{docker_resources.project}-checkpoints")
    assert volume.attrs["Labels"] == {
        "cargohold.project": docker_resources.project,
        "cargohold.store": "checkpoints",
        "cargohold.kind": "checkpoints",
    }
    container = docker_client.containers.get(f"{docker_resources.project}-train")
    assert container.labels["cargohold.job"] == "train"
    assert container.attrs["HostConfig"]["Privileged"] is False
    binds = [m["Source"] for m in container.attrs["Mounts"] if m["Type"] == "bind"]
    assert "/var/run/docker.sock" not in binds


def test_exit_code_of_the_job_is_the_exit_code_of_run(
    tmp_path: Path, job_image: str, docker_resources: Resources
) -> None:
    write_project(tmp_path, docker_resources.project, job_image)
    result = run_cli("run", "--", "sh", "-c", "echo failing; exit 7", cwd=tmp_path)
    assert result.returncode == 7
    assert "failing" in result.stdout
    assert "exited with 7" in result.stderr


SAVER = """
import os, sys, time
from cargohold.checkpoint import CheckpointManager
ckpt = CheckpointManager(keep_last=0)
latest = ckpt.restore_latest()
print("RESUME_FROM", os.environ.get("CARGOHOLD_RESUME_FROM", "-"), flush=True)
print("RESTORED", latest.step if latest else "none", flush=True)
start = latest.step + 1 if latest else 1
for step in range(start, start + int(sys.argv[1])):
    ckpt.save(step, {"w.bin": f"weights {step}".encode()})
    print("SAVED", step, flush=True)
    time.sleep(float(sys.argv[2]))
sys.exit(int(sys.argv[3]))
"""


def test_checkpoints_outlive_docker_rm_f_and_the_next_run_resumes(
    tmp_path: Path, job_image: str, docker_resources: Resources, docker_client: Any
) -> None:
    write_project(tmp_path, docker_resources.project, job_image)
    started = run_cli("run", "-d", "--", "python3", "-c", SAVER, "1000", "0.2", "0",
                      cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    name = f"{docker_resources.project}-train"
    assert started.stdout.strip() == name
    container = docker_client.containers.get(name)
    deadline = time.monotonic() + 60
    while b"SAVED 3" not in container.logs() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b"SAVED 3" in container.logs()
    container.remove(force=True)  # docker rm -f in mid-training

    again = run_cli("run", "--", "python3", "-c", SAVER, "1", "0", "0", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    restored = int(again.stdout.split("RESTORED ")[1].split()[0])
    assert restored >= 3
    assert f"RESUME_FROM /ckpt/step-{restored:010d}" in again.stdout
    assert f"Resuming from /ckpt/step-{restored:010d}" in again.stderr


def test_restart_resumes_from_the_latest_checkpoint(
    tmp_path: Path, job_image: str, docker_resources: Resources
) -> None:
    write_project(tmp_path, docker_resources.project, job_image, restart=2)
    # Every attempt saves two steps and fails; the third attempt (restart 2) fails too.
    result = run_cli("run", "--", "python3", "-c", SAVER, "2", "0", "3", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert result.stdout.count("RESTORED") == 3
    restored = [line.split()[1] for line in result.stdout.splitlines()
                if line.startswith("RESTORED")]
    assert restored == ["none", "2", "4"]
    assert "restart 1 of 2" in result.stderr and "restart 2 of 2" in result.stderr
    assert "RESUME_FROM /ckpt/step-0000000004" in result.stdout

    never = run_cli("run", "--resume", "never", "--", "python3", "-c", SAVER, "0", "0", "0",
                    cwd=tmp_path)
    assert "RESTORED none" in never.stdout
    chosen = run_cli("run", "--resume", "step-0000000002", "--", "python3", "-c", SAVER, "0",
                     "0", "0", cwd=tmp_path)
    assert "RESTORED 2" in chosen.stdout, chosen.stderr


def _normalized(inspect: dict[str, Any]) -> dict[str, Any]:
    """What a job sees, however the container was made: mounts (by type, volume name or host
    path, target, mode, tmpfs size), user, environment and shm size."""
    host = inspect["HostConfig"]
    sizes = {m["Target"]: (m.get("TmpfsOptions") or {}).get("SizeBytes")
             for m in host.get("Mounts") or [] if m["Type"] == "tmpfs"}
    mounts = sorted(
        (m["Type"], m.get("Name") or m.get("Source", ""), m["Destination"], bool(m["RW"]),
         sizes.get(m["Destination"]))
        for m in inspect["Mounts"]
    )
    tmpfs = sorted(sizes.items())
    env = sorted(e for e in inspect["Config"]["Env"] if not e.startswith("CARGOHOLD_RESUME"))
    return {"mounts": mounts, "tmpfs": tmpfs, "user": inspect["Config"]["User"], "env": env,
            "shm": host["ShmSize"]}


def _compose_binary() -> str:
    import compose

    return str(Path(compose.__file__).parent / "docker-compose")


def test_rendered_docker_run_and_compose_match_cargohold_run(
    tmp_path: Path, job_image: str, docker_resources: Resources, docker_client: Any
) -> None:
    project = docker_resources.project
    write_project(tmp_path, project, job_image)
    ran = run_cli("run", "--", "true", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    expected = _normalized(docker_client.api.inspect_container(f"{project}-train"))
    targets = {m[2] for m in expected["mounts"]} | {t for t, _ in expected["tmpfs"]}
    assert targets == {"/data", "/ckpt", "/artifacts", "/scratch"}
    assert ("/scratch", 64 << 20) in expected["tmpfs"]

    # The docker run line, pasted into a shell, after removing what cargohold run made.
    docker_client.containers.get(f"{project}-train").remove(force=True)
    docker_client.volumes.get(f"{project}-checkpoints").remove()
    line = run_cli("render", "docker-run", cwd=tmp_path)
    assert line.returncode == 0, line.stderr
    shell = subprocess.run(["sh", "-c", line.stdout], capture_output=True, text=True,
                           timeout=120)
    assert shell.returncode == 0, shell.stderr
    from_line = docker_client.api.inspect_container(f"{project}-train")
    assert _normalized(from_line) == expected
    assert docker_client.volumes.get(f"{project}-checkpoints").attrs["Labels"][
        "cargohold.kind"] == "checkpoints"
    # The prepared volume is writable by the job's user, as with cargohold run.
    probe = docker_client.containers.run(
        job_image, ["sh", "-c", "touch /ckpt/probe && echo ok"], user=f"{UID}:{GID}",
        volumes={f"{project}-checkpoints": {"bind": "/ckpt", "mode": "rw"}}, remove=True)
    assert probe.strip() == b"ok"

    # The compose file, brought up by Docker Compose v2.
    compose_file = tmp_path / "compose.yml"
    rendered = run_cli("render", "compose", "-o", str(compose_file), cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    document = yaml.safe_load(compose_file.read_text())
    document["services"]["train"]["command"] = ["true"]
    compose_file.write_text(yaml.safe_dump(document))
    base = [_compose_binary(), "-f", str(compose_file), "-p", project]
    try:
        up = subprocess.run([*base, "up", "--no-build", "--abort-on-container-exit",
                             "--exit-code-from", "train"],
                            capture_output=True, text=True, timeout=180)
        assert up.returncode == 0, up.stdout + up.stderr
        from_compose = docker_client.api.inspect_container(f"{project}-train-1")
        assert _normalized(from_compose) == expected
    finally:
        subprocess.run([*base, "down", "--remove-orphans"], capture_output=True, timeout=120)


def test_job_image_is_built_on_the_local_base_without_a_registry(
    tmp_path: Path, base_image: str, docker_resources: Resources, docker_client: Any
) -> None:
    from tests.conftest import REPO

    image = f"{docker_resources.project}-img:latest"
    docker_resources.images.append(image)
    write_project(
        tmp_path, docker_resources.project, image,
    )
    spec = tmp_path / "cargohold.toml"
    spec.write_text(spec.read_text().replace(
        f'image = "{image}"',
        f'image = "{image}"\nbuild = {{ context = "{REPO}", '
        'dockerfile = "tests/integration/Dockerfile" }'))
    result = run_cli("run", "--", "python3", "-c",
                     "import cargohold.checkpoint, numpy; print('built ok')", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "built ok" in result.stdout
    history = docker_client.images.get(image).history()
    base_ids = {docker_client.images.get(base_image).id}
    assert any(layer.get("Id") in base_ids for layer in history)


def test_missing_external_volume_is_a_clear_engine_error(
    tmp_path: Path, job_image: str, docker_resources: Resources
) -> None:
    spec = write_project(tmp_path, docker_resources.project, job_image)
    spec.write_text(spec.read_text().replace(
        'target = "/ckpt"', f'target = "/ckpt"\nvolume = "{docker_resources.project}-absent"\n'
        "external = true"))
    result = run_cli("run", cwd=tmp_path)
    assert result.returncode == 3
    assert "does not exist" in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("on_volume", [True, False])
def test_ephemeral_storage_warning_inside_a_real_container(
    on_volume: bool, job_image: str, docker_resources: Resources, docker_client: Any
) -> None:
    volume = f"{docker_resources.project}-warn"
    docker_resources.volumes.append(volume)
    folder = "/ckpt" if on_volume else "/workspace/ckpt"
    kwargs: dict[str, Any] = {}
    if on_volume:
        kwargs["volumes"] = {volume: {"bind": "/ckpt", "mode": "rw"}}
    name = f"{docker_resources.project}-probe"
    docker_resources.containers.append(name)
    container = docker_client.containers.run(
        job_image,
        ["python3", "-c", "import json; from cargohold.checkpoint import CheckpointManager; "
         f"m = CheckpointManager({folder!r}); print(json.dumps(m.storage.__dict__))"],
        name=name, detach=True, **kwargs)
    assert container.wait(timeout=60)["StatusCode"] == 0
    stderr = container.logs(stdout=False, stderr=True).decode()
    report = json.loads(container.logs(stdout=True, stderr=False).decode())
    if on_volume:
        assert "EphemeralStorageWarning" not in stderr
        assert report["ephemeral"] is False and report["mount_point"] == "/ckpt"
    else:
        assert "EphemeralStorageWarning" in stderr and "Mount a volume at" in stderr
        assert report["ephemeral"] is True and report["fstype"] == "overlay"


def test_unreachable_engine_exits_3_with_how_to_start_one(tmp_path: Path,
                                                          job_image: str) -> None:
    write_project(tmp_path, "unreachable", job_image)
    result = run_cli("run", cwd=tmp_path, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.returncode == 3
    assert "cannot reach the Docker engine" in result.stderr
    assert "dockerd" in result.stderr
    assert "Traceback" not in result.stderr
    assert os.path.exists(tmp_path / "data")
    assert not (tmp_path / "out").exists()  # nothing was prepared for a job that cannot run


def test_render_line_is_parseable(tmp_path: Path, job_image: str) -> None:
    write_project(tmp_path, "parse-check", job_image)
    line = run_cli("render", "docker-run", cwd=tmp_path).stdout
    words = shlex.split(line)
    assert words[:3] == ["docker", "volume", "create"]
    assert words.count("run") == 2  # the ownership helper, then the job
