"""Beyond one host, for real: the cargohold image built without a registry, and Swarm.

Swarm tests run `docker swarm init` on the CI engine when it is not already in a swarm, and
`docker swarm leave --force` at the end (only when they initialised it); every stack, service,
container and volume they create is removed, pass or fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cargohold.archive.staging import MARKER
from tests.conftest import Resources, remove_bucket, run_cli, s3_filesystem

# A job that saves a checkpoint per step; its first attempt dies after step 3.
FAIL_ONCE = """
import os, sys, time
from cargohold.checkpoint import CheckpointManager
ckpt = CheckpointManager(keep_last=0)
latest = ckpt.restore_latest()
print("NODE", os.environ.get("CARGOHOLD_NODE_HOSTNAME", "?"), flush=True)
print("RESUME_FROM", os.environ.get("CARGOHOLD_RESUME_FROM", "-"), flush=True)
print("RESTORED", latest.step if latest else "none", flush=True)
start = latest.step + 1 if latest else 1
last = int(sys.argv[1])
for step in range(start, last + 1):
    ckpt.save(step, {"w.bin": f"weights {step}".encode() * 1000})
    print("SAVED", step, flush=True)
    if step == 3 and latest is None:
        print("FAILING ON PURPOSE", flush=True)
        sys.exit(7)
    time.sleep(float(sys.argv[2]))
print("DONE", flush=True)
"""


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


def _docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.stderr}")
    return done.stdout


@pytest.fixture
def swarm(docker_client: Any) -> Iterator[None]:
    """The CI engine as a one-node swarm; left again only if this fixture made it one."""
    state = docker_client.info()["Swarm"]["LocalNodeState"]
    if state not in ("inactive", "active"):
        pytest.fail(f"the engine's swarm state is {state!r}")
    made = state == "inactive"
    bridge = "docker_gwbridge"  # swarm init makes it; leaving the swarm does not remove it
    had_bridge = bridge in _docker("network", "ls", "--format", "{{.Name}}").split()
    if made:
        _docker("swarm", "init", "--advertise-addr", "127.0.0.1",
                "--listen-addr", "127.0.0.1:2377")
    try:
        yield
    finally:
        if made:
            _docker("swarm", "leave", "--force", check=False)
            if not had_bridge:
                for _ in range(10):  # its endpoints go a moment after the swarm does
                    _docker("network", "rm", bridge, check=False)
                    if bridge not in _docker("network", "ls", "--format", "{{.Name}}").split():
                        break
                    time.sleep(1)


@contextlib.contextmanager
def deployed(stack_file: Path, stack: str, *, host: str | None = None) -> Iterator[None]:
    """`docker stack deploy`, and `docker stack rm` (waiting for its containers) afterwards."""
    prefix = ["-H", host] if host else []
    try:
        _docker(*prefix, "stack", "deploy", "-c", str(stack_file), stack)
        yield
    finally:
        _docker(*prefix, "stack", "rm", stack, check=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _docker(
            *prefix, "ps", "-aq", "--filter", f"label=com.docker.stack.namespace={stack}",
            check=False,
        ).strip():
            time.sleep(0.5)


def _tasks(service: str, host: str | None = None) -> list[dict[str, Any]]:
    prefix = ["-H", host] if host else []
    out = _docker(*prefix, "service", "ps", service, "--no-trunc", "--format", "{{json .}}",
                  check=False)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _task_logs(client: Any, stack: str) -> list[str]:
    """Every task container's output of the stack, oldest first."""
    containers = client.containers.list(
        all=True, filters={"label": f"com.docker.stack.namespace={stack}"}
    )
    containers.sort(key=lambda c: c.attrs["Created"])
    return [c.logs().decode(errors="replace") for c in containers]


def _spec(folder: Path, project: str, image: str, *, restart: int, extra_store: str = "") -> None:
    (folder / "cargohold.toml").write_text(textwrap.dedent(f"""
        [project]
        name = "{project}"

        [stores.checkpoints]
        kind = "checkpoints"
        target = "/ckpt"
        {extra_store}

        [jobs.train]
        image = "{image}"
        command = ["python3", "-c", {json.dumps(FAIL_ONCE)}, "5", "0.2"]
        user = "0:0"
        shm_size = "256m"
        restart = {{ max = {restart} }}
    """))


