"""Scheduled snapshots as a sidecar (issue 12): the spec key, the plan, the Compose and
Kubernetes renderings, what other targets say instead, and the CLI the sidecar runs.

The Compose file is checked against the Compose Specification schema and by the real
`docker compose config`; the Kubernetes objects by `kubernetes-validate --strict`. The sidecar's
command runs for real (no Docker: a folder stands in for the mounted volume).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cargohold.errors import SpecError
from cargohold.plan import Plan, make_plan
from cargohold.render import render_compose
from cargohold.render._limits import TARGETS, check_limits, limits_of
from cargohold.render.kubernetes import render_kubernetes
from cargohold.spec import parse_spec
from tests.conftest import SRC, run_cli
from tests.unit.test_cluster_render import _validate
from tests.unit.test_render import _compose_binary, _compose_schema

IMAGE = "cargohold:test"
SPEC = """
[project]
name = "digits"

[stores.data]
kind = "dataset"
target = "/data"

[stores.checkpoints]
kind = "checkpoints"
target = "/ckpt"

[stores.checkpoints.snapshots]
every = "1h"
repo = "s3://bucket/snaps$x"
keep_last = 3
keep_daily = 7

[stores.cache]
kind = "cache"
target = "/cache"

[stores.cache.snapshots]
every = "1d"
repo = "./snapshots"

[jobs.train]
image = "img"
command = ["python3", "train.py"]
user = "1000:1000"

