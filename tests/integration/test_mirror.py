"""`cargohold mirror` against the real S3 server: committed checkpoints only, only new content,
restore on a fresh store, and a mirror that cannot be reached or refuses the credentials."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path
from typing import Any

from cargohold.checkpoint import CheckpointManager
from tests.conftest import Resources, run_cli


def _saved(folder: Path, steps: range, *, size: int = 200_000) -> None:
    manager = CheckpointManager(folder, keep_last=0)
    for step in steps:
        # Most of each checkpoint stays the same between steps, as frozen layers do.
        manager.save(step, {"frozen.bin": b"F" * size, "head.bin": f"head {step}".encode() * 100})
    manager.close()


def _ok(result: object) -> str:
    assert result.returncode == 0, result.stderr  # type: ignore[attr-defined]
    return result.stdout  # type: ignore[attr-defined,no-any-return]


def test_mirror_pushes_committed_checkpoints_once_and_restores_a_fresh_store(
    tmp_path: Path, s3_endpoint: dict[str, str]
) -> None:
    url = f"s3://cht-mirror-{os.getpid()}-{time.monotonic_ns()}/job"
    store = tmp_path / "ckpt"
    _saved(store, range(1, 4))
    (store / "step-0000000009").mkdir()  # a save still in progress: no manifest yet
    (store / "step-0000000009" / "frozen.bin").write_bytes(b"half")
    env = dict(s3_endpoint)
    first = run_cli("mirror", "--dir", str(store), "--to", url, "--once", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("mirrored step-") == 3 and "step-0000000009" not in first.stderr
    again = run_cli("mirror", "--dir", str(store), "--to", url, "--once", env=env)
    assert "0 new checkpoint(s) mirrored" in again.stderr, again.stderr

    # Only new content: step 4 shares its big file with step 3.
    _saved(store, range(4, 5))
    _ok(run_cli("mirror", "--dir", str(store), "--to", url, "--once", env=env))
    listed = json.loads(_ok(run_cli("snapshots", "--repo", url, "--json", env=env)))
    by_tag = {s["tag"]: s for s in listed}
    step4 = by_tag["mirror:cargohold:4:step-0000000004"]
    assert step4["new_bytes_stored"] < 20_000 < 200_000
    assert set(by_tag) == {f"mirror:cargohold:{n}:step-{n:010d}" for n in range(1, 5)}

    # A fresh node: the empty store gets the newest mirrored checkpoint, whole.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _ok(run_cli("mirror", "--dir", str(fresh), "--to", url, "--restore-only", env=env))
    assert sorted(p.name for p in fresh.iterdir()) == ["step-0000000004"]
    latest = CheckpointManager(fresh).restore_latest()
    assert latest is not None and latest.step == 4
    # A store that has a checkpoint is left alone.
    _ok(run_cli("mirror", "--dir", str(store), "--to", url, "--restore-only", env=env))
    assert sorted(p.name for p in store.iterdir() if p.name.startswith("step-"))[-1] == (
        "step-0000000009"
    )

    # --exec: restore, run the job with CARGOHOLD_RESUME_FROM, push what it saved.
    third = tmp_path / "third"
    third.mkdir()
    job = (
        "import os; from cargohold.checkpoint import CheckpointManager; "
        "print('RESUME_FROM', os.environ.get('CARGOHOLD_RESUME_FROM')); "
        "m = CheckpointManager(keep_last=0); s = m.restore_latest().step; "
        "m.save(s + 1, {'head.bin': b'new'}); m.close()"
    )
    ran = run_cli(
        "mirror", "--dir", str(third), "--to", url, "--exec", "--", "python3", "-c", job,
        env={**env, "CARGOHOLD_CHECKPOINT_DIR": str(third)},
    )
    assert ran.returncode == 0, ran.stderr
    assert f"RESUME_FROM {third}/step-0000000004" in ran.stdout
    assert "mirrored step-0000000005" in ran.stderr


def test_an_unreachable_mirror_never_stops_the_job(tmp_path: Path) -> None:
    store = tmp_path / "ckpt"
    _saved(store, range(1, 2))
    env = {
        "CARGOHOLD_S3_ENDPOINT": "http://127.0.0.1:9",  # nothing listens there
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_MAX_ATTEMPTS": "1",
    }
    ran = run_cli(
        "mirror", "--dir", str(store), "--to", "s3://nowhere/job", "--interval", "0.5",
        "--status-file", str(tmp_path / "status.json"),
        "--exec", "--", "python3", "-c", "print('TRAINING RAN')", env=env, timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    assert "TRAINING RAN" in ran.stdout
    assert "NOTHING IS MIRRORED" in ran.stderr and "Traceback" not in ran.stderr
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "unreachable" and status["pushed"] == 0
    # The job's own exit code is the mirror's.
    failed = run_cli(
        "mirror", "--dir", str(store), "--to", "s3://nowhere/job", "--exec", "--",
        "python3", "-c", "raise SystemExit(5)", env=env, timeout=120,
    )
    assert failed.returncode == 5
    once = run_cli("mirror", "--dir", str(store), "--to", "s3://nowhere/job", "--once", env=env,
                   timeout=120)
    assert once.returncode == 3 and "cannot be reached" in once.stderr
    assert "Traceback" not in once.stderr


def test_wrong_credentials_exit_2_with_a_hint(tmp_path: Path, s3_endpoint: dict[str, str]) -> None:
    store = tmp_path / "ckpt"
    _saved(store, range(1, 2))
    env = {**s3_endpoint, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    url = f"s3://cht-mirror-{os.getpid()}-creds/job"
    for mode in (["--once"], ["--exec", "--", "python3", "-c", "print('SHOULD NOT RUN')"]):
        result = run_cli("mirror", "--dir", str(store), "--to", url, *mode, env=env)
        assert result.returncode == 2, result.stderr
        assert "refused the credentials" in result.stderr
        assert "AWS_SECRET_ACCESS_KEY" in result.stderr  # the hint
        assert "Traceback" not in result.stderr and "SHOULD NOT RUN" not in result.stdout


SAVE_THREE = """
import os
from cargohold.checkpoint import CheckpointManager
m = CheckpointManager(keep_last=0)
latest = m.restore_latest()
print("RESTORED", latest.step if latest else "none", flush=True)
start = latest.step + 1 if latest else 1
for step in range(start, start + 3):
    m.save(step, {"w.bin": f"weights {step}".encode() * 1000})
