"""Kubernetes and Swarm renderings: golden files, schema validation, and every field's value.

No cluster exists on these machines: manifests are validated with ``kubernetes-validate --strict``
against the oldest and newest Kubernetes it ships schemas for, and each field is asserted.
Set CARGOHOLD_UPDATE_GOLDEN=1 to rewrite the golden files after an intended change.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cargohold.errors import SpecError
from cargohold.plan import Plan, make_plan
from cargohold.render._limits import TARGETS, check_limits, limits_of
from cargohold.render._mirror import STATUS_PATH
from cargohold.render.kubernetes import dns_name, dump_kubernetes, quantity, render_kubernetes
from cargohold.render.swarm import render_swarm
from cargohold.spec import parse_spec
from tests.conftest import run_cli
from tests.unit.test_render import _golden

CLUSTER = """
[project]
name = "digits"

[stores.dataset]
kind = "dataset"
target = "/data"
repository = "s3://bucket/repo"
snapshot = "digits-dataset@latest"
storage_class = "nfs-client"
capacity = "20g"

[stores.checkpoints]
kind = "checkpoints"
target = "/ckpt"
mirror = "s3://bucket/mirror"

[stores.cache]
kind = "cache"
target = "/cache"
driver = "local"
driver_opts = { type = "nfs", o = "addr=10.0.0.1", device = ":/export" }

[stores.tmp]
kind = "scratch"
target = "/scratch"
size = "2g"

