"""scan, rescue, rm, watch, doctor and ps against real containers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SRC, Resources, run_cli


@pytest.fixture(params=["local", "archive"])
def access(request: pytest.FixtureRequest) -> str:
    """Sizes read from the overlay's folder, or through the engine's archive endpoint."""
    return str(request.param)

# Writes a model, a checkpoint folder and a log into the container's own layer, and prints
# the sha256 of each file as the container saw it.
WRITER = """
import hashlib, os
os.makedirs("/workspace/out/checkpoint-500", exist_ok=True)
files = {"/workspace/out/model.safetensors": os.urandom(200_000),
         "/workspace/out/checkpoint-500/optimizer.pt": os.urandom(50_000),
         "/workspace/out/checkpoint-500/config.json": b"{}",
         "/workspace/train.log": b"step 500 loss 0.1\\n"}
for path, data in files.items():
    with open(path, "wb") as f:
        f.write(data)
    print(hashlib.sha256(data).hexdigest(), path)
"""


def _start(docker_client: Any, resources: Resources, image: str, name: str, code: str,
           **kwargs: Any) -> dict[str, str]:
    resources.containers.append(name)
    container = docker_client.containers.run(image, ["python3", "-c", code], name=name,
                                             detach=True, **kwargs)
    assert container.wait(timeout=60)["StatusCode"] == 0
    lines = container.logs().decode().split("\n")
    return {p: h for h, p in (line.split(" ", 1) for line in lines if line)}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_scan_rm_rescue(tmp_path: Path, job_image: str, docker_resources: Resources,
                        docker_client: Any, monkeypatch: pytest.MonkeyPatch,
                        access: str) -> None:
    monkeypatch.setenv("CARGOHOLD_VOLUME_ACCESS", access)  # the CLI runs inherit it
    risky = f"{docker_resources.project}-risky"
    clean = f"{docker_resources.project}-clean"
    volume = f"{docker_resources.project}-vol"
    docker_resources.volumes.append(volume)
    hashes = _start(docker_client, docker_resources, job_image, risky, WRITER)
    _start(docker_client, docker_resources, job_image, clean,
           "open('/ckpt/model.pt', 'wb').write(b'safe on a volume')",
           volumes={volume: {"bind": "/ckpt", "mode": "rw"}})

    scanned = run_cli("scan", risky, clean, "--json")
    assert scanned.returncode == 1, scanned.stderr
    report = {s["container"]: s for s in json.loads(scanned.stdout)}
    risky_files = [f["path"] for f in report[risky]["files"]]
    assert risky_files[-1] == "/workspace/train.log"  # logs last
    assert set(risky_files[:3]) == {p for p in hashes if p.endswith((".safetensors", ".pt",
                                                                     ".json"))}
    assert report[risky]["files"][0]["path"] == "/workspace/out/model.safetensors"  # largest
    assert report[clean]["files"] == []  # wrote only to its volume
    assert run_cli("scan", clean).returncode == 0

    refused = run_cli("rm", risky)
    assert refused.returncode != 0
    assert "model.safetensors" in refused.stderr and f"cargohold rescue {risky}" in refused.stderr
    assert docker_client.containers.get(risky)  # still there

    rescued = run_cli("rescue", risky, "--to", str(tmp_path / "rescued"))
    assert rescued.returncode == 0, rescued.stderr
    for path, digest in hashes.items():
        copy = tmp_path / "rescued" / path.lstrip("/")
        if path.endswith(".log"):
            assert not copy.exists()  # only what is worth keeping, unless --all
        else:
            assert _sha256(copy) == digest  # bit-exact

    to_volume = f"{docker_resources.project}-rescue"
    docker_resources.volumes.append(to_volume)
    into_volume = run_cli("rescue", risky, "--all", "--to", f"volume:{to_volume}")
    assert into_volume.returncode == 0, into_volume.stderr
    log = run_cli("volume", "cat", to_volume, f"{risky}/workspace/train.log")
    assert log.stdout == "step 500 loss 0.1\n"

    removed = run_cli("rm", risky, "--rescue", "--to", str(tmp_path / "again"))
    assert removed.returncode == 0, removed.stderr
    assert (tmp_path / "again" / "workspace/out/model.safetensors").exists()
    assert not docker_client.containers.list(all=True, filters={"name": f"^/{risky}$"})
    assert run_cli("rm", clean).returncode == 0  # nothing at risk: no fuss


def test_watch_rescues_a_container_that_stops(tmp_path: Path, job_image: str,
                                              docker_resources: Resources,
                                              docker_client: Any) -> None:
    name = f"{docker_resources.project}-watched"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    with subprocess.Popen([sys.executable, "-m", "cargohold", "watch", "--seconds", "60",
                           "--to", str(tmp_path / "rescues")], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as watcher:
        try:
            time.sleep(2)  # let it subscribe to the engine's events
            hashes = _start(docker_client, docker_resources, job_image, name, WRITER)
            model = "/workspace/out/model.safetensors"
            deadline = time.monotonic() + 45
            found: list[Path] = []
            while time.monotonic() < deadline and not found:
                found = list((tmp_path / "rescues").glob(f"{name}-*/workspace/out/"
                                                          "model.safetensors"))
                time.sleep(0.5)
            assert found, "watch did not rescue the stopped container"
            time.sleep(1)
            assert _sha256(found[0]) == hashes[model]
        finally:
            watcher.terminate()
            output, _ = watcher.communicate(timeout=30)
    assert f"{name} stopped with" in output


def test_doctor_and_ps(tmp_path: Path, job_image: str, docker_resources: Resources,
                       docker_client: Any) -> None:
    project = docker_resources.project
    (tmp_path / "data").mkdir()
    (tmp_path / "cargohold.toml").write_text(f"""
