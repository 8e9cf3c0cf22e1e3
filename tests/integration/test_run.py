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

from tests.conftest import Resources, run_cli

UID, GID = 1000, 1000


def write_project(folder: Path, project: str, image: str, *, extra_job: str = "",
                  restart: int = 0, user: str = f"{UID}:{GID}", extra_stores: str = "",
                  command: str = "[\"python3\", \"-c\", \"print('hello')\"]") -> Path:
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
        {extra_stores}

        [jobs.train]
        image = "{image}"
        command = {command}
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
    # `-- sh -c …` replaced the spec's python3 command: the defaults follow the command that
    # ran (a shell gets an init, so that SIGTERM reaches the job).
    assert container.attrs["HostConfig"]["Init"] is True
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
    path, target, mode, tmpfs size), user, environment, entrypoint and command, and every runtime
    setting of the HostConfig (issue 9)."""
    host = inspect["HostConfig"]
    config = inspect["Config"]
    sizes = {m["Target"]: (m.get("TmpfsOptions") or {}).get("SizeBytes")
             for m in host.get("Mounts") or [] if m["Type"] == "tmpfs"}
    mounts = sorted(
        (m["Type"], m.get("Name") or m.get("Source", ""), m["Destination"], bool(m["RW"]),
         sizes.get(m["Destination"]))
        for m in inspect["Mounts"]
    )
    tmpfs = sorted(sizes.items())
    env = sorted(e for e in config["Env"] if not e.startswith("CARGOHOLD_RESUME"))
    requests = [{**r, "Options": r.get("Options") or {}, "DeviceIDs": r.get("DeviceIDs") or []}
                for r in host.get("DeviceRequests") or []]
    return {"mounts": mounts, "tmpfs": tmpfs, "user": config["User"], "env": env,
            "entrypoint": config.get("Entrypoint"), "cmd": config.get("Cmd"),
            "shm": host["ShmSize"], "ipc": host["IpcMode"],
            "ulimits": sorted((u["Name"], u["Soft"], u["Hard"]) for u in host.get("Ulimits") or []),
            "stop_timeout": config.get("StopTimeout"), "init": host.get("Init"),
            "read_only": host["ReadonlyRootfs"], "tmpfs_folders": host.get("Tmpfs") or {},
            "security_opt": host.get("SecurityOpt") or [],
            "cap_drop": sorted(host.get("CapDrop") or []),
            "cpus": host["NanoCpus"], "memory": host["Memory"], "pids": host.get("PidsLimit"),
            "devices": host.get("Devices") or [], "device_requests": requests,
            # Compose puts a service without network_mode on its project's own network.
            "network": "default" if host["NetworkMode"].endswith("_default") else
            host["NetworkMode"], "privileged": host["Privileged"]}


RUNTIME_JOB = """
        ipc = "shareable"
        ulimits = { nofile = { soft = 2048, hard = 4096 }, core = 0 }
        init = true
        read_only = true
        resources = { cpus = 1.5, memory = "512m", pids_limit = 256 }
        devices = ["/dev/zero:/dev/zero2"]
        network = "none"
        entrypoint = ["sh", "-c"]
        env_file = "./job.env"
        secrets = ["CHT_SECRET_TOKEN"]
"""
SEEDED = """
        [stores.seeded]
        kind = "dataset"
        source = "./seed"
        backing = "volume"
        target = "/seeded"