def test_swarm_stack_fails_once_restarts_and_resumes(
    tmp_path: Path, swarm: None, job_image: str, docker_resources: Resources, docker_client: Any
) -> None:
    project = docker_resources.project
    _spec(tmp_path, project, job_image, restart=2)
    rendered = run_cli("render", "swarm", "-o", str(tmp_path / "stack.yml"), cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    stack = project
    with deployed(tmp_path / "stack.yml", stack):
        service = f"{stack}_train"
        _wait_for("the job to complete",
                  lambda: any(t["CurrentState"].startswith("Complete") for t in _tasks(service)),
                  timeout=120)
        states = [t["CurrentState"].split()[0] for t in _tasks(service)]
        assert sorted(states) == ["Complete", "Failed"], states
        first, second = _task_logs(docker_client, stack)
        # The /dev/shm workaround took effect: Swarm has no shm_size.
        shm = docker_client.containers.list(
            all=True, filters={"label": f"com.docker.stack.namespace={stack}"}
        )[0].attrs["Mounts"]
        assert any(m["Destination"] == "/dev/shm" and m["Type"] == "tmpfs" for m in shm)
    assert "RESTORED none" in first and "FAILING ON PURPOSE" in first
    assert "RESTORED 3" in second and "SAVED 4" in second and "DONE" in second
    assert "SAVED 1" not in second  # resumed, not started over
    volume = docker_client.volumes.get(f"{project}-checkpoints")
    assert volume.attrs["Labels"]["cargohold.project"] == project


# A job long enough to lose its node in the middle; it never fails by itself.
STEADY = """
import os, sys, time
from cargohold.checkpoint import CheckpointManager
ckpt = CheckpointManager(keep_last=3)
latest = ckpt.restore_latest()
print("RESUME_FROM", os.environ.get("CARGOHOLD_RESUME_FROM", "-"), flush=True)
print("RESTORED", latest.step if latest else "none", flush=True)
for step in range((latest.step + 1) if latest else 1, int(sys.argv[1]) + 1):
    ckpt.save(step, {"frozen.bin": b"F" * 300_000, "head.bin": f"head {step}".encode()})
    print("SAVED", step, flush=True)
    time.sleep(float(sys.argv[2]))
ckpt.close()
print("DONE", flush=True)
"""


def _say(text: str) -> None:
    """The demo's narration (`make demo-cluster` runs this test with -s)."""
    print(f"\n[demo-cluster] {text}", flush=True)


@contextlib.contextmanager
def _s3_in(namespaces: list[str], endpoint: str, folder: Path) -> Iterator[str]:
    """The host's S3 server at the same loopback address inside each namespace (tests/forward.py
    carries it through a unix socket); yields that endpoint."""
    host_port = endpoint.rsplit(":", 1)[1]
    script = str(Path(__file__).resolve().parent.parent / "forward.py")
    sock = folder / "s3.sock"
    started: list[subprocess.Popen[bytes]] = []
    try:
        commands = [[sys.executable, script, f"unix:{sock}", f"tcp:127.0.0.1:{host_port}"]]
        commands += [
            ["nsenter", f"--net=/var/run/netns/{ns}", sys.executable, script,
             f"tcp:127.0.0.1:{host_port}", f"unix:{sock}"]
            for ns in namespaces
        ]
        for command in commands:
            process = subprocess.Popen(command, stdout=subprocess.PIPE)
            started.append(process)
            assert process.stdout is not None and process.stdout.readline() == b"ready\n"
        yield f"http://127.0.0.1:{host_port}"
    finally:
        for process in started:
            process.kill()
            process.wait(timeout=30)
            if process.stdout is not None:
                process.stdout.close()


def _mirrored_steps(url: str, env: dict[str, str]) -> list[int]:
    listed = run_cli("snapshots", "--repo", url, "--json", env=env)
    if listed.returncode != 0:
        return []
    return sorted(int(s["tag"].split(":")[2]) for s in json.loads(listed.stdout)
                  if (s.get("tag") or "").startswith("mirror:cargohold:"))


def _task_node(engine: Any, task: str) -> str:
    return str(engine.docker("inspect", task, "--format", "{{.NodeID}}").stdout.strip())


@contextlib.contextmanager
def _bucket_removed(s3_endpoint: dict[str, str], bucket: str) -> Iterator[None]:
    """Remove the test's bucket afterwards, pass or fail (the S3 server's memory is small)."""
    try:
        yield
    finally:
        remove_bucket(s3_filesystem(s3_endpoint), bucket)


def test_a_job_survives_losing_its_node(
    tmp_path: Path, cargohold_image: str, s3_endpoint: dict[str, str], docker_client: Any
) -> None:
    from tests.engines import link, private_engine

    project = f"cht-{secrets.token_hex(4)}"
    url = f"s3://{project}/train"
    with (
        _bucket_removed(s3_endpoint, project),
        private_engine(images=[cargohold_image]) as manager,
        private_engine(images=[cargohold_image]) as worker,
        _s3_in([manager.netns, worker.netns], s3_endpoint["CARGOHOLD_S3_ENDPOINT"],
               manager.folder) as endpoint,
    ):
        manager_ip, _ = link(manager, worker)
        _say(f"two Docker nodes in network namespaces; S3 at {endpoint} on both")
        manager.docker("swarm", "init", "--advertise-addr", manager_ip,
                       "--dispatcher-heartbeat", "1s")
        token = manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        worker.docker("swarm", "join", "--token", token, f"{manager_ip}:2377")
        manager_id = manager.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
        worker_id = worker.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
        # The job starts on the worker: the manager takes no tasks for now.
        manager.docker("node", "update", "--availability", "drain", manager_id)

        (tmp_path / "cargohold.toml").write_text(textwrap.dedent(f"""
            [project]
            name = "{project}"

            [stores.checkpoints]
            kind = "checkpoints"
            target = "/ckpt"
            mirror = "{url}"

            [jobs.train]
            image = "{cargohold_image}"
            command = ["python3", "-c", {json.dumps(STEADY)}, "80", "0.4"]
            user = "0:0"
            network = "host"
            restart = {{ max = 3 }}
        """))
        rendered = run_cli("render", "swarm", "-o", str(tmp_path / "stack.yml"), cwd=tmp_path)
        assert rendered.returncode == 0, rendered.stderr
        # The credentials come from the deploying shell, never from the file.
        assert s3_endpoint["AWS_SECRET_ACCESS_KEY"] not in (tmp_path / "stack.yml").read_text()
        deploy_env = {**os.environ, **s3_endpoint, "CARGOHOLD_S3_ENDPOINT": endpoint}
        subprocess.run(["docker", "-H", manager.host, "stack", "deploy", "-c",
                        str(tmp_path / "stack.yml"), project], env=deploy_env, check=True,
                       capture_output=True, timeout=120)
        service = f"{project}_train"
        first = _wait_for("the job to run on the worker", lambda: [
            t for t in _tasks(service, manager.host) if t["CurrentState"].startswith("Running")
        ], timeout=120)[0]
        assert _task_node(manager, first["ID"]) == worker_id
        _say("the job runs on the worker and mirrors its checkpoints to S3")
        host_env = dict(s3_endpoint)
        job_container = worker.docker(
            "ps", "-aq", "--filter", f"label=com.docker.swarm.service.name={service}"
        ).stdout.split()[0]
        try:
            _wait_for("checkpoints mirrored from the worker",
                      lambda: len(_mirrored_steps(url, host_env)) >= 3, timeout=90)
        finally:
            worker_logs = worker.docker("logs", job_container)
            print(worker_logs.stdout[-3000:], worker_logs.stderr[-3000:])
        assert "RESTORED none" in worker_logs.stdout

        manager.docker("node", "update", "--availability", "active", manager_id)
        worker.kill()
        # A power cut takes the job's processes too, not only the engine.
        for pid in subprocess.run(["ip", "netns", "pids", worker.netns], capture_output=True,
                                  text=True).stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        mirrored = _mirrored_steps(url, host_env)
        _say(f"worker lost (dockerd, containerd and the job killed); mirrored steps: "
             f"{mirrored[0]}..{mirrored[-1]}")

        second = _wait_for("Swarm to reschedule the job on the manager", lambda: [
            t for t in _tasks(service, manager.host)
            if t["ID"] != first["ID"] and t["CurrentState"].startswith(("Running", "Complete"))
        ], timeout=180)[0]
        assert _task_node(manager, second["ID"]) == manager_id
        _wait_for("the rescheduled job to finish", lambda: any(
            t["ID"] == second["ID"] and t["CurrentState"].startswith("Complete")
            for t in _tasks(service, manager.host)), timeout=180)
        container = manager.docker("ps", "-aq", "--filter",
                                   f"label=com.docker.swarm.task.id={second['ID']}").stdout.split()
        logs = manager.docker("logs", container[0])
        output, errors = logs.stdout, logs.stderr
        restored = int(output.split("RESTORED ")[1].split()[0])
        _say(f"rescheduled on the manager, restored step {restored} from S3, finished")
        assert restored >= mirrored[0] and restored in _mirrored_steps(url, host_env)
        assert f"RESUME_FROM /ckpt/step-{restored:010d}" in output
        assert "restored step-" in errors and "DONE" in output
        assert "SAVED 1\n" not in output  # resumed, not started again
        manager.docker("stack", "rm", project, check=False)


def _render_init(
    tmp_path: Path, project: str, image: str, repo: Path, nodes: int
) -> dict[str, Any]:
    import yaml

    (tmp_path / "cargohold.toml").write_text(textwrap.dedent(f"""
        [project]
        name = "{project}"

        [stores.dataset]
        kind = "dataset"
        target = "/data"
        repository = "{repo}"
        snapshot = "digits-v1"

        [jobs.train]
        image = "registry.example.com/train:1"
        user = "0:0"
        nodes = {nodes}
    """))
    rendered = run_cli("render", "kubernetes", "--image", image, cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    job = next(o for o in yaml.safe_load_all(rendered.stdout) if o["kind"] == "Job")
    init: dict[str, Any] = job["spec"]["template"]["spec"]["initContainers"][0]
    return init


def test_the_rendered_dataset_init_container_restores_into_its_claim(
    tmp_path: Path, cargohold_image: str, docker_resources: Resources, docker_client: Any
) -> None:
    """The initContainer exactly as `render kubernetes` writes it, run by Docker with a volume
    in place of the claim: a pod killed mid-restore leaves a claim that the retried pod
    finishes (the old script saw a non-empty claim and trained on the partial dataset), the
    dataset lands in the folder the job mounts (subPath), and a third pod recognises the
    completed restore and leaves it alone."""
    import docker

    project = docker_resources.project
    repo = tmp_path / "repo"
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "train" / "0.csv").write_text("x,y\n1,2\n")
    for i in range(256):  # enough to be killed in the middle of (a few seconds on this machine)
        (data / "train" / f"blob-{i}.bin").write_bytes(os.urandom(1 << 20))
    made = run_cli("snapshot", str(data), "--repo", str(repo), "--tag", "digits-v1")
    assert made.returncode == 0, made.stderr
    init = _render_init(tmp_path, project, cargohold_image, repo, nodes=1)
    volume = f"{project}-dataset"
    docker_resources.volumes.append(volume)
    claim = Path(docker_client.volumes.create(volume).attrs["Mountpoint"])
    mounts = [
        docker.types.Mount(init["volumeMounts"][0]["mountPath"], volume, type="volume"),
        docker.types.Mount(str(repo), str(repo), type="bind", read_only=True),
    ]
    env = {e["name"]: e["value"] for e in init["env"]}
    run = {
        "mounts": mounts, "environment": env, "user": "0:0", "network_mode": "none",
        "labels": {"cargohold.project": project},
    }
    killed = docker_client.containers.run(cargohold_image, init["command"], detach=True, **run)
    # (the restore is under way once its staging marker is in the content folder)
    marker = claim / "content" / MARKER
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.kill()
    killed.wait(timeout=30)
    assert not (claim / ".cargohold-restored").exists(), "the restore ended before the kill"
    assert (claim / ".cargohold-restoring").exists()
    outputs = []
    for _attempt in ("retried", "again"):
        outputs.append(docker_client.containers.run(
            cargohold_image, init["command"], remove=True, **run
        ).decode())
    assert "finishing an interrupted restore of digits-v1" in outputs[0]
    assert "already holds digits-v1; not restoring" in outputs[1]
    reader = docker_client.containers.run(
        cargohold_image, ["cat", "/claim/content/train/0.csv"], remove=True, network_mode="none",
        mounts=[docker.types.Mount("/claim", volume, type="volume", read_only=True)],
        labels={"cargohold.project": project},
    )
    assert reader.decode() == "x,y\n1,2\n"
    restored = sorted(p.name for p in (claim / "content" / "train").iterdir())
    assert restored == sorted(p.name for p in (data / "train").iterdir())
    for name in restored:
        assert (claim / "content" / "train" / name).read_bytes() == (
            data / "train" / name
        ).read_bytes()


def test_with_two_nodes_index_1_waits_for_index_0_to_restore(
    tmp_path: Path, cargohold_image: str, docker_resources: Resources, docker_client: Any
) -> None:
    """The Indexed Job's two pods on one claim: pod 1 restores nothing and waits; pod 0
    restores; pod 1 then starts. Without pod 0, pod 1's wait ends with a clear failure."""
    import docker

    project = docker_resources.project
    repo = tmp_path / "repo"
    data = tmp_path / "data"
    data.mkdir()
    (data / "0.csv").write_text("x,y\n1,2\n")
    made = run_cli("snapshot", str(data), "--repo", str(repo), "--tag", "digits-v1")
    assert made.returncode == 0, made.stderr
    init = _render_init(tmp_path, project, cargohold_image, repo, nodes=2)
    assert any(e["name"] == "JOB_COMPLETION_INDEX" for e in init["env"])
    volume = f"{project}-dataset"
    docker_resources.volumes.append(volume)
    claim = Path(docker_client.volumes.create(volume).attrs["Mountpoint"])
    env = {e["name"]: e["value"] for e in init["env"] if "value" in e}
    run = {
        "mounts": [
            docker.types.Mount(init["volumeMounts"][0]["mountPath"], volume, type="volume"),
            docker.types.Mount(str(repo), str(repo), type="bind", read_only=True),
        ],
        "user": "0:0", "network_mode": "none", "labels": {"cargohold.project": project},
    }
    alone = docker_client.containers.run(
        cargohold_image, init["command"], detach=True,
        environment={**env, "JOB_COMPLETION_INDEX": "1", "CARGOHOLD_RESTORE_WAIT": "2"}, **run,
    )
    assert alone.wait(timeout=60)["StatusCode"] == 1
    assert "pod 0 did not finish the restore of digits-v1" in alone.logs().decode()
    assert list(claim.iterdir()) == []
    waiter = docker_client.containers.run(
        cargohold_image, init["command"], detach=True,
        environment={**env, "JOB_COMPLETION_INDEX": "1", "CARGOHOLD_RESTORE_WAIT": "120"}, **run,
    )
    time.sleep(3)
    waiter.reload()
    assert waiter.status == "running"
    assert list(claim.iterdir()) == []  # pod 1 restored nothing
    zero = docker_client.containers.run(
        cargohold_image, init["command"], remove=True,
        environment={**env, "JOB_COMPLETION_INDEX": "0"}, **run,
    ).decode()
    assert "restored digits-v1 into" in zero
    assert waiter.wait(timeout=60)["StatusCode"] == 0
    assert "pod 0 finished the restore of digits-v1; starting" in waiter.logs().decode()
    assert (claim / "content" / "0.csv").read_text() == "x,y\n1,2\n"