[project]
name = "{project}"
[stores.dataset]
kind = "dataset"
source = "./data"
target = "/data"
[stores.checkpoints]
kind = "checkpoints"
target = "/ckpt"
[jobs.train]
image = "{job_image}"
user = "root"
shm_size = "1g"
""")
    ran = run_cli("run", "--", "python3", "-c", WRITER, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    doctor = run_cli("doctor", "--json", cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stderr
    checks = {c["check"]: c for c in json.loads(doctor.stdout)}
    assert checks["engine"]["status"] == "ok" and "API" in checks["engine"]["detail"]
    assert checks["store checkpoints"]["status"] == "ok"
    assert "writable by 0:0" in checks["store checkpoints"]["detail"]
    assert checks["shm"]["status"] == "ok"

    ps = run_cli("ps", "--json", cwd=tmp_path)
    assert ps.returncode == 1  # the job left ML data in its own layer
    state = json.loads(ps.stdout)
    assert state["project"] == project
    assert state["containers"][0]["ml_files_at_risk"] == 3
    assert [v["name"] for v in state["volumes"]] == [f"{project}-checkpoints"]


def test_scan_prints_paths_with_brackets_literally(job_image: str, docker_resources: Resources,
                                                   docker_client: Any) -> None:
    """Issue 8, defect 12: a file named like rich markup is shown as it is, never styled or
    dropped, and "[/]" does not crash the listing."""
    name = f"{docker_resources.project}-brackets"
    paths = ["/out/[bold]model[/].pt", "/out/a[/]b.safetensors", "/out/:thumbs_up:.ckpt",
             "/out/[red]"]
    _start(docker_client, docker_resources, job_image, name,
           f"import os\nfor p in {paths!r}:\n"
           "    os.makedirs(os.path.dirname(p), exist_ok=True); open(p, 'wb').write(b'w')")
    scanned = run_cli("scan", name)
    assert scanned.returncode == 1, scanned.stderr
    assert "Traceback" not in scanned.stderr
    for path in paths[:3]:
        assert f"  {path}  (model weights or checkpoint" in scanned.stdout
    assert "/out/[red]  (written to the container's layer)" in scanned.stdout


# A layer a hostile job prepared for the host-side walk: links to host paths under ML names, a
# linked folder, a FIFO, and a file whose name is not UTF-8.
PLANTER = """
import os
os.makedirs("/workspace/out", exist_ok=True)
with open("/workspace/out/model.pt", "wb") as f:
    f.write(b"real weights")
os.symlink("/etc/hostname", "/workspace/out/evil.pt")
os.symlink("/root", "/workspace/out/checkpoint-9")
os.mkfifo("/workspace/out/pipe.ckpt")
with open(b"/workspace/out/w\\xff.safetensors", "wb") as f:
    f.write(b"odd name")
"""


def test_a_hostile_layer_is_scanned_and_rescued_without_following_links(
    tmp_path: Path, base_image: str, docker_resources: Resources, docker_client: Any,
    monkeypatch: pytest.MonkeyPatch, access: str
) -> None:
    monkeypatch.setenv("CARGOHOLD_VOLUME_ACCESS", access)
    name = f"{docker_resources.project}-planted"
    docker_resources.containers.append(name)
    container = docker_client.containers.run(base_image, ["python3", "-c", PLANTER], name=name,
                                             detach=True)
    assert container.wait(timeout=60)["StatusCode"] == 0, container.logs()

    scanned = run_cli("scan", name)  # text output, the odd name included: no traceback
    assert scanned.returncode == 1 and "Traceback" not in scanned.stderr, scanned.stderr
    listed = json.loads(run_cli("scan", name, "--json").stdout)[0]["files"]
    regular = sorted(os.path.basename(f["path"]) for f in listed if "/workspace/" in f["path"])
    assert regular == sorted(["model.pt", os.fsdecode(b"w\xff.safetensors")])  # no link, no FIFO

    rescued = run_cli("rescue", name, "--all", "--to", str(tmp_path / "out"))
    assert rescued.returncode == 0, rescued.stderr
    out = tmp_path / "out" / "workspace" / "out"
    assert (out / "model.pt").read_bytes() == b"real weights"
    assert sorted(os.listdir(os.fsencode(out))) == sorted([b"model.pt", b"w\xff.safetensors"])
    for path in (tmp_path / "out").rglob("*"):
        assert not path.is_symlink(), path