"""


def _compose_binary() -> str:
    import compose

    return str(Path(compose.__file__).parent / "docker-compose")


def test_rendered_docker_run_and_compose_match_cargohold_run(
    tmp_path: Path, job_image: str, docker_resources: Resources, docker_client: Any
) -> None:
    project = docker_resources.project
    write_project(tmp_path, project, job_image, extra_job=RUNTIME_JOB, extra_stores=SEEDED,
                  command='["echo ran; cat /seeded/seed.txt"]')
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / "seed.txt").write_text("seeded\n")
    (tmp_path / "job.env").write_text('# comment\nLR=0.1\n  Q="as $HOME is" \n')
    secret = {"CHT_SECRET_TOKEN": "s3cr3t-value"}
    ran = run_cli("run", cwd=tmp_path, env=secret)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["ran", "seeded"]
    assert "s3cr3t-value" not in ran.stdout + ran.stderr
    expected = _normalized(docker_client.api.inspect_container(f"{project}-train"))
    targets = {m[2] for m in expected["mounts"]} | {t for t, _ in expected["tmpfs"]}
    assert targets == {"/data", "/ckpt", "/artifacts", "/scratch", "/seeded"}
    assert ("/scratch", 64 << 20) in expected["tmpfs"]
    assert "CHT_SECRET_TOKEN=s3cr3t-value" in expected["env"] and "LR=0.1" in expected["env"]
    assert 'Q="as $HOME is" ' in expected["env"]  # literal, as docker run --env-file reads it
    assert expected["stop_timeout"] == 120 and expected["init"] is True
    assert expected["read_only"] is True and expected["tmpfs_folders"] == {"/tmp": ""}
    assert expected["security_opt"] == ["no-new-privileges"]
    assert "CAP_NET_RAW" in expected["cap_drop"]
    assert (expected["cpus"], expected["memory"], expected["pids"]) == (1_500_000_000,
                                                                      512 << 20, 256)
    assert expected["ulimits"] == [("core", 0, 0), ("nofile", 2048, 4096)]
    assert expected["ipc"] == "shareable" and expected["network"] == "none"
    assert expected["devices"][0]["PathInContainer"] == "/dev/zero2"
    assert expected["entrypoint"] == ["sh"] and expected["privileged"] is False

    # The docker run line, pasted into a shell right after cargohold run: the stopped
    # container of the same job is replaced, not a name conflict. It holds no secret value.
    # The seed is copied once: a changed host folder does not reach the filled volume.
    (tmp_path / "seed" / "seed.txt").write_text("changed\n")
    line = run_cli("render", "docker-run", cwd=tmp_path, env=secret)
    assert line.returncode == 0, line.stderr
    assert "s3cr3t-value" not in line.stdout
    shell = subprocess.run(["sh", "-c", line.stdout], capture_output=True, text=True,
                           timeout=120, env={**os.environ, **secret})
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.splitlines() == ["ran", "seeded"]
    from_line = docker_client.api.inspect_container(f"{project}-train")
    assert _normalized(from_line) == expected
    # The line also runs from scratch: it creates the volumes, labelled, and prepares them.
    docker_client.containers.get(f"{project}-train").remove(force=True)
    for store in ("checkpoints", "seeded"):
        docker_client.volumes.get(f"{project}-{store}").remove()
    shell = subprocess.run(["sh", "-c", line.stdout], capture_output=True, text=True,
                           timeout=120, env={**os.environ, **secret})
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.splitlines() == ["ran", "changed"]  # a fresh volume is seeded again
    assert _normalized(docker_client.api.inspect_container(f"{project}-train")) == expected
    assert docker_client.volumes.get(f"{project}-checkpoints").attrs["Labels"][
        "cargohold.kind"] == "checkpoints"
    # The prepared volume is writable by the job's user, as with cargohold run.
    probe = docker_client.containers.run(
        job_image, ["sh", "-c", "touch /ckpt/probe && echo ok"], user=f"{UID}:{GID}",
        volumes={f"{project}-checkpoints": {"bind": "/ckpt", "mode": "rw"}}, remove=True)
    assert probe.strip() == b"ok"

    # The compose file, brought up by Docker Compose v2.
    compose_file = tmp_path / "compose.yml"
    rendered = run_cli("render", "compose", "-o", str(compose_file), cwd=tmp_path, env=secret)
    assert rendered.returncode == 0, rendered.stderr
    assert "s3cr3t-value" not in compose_file.read_text()
    base = [_compose_binary(), "-f", str(compose_file), "-p", project]
    try:
        up = subprocess.run([*base, "up", "--no-build", "--abort-on-container-exit",
                             "--exit-code-from", "train"],
                            capture_output=True, text=True, timeout=180,
                            env={**os.environ, **secret})
        assert up.returncode == 0, up.stdout + up.stderr
        from_compose = docker_client.api.inspect_container(f"{project}-train-1")
        assert _normalized(from_compose) == expected
    finally:
        subprocess.run([*base, "down", "--remove-orphans"], capture_output=True, timeout=120)


GPU_JOB = """
        gpus = ["0", "GPU-0b3c1f"]
