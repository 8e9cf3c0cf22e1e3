"""Planning: the default backing and mode of every kind, the reasons, env and user."""

from __future__ import annotations

from pathlib import Path

import pytest

from cargohold.errors import SpecError
from cargohold.plan import make_plan, store_env_name
from cargohold.spec import Backing, parse_spec

ALL_KINDS = """
[project]
name = "proj"

[stores.dataset]
kind = "dataset"
source = "./data"
target = "/data"

[stores.raw]
kind = "dataset"
target = "/raw"

[stores.checkpoints]
kind = "checkpoints"
target = "/ckpt"

[stores.models]
kind = "artifacts"
source = "./artifacts"
target = "/artifacts"

[stores.cache]
kind = "cache"
target = "/cache"

[stores.tmp]
kind = "scratch"
target = "/scratch"
size = "2g"

[stores.shared]
kind = "checkpoints"
target = "/shared"
volume = "team-ckpt"
external = true

[stores.nfs]
kind = "cache"
target = "/nfs"
driver = "local"
driver_opts = { type = "nfs", o = "addr=10.0.0.1", device = ":/export" }

[jobs.train]
image = "img"
command = ["python3", "train.py"]
shm_size = "1g"
restart = { max = 2 }
env = { HF_HOME = "/elsewhere" }

[jobs.eval]
image = "img"
stores = ["dataset", "models"]
user = "root"
"""


def _plan(job: str | None = None, user: tuple[int, int] = (1000, 1000)):  # type: ignore[no-untyped-def]
    return make_plan(parse_spec(ALL_KINDS, base_dir=Path("/p")), job, host_user=user)


def test_each_kind_gets_its_default() -> None:
    mounts = {m.store: m for m in _plan("train").mounts}
    assert (mounts["dataset"].backing, mounts["dataset"].readonly) == (Backing.BIND, True)
    assert mounts["dataset"].source == "/p/data"
    assert (mounts["raw"].backing, mounts["raw"].readonly) == (Backing.VOLUME, True)
    assert mounts["raw"].source == "proj-raw"
    assert (mounts["checkpoints"].backing, mounts["checkpoints"].source) == (
        Backing.VOLUME, "proj-checkpoints")
    assert not mounts["checkpoints"].readonly
    assert mounts["models"].backing is Backing.BIND and mounts["models"].create_source
    assert mounts["cache"].source == "proj-cache"
    assert mounts["tmp"].backing is Backing.TMPFS and mounts["tmp"].tmpfs_size == 2 << 30
    assert mounts["shared"].source == "team-ckpt" and mounts["shared"].external
    assert mounts["nfs"].driver_opts == (
        ("device", ":/export"), ("o", "addr=10.0.0.1"), ("type", "nfs"))
    for mount in mounts.values():
        assert mount.reason


def test_reasons_explain_the_choice() -> None:
    mounts = {m.store: m for m in _plan("train").mounts}
    assert "never modify its inputs" in mounts["dataset"].reason
    assert "survives container removal" in mounts["checkpoints"].reason
    assert "tmpfs" in mounts["tmp"].reason and "2g" in mounts["tmp"].reason


def test_environment() -> None:
    env = dict(_plan("train").env)
    assert env["CARGOHOLD_CHECKPOINT_DIR"] == "/ckpt"  # the first checkpoints store
    assert env[store_env_name("models")] == "/artifacts"
    assert env["TORCH_HOME"] == "/cache/torch"
    assert env["XDG_CACHE_HOME"] == "/cache"
    assert env["HF_HOME"] == "/elsewhere"  # the user's env wins
    assert env["CARGOHOLD_JOB"] == "train"


def test_user_resolution_and_job_selection() -> None:
    assert _plan("train", (1234, 55)).user == "1234:55"
    evaluation = _plan("eval")
    assert evaluation.user == "0:0"
    assert [m.store for m in evaluation.mounts] == ["dataset", "models"]
    assert "CARGOHOLD_CHECKPOINT_DIR" not in dict(evaluation.env)
    assert _plan(None).job == "train"
    assert _plan("train").container_name == "proj-train"


def test_dataset_can_be_made_writable_explicitly() -> None:
    text = ALL_KINDS.replace('source = "./data"\ntarget = "/data"',
                             'source = "./data"\ntarget = "/data"\nreadonly = false')
    plan = make_plan(parse_spec(text, base_dir=Path("/p")), "eval", host_user=(1, 1))
    dataset = plan.mounts[0]
    assert not dataset.readonly and "readonly = false" in dataset.reason


def test_artifacts_need_a_source() -> None:
    text = ALL_KINDS.replace('source = "./artifacts"\n', "")
    with pytest.raises(SpecError, match="no source folder"):
        make_plan(parse_spec(text, base_dir=Path("/p")), "eval", host_user=(1, 1))