[jobs.train]
image = "registry.example.com/digits:1"
command = ["torchrun", "train.py", "--lr", "$LR"]
shm_size = "1g"
restart = { max = 3 }
placement = ["node.labels.gpu==true", "node.hostname!=old-box"]
user = "1000:1000"
env = { LR = "0.1" }
gpus = 2
stop_timeout = 300
secrets = ["HF_TOKEN"]
resources = { cpus = 4, memory = "16g" }
"""
IMAGE = "registry.example.com/cargohold:1"


def _plan(text: str = CLUSTER, job: str | None = None) -> Plan:
    return make_plan(parse_spec(text, base_dir=Path("/p")), job, host_user=(1000, 1000))


def _nodes(n: int) -> str:
    return CLUSTER.replace("restart = { max = 3 }", f"restart = {{ max = 3 }}\nnodes = {n}")


def _objects(text: str = CLUSTER) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in render_kubernetes(_plan(text), image=IMAGE)}


def _validate(objects: list[dict[str, Any]]) -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    shipped = sorted(
        (p.name.split("-")[0].lstrip("v") for p in _schema_dir().iterdir()),
        key=lambda v: tuple(int(x) for x in v.split(".")),
    )
    for version in {shipped[0], latest_version()}:
        for obj in objects:
            kubernetes_validate.validate(obj, version, strict=True)


def _schema_dir() -> Path:
    import kubernetes_validate

    return Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"


def test_kubernetes_golden() -> None:
    objects = render_kubernetes(_plan(_nodes(2)), image=IMAGE)
    text = dump_kubernetes(objects)
    _golden("kubernetes.yml", text)
    assert list(yaml.safe_load_all(text)) == objects  # the literal blocks read back exactly


def test_swarm_golden() -> None:
    _golden("swarm.yml", yaml.safe_dump(render_swarm([_plan()]), sort_keys=False))


@pytest.mark.parametrize("nodes", [1, 4])
def test_kubernetes_validates_strictly_on_oldest_and_newest(nodes: int) -> None:
    _validate(render_kubernetes(_plan(_nodes(nodes)), image=IMAGE))


def test_a_schema_error_is_caught_by_the_validation() -> None:
    import kubernetes_validate

    objects = render_kubernetes(_plan(), image=IMAGE)
    job = objects[-1]
    job["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1  # not a Kubernetes field
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(objects)


def test_kubernetes_job_fields() -> None:
    objects = _objects()
    job = objects["Job"]
    assert job["metadata"]["name"] == "digits-train"
    assert job["spec"]["backoffLimit"] == 3
    assert "completionMode" not in job["spec"]  # one node: a plain Job
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"] == {
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "fsGroupChangePolicy": "OnRootMismatch",
    }
    train = pod["containers"][0]
    assert train["image"] == "registry.example.com/digits:1"
    assert train["args"] == ["torchrun", "train.py", "--lr", "$LR"]
    security = train["securityContext"]
    assert security["allowPrivilegeEscalation"] is False  # no-new-privileges
    assert "NET_RAW" in security["capabilities"]["drop"]  # the plan's hardening
    assert train["resources"] == {"limits": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"}}
    assert pod["terminationGracePeriodSeconds"] == 300
    token = next(e for e in train["env"] if e["name"] == "HF_TOKEN")
    assert token == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "digits-secrets", "key": "HF_TOKEN"}},
    }
    env = {e["name"]: e.get("value") for e in train["env"]}
    assert env["CARGOHOLD_CHECKPOINT_DIR"] == "/ckpt"
    assert env["CARGOHOLD_STORE_DATASET"] == "/data"
    assert env["HF_HOME"] == "/cache/huggingface"
    assert env["LR"] == "0.1"
    mounts = {m["mountPath"]: m for m in train["volumeMounts"]}
    assert mounts["/data"].get("readOnly") is True and mounts["/data"]["subPath"] == "content"
    assert "readOnly" not in mounts["/ckpt"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}}
    assert volumes["checkpoints"]["persistentVolumeClaim"] == {"claimName": "digits-checkpoints"}
    expressions = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"]
    assert expressions == [
        {"key": "gpu", "operator": "In", "values": ["true"]},
        {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["old-box"]},
    ]


def test_kubernetes_claims() -> None:
    claims = [
        o for o in render_kubernetes(_plan(), image=IMAGE) if o["kind"] == "PersistentVolumeClaim"
    ]
    by_name = {c["metadata"]["name"]: c["spec"] for c in claims}
    assert set(by_name) == {"digits-dataset", "digits-checkpoints", "digits-cache"}
    assert by_name["digits-dataset"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "20Gi"}},
        "storageClassName": "nfs-client",
    }
    assert by_name["digits-checkpoints"]["resources"]["requests"]["storage"] == "10Gi"
    # Several pods of one job share a claim: it must be ReadWriteMany.
    objects = render_kubernetes(_plan(_nodes(3)), image=IMAGE)
    shared = [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert {tuple(c["spec"]["accessModes"]) for c in shared} == {("ReadWriteMany",)}


def test_kubernetes_indexed_job_and_headless_service() -> None:
    objects = _objects(_nodes(4))
    job, service = objects["Job"], objects["Service"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] == "digits-train"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == job["spec"]["template"]["metadata"]["labels"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["CARGOHOLD_RDZV_ENDPOINT"] == "digits-train-0.digits-train:29500"
    assert env["CARGOHOLD_NODES"] == "4"


def test_kubernetes_restore_and_mirror_containers() -> None:
    pod = _objects()["Job"]["spec"]["template"]["spec"]
    restore, mirror_restore = pod["initContainers"]
    assert restore["image"] == IMAGE
    # Restored into a folder of the claim (a mount point cannot be swapped in), which the job
    # mounts read-only through subPath.
    assert restore["command"][-2:] == ["digits-dataset@latest", "/cargohold-restore/dataset"]
    assert {"name": "CARGOHOLD_REPO", "value": "s3://bucket/repo"} in restore["env"]
    assert restore["volumeMounts"] == [
        {"name": "dataset", "mountPath": "/cargohold-restore/dataset"}
    ]
    train_mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert train_mounts["/data"] == {
        "name": "dataset",
        "mountPath": "/data",
        "subPath": "content",
        "readOnly": True,
    }
    assert mirror_restore["args"] == ["cargohold", "mirror", "--restore-only"]
    sidecar = pod["containers"][1]
    assert sidecar["args"] == ["cargohold", "mirror", "--until-pod-done"]
    assert sidecar["volumeMounts"][0]["readOnly"] is True
    assert pod["shareProcessNamespace"] is True
    assert sidecar["envFrom"] == [{"secretRef": {"name": "digits-mirror", "optional": True}}]
    # The user's values stay literal: the restore script gets them as arguments, not as code.
    assert "digits-dataset@latest" not in restore["command"][2]


def test_no_secret_reaches_a_rendering() -> None:
    with pytest.raises(SpecError) as caught:
        _plan(CLUSTER.replace("s3://bucket/mirror", "s3://KEY:SECRET@bucket/mirror"))
    assert caught.value.key == "stores.checkpoints.mirror"


def test_swarm_fields() -> None:
    stack = render_swarm([_plan()])
    assert stack["version"] == "3.8"
    service = stack["services"]["train"]
    assert service["entrypoint"] == ["cargohold", "mirror", "--exec", "--"]
    # docker stack deploy interpolates $: the spec's own dollars are escaped.
    assert service["command"] == ["torchrun", "train.py", "--lr", "$$LR"]
    assert service["deploy"]["restart_policy"] == {"condition": "on-failure", "max_attempts": 3}
    assert service["deploy"]["placement"] == {
        "constraints": ["node.labels.gpu==true", "node.hostname!=old-box"]
    }
    assert {"type": "tmpfs", "target": "/dev/shm", "tmpfs": {"size": 1024**3}} in service["volumes"]
    assert "shm_size" not in service
    assert service["stop_grace_period"] == "300s"
    assert "CAP_NET_RAW" in service["cap_drop"]
    assert service["deploy"]["resources"] == {
        "limits": {"cpus": "4", "memory": str(16 * 1024**3)},
        "reservations": {
            "generic_resources": [{"discrete_resource_spec": {"kind": "NVIDIA-GPU", "value": 2}}]
        },
    }
    env = service["environment"]
    assert env["HF_TOKEN"] == "${HF_TOKEN}"  # from the deploying shell, never in the file
    assert env["CARGOHOLD_MIRROR"] == "s3://bucket/mirror"
    assert env["AWS_SECRET_ACCESS_KEY"] == "${AWS_SECRET_ACCESS_KEY:-}"
    assert stack["volumes"]["cache"]["driver_opts"] == {
        "device": ":/export",
        "o": "addr=10.0.0.1",
        "type": "nfs",
    }
    assert stack["volumes"]["checkpoints"]["name"] == "digits-checkpoints"


def test_swarm_host_network_and_init() -> None:
    text = CLUSTER.replace("gpus = 2", 'gpus = 2\nnetwork = "host"\ninit = true')
    stack = render_swarm([_plan(text)])
    assert stack["services"]["train"]["networks"] == ["hostnet"]
    assert stack["networks"] == {"hostnet": {"external": True, "name": "host"}}
    assert stack["services"]["train"]["init"] is True


@pytest.mark.parametrize("gpus", ['"all"', '["0", "1"]'])
@pytest.mark.parametrize("target", ["kubernetes", "swarm"])
def test_gpus_a_cluster_cannot_schedule_are_refused(gpus: str, target: str) -> None:
    with pytest.raises(SpecError) as caught:
        check_limits(_plan(CLUSTER.replace("gpus = 2", f"gpus = {gpus}")), target)
    assert caught.value.key == "jobs.train.gpus"


def test_swarm_without_restart_does_not_restart() -> None:
    stack = render_swarm([_plan(CLUSTER.replace("restart = { max = 3 }", ""))])
    assert stack["services"]["train"]["deploy"]["restart_policy"] == {"condition": "none"}


def test_swarm_stack_passes_the_compose_file_schema() -> None:
    import check_jsonschema
    import jsonschema

    # docker stack deploy checks a 3.x file against the v3 schema; the Compose Specification is
    # its superset and the closest one shipped here.
    path = Path(check_jsonschema.__file__).parent / "builtin_schemas/vendor/compose-spec.json"
    jsonschema.validate(render_swarm([_plan()]), json.loads(path.read_text()))


@pytest.mark.parametrize("target", ["swarm", "docker-run", "compose"])
def test_nodes_is_refused_where_it_cannot_be_expressed(target: str) -> None:
    with pytest.raises(SpecError) as caught:
        check_limits(_plan(_nodes(2)), target)
    assert caught.value.key == "jobs.train.nodes"


def test_every_target_states_what_it_does_instead() -> None:
    plan = _plan()
    said = {target: [limit.key for limit in limits_of(plan, target)] for target in TARGETS}
    assert "stores.cache.driver" in said["kubernetes"]
    assert "jobs.train.shm_size" in said["swarm"]
    assert "stores.checkpoints.mirror" in said["swarm"]
    assert "stores.dataset.snapshot" in said["swarm"]
    assert "stores.dataset.storage_class" in said["compose"]
    assert "jobs.train.placement" in said["docker-run"]
    assert "jobs.train.secrets" in said["kubernetes"]
    assert "jobs.train.ulimits" in said["kubernetes"]  # NCCL's memlock, set because of gpus


def test_unknown_placement_fields_are_refused_on_kubernetes() -> None:
    plan = _plan(CLUSTER.replace('"node.hostname!=old-box"', '"node.role==manager"'))
    with pytest.raises(SpecError, match=r"node\.role==manager"):
        check_limits(plan, "kubernetes")


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('mirror = "s3://b/m"\n', "stores.dataset.mirror"),
        ('placement = ["gpu"]\n', "jobs.train.placement"),
        ("nodes = 0\n", "jobs.train.nodes"),
    ],
)
def test_bad_cluster_keys_name_themselves(line: str, key: str) -> None:
    text = CLUSTER.replace('placement = ["node.labels.gpu==true", "node.hostname!=old-box"]\n', "")
    table = "[jobs.train]\n" if key.startswith("jobs") else "[stores.dataset]\n"
    with pytest.raises(SpecError) as caught:
        _plan(text.replace(table, table + line))
    assert caught.value.key == key


def test_names_become_dns_labels() -> None:
    assert dns_name("My_Project.v2-train") == "my-project-v2-train"
    long = dns_name("x" * 100)
    assert len(long) == 52 and long != dns_name("x" * 101)
    assert quantity(3 * 1024**3) == "3Gi" and quantity(1000) == "1000"


def test_cli_renders_with_comments_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "cargohold.toml").write_text(CLUSTER)
    result = run_cli("render", "kubernetes", "--image", IMAGE, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "# What this target cannot express" in result.stdout
    assert "stores.cache.driver" in result.stdout
    _validate(list(yaml.safe_load_all(result.stdout)))
    result = run_cli("render", "swarm", "-o", str(tmp_path / "stack.yml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "moby#26714" in (tmp_path / "stack.yml").read_text()
    (tmp_path / "cargohold.toml").write_text(_nodes(2))
    result = run_cli("render", "swarm", cwd=tmp_path)
    assert result.returncode == 2
    assert "jobs.train.nodes" in result.stderr and "Traceback" not in result.stderr


def test_plan_and_one_host_renders_say_the_limits_too(tmp_path: Path) -> None:
    (tmp_path / "cargohold.toml").write_text(_nodes(2))
    planned = run_cli("plan", "--json", cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    limits = json.loads(planned.stdout)["limits"]
    assert {"key": "jobs.train.nodes", "fatal": True}.items() <= limits["swarm"][0].items()
    assert not any(x["fatal"] for x in limits["kubernetes"])
    text = run_cli("plan", cwd=tmp_path).stdout
    assert "refused swarm: jobs.train.nodes" in text
    (tmp_path / "cargohold.toml").write_text(CLUSTER)
    line = run_cli("render", "docker-run", cwd=tmp_path).stdout
    assert line.startswith("# jobs.train.placement: placement")
    compose = run_cli("render", "compose", cwd=tmp_path).stdout
    assert "# train: stores.checkpoints.mirror:" in compose


def test_plan_of_a_one_host_job_counts_the_cluster_notes_and_lists_them_on_request(
    tmp_path: Path,
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "cargohold.toml").write_text(
        '[project]\nname = "p"\n[stores.data]\nkind = "dataset"\nsource = "./data"\n'
        'target = "/data"\n'
        '[jobs.train]\nimage = "python:3.11-slim"\ncommand = ["true"]\n'
    )
    short = run_cli("plan", cwd=tmp_path)
    assert short.returncode == 0, short.stderr
    assert "note swarm" not in short.stdout and "note kubernetes" not in short.stdout
    counted = [line for line in short.stdout.splitlines() if "cluster renderings:" in line]
    assert len(counted) == 1 and "plan --cluster" in counted[0]
    full = run_cli("plan", "--cluster", cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    listed = {line.split(":")[0].strip() for line in full.stdout.splitlines()
              if line.strip().startswith("note ")}
    assert listed == {"note swarm", "note kubernetes"}
    swarm = sum("note swarm" in line for line in full.stdout.splitlines())
    assert f"swarm {swarm} note" in counted[0]


def test_compose_runs_the_mirror_beside_the_job(tmp_path: Path) -> None:
    import subprocess

    import jsonschema

    from cargohold.render import render_compose
    from tests.unit.test_render import _compose_binary, _compose_schema

    text = CLUSTER.replace(
        'repository = "s3://bucket/repo"\nsnapshot = "digits-dataset@latest"\n', ""
    )
    plan = _plan(text)
    document = render_compose([plan], mirror_image=IMAGE)
    services = document["services"]
    restore, mirror, job = (
        services["train-mirror-restore"],
        services["train-mirror"],
        services["train"],
    )
    assert restore["command"] == ["cargohold", "mirror", "--restore-only"]
    # `cargohold ps` reads what the mirror last did from this file in its container.
    assert mirror["command"] == ["cargohold", "mirror", "--status-file", STATUS_PATH]
    assert mirror["labels"]["cargohold.role"] == "mirror"
    assert restore["image"] == mirror["image"] == IMAGE
    assert restore["user"] == mirror["user"] == "1000:1000"
    assert job["depends_on"] == {
        "train-mirror-restore": {"condition": "service_completed_successfully"}
    }
    assert restore["depends_on"] == {
        "train-prepare": {"condition": "service_completed_successfully"}
    }
    assert mirror["volumes"] == [
        {"type": "volume", "source": "checkpoints", "target": "/ckpt", "read_only": True}
    ]
    # Credentials from the shell running Compose; the spec's own dollars stay literal.
    assert mirror["environment"]["AWS_SECRET_ACCESS_KEY"] == "${AWS_SECRET_ACCESS_KEY:-}"
    assert job["command"][-1] == "$$LR"
    jsonschema.validate(document, _compose_schema())
    compose_file = tmp_path / "compose.yml"
    compose_file.write_text(yaml.safe_dump(document, sort_keys=False))
    resolved = subprocess.run(
        [_compose_binary(), "-f", str(compose_file), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "AWS_SECRET_ACCESS_KEY": "from-the-shell"},
    )
    assert resolved.returncode == 0, resolved.stderr
    config = json.loads(resolved.stdout)["services"]
    assert config["train-mirror"]["environment"]["AWS_SECRET_ACCESS_KEY"] == "from-the-shell"
    # Without the image, no mirror services: the golden compose file stays as it was.
    assert "train-mirror" not in render_compose([plan])["services"]


# -- the restore initContainers' scripts, run by sh with the real CLI (no Docker: see
# tests/integration/test_cluster.py for the same scripts in the cargohold image) -------------


def _script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    import os
    import sys

    from tests.conftest import SRC

    bin_dir = tmp_path / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        shim = bin_dir / "cargohold"
        shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m cargohold "$@"\n')
        shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARGOHOLD_", "JOB_"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(SRC)
    return {**env, **extra}


def _init(nodes: int = 1) -> list[dict[str, Any]]:
    pod = _objects(_nodes(nodes) if nodes > 1 else CLUSTER)["Job"]["spec"]["template"]["spec"]
    containers: list[dict[str, Any]] = pod["initContainers"]
    return containers


def _run_script(
    container: dict[str, Any], env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    command = container["command"]
    assert command[:2] == ["sh", "-c"]
    return subprocess.run(
        [*command[:4], *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def dataset_repo(tmp_path: Path) -> tuple[str, str]:
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "train" / "0.csv").write_text("x,y\n1,2\n")
    repo = tmp_path / "repo"
    made = run_cli("snapshot", str(data), "--repo", str(repo), "--tag", "v1")
    assert made.returncode == 0, made.stderr
    return str(repo), "v1"


def _dataset_run(
    tmp_path: Path, repo: str, snap: str, claim: Path, nodes: int = 1, **env: str
) -> subprocess.CompletedProcess[str]:
    restore = _init(nodes)[0]
    return _run_script(restore, _script_env(tmp_path, CARGOHOLD_REPO=repo, **env), snap, str(claim))


def _assert_retry_finished(tmp_path: Path, repo: str, snap: str, claim: Path) -> None:
    """The retried pod finishes the restore: the whole dataset, only it, and its record."""
    result = _dataset_run(tmp_path, repo, snap, claim)
    assert result.returncode == 0, result.stderr
    assert "finishing an interrupted restore of v1" in result.stdout
    assert sorted(p.name for p in (claim / "content").iterdir()) == ["train"]
    assert (claim / "content" / "train" / "0.csv").read_text() == "x,y\n1,2\n"
    assert (claim / ".cargohold-restored").exists()


def test_dataset_script_restores_once_then_recognises_its_restore(
    tmp_path: Path, dataset_repo: tuple[str, str]
) -> None:
    repo, snap = dataset_repo
    claim = tmp_path / "claim"
    claim.mkdir()
    first = _dataset_run(tmp_path, repo, snap, claim)
    assert first.returncode == 0, first.stderr
    assert (claim / "content" / "train" / "0.csv").read_text() == "x,y\n1,2\n"
    record = (claim / ".cargohold-restored").read_text()
    assert record == f"cargohold-restore 1\nrepository {repo}\nsnapshot {snap}\n"
    again = _dataset_run(tmp_path, repo, snap, claim)
    assert again.returncode == 0, again.stderr
    assert "already holds v1; not restoring" in again.stdout


def test_dataset_script_finishes_a_restore_killed_midway(
    tmp_path: Path, dataset_repo: tuple[str, str]
) -> None:
    """What a pod killed mid-restore leaves: its start record, cargohold's state file and a
    half-written staging folder. The old script saw a non-empty claim and skipped the restore."""
    repo, snap = dataset_repo
    claim = tmp_path / "claim"
    staging = claim / "content" / ".cargohold-restore.staging" / "train"
    staging.mkdir(parents=True)
    (staging / "0.csv").write_text("x,")
    (claim / "content" / ".cargohold-restore.json").write_text(
        json.dumps({"snapshot": "0" * 64, "phase": "writing"})
    )
    (claim / ".cargohold-restoring").write_text(
        f"cargohold-restore 1\nrepository {repo}\nsnapshot {snap}\n"
    )
    _assert_retry_finished(tmp_path, repo, snap, claim)


def test_dataset_script_refuses_data_it_did_not_restore(
    tmp_path: Path, dataset_repo: tuple[str, str]
) -> None:
    repo, snap = dataset_repo
    claim = tmp_path / "claim"
    (claim / "content").mkdir(parents=True)
    (claim / "content" / "mine.txt").write_text("precious")
    result = _dataset_run(tmp_path, repo, snap, claim)
    assert result.returncode == 1
    assert "holds data cargohold did not restore; not using it as v1" in result.stderr
    assert (claim / "content" / "mine.txt").read_text() == "precious"
    assert not (claim / ".cargohold-restored").exists()
    assert not (claim / ".cargohold-restoring").exists()


@pytest.mark.parametrize("record", [".cargohold-restored", ".cargohold-restoring"])
def test_dataset_script_refuses_a_claim_of_another_snapshot(
    tmp_path: Path, dataset_repo: tuple[str, str], record: str
) -> None:
    repo, snap = dataset_repo
    claim = tmp_path / "claim"
    (claim / "content").mkdir(parents=True)
    (claim / "content" / "old.csv").write_text("old")
    (claim / record).write_text(f"cargohold-restore 1\nrepository {repo}\nsnapshot v0\n")
    result = _dataset_run(tmp_path, repo, snap, claim)
    assert result.returncode == 1
    assert "holds another restore than v1" in result.stderr
    assert "delete the claim" in result.stderr
    assert (claim / "content" / "old.csv").read_text() == "old"


def test_dataset_script_other_pods_wait_for_index_0(
    tmp_path: Path, dataset_repo: tuple[str, str]
) -> None:
    repo, snap = dataset_repo
    claim = tmp_path / "claim"
    claim.mkdir()
    # Nothing restored yet: pod 1 restores nothing itself, and its wait is bounded.
    timed_out = _dataset_run(
        tmp_path, repo, snap, claim, nodes=2, JOB_COMPLETION_INDEX="1", CARGOHOLD_RESTORE_WAIT="0"
    )
    assert timed_out.returncode == 1
    assert "pod 0 did not finish the restore of v1 within 0s" in timed_out.stderr
    assert list(claim.iterdir()) == []
    # Pod 1 waits while pod 0 restores, then starts.
    env = _script_env(
        tmp_path, CARGOHOLD_REPO=repo, JOB_COMPLETION_INDEX="1", CARGOHOLD_RESTORE_WAIT="60"
    )
    restore = _init(2)[0]
    waiter = subprocess.Popen(
        [*restore["command"][:4], snap, str(claim)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        zero = _dataset_run(tmp_path, repo, snap, claim, nodes=2, JOB_COMPLETION_INDEX="0")
        assert zero.returncode == 0, zero.stderr
        out, err = waiter.communicate(timeout=30)
    finally:
        waiter.kill()
        waiter.wait()
    assert waiter.returncode == 0, err
    assert "pod 0 finished the restore of v1; starting" in out
    # A foreign record makes a waiting pod fail at once, not after the whole wait.
    other = tmp_path / "other"
    other.mkdir()
    (other / ".cargohold-restored").write_text("cargohold-restore 1\nrepository x\nsnapshot y\n")
    foreign = _dataset_run(tmp_path, repo, snap, other, nodes=2, JOB_COMPLETION_INDEX="1")
    assert foreign.returncode == 1
    assert "holds another restore than v1" in foreign.stderr


def test_mirror_restore_script_only_index_0_restores(tmp_path: Path) -> None:
    init = _init(2)
    mirror_restore = init[1]
    assert mirror_restore["name"] == "mirror-restore"
    env_names = {e["name"]: e for e in mirror_restore["env"]}
    assert env_names["CARGOHOLD_JOB_UID"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.labels['controller-uid']"}
    }
    # A mirror holding one checkpoint, pushed by the real `cargohold mirror`.
    from cargohold.checkpoint import CheckpointManager

    written = tmp_path / "written"
    manager = CheckpointManager(written, keep_last=0, warn_ephemeral=False)
    manager.save(1, {"w.bin": b"weights" * 100})
    manager.close()
    mirror = tmp_path / "mirror"
    pushed = run_cli("mirror", "--once", "--dir", str(written), "--to", str(mirror))
    assert pushed.returncode == 0, pushed.stderr
    store = tmp_path / "ckpt"
    store.mkdir()
    # An earlier Job's record is stale: pod 1 keeps waiting for this Job's (bounded).
    (store / ".cargohold-mirror-restored").write_text("cargohold-mirror-restore 1\njob old\n")
    base = {
        "CARGOHOLD_CHECKPOINT_DIR": str(store),
        "CARGOHOLD_MIRROR": str(mirror),
        "CARGOHOLD_PROJECT": "digits",
        "CARGOHOLD_JOB": "train",
        "CARGOHOLD_JOB_UID": "uid-2",
    }
    waited = _run_script(
        mirror_restore,
        _script_env(tmp_path, **base, JOB_COMPLETION_INDEX="1", CARGOHOLD_RESTORE_WAIT="2"),
    )
    assert waited.returncode == 1
    assert "pod 0 did not finish the checkpoint restore within 2s" in waited.stderr
    assert [p.name for p in store.iterdir()] == [
        ".cargohold-mirror-restored"
    ]  # pod 1 restored nothing
    zero = _run_script(mirror_restore, _script_env(tmp_path, **base, JOB_COMPLETION_INDEX="0"))
    assert zero.returncode == 0, zero.stderr
    assert (store / "step-0000000001" / "w.bin").read_bytes() == b"weights" * 100
    assert (store / ".cargohold-mirror-restored").read_text() == (
        "cargohold-mirror-restore 1\njob uid-2\n"
    )
    one = _run_script(mirror_restore, _script_env(tmp_path, **base, JOB_COMPLETION_INDEX="1"))
    assert one.returncode == 0, one.stderr
    assert "pod 0 finished the checkpoint restore; starting" in one.stdout
    no_uid = _run_script(mirror_restore, _script_env(tmp_path, **{**base, "CARGOHOLD_JOB_UID": ""}))
    assert no_uid.returncode == 1
    assert "no controller-uid label" in no_uid.stderr


def test_restore_containers_know_their_index_only_with_several_nodes() -> None:
    one, several = _init(1), _init(3)
    assert {e["name"] for e in one[0]["env"]} == {"CARGOHOLD_REPO"}
    assert one[1]["args"] == ["cargohold", "mirror", "--restore-only"]
    index = {
        "name": "JOB_COMPLETION_INDEX",
        "valueFrom": {
            "fieldRef": {
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
            }
        },
    }
    for container in several:
        assert index in container["env"]
        assert {"name": "CARGOHOLD_RESTORE_WAIT", "value": "21600"} in container["env"]


def test_with_several_nodes_only_index_0_runs_the_mirror_sidecar(tmp_path: Path) -> None:
    import os

    pod = _objects(_nodes(2))["Job"]["spec"]["template"]["spec"]
    sidecar = pod["containers"][1]
    assert sidecar["name"] == "mirror" and "args" not in sidecar
    assert sidecar["volumeMounts"][0]["readOnly"] is True
    # A stand-in `cargohold` that says how it was called (the real sidecar runs until the pod
    # ends); what matters here is which pod execs it.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "cargohold").write_text('#!/bin/sh\necho "called: $*"\n')
    (bin_dir / "cargohold").chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    one = _run_script(sidecar, {**env, "JOB_COMPLETION_INDEX": "1"})
    assert one.returncode == 0, one.stderr
    assert "pod 0 mirrors the shared checkpoint store" in one.stdout
    assert "called" not in one.stdout
    zero = _run_script(sidecar, {**env, "JOB_COMPLETION_INDEX": "0"})
    assert zero.returncode == 0, zero.stderr
    assert zero.stdout == "called: mirror --until-pod-done\n"


def test_dataset_script_redoes_a_restore_killed_before_its_record(
    tmp_path: Path, dataset_repo: tuple[str, str]
) -> None:
    """Killed after `cargohold restore` ended but before the completion record: the start
    record says the content is this restore's, so it is restored again (not refused)."""
    repo, snap = dataset_repo
    claim = tmp_path / "claim"
    claim.mkdir()
    assert _dataset_run(tmp_path, repo, snap, claim).returncode == 0
    (claim / ".cargohold-restored").unlink()
    (claim / "content" / "train" / "0.csv").write_text("damaged")
    _assert_retry_finished(tmp_path, repo, snap, claim)