"""


@pytest.mark.parametrize(
    ("gpus", "count", "ids"),
    [(GPU_JOB, 0, ["0", "GPU-0b3c1f"]), ('gpus = "all"', -1, None), ("gpus = 2", 2, None)],
    ids=["device-ids", "all", "count"],
)
def test_gpu_settings_reach_the_engine_identically_without_a_gpu(
    tmp_path: Path, job_image: str, docker_resources: Resources, docker_client: Any,
    gpus: str, count: int, ids: list[str] | None,
) -> None:
    """No GPU here: the three ways are compared on created, never started, containers, for
    each way of asking for GPUs."""
    from cargohold.engine import connect
    from cargohold.jobs import container_request, job_environment, prepare_stores
    from cargohold.plan import make_plan
    from cargohold.spec import load_spec

    project = docker_resources.project
    write_project(tmp_path, project, job_image, extra_job=gpus)
    plan = make_plan(load_spec(tmp_path), None, host_user=(0, 0))
    engine = connect()
    prepare_stores(engine, plan)
    engine.create_container(container_request(plan, job_environment(plan)))
    expected = _normalized(docker_client.api.inspect_container(f"{project}-train"))
    [request] = expected["device_requests"]
    assert (request["Count"], request["DeviceIDs"] or None) == (count, ids), request
    assert request["Capabilities"] == [["gpu"]] and not request["Driver"]
    assert ("memlock", -1, -1) in expected["ulimits"] and expected["shm"] == 128 << 20
    docker_client.containers.get(f"{project}-train").remove()

    line = run_cli("render", "docker-run", cwd=tmp_path).stdout
    prefix, _, job = line.rpartition(" && docker run ")
    created = subprocess.run(["sh", "-c", f"{prefix} && docker create {job}"],
                             capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr
    assert _normalized(docker_client.api.inspect_container(f"{project}-train")) == expected

    compose_file = tmp_path / "compose.yml"
    assert run_cli("render", "compose", "-o", str(compose_file), cwd=tmp_path).returncode == 0
    base = [_compose_binary(), "-f", str(compose_file), "-p", project]
    try:
        made = subprocess.run([*base, "create", "--no-build"], capture_output=True, text=True,
                              timeout=120)
        assert made.returncode == 0, made.stderr
        assert _normalized(docker_client.api.inspect_container(f"{project}-train-1")) == expected
    finally:
        subprocess.run([*base, "down", "--remove-orphans"], capture_output=True, timeout=120)

    docker_client.containers.get(f"{project}-train").remove()
    if ids is None:
        return  # what follows does not depend on the form
    # cargohold run itself fails fast, before creating anything, saying what to install.
    ran = run_cli("run", cwd=tmp_path)
    assert ran.returncode == 3, ran.stderr
    assert "asks for GPUs" in ran.stderr and "nvidia-container-toolkit" in ran.stderr
    assert "could not select device driver" not in ran.stderr
    assert not docker_client.containers.list(all=True, filters={"name": f"{project}-train"})
    # doctor says the same, as a failed check.
    doctor = run_cli("doctor", cwd=tmp_path)
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    assert "gpu runtime" in doctor.stdout and "nvidia-ctk" in doctor.stdout


STOPPER = """
import sys, time
from cargohold.checkpoint import CheckpointManager
ckpt = CheckpointManager(keep_last=0)
def final():
    time.sleep(15)  # a big model: the final save takes longer than Docker's default 10 s
    ckpt.save(999, {"w.bin": b"final weights"})
    print("FINAL SAVED", flush=True)