m.close()
"""


def _project(folder: Path, project: str, image: str, mirror: str) -> None:
    (folder / "cargohold.toml").write_text(textwrap.dedent(f"""
        [project]
        name = "{project}"

        [stores.checkpoints]
        kind = "checkpoints"
        target = "/ckpt"
        mirror = "{mirror}"

        [jobs.train]
        image = "{image}"
        command = ["python3", "-c", {json.dumps(SAVE_THREE)}]
    """))


def test_cargohold_run_mirrors_beside_the_job_and_a_fresh_machine_resumes(
    tmp_path: Path, job_image: str, cargohold_image: str, docker_resources: Resources,
    docker_client: Any, s3_endpoint: dict[str, str],
) -> None:
    project = docker_resources.project
    url = f"s3://{project}/ckpt"
    _project(tmp_path, project, job_image, url)
    first = run_cli("run", cwd=tmp_path, env=s3_endpoint, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "RESTORED none" in first.stdout
    assert f"Mirroring checkpoints to {url}" in first.stderr
    assert "mirror: 3 checkpoint(s) pushed" in first.stderr
    assert not docker_client.containers.list(all=True, filters={"name": f"{project}-train-mirror"})
    # The credentials reached the mirror, never the job.
    job = docker_client.containers.get(f"{project}-train")
    assert not any(e.startswith("AWS_SECRET") for e in job.attrs["Config"]["Env"])

    # Another machine: no checkpoint volume at all. The newest mirrored checkpoint comes back.
    job.remove(force=True)
    docker_client.volumes.get(f"{project}-checkpoints").remove(force=True)
    second = run_cli("run", cwd=tmp_path, env=s3_endpoint, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "restored step-0000000003" in second.stderr
    assert "RESTORED 3" in second.stdout


def test_an_unreachable_mirror_shows_in_ps_and_the_job_runs(
    tmp_path: Path, job_image: str, cargohold_image: str, docker_resources: Resources,
) -> None:
    project = docker_resources.project
    _project(tmp_path, project, job_image, f"s3://{project}/ckpt")
    env = {"CARGOHOLD_S3_ENDPOINT": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "s", "AWS_MAX_ATTEMPTS": "1"}
    ran = run_cli("run", "-d", cwd=tmp_path, env=env, timeout=600)
    assert ran.returncode == 0, ran.stderr
    assert "NOTHING RESTORED" in ran.stderr  # said loudly, and the job started anyway
    deadline = time.monotonic() + 60
    mirrors: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        mirrors = json.loads(run_cli("ps", "--json", cwd=tmp_path).stdout)["mirrors"]
        if mirrors and mirrors[0]["state"] == "unreachable":
            break
        time.sleep(1)
    assert mirrors and mirrors[0]["state"] == "unreachable", mirrors
    assert mirrors[0]["name"] == f"{project}-train-mirror"
    text = run_cli("ps", cwd=tmp_path).stdout
    assert "unreachable" in text and "cannot be reached" in text


def test_the_kubernetes_sidecar_mirrors_until_the_pods_job_ends(
    cargohold_image: str, docker_resources: Resources, docker_client: Any,
    s3_endpoint: dict[str, str],
) -> None:
    """A pod, built from Docker parts: a pause process owns one process namespace that the job
    and the `--until-pod-done` sidecar share (shareProcessNamespace), one volume between them."""
    import docker

    project = docker_resources.project
    volume = f"{project}-checkpoints"
    docker_resources.volumes.append(volume)
    url = f"s3://{project}/ckpt"
    env = {**s3_endpoint, "CARGOHOLD_CHECKPOINT_DIR": "/ckpt", "CARGOHOLD_MIRROR": url}
    labels = {"cargohold.project": project}
    pause = docker_client.containers.run(
        cargohold_image, ["sleep", "infinity"], name=f"{project}-pause", labels=labels,
        detach=True, network_mode="none",
    )
    shared = {"pid_mode": f"container:{pause.id}", "labels": labels, "detach": True,
              "environment": env, "network_mode": "host"}
    sidecar = docker_client.containers.run(
        cargohold_image, ["cargohold", "mirror", "--until-pod-done", "--interval", "1"],
        name=f"{project}-mirror", user="0:0",
        mounts=[docker.types.Mount("/ckpt", volume, type="volume", read_only=True)], **shared,
    )
    job = (
        "import time; from cargohold.checkpoint import CheckpointManager; "
        "m = CheckpointManager(keep_last=0); "
        "[(m.save(s, {'w.bin': b'x' * 1000}), time.sleep(0.5)) for s in (1, 2, 3)]; m.close()"
    )
    docker_client.containers.run(
        cargohold_image, ["python3", "-c", job], name=f"{project}-job", user="0:0",
        mounts=[docker.types.Mount("/ckpt", volume, type="volume")], **shared,
    )
    # The job ends; the sidecar notices, pushes once more and leaves: the pod can complete.
    assert sidecar.wait(timeout=180)["StatusCode"] == 0
    said = sidecar.logs().decode()
    assert "mirrored step-0000000003" in said, said
    listed = json.loads(_ok(run_cli("snapshots", "--repo", url, "--json", env=s3_endpoint)))
    assert {s["tag"] for s in listed} >= {"mirror:cargohold:3:step-0000000003"}
    pause.remove(force=True)