def test_dataset_script_does_not_restore_through_a_symlink(
    tmp_path: Path, dataset_repo: tuple[str, str]
) -> None:
    repo, snap = dataset_repo
    claim, elsewhere = tmp_path / "claim", tmp_path / "elsewhere"
    claim.mkdir()
    elsewhere.mkdir()
    (claim / "content").symlink_to(elsewhere)
    result = _dataset_run(tmp_path, repo, snap, claim)
    assert result.returncode != 0
    assert "not a folder" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(elsewhere.iterdir()) == []
    assert not (claim / ".cargohold-restored").exists()


def _refused(text: str, target: str, tmp_path: Path) -> str:
    (tmp_path / "cargohold.toml").write_text(text)
    args = ["render", target] + (["--image", IMAGE] if target == "kubernetes" else [])
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, (target, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.mark.parametrize("mirror", ["s3:/bucket/x", "s3:bucket", "S3://bucket", "relative/dir"])
def test_a_mistyped_or_relative_mirror_is_a_spec_error(tmp_path: Path, mirror: str) -> None:
    (tmp_path / "cargohold.toml").write_text(
        CLUSTER.replace('mirror = "s3://bucket/mirror"', f'mirror = "{mirror}"')
    )
    result = run_cli("plan", cwd=tmp_path)
    assert result.returncode == 2 and "stores.checkpoints.mirror" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_mistyped_mirror_url_never_becomes_a_local_folder(tmp_path: Path) -> None:
    from cargohold.errors import UsageError
    from cargohold.mirror import Mirror

    with pytest.raises(UsageError, match="neither a URL nor a folder"):
        Mirror(tmp_path, "s3:/bucket/x")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_mirror_or_repository_is_mounted_from_the_node_and_said(
    tmp_path: Path,
) -> None:
    from cargohold.render import render_compose

    folder = tmp_path / "mirror"
    text = CLUSTER.replace('mirror = "s3://bucket/mirror"', f'mirror = "{folder}"')
    text = text.replace('repository = "s3://bucket/repo"', f'repository = "{folder}"')
    plan = _plan(text)
    for target in ("kubernetes", "swarm"):
        notes = check_limits(plan, target)
        assert any(f"mirror {folder} is a folder" in n and "every node" in n for n in notes)
    assert any(f"repository {folder} is a folder" in n for n in check_limits(plan, "kubernetes"))
    pod = _objects(text)["Job"]["spec"]["template"]["spec"]
    host = [v for v in pod["volumes"] if "hostPath" in v]
    assert {v["hostPath"]["path"] for v in host} == {str(folder)}
    named = {v["name"] for v in host}
    users = {c["name"]: c for c in [*pod["initContainers"], *pod["containers"]]}
    for name in ("mirror-restore", "mirror", "restore-dataset"):
        mounted = [m for m in users[name]["volumeMounts"] if m["name"] in named]
        assert [m["mountPath"] for m in mounted] == [str(folder)], name
    assert [m.get("readOnly") for m in users["restore-dataset"]["volumeMounts"]
            if m["name"] in named] == [True]
    swarm = render_swarm([plan])["services"]["train"]
    assert {"type": "bind", "source": str(folder), "target": str(folder)} in swarm["volumes"]
    services = render_compose([plan], mirror_image=IMAGE)["services"]
    bound = {"type": "bind", "source": str(folder), "target": str(folder),
             "bind": {"create_host_path": False}}
    assert bound in services["train-mirror"]["volumes"]
    assert bound in services["train-mirror-restore"]["volumes"]
    _validate(render_kubernetes(plan, image=IMAGE))


def test_kubernetes_names_that_collide_are_refused(tmp_path: Path) -> None:
    text = CLUSTER + '\n[stores.data_set]\nkind = "scratch"\ntarget = "/x"\n' \
        '[stores.data-set]\nkind = "scratch"\ntarget = "/y"\n'
    assert "both the Kubernetes pod volume 'data-set'" in _refused(text, "kubernetes", tmp_path)


def test_driver_options_without_a_driver_are_the_local_drivers_everywhere(
    tmp_path: Path,
) -> None:
    text = CLUSTER.replace('driver = "local"\n', "")
    plan = _plan(text)
    swarm = render_swarm([plan])
    assert swarm["volumes"]["cache"]["driver"] == "local"
    assert swarm["volumes"]["cache"]["driver_opts"]["type"] == "nfs"
    from cargohold.render import render_compose

    compose = render_compose([plan], mirror_image=IMAGE)
    assert compose["volumes"]["cache"]["driver_opts"]["device"] == ":/export"
    assert any("stores.cache.driver" in line for line in check_limits(plan, "kubernetes"))


def test_storage_class_of_an_external_claim_is_said_not_dropped() -> None:
    text = CLUSTER.replace(
        'storage_class = "nfs-client"', 'storage_class = "nfs-client"\nexternal = true'
    ).replace('repository = "s3://bucket/repo"\nsnapshot = "digits-dataset@latest"\n', "")
    notes = check_limits(_plan(text), "kubernetes")
    assert any("external" in line and "storage_class" in line for line in notes)


def test_a_seeded_volume_is_said_on_clusters_not_dropped(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    text = CLUSTER.replace(
        '[stores.tmp]', '[stores.seeded]\nkind = "dataset"\ntarget = "/seeded"\n'
        f'backing = "volume"\nsource = "{tmp_path / "data"}"\n\n[stores.tmp]'
    )
    plan = _plan(text)
    assert any(m.seed for m in plan.mounts)
    for target in ("kubernetes", "swarm"):
        notes = [n for n in check_limits(plan, target) if "stores.seeded.source" in n]
        assert notes and "not seeded" in notes[0], (target, check_limits(plan, target))
    assert not any("not seeded" in n for n in check_limits(plan, "compose"))


def test_host_ipc_on_a_cluster_still_gets_a_shared_memory_mount() -> None:
    """ipc = "host" uses the host's /dev/shm under Docker; pods and services cannot have it, so
    a GPU job there gets the 1 GiB it would get without host IPC, not Docker's 64 MB."""
    text = CLUSTER.replace('shm_size = "1g"\n', 'ipc = "host"\n')
    plan = _plan(text)
    assert plan.shm_size is None and plan.runtime.cluster_shm_size == 1 << 30
    pod = _objects(text)["Job"]["spec"]["template"]["spec"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}} in pod["volumes"]
    stack = render_swarm([plan])["services"]["train"]
    assert {"type": "tmpfs", "target": "/dev/shm", "tmpfs": {"size": 1 << 30}} in stack["volumes"]
    assert any("jobs.train.ipc" in n for n in check_limits(plan, "kubernetes"))


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('image = "--privileged"', "jobs.train.image"),
        ('image = ""', "jobs.train.image"),
        ('image = "a b"', "jobs.train.image"),
        ('workdir = "/w\\u0000x"', "jobs.train.workdir"),
        ("nodes = true", "jobs.train.nodes"),
        ('nodes = "4"', "jobs.train.nodes"),
    ],
)
def test_job_values_that_would_change_the_rendered_line_are_refused(line: str, key: str) -> None:
    text = CLUSTER
    if line.startswith("image"):
        text = text.replace('image = "registry.example.com/digits:1"\n', "")
    text = text.replace("[jobs.train]\n", f"[jobs.train]\n{line}\n")
    with pytest.raises(SpecError) as info:
        _plan(text)
    assert info.value.key == key