ckpt.handle_sigterm(final)
ckpt.save(1, {"w.bin": b"first"})
print("READY", flush=True)
time.sleep(600)
"""


def test_docker_stop_without_t_lets_the_final_checkpoint_finish(
    tmp_path: Path, job_image: str, docker_resources: Resources, docker_client: Any
) -> None:
    write_project(tmp_path, docker_resources.project, job_image)
    started = run_cli("run", "-d", "--", "python3", "-c", STOPPER, cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    name = f"{docker_resources.project}-train"
    container = docker_client.containers.get(name)
    deadline = time.monotonic() + 60
    while b"READY" not in container.logs() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b"READY" in container.logs()
    began = time.monotonic()
    stop = subprocess.run(["docker", "stop", name], capture_output=True, text=True, timeout=180)
    took = time.monotonic() - began
    assert stop.returncode == 0, stop.stderr
    assert 14 < took < 100  # waited for the save, not Docker's 10 s
    container.reload()
    assert container.attrs["State"]["ExitCode"] == 143  # not 137: it was never killed
    assert b"FINAL SAVED" in container.logs()
    again = run_cli("run", "--", "python3", "-c", SAVER, "0", "0", "0", cwd=tmp_path)
    assert "RESTORED 999" in again.stdout, again.stderr


def test_uid_without_an_account_writes_its_home_cache(
    tmp_path: Path, job_image: str, docker_resources: Resources
) -> None:
    write_project(tmp_path, docker_resources.project, job_image, user="4321:4321")
    script = ("import os, pathlib; p = pathlib.Path.home() / '.cache' / 'hub'; "
              "p.mkdir(parents=True); (p / 'model').write_text('x'); print('HOME', os.environ["
              "'HOME'], 'cache ok'); import pwd; pwd.getpwuid(os.getuid())")
    result = run_cli("run", "--", "python3", "-c", script, cwd=tmp_path)
    assert "HOME /scratch cache ok" in result.stdout, result.stderr
    assert "getpwuid(): uid not found: 4321" in result.stderr  # no account indeed


def test_explicit_user_can_write_artifacts_from_the_rendered_line(
    tmp_path: Path, job_image: str, docker_resources: Resources, docker_client: Any
) -> None:
    write_project(tmp_path, docker_resources.project, job_image, user="4321:4321",
                  command='["sh", "-c", "echo model > /artifacts/model.bin && echo wrote"]')
    line = run_cli("render", "docker-run", cwd=tmp_path)
    shell = subprocess.run(["sh", "-c", line.stdout], capture_output=True, text=True,
                           timeout=120)
    assert shell.returncode == 0, shell.stderr
    assert "wrote" in shell.stdout
    model = tmp_path / "out" / "models" / "model.bin"
    assert model.stat().st_uid == 4321


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


def test_a_seed_copy_killed_half_way_is_redone(
    tmp_path: Path, job_image: str, docker_resources: Resources, docker_client: Any
) -> None:
    project = docker_resources.project
    write_project(tmp_path, project, job_image, extra_stores=SEEDED,
                  command='["sh", "-c", "ls -A /seeded"]')
    (tmp_path / "seed").mkdir()
    for name in ("a.bin", "b.bin"):
        (tmp_path / "seed" / name).write_text(name)
    # What a killed seeding leaves: one file copied, the marker still there.
    volume = f"{project}-seeded"
    docker_client.volumes.create(volume, labels={"cargohold.project": project})
    docker_client.containers.run(
        job_image, ["sh", "-c", "echo a.bin > /v/a.bin && touch /v/.cargohold-seeding"],
        volumes={volume: {"bind": "/v", "mode": "rw"}}, remove=True)
    ran = run_cli("run", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["a.bin", "b.bin"]


def _dockerd_hard_memlock() -> int | None:
    """dockerd's hard RLIMIT_MEMLOCK in bytes (None: unlimited), read from /proc."""
    # The default engine's pid file; other dockerds (private test engines) may differ.
    pidfile = Path("/var/run/docker.pid")
    pids = pidfile.read_text() if pidfile.exists() else subprocess.run(
        ["pgrep", "-o", "-x", "dockerd"], capture_output=True, text=True).stdout
    for pid in pids.split():
        with open(f"/proc/{pid}/limits") as limits:
            for line in limits:
                if line.startswith("Max locked memory"):
                    hard = line.split()[4]
                    return None if hard == "unlimited" else int(hard)
    pytest.fail("no dockerd process to read the limits of")


def test_ulimits_the_engine_cannot_grant_are_explained(
    tmp_path: Path, job_image: str, docker_resources: Resources
) -> None:
    write_project(tmp_path, docker_resources.project, job_image,
                  extra_job="ulimits = { memlock = -1 }", command='["true"]')
    result = run_cli("run", cwd=tmp_path)
    if _dockerd_hard_memlock() is None:
        assert result.returncode == 0, result.stderr  # this engine may grant it
        return
    assert result.returncode == 3
    assert "memlock=unlimited" in result.stderr and "LimitMEMLOCK=infinity" in result.stderr
    assert "Traceback" not in result.stderr
