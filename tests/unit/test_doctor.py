"""doctor's checks decided without a daemon: each is a function of recorded engine facts,
the plan, and what the disk says."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from cargohold import doctor
from cargohold.engine import _parse
from cargohold.kinds import Backing, StoreKind
from cargohold.plan import Mount, Plan, make_plan
from cargohold.spec import load_spec

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "docker"
INFO = _parse.parse_engine_info(
    json.loads((FIXTURES / "version.json").read_text()),
    json.loads((FIXTURES / "info.json").read_text()),
)


def _plan(tmp_path: Path, job: str = "") -> Plan:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "cargohold.toml").write_text(f"""
[project]
name = "p"
[stores.dataset]
kind = "dataset"
source = "./data"
target = "/data"
[stores.checkpoints]
kind = "checkpoints"
target = "/ckpt"
[jobs.train]
image = "img"
{job}
""")
    return make_plan(load_spec(tmp_path / "cargohold.toml"), None, host_user=(1000, 1000))


def test_engine_facts_from_the_recorded_engine() -> None:
    assert doctor.check_engine(INFO).detail.startswith("Docker 20.10")
    assert doctor.check_storage_driver(INFO).status == "ok"
    assert doctor.check_uid_mapping(INFO) == doctor.Check(
        "uid mapping", "ok", "none: container uids are host uids"
    )


def test_vfs_and_remapped_or_rootless_engines_warn() -> None:
    assert doctor.check_storage_driver(
        dataclasses.replace(INFO, storage_driver="vfs")
    ).status == "warn"
    remapped = dataclasses.replace(INFO, security_options=("name=userns",))
    assert doctor.check_uid_mapping(remapped).status == "warn"
    rootless = dataclasses.replace(INFO, security_options=("name=rootless",))
    assert "sub-uid" in doctor.check_uid_mapping(rootless).detail


def test_shm_default_warns_and_a_gigabyte_is_enough() -> None:
    assert doctor.check_shm(None).status == "warn"
    assert "67.1 MB" in doctor.check_shm(None).detail  # Docker's 64 MiB
    assert doctor.check_shm(1 << 30).status == "ok"


def test_free_space_counts_the_checkpoints_kept_not_an_assumed_three() -> None:
    five = {f"step-{i:08d}": 100 for i in range(5)}
    assert doctor.check_free_space(601, five).status == "ok"  # 100 x (5 + 1)
    failing = doctor.check_free_space(600, five)
    assert failing.status == "fail" and "(5 kept + 1 in flight)" in failing.detail
    assert doctor.check_free_space(150, {"step-1": 50, "step-2": 70}).status == "fail"  # 210
    assert "no checkpoints yet" in doctor.check_free_space(0, {}).detail


def test_gpu_runtime_is_checked_only_when_the_job_wants_gpus(tmp_path: Path) -> None:
    assert doctor.check_gpus(INFO, _plan(tmp_path)) is None
    wants = _plan(tmp_path, "gpus = 1")
    missing = doctor.check_gpus(INFO, wants)
    assert missing is not None and missing.status == "fail" and "nvidia" in missing.detail
    with_runtime = dataclasses.replace(INFO, runtimes=(*INFO.runtimes, "nvidia"))
    present = doctor.check_gpus(with_runtime, wants, local=False)  # a remote engine: trusted
    assert present is not None and present.status == "ok"
    # Here (no GPU on this machine) the runtime alone is not enough: no driver is loaded.
    no_driver = doctor.check_gpus(with_runtime, wants, local=True)
    assert no_driver is not None and no_driver.status == "fail"
    assert "no NVIDIA driver" in no_driver.detail and "nvidia-ctk" in no_driver.detail


def test_bind_stores_by_owner(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    mount = Mount("models", StoreKind.ARTIFACTS, Backing.BIND, "/out", False, "why",
                  source="/host/out")
    assert doctor.check_bind_store(mount, plan, None).detail.endswith("created for uid 1000")
    assert doctor.check_bind_store(mount, plan, 1000).status == "ok"
    foreign = doctor.check_bind_store(mount, plan, 0)
    assert foreign.status == "fail" and "belongs to uid 0" in foreign.detail


def test_read_only_and_tmpfs_stores_need_no_test() -> None:
    dataset = Mount("d", StoreKind.DATASET, Backing.BIND, "/data", True, "why", source="/x")
    scratch = Mount("s", StoreKind.SCRATCH, Backing.TMPFS, "/scratch", False, "why")
    volume = Mount("c", StoreKind.CHECKPOINTS, Backing.VOLUME, "/ckpt", False, "why",
                   source="v")
    ro = doctor.check_fixed_store(dataset)
    assert ro is not None and ro.detail == "/data read-only, as a dataset should be"
    tmpfs = doctor.check_fixed_store(scratch)
    assert tmpfs is not None and "tmpfs" in tmpfs.detail
    assert doctor.check_fixed_store(volume) is None


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [((), "ok"), (("ok", "warn"), "warn"), (("warn", "fail", "ok"), "fail")],
)
def test_worst(statuses: tuple[doctor.Status, ...], expected: str) -> None:
    assert doctor.worst([doctor.Check("c", s, "") for s in statuses]) == expected