@pytest.mark.parametrize(
    ("mirror", "why"),
    [
        ("/var/run", "Docker socket"),
        ("/", "plain path"),
        ("/srv/../etc", "plain path"),
        ("/ckpt/mirror", "overlaps"),
        ("/data", "overlaps"),
    ],
)
def test_a_mirror_folder_that_would_expose_or_hide_something_is_refused(
    mirror: str, why: str
) -> None:
    with pytest.raises(SpecError, match=why):
        _plan(CLUSTER.replace('mirror = "s3://bucket/mirror"', f'mirror = "{mirror}"'))


def test_a_second_checkpoints_store_with_the_mirror_is_refused() -> None:
    text = CLUSTER + '\n[stores.more]\nkind = "checkpoints"\ntarget = "/more"\nmirror = "s3://b/x"\n'
    with pytest.raises(SpecError, match="checkpoints stores"):
        _plan(text)


def test_compose_services_a_job_name_would_replace_are_refused(tmp_path: Path) -> None:
    text = CLUSTER + '\n[jobs.train-mirror]\nimage = "registry.example.com/digits:1"\n'
    result = _refused(text, "compose", tmp_path)
    assert "'train-mirror' is wanted twice" in result


def test_two_folders_that_would_share_one_claim_are_refused(tmp_path: Path) -> None:
    import secrets
    import shutil

    short = Path("/tmp") / f"cg{secrets.token_hex(2)}"  # long paths get a hash: no clash
    try:
        for name in ("data_a", "data-a"):
            (short / name).mkdir(parents=True)
        text = CLUSTER + (
            f'\n[stores.one]\nkind = "dataset"\ntarget = "/one"\nsource = "{short / "data_a"}"\n'
            f'\n[stores.two]\nkind = "dataset"\ntarget = "/two"\nsource = "{short / "data-a"}"\n'
        )
        assert "both the Kubernetes claim" in _refused(text, "kubernetes", tmp_path)
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.mark.parametrize("target", ["kubernetes", "swarm", "compose"])
def test_an_output_that_is_no_file_or_the_spec_is_refused(tmp_path: Path, target: str) -> None:
    spec = tmp_path / "cargohold.toml"
    spec.write_text(CLUSTER.replace("nodes", "#nodes"))
    for output in ("", ".", str(tmp_path), "cargohold.toml"):
        result = run_cli("render", target, "-o", output, cwd=tmp_path)
        assert result.returncode == 2, (output, result.stderr)
        assert "Traceback" not in result.stderr
    assert spec.read_text() == CLUSTER.replace("nodes", "#nodes")