[jobs.eval]
image = "img"
stores = ["cache"]
user = "1000:1000"
"""


def _plans(text: str = SPEC, base: Path = Path("/p")) -> list[Plan]:
    spec = parse_spec(text, base_dir=base)
    return [make_plan(spec, job, host_user=(1000, 1000)) for job in spec.jobs]


# -- the spec ------------------------------------------------------------------------------


def _schedule(lines: str, store: str = "") -> str:
    return SPEC.replace(
        'every = "1h"\nrepo = "s3://bucket/snaps$x"\nkeep_last = 3\nkeep_daily = 7\n', lines
    ).replace('target = "/ckpt"\n', f'target = "/ckpt"\n{store}')


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        (_schedule('every = "hourly"\nrepo = "s3://b/p"\n'), "stores.checkpoints.snapshots.every",
         "not a duration"),
        (_schedule('every = "0s"\nrepo = "s3://b/p"\n'), "stores.checkpoints.snapshots.every",
         "too short"),
        (_schedule('every = 3600\nrepo = "s3://b/p"\n'), "stores.checkpoints.snapshots.every",
         'every = "1h"'),
        (_schedule('every = "1h"\nrepo = "s3://b/p"\nkeep_last = -1\n'),
         "stores.checkpoints.snapshots.keep_last", "greater than or equal to 0"),
        (_schedule('every = "1h"\nrepo = "s3://b/p"\nkeep_daily = true\n'),
         "stores.checkpoints.snapshots.keep_daily", "integer"),
        (_schedule('every = "1h"\nrepo = "s3://b/p"\nkeep_yearly = 1\n'),
         "stores.checkpoints.snapshots.keep_yearly", "unknown key"),
        (_schedule('every = "1h"\n'), "stores.checkpoints.snapshots.repo", "required"),
        (_schedule('every = "1h"\nrepo = ""\n'), "stores.checkpoints.snapshots.repo",
         "folder or a URL"),
        (_schedule('every = "1h"\nrepo = "s3://KEY:SECRET@bucket/p"\n'),
         "stores.checkpoints.snapshots.repo", "credentials"),
        (_schedule('every = "1h"\nrepo = "/var/run"\n'), "stores.checkpoints.snapshots.repo",
         "Docker socket"),
        (_schedule('every = "1h"\nrepo = "s3://b/p"\n', 'source = "./ckpt"\n'),
         "stores.checkpoints.snapshots", "host folder"),
        (_schedule('every = "1h"\nrepo = "s3://b/p"\n', 'backing = "bind"\nsource = "./c"\n'),
         "stores.checkpoints.snapshots", "host folder"),
        (SPEC + '\n[stores.tmp]\nkind = "scratch"\ntarget = "/tmp"\n'
         '[stores.tmp.snapshots]\nevery = "1h"\nrepo = "s3://b/p"\n',
         "stores.tmp.snapshots", "tmpfs"),
        (SPEC.replace('[stores.cache.snapshots]\nevery = "1d"\nrepo = "./snapshots"\n',
                      'snapshots = "1d"\n'), "stores.cache.snapshots", "write a table"),
    ],
)
def test_a_bad_schedule_names_its_key(text: str, key: str, fragment: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(text, base_dir=Path("/p"))
    assert caught.value.key == key
    assert fragment in caught.value.message + (caught.value.hint or "")


def test_a_repository_folder_that_is_a_file_or_the_socket_is_refused_on_load(
    tmp_path: Path,
) -> None:
    from cargohold.spec import load_spec

    spec_file = tmp_path / "cargohold.toml"
    (tmp_path / "snapshots").write_text("not a folder")
    spec_file.write_text(SPEC)
    with pytest.raises(SpecError) as caught:
        load_spec(spec_file)
    assert caught.value.key == "stores.cache.snapshots.repo"
    (tmp_path / "snapshots").unlink()
    (tmp_path / "run").symlink_to("/run")  # holds /run/docker.sock, resolved
    spec_file.write_text(SPEC.replace('repo = "./snapshots"', 'repo = "./run"'))
    with pytest.raises(SpecError, match="Docker socket"):
        load_spec(spec_file)
    spec_file.write_text(SPEC)
    assert load_spec(spec_file).stores["cache"].snapshots is not None  # a missing folder is fine


def test_cli_says_a_bad_schedule_in_one_paragraph(tmp_path: Path) -> None:
    (tmp_path / "cargohold.toml").write_text(_schedule('every = "1h"\nrepo = "s3://b/p"\n'
                                                       "keep_last = -2\n"))
    result = run_cli("render", "compose", cwd=tmp_path)
    assert result.returncode == 2
    assert "stores.checkpoints.snapshots.keep_last" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_plan_carries_the_schedule_with_its_reason() -> None:
    train = _plans()[0]
    mounts = {m.store: m for m in train.mounts}
    ckpt, cache = mounts["checkpoints"].snapshots, mounts["cache"].snapshots
    assert ckpt is not None and cache is not None and mounts["data"].snapshots is None
    assert ckpt.keep_options() == ["--keep-last", "3", "--keep-daily", "7"]
    assert cache.repo == "/p/snapshots" and cache.repo_is_folder
    assert not ckpt.repo_is_folder
    assert "snapshotted every 1h into s3://bucket/snaps$x" in mounts["checkpoints"].reason
    stores = {s["store"]: s for s in train.to_json()["stores"]}
    assert stores["cache"]["snapshots"]["every"] == "1d"
    assert "snapshots" not in stores["data"]


# -- Compose -------------------------------------------------------------------------------


def test_compose_runs_one_read_only_sidecar_per_scheduled_volume() -> None:
    document = render_compose(_plans(), mirror_image=IMAGE)
    services = document["services"]
    names = sorted(n for n in services if "-snapshots-" in n)
    # The cache is shared with eval: one sidecar, beside the first job that mounts it.
    assert names == ["train-snapshots-cache", "train-snapshots-checkpoints"]
    ckpt = services["train-snapshots-checkpoints"]
    assert ckpt["image"] == IMAGE and ckpt["user"] == "1000:1000"
    assert ckpt["command"] == [
        "cargohold", "snapshot", "/ckpt", "--as-volume", "digits-checkpoints",
        "--every", "1h", "--keep-last", "3", "--keep-daily", "7",
    ]
    assert ckpt["volumes"] == [
        {"type": "volume", "source": "checkpoints", "target": "/ckpt", "read_only": True}
    ]
    env = ckpt["environment"]
    assert env["CARGOHOLD_REPO"] == "s3://bucket/snaps$$x"  # the spec's dollar stays literal
    assert env["AWS_SECRET_ACCESS_KEY"] == "${AWS_SECRET_ACCESS_KEY:-}"
    assert env["CARGOHOLD_PASSWORD"] == "${CARGOHOLD_PASSWORD:-}"
    assert ckpt["depends_on"] == {"train-prepare": {"condition": "service_completed_successfully"}}
    assert ckpt["labels"]["cargohold.role"] == "snapshots"
    assert "network_mode" not in ckpt  # S3 must be reachable
    cache = services["train-snapshots-cache"]
    assert cache["volumes"][1] == {
        "type": "bind", "source": "/p/snapshots", "target": "/cargohold-repo",
        "bind": {"create_host_path": False},
    }
    assert cache["environment"]["CARGOHOLD_REPO"] == "/cargohold-repo"
    assert cache["network_mode"] == "none"
    for service in (ckpt, cache):
        assert "privileged" not in service and "cap_add" not in service
        assert service["security_opt"] == ["no-new-privileges"]
    text = yaml.safe_dump(document)
    assert "docker.sock" not in text and "&id" not in text  # no socket, no YAML aliases
    # Without the cargohold image there are no sidecars: the golden files stay as they were.
    assert not any("-snapshots-" in n for n in render_compose(_plans())["services"])


def test_docker_compose_config_accepts_the_sidecars(tmp_path: Path) -> None:
    import jsonschema

    (tmp_path / "snapshots").mkdir()
    document = render_compose(_plans(base=tmp_path), mirror_image=IMAGE)
    jsonschema.validate(document, _compose_schema())
    compose_file = tmp_path / "compose.yml"
    compose_file.write_text(yaml.safe_dump(document, sort_keys=False))
    resolved = subprocess.run(
        [_compose_binary(), "-f", str(compose_file), "config", "--format", "json"],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "from-the-shell"},
    )
    assert resolved.returncode == 0, resolved.stderr
    services = json.loads(resolved.stdout)["services"]
    ckpt = services["train-snapshots-checkpoints"]
    assert ckpt["environment"]["AWS_ACCESS_KEY_ID"] == "from-the-shell"
    assert ckpt["environment"]["CARGOHOLD_REPO"] == "s3://bucket/snaps$$x"  # not interpolated
    assert ckpt["volumes"][0]["read_only"] is True
    assert services["train-snapshots-cache"]["volumes"][1]["source"] == str(tmp_path / "snapshots")
    assert "from-the-shell" not in compose_file.read_text()


def test_cli_render_compose_says_what_the_sidecars_need(tmp_path: Path) -> None:
    (tmp_path / "cargohold.toml").write_text(SPEC)
    result = run_cli("render", "compose", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"# Before `docker compose up`: mkdir -p {tmp_path / 'snapshots'}" in result.stdout
    assert "# train: stores.cache.snapshots: a sidecar (<job>-snapshots-cache" in result.stdout
    assert "# eval: stores.cache.snapshots: a sidecar" in result.stdout
    assert "train-snapshots-checkpoints:" in result.stdout


def test_every_target_states_what_it_does_with_a_schedule() -> None:
    train = _plans()[0]
    said = {t: {limit.key: limit.message for limit in limits_of(train, t)} for t in TARGETS}
    by_hand = (  # shell-quoted: the spec's dollar is not the shell's
        "cargohold snapshot digits-checkpoints --every 1h --repo 's3://bucket/snaps$x' "
        "--keep-last 3 --keep-daily 7"
    )
    assert by_hand in said["docker-run"]["stores.checkpoints.snapshots"]
    assert by_hand in said["swarm"]["stores.checkpoints.snapshots"]
    assert "<job>-snapshots-checkpoints" in said["compose"]["stores.checkpoints.snapshots"]
    assert "s3://" in said["kubernetes"]["stores.cache.snapshots.repo"]
    assert "stores.checkpoints.snapshots" not in said["kubernetes"]  # rendered there
    for target in TARGETS:
        check_limits(train, target)  # none of them is fatal


# -- Kubernetes ----------------------------------------------------------------------------


def _pod(nodes: int = 1) -> dict[str, Any]:
    text = SPEC.replace('user = "1000:1000"\n', f'user = "1000:1000"\nnodes = {nodes}\n', 1)
    job = render_kubernetes(_plans(text)[0], image=IMAGE)[-1]
    pod: dict[str, Any] = job["spec"]["template"]["spec"]
    return pod


def test_kubernetes_runs_the_sidecar_until_the_job_is_done() -> None:
    pod = _pod()
    sidecars = {c["name"]: c for c in pod["containers"][1:]}
    assert list(sidecars) == ["snapshots-checkpoints"]  # a host folder cannot follow the pod
    sidecar = sidecars["snapshots-checkpoints"]
    assert sidecar["image"] == IMAGE
    assert sidecar["args"] == [
        "cargohold", "snapshot", "/ckpt", "--as-volume", "digits-checkpoints",
        "--every", "1h", "--keep-last", "3", "--keep-daily", "7", "--until-pod-done",
    ]
    assert sidecar["volumeMounts"] == [{"name": "checkpoints", "mountPath": "/ckpt",
                                        "readOnly": True}]
    assert {"name": "CARGOHOLD_REPO", "value": "s3://bucket/snaps$x"} in sidecar["env"]
    assert sidecar["envFrom"] == [{"secretRef": {"name": "digits-mirror", "optional": True}}]
    assert sidecar["securityContext"] == {"allowPrivilegeEscalation": False}
    assert pod["shareProcessNamespace"] is True
    _validate(render_kubernetes(_plans()[0], image=IMAGE))
    _validate(render_kubernetes(_plans(SPEC.replace('user = "1000:1000"\n',
                                                    'user = "1000:1000"\nnodes = 3\n', 1))[0],
                                image=IMAGE))


def test_with_several_nodes_only_pod_0_snapshots(tmp_path: Path) -> None:
    sidecar = next(c for c in _pod(3)["containers"] if c["name"] == "snapshots-checkpoints")
    command = sidecar["command"]
    assert command[:2] == ["sh", "-c"] and "args" not in sidecar
    assert command[4:7] == ["cargohold", "snapshot", "/ckpt"]
    assert command[-1] == "--until-pod-done"
    script = [*command[:4], "echo", "snapshotting", "s3://bucket/snaps$x"]
    env = {"PATH": os.environ["PATH"]}
    one = subprocess.run(script, env={**env, "JOB_COMPLETION_INDEX": "1"},
                         capture_output=True, text=True, timeout=30)
    assert one.returncode == 0 and "pod 0 snapshots the shared store" in one.stdout
    zero = subprocess.run(script, env={**env, "JOB_COMPLETION_INDEX": "0"},
                          capture_output=True, text=True, timeout=30)
    assert zero.stdout == "snapshotting s3://bucket/snaps$x\n"  # values stay arguments


def test_sidecars_do_not_wait_for_each_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod with the mirror and the snapshot sidecar: each must see only the job."""
    from cargohold import mirror

    cmdlines = {
        1: "/pause ",
        7: "python3 train.py ",
        8: "/usr/bin/python3 /usr/local/bin/cargohold mirror --until-pod-done ",
        9: "/usr/bin/python3 /usr/local/bin/cargohold snapshot /ckpt --until-pod-done ",
    }

    class Entry:
        def __init__(self, pid: int) -> None:
            self.name = str(pid)

    monkeypatch.setattr(mirror, "_cmdline", lambda pid: cmdlines.get(pid, ""))
    monkeypatch.setattr(mirror, "_state", lambda pid: "S" if pid in cmdlines else "")
    monkeypatch.setattr(mirror.os, "scandir", lambda _: [Entry(p) for p in cmdlines])
    assert mirror.others_alive({9}) is True
    del cmdlines[7]  # the job has ended
    assert mirror.others_alive({9}) is False
    assert mirror.others_alive({8}) is False


