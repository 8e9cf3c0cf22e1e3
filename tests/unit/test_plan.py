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