def test_small_settings_are_rendered_as_written_or_refused() -> None:
    # hardening = false: no allowPrivilegeEscalation: false on the job's container
    pod = _objects(CLUSTER.replace("[jobs.train]\n", "[jobs.train]\nhardening = false\n"))
    job = pod["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert "allowPrivilegeEscalation" not in job.get("securityContext", {})
    hardened = _objects()["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert hardened["securityContext"]["allowPrivilegeEscalation"] is False
    # Swarm expands {{…}} in environment values: said
    plan = _plan(CLUSTER.replace('env = { LR = "0.1" }', 'env = { LR = "0.1", T = "{{x}}" }'))
    assert any("jobs.train.env" in n and "template" in n for n in check_limits(plan, "swarm"))
    # values pasted into a shell line are quoted
    text = CLUSTER.replace('snapshot = "digits-dataset@latest"', 'snapshot = "$(reboot)"')
    notes = check_limits(_plan(text), "swarm")
    assert any("'$(reboot)'" in n for n in notes), notes
    for line, key in (
        ('user = "4294967296:0"', "jobs.train.user"),
        ("resources = { cpus = 0.0001 }", "jobs.train.resources.cpus"),
    ):
        with pytest.raises(SpecError) as info:
            _plan(CLUSTER.replace('user = "1000:1000"\n', "").replace(
                "resources = { cpus = 4, memory = \"16g\" }\n", "").replace(
                "[jobs.train]\n", f"[jobs.train]\n{line}\n"))
        assert info.value.key is not None and info.value.key.startswith(key)
    for bad in ('""', '"NFS Class!"'):
        with pytest.raises(SpecError) as info:
            _plan(CLUSTER.replace('storage_class = "nfs-client"', f"storage_class = {bad}"))
        assert info.value.key == "stores.dataset.storage_class"