def test_the_pod_watch_stops_once_the_job_has_come_and_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """mirror.stop_when_pod_done, which both sidecars use: not before the job was seen, then
    as soon as it is gone; and it says so (and leaves the stop to a signal) when the process
    namespace is not shared."""
    import threading

    from cargohold import mirror

    answers = iter([False, True, True, False])
    monkeypatch.setattr(mirror, "others_alive", lambda: next(answers, False))
    stop = threading.Event()
    mirror.stop_when_pod_done(stop, lambda: None, poll=0.01).join(timeout=5)
    assert stop.is_set() and next(answers, "done") == "done"  # all four answers were used

    monkeypatch.setattr(mirror, "others_alive", lambda: False)  # the job never shows up
    stop = threading.Event()
    mirror.stop_when_pod_done(stop, lambda: None, grace=0.05, poll=0.01).join(timeout=5)
    assert stop.is_set()

    said: list[str] = []
    monkeypatch.setattr(mirror, "others_alive", lambda: None)  # not a shared namespace
    stop = threading.Event()
    mirror.stop_when_pod_done(stop, lambda: said.append("unshared"), poll=0.01).join(timeout=5)
    assert not stop.is_set() and said == ["unshared"]


# -- the command the sidecar runs -------------------------------------------------------------


def test_scheduled_snapshots_of_a_mounted_volume_are_the_volumes(tmp_path: Path) -> None:
    """What the sidecar runs, for ~3.5 s: snapshots recorded as the volume's, retention applied
    to them, and SIGTERM (docker stop) ends it cleanly after the run under way."""
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    (mounted / "weights.bin").write_bytes(os.urandom(4096))
    repo = tmp_path / "repo"
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONUNBUFFERED": "1"}
    env.pop("CARGOHOLD_REPO", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cargohold", "snapshot", str(mounted), "--as-volume", "digits-ckpt",
         "--every", "1s", "--keep-last", "2", "--repo", str(repo)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(3.5)
        (mounted / "later.txt").write_text("written while it ran")
        time.sleep(1.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "failed" not in stderr, stderr
    runs = [line for line in stdout.splitlines() if line.startswith("run ")]
    assert len(runs) >= 3, stdout
    assert "(snapshots of digits-ckpt)" in runs[-1] and "kept 2," in runs[-1]
    assert "stopped after" in stdout.splitlines()[-1]
    listed = run_cli("snapshots", "--json", "--repo", str(repo))
    snaps = json.loads(listed.stdout)
    assert len(snaps) == 2 and {s["volume"] for s in snaps} == {"digits-ckpt"}
    assert {s["kind"] for s in snaps} == {"volume"}
    # The name the host uses finds them: VOLUME@latest, with what was written last.
    back = tmp_path / "back"
    restored = run_cli("restore", "digits-ckpt@latest", "--to", str(back), "--repo", str(repo))
    assert restored.returncode == 0, restored.stderr
    assert (back / "later.txt").read_text() == "written while it ran"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["some-volume", "--as-volume", "v"], "the source is a volume already"),
        (["./folder", "--as-volume", "a/b"], "not a Docker volume name"),
        (["./folder", "--keep-last", "2"], "go with --every"),
        (["./folder", "--every", "1s", "--keep-daily", "-1"], "--keep-daily"),
    ],
)
def test_bad_snapshot_options_are_one_clear_message(
    tmp_path: Path, args: list[str], fragment: str
) -> None:
    (tmp_path / "folder").mkdir()
    result = run_cli("snapshot", *args, "--repo", str(tmp_path / "repo"), cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "repo").exists()
