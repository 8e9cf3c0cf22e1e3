"""cargohold.checkpoint inside real containers sharing a real volume.

- Issue 8, defect 8: an evaluator container calling ``restore_latest()`` on the trainer's folder
  must never delete the trainer's in-flight save (both are PID 1 in their own containers).
- ``handle_sigterm`` under ``docker stop`` at random moments: the final checkpoint is complete
  every time and the container exits 143 within the grace period.
- The distributed example: 2 ranks under torchrun inside ``cargohold run``; a rank dies in the
  middle of a save, the job restarts and every rank resumes from the last committed step.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cargohold.checkpoint import CheckpointManager
from tests.conftest import REPO, Resources, run_cli

TRAINER = textwrap.dedent(
    """
    import random, sys, time
    from cargohold.checkpoint import CheckpointManager

    class Slow:  # a save that takes a while: the evaluator starts in the middle of many
        def __init__(self, step):
            self.step = step
        def capture(self, staging=None):
            return self
        def write(self, f):
            rnd = random.Random(self.step)
            for _ in range(8):
                f.write(rnd.randbytes(64 << 10))
                time.sleep(0.02)

    ckpt = CheckpointManager("/ckpt", keep_last=2)
    for step in range(int(sys.argv[1])):
        ckpt.save(step, {"model.bin": Slow(step)})
    print("trainer done", flush=True)
    """
)

EVALUATOR = textwrap.dedent(
    """
    import time, warnings
    from cargohold.checkpoint import CheckpointManager
    warnings.simplefilter("ignore")
    deadline = time.time() + 60
    seen = set()
    while time.time() < deadline:
        ckpt = CheckpointManager("/ckpt", keep_last=2)  # cleans debris: the dangerous part
        latest = ckpt.restore_latest()
        if latest is not None:
            seen.add(latest.step)
        try:
            open("/ckpt/.done").close()
            break
        except FileNotFoundError:
            time.sleep(0.01)
    print("evaluator saw", len(seen), flush=True)
    """
)


def _container(client: Any, resources: Resources, image: str, volume: str, script: str,
               *args: str) -> Any:
    return client.containers.run(
        image, ["python3", "-c", script, *args], detach=True,
        labels={"cargohold.project": resources.project},
        volumes={volume: {"bind": "/ckpt", "mode": "rw"}},
    )


def _new_volume(client: Any, resources: Resources) -> str:
    name = f"{resources.project}-ckpt"
    client.volumes.create(name, labels={"cargohold.project": resources.project})
    resources.volumes.append(name)
    return name


def test_evaluator_container_never_deletes_the_trainers_inflight_save(
    job_image: str, docker_resources: Resources, docker_client: Any
) -> None:
    volume = _new_volume(docker_client, docker_resources)
    steps = 40
    evaluator = _container(docker_client, docker_resources, job_image, volume, EVALUATOR)
    trainer = _container(docker_client, docker_resources, job_image, volume,
                         TRAINER + "open('/ckpt/.done', 'w').close()\n", str(steps))
    trainer_exit = trainer.wait(timeout=180)["StatusCode"]
    trainer_log = trainer.logs().decode()
    evaluator_exit = evaluator.wait(timeout=120)["StatusCode"]
    evaluator_log = evaluator.logs().decode()
    assert trainer_exit == 0, trainer_log
    assert "trainer done" in trainer_log
    assert evaluator_exit == 0, evaluator_log
    # The evaluator really ran alongside: it saw checkpoints appear while the trainer wrote.
    seen = int(evaluator_log.split("evaluator saw")[1].split()[0])
    assert seen >= 3, evaluator_log
    folder = Path(docker_client.volumes.get(volume).attrs["Mountpoint"])
    latest = CheckpointManager(folder, keep_last=2, warn_ephemeral=False).restore_latest()
    assert latest is not None and latest.step == steps - 1


PREEMPTED = textwrap.dedent(
    """
    import random, sys
    from cargohold.checkpoint import CheckpointManager

    def payload(step):
        rnd = random.Random(step)
        return rnd.randbytes(rnd.randint(1 << 20, 6 << 20))

    ckpt = CheckpointManager(sys.argv[1], keep_last=2)
    step = 0
    ckpt.handle_sigterm(lambda: ckpt.save(step, {"model.bin": payload(step), "final": b"yes"}))
    print("training", flush=True)
    while True:
        step += 1
        files = {"model.bin": payload(step)}
        if step % 2:
            ckpt.save(step, files)
        else:
            ckpt.save_async(step, files)
    """
)


def test_docker_stop_at_random_moments_always_commits_the_final_checkpoint(
    job_image: str, docker_resources: Resources, docker_client: Any
) -> None:
    volume = _new_volume(docker_client, docker_resources)
    folder = Path(docker_client.volumes.get(volume).attrs["Mountpoint"])
    rng = random.Random(8006)
    grace = 10
    for run in range(10):
        container = _container(docker_client, docker_resources, job_image, volume,
                               PREEMPTED, f"/ckpt/run-{run}")
        deadline = time.monotonic() + 60
        while b"training" not in container.logs() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        began = time.monotonic()
        container.stop(timeout=grace)
        stopped_after = time.monotonic() - began
        state = docker_client.api.inspect_container(container.id)["State"]
        log = container.logs().decode()
        container.remove(force=True)
        assert state["ExitCode"] == 143, (run, log)
        assert stopped_after < grace, f"run {run}: docker stop took {stopped_after:.1f} s"
        ckpt = CheckpointManager(folder / f"run-{run}", keep_last=2, warn_ephemeral=False)
        latest = ckpt.restore_latest()  # verified: sizes and checksums of every file
        assert latest is not None, (run, log)
        assert latest.read_bytes("final") == b"yes", f"run {run}: the final save is missing"
        rnd = random.Random(latest.step)
        assert latest.read_bytes("model.bin") == rnd.randbytes(rnd.randint(1 << 20, 6 << 20))


# -- the distributed example: torchrun, 2 ranks, inside `cargohold run` ---------------------------

WHEELS = Path(os.environ.get("CARGOHOLD_TEST_WHEELS", "/var/tmp/cargohold-torch-wheels"))
TORCH_LAYER = textwrap.dedent(
    """
    ARG BASE_IMAGE
    FROM ${BASE_IMAGE}
    COPY wheels /tmp/wheels
    RUN python3 -c "import glob, zipfile; \\
        [zipfile.ZipFile(w).extractall('/usr/local/lib/python3.11/dist-packages') \\
         for w in glob.glob('/tmp/wheels/*.whl')]" \\
        && rm -rf /tmp/wheels && python3 -c "import torch.distributed"
    """
)


@pytest.fixture(scope="module")
def torch_image(docker_client: Any, base_image: str, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[str]:
    """The base image plus torch 2.13.0 (CPU), from the wheel pip has on this machine (there is
    no registry). The wheels are kept in /var/tmp between runs; the image is removed when this
    session built it."""
    import docker.errors

    from cargohold.engine import connect

    if not list(WHEELS.glob("torch-2.13.0*.whl")):
        WHEELS.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "torch==2.13.0",
                        "-d", str(WHEELS)], check=True, timeout=900)
    tag = "cargohold-test-torch:2.13.0"
    try:
        docker_client.images.get(tag)
        built = False
    except docker.errors.ImageNotFound:
        context = tmp_path_factory.mktemp("torch-image")
        (context / "Dockerfile").write_text(TORCH_LAYER)
        (context / "wheels").mkdir()
        for wheel in WHEELS.glob("*.whl"):
            os.link(wheel, context / "wheels" / wheel.name)
        engine = connect()
        try:
            engine.build(context=str(context), tag=tag, dockerfile="Dockerfile",
                         buildargs={"BASE_IMAGE": base_image},
                         labels={"cargohold.test": "true"})
        finally:
            engine.close()
        built = True
    yield tag
    if built and not os.environ.get("CARGOHOLD_KEEP_TEST_IMAGES"):
        with contextlib.suppress(docker.errors.DockerException):
            docker_client.images.remove(tag, force=True)


def test_distributed_example_under_torchrun_in_cargohold_run_survives_a_dead_rank(
    tmp_path: Path, torch_image: str, docker_resources: Resources, docker_client: Any
) -> None:
    example = tomllib.loads((REPO / "examples/distributed/cargohold.toml").read_text())
    job = example["jobs"]["train"]
    command = [*job["command"][: job["command"].index("--steps")], "--steps", "16",
               "--kill-rank-at", "7"]
    project = docker_resources.project
    image = f"{project}-distributed"
    docker_resources.images.append(image)
    dockerfile = "examples/distributed/Dockerfile"
    args = f'BASE_IMAGE = "{torch_image}"'
    (tmp_path / "cargohold.toml").write_text(textwrap.dedent(f"""
        [project]
        name = "{project}"

        [stores.checkpoints]
        kind = "checkpoints"
        target = "/ckpt"

        [jobs.train]
        image = "{image}"
        build = {{ context = "{REPO}", dockerfile = "{dockerfile}", args = {{ {args} }} }}
        command = {json.dumps(command)}
        shm_size = "{job['shm_size']}"
        restart = {{ max = 1 }}
        """))
    result = run_cli("run", cwd=tmp_path, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    # First attempt: rank 1 died in the middle of a save; torchrun stopped the job; cargohold
    # restarted it and both ranks resumed from the last checkpoint they had all committed.
    assert "world 2: fresh start" in result.stdout, output[-4000:]
    assert "restart 1 of 1" in result.stderr, output[-4000:]
    resumed = int(result.stdout.split("world 2: resumed from step ")[1].split()[0])
    assert 5 <= resumed <= 10, output[-4000:]
    assert "done: step 15" in result.stdout
    folder = Path(docker_client.volumes.get(f"{project}-checkpoints").attrs["Mountpoint"])
    ckpt = CheckpointManager(folder, keep_last=3, metric="loss", warn_ephemeral=False,
                             rank=0, world_size=1)
    latest = ckpt.restore_latest()
    assert latest is not None and latest.step == 15
    manifest = json.loads((latest.path / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and ".metadata" in manifest["files"]
    # The dead session's pending folder was removed by the second start.
    assert not [n for n in os.listdir(folder) if n.startswith(".pending-")]