RUNTIME = """
[project]
name = "gpu"

[stores.dataset]
kind = "dataset"
source = "./data"
backing = "volume"
target = "/data"

[stores.checkpoints]
kind = "checkpoints"
target = "/ckpt"

[stores.tmp]
kind = "scratch"
target = "/scratch"
size = "1g"

[jobs.train]
image = "pytorch-train"
command = ["torchrun", "train.py"]
user = "2000:2000"
gpus = ["0", "GPU-4a1b"]
ipc = "shareable"
ulimits = { nofile = { soft = 4096, hard = 8192 } }
read_only = true
env_file = "./train.env"
secrets = ["HF_TOKEN", "WANDB_API_KEY"]
resources = { cpus = 3.5, memory = "8g", pids_limit = 512 }
devices = ["/dev/infiniband"]
network = "host"
entrypoint = ["python3", "-u"]

[jobs.shell]
image = "img"
command = ["sh", "-c", "python3 eval.py"]
stores = ["dataset"]
gpus = "all"
hardening = false
stop_timeout = 30

[jobs.plain]
image = "img"
stores = []
user = "root"
"""


def _runtime_plan(job: str):  # type: ignore[no-untyped-def]
    return make_plan(parse_spec(RUNTIME, base_dir=Path("/p")), job, host_user=(1000, 1000))


def test_gpu_job_gets_nccl_defaults_with_reasons() -> None:
    plan = _runtime_plan("train")
    rt = plan.runtime
    assert rt.gpus is not None and rt.gpus.device_ids == ("0", "GPU-4a1b")
    assert rt.shm_size == 1 << 30 and "GPUs" in (rt.reason("shm_size") or "")
    assert {(u.name, u.soft, u.hard) for u in rt.ulimits} == {
        ("memlock", -1, -1), ("stack", 67108864, 67108864), ("nofile", 4096, 8192)}
    assert "NCCL" in (rt.reason("ulimits") or "") and "nofile" in (rt.reason("ulimits") or "")
    assert rt.stop_timeout == 120 and "final" in (rt.reason("stop_timeout") or "")
    assert rt.ipc == "shareable" and rt.network == "host"
    assert rt.read_only and rt.tmpfs == ("/tmp",)
    assert rt.security_opt == ("no-new-privileges",) and "CAP_NET_RAW" in rt.cap_drop
    assert "NET_RAW" in (rt.reason("hardening") or "")
    assert (rt.resources.cpus, rt.resources.memory, rt.resources.pids_limit) == (
        3.5, 8 << 30, 512)
    assert rt.entrypoint == ("python3", "-u") and not rt.init
    assert rt.env_files == ("/p/train.env",)
    assert rt.secrets == ("HF_TOKEN", "WANDB_API_KEY")


def test_home_points_at_a_writable_store_for_a_uid_without_account() -> None:
    env = dict(_runtime_plan("train").env)
    assert env["HOME"] == "/scratch"  # no cache store: the scratch tmpfs
    assert "HOME" not in dict(_runtime_plan("plain").env)  # root has /root
    assert dict(_plan("train").env)["HOME"] == "/cache"
    assert dict(_runtime_plan("shell").env)["HOME"] == "/tmp"  # no writable store at all


def test_shell_command_gets_init_and_the_spec_can_turn_things_off() -> None:
    rt = _runtime_plan("shell").runtime
    assert rt.init and "shell" in (rt.reason("init") or "")
    assert rt.gpus is not None and rt.gpus.all
    assert rt.security_opt == () and rt.cap_drop == ()
    assert rt.stop_timeout == 30
    plain = _runtime_plan("plain").runtime
    assert plain.stop_timeout is None and plain.shm_size is None and not plain.init
    assert plain.gpus is None and plain.ulimits == ()


def test_pytorch_job_without_gpus_gets_a_larger_shm() -> None:
    text = RUNTIME.replace('gpus = ["0", "GPU-4a1b"]\n', "")
    plan = make_plan(parse_spec(text, base_dir=Path("/p")), "train", host_user=(1, 1))
    assert plan.runtime.shm_size == 1 << 30
    assert "PyTorch" in (plan.runtime.reason("shm_size") or "")
    assert plan.runtime.ulimits == (plan.runtime.ulimits[0],)  # only nofile: no GPUs, no NCCL


def test_seeded_volume() -> None:
    dataset = _runtime_plan("train").mounts[0]
    assert dataset.backing is Backing.VOLUME and dataset.source == "gpu-dataset"
    assert dataset.seed == "/p/data" and dataset.readonly
    assert "seeded once from /p/data" in dataset.reason


def test_to_json_holds_settings_and_reasons_but_no_secret_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    monkeypatch.setenv("HF_TOKEN", "hf_supersecret")
    data = _runtime_plan("train").to_json()
    text = json.dumps(data)
    assert "hf_supersecret" not in text
    assert data["runtime"]["secrets"] == ["HF_TOKEN", "WANDB_API_KEY"]
    assert data["runtime"]["gpus"] == {"count": None, "device_ids": ["0", "GPU-4a1b"]}
    assert data["runtime"]["ulimits"]["memlock"] == {"soft": -1, "hard": -1}
    assert set(data["runtime"]["reasons"]) >= {"gpus", "shm_size", "ulimits", "stop_timeout",
                                               "hardening", "read_only", "home", "secrets"}
    assert data["stores"][0]["seed"] == "/p/data"
    assert data["shm_size"] == 1 << 30


def test_store_placement_is_one_function_per_kind() -> None:
    from cargohold.kinds import StoreKind
    from cargohold.plan import _PLACEMENTS

    assert set(_PLACEMENTS) == set(StoreKind)
