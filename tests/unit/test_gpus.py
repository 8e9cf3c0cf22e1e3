"""GPU support detection against fake host trees (this machine has no GPU): driver, toolkit, CDI."""

from __future__ import annotations

from pathlib import Path

import pytest

from cargohold.engine.types import EngineInfo
from cargohold.errors import EngineError
from cargohold.gpus import INSTALL_HINT, gpu_support, require_gpus


def _info(*runtimes: str) -> EngineInfo:
    return EngineInfo(version="20.10", api_version="1.41", operating_system="Debian",
                      storage_driver="overlay2", root_dir="/var/lib/docker",
                      security_options=(), runtimes=("io.containerd.runc.v2", "runc", *runtimes),
                      cpus=2, memory=1 << 30)


def _driver(root: Path) -> None:
    (root / "proc/driver/nvidia").mkdir(parents=True)
    (root / "proc/driver/nvidia/version").write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")


def test_nothing_installed_says_what_to_install(tmp_path: Path) -> None:
    support = gpu_support(_info(), local=True, root=tmp_path)
    assert not support.usable
    problem = support.problem() or ""
    assert "no NVIDIA driver" in problem and "no NVIDIA Container Toolkit" in problem
    with pytest.raises(EngineError) as info:
        require_gpus(support, "train")
    assert info.value.exit_code == 3
    assert "asks for GPUs" in info.value.message and info.value.hint == INSTALL_HINT
    assert "nvidia-container-toolkit" in INSTALL_HINT


def test_driver_and_toolkit_hook(tmp_path: Path) -> None:
    _driver(tmp_path)
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/nvidia-container-runtime-hook").write_text("")
    support = gpu_support(_info(), local=True, root=tmp_path)
    assert support.usable and support.driver == "535.104.05"
    assert "driver 535.104.05" in support.describe() and "toolkit hook" in support.describe()
    require_gpus(support, "train")  # no error


def test_driver_and_cdi_spec(tmp_path: Path) -> None:
    _driver(tmp_path)
    (tmp_path / "etc/cdi").mkdir(parents=True)
    (tmp_path / "etc/cdi/nvidia.yaml").write_text("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\n")
    (tmp_path / "etc/cdi/other.yaml").write_text("kind: vendor.com/fpga\n")
    support = gpu_support(_info(), local=True, root=tmp_path)
    assert support.usable and support.cdi == ("/etc/cdi/nvidia.yaml",)


def test_runtime_without_driver_is_not_enough_here(tmp_path: Path) -> None:
    support = gpu_support(_info("nvidia"), local=True, root=tmp_path)
    assert not support.usable and "no NVIDIA driver" in (support.problem() or "")
    (tmp_path / "sys/module/nvidia").mkdir(parents=True)
    (tmp_path / "sys/module/nvidia/version").write_text("550.54.14\n")
    assert gpu_support(_info("nvidia"), local=True, root=tmp_path).driver == "550.54.14"


def test_remote_engine_trusts_its_runtimes() -> None:
    assert gpu_support(_info("nvidia"), local=False).usable
    remote = gpu_support(_info(), local=False)
    assert not remote.usable and "remote engine" in (remote.problem() or "")


def test_this_machine_has_no_gpu() -> None:
    # The integration tests rely on it: `cargohold run` with gpus must fail fast here.
    assert not gpu_support(_info(), local=True).usable


def _dockerd_limits(root: Path, memlock: str) -> None:
    (root / "var/run").mkdir(parents=True)
    (root / "var/run/docker.pid").write_text("4242\n")
    (root / "proc/4242").mkdir(parents=True)
    (root / "proc/4242/limits").write_text(
        "Limit                     Soft Limit           Hard Limit           Units     \n"
        "Max stack size            8388608              unlimited            bytes     \n"
        f"Max locked memory         {memlock:<20} {memlock:<20} bytes     \n")


def test_a_dockerd_that_cannot_grant_nccl_memlock(tmp_path: Path) -> None:
    _driver(tmp_path)
    (tmp_path / "etc/cdi").mkdir(parents=True)
    (tmp_path / "etc/cdi/nvidia.json").write_text('{"kind": "nvidia.com/gpu"}')
    _dockerd_limits(tmp_path, "8388608")
    support = gpu_support(_info(), local=True, root=tmp_path)
    assert support.engine_memlock == 8388608 and support.usable
    assert "LimitMEMLOCK=infinity" in (support.problem() or "")  # NCCL's unlimited
    assert support.problem(memlock=1 << 20) is None  # a job that asks for less
    assert support.problem(memlock=None) is None
    # Only dockerd's limit is missing: the hint says that, not "install the toolkit".
    with pytest.raises(EngineError) as info:
        require_gpus(support, "train")
    assert "LimitMEMLOCK=infinity" in (info.value.hint or "")
    assert "nvidia-container-toolkit" not in (info.value.hint or "")


def test_a_dockerd_with_unlimited_memlock(tmp_path: Path) -> None:
    _driver(tmp_path)
    (tmp_path / "etc/cdi").mkdir(parents=True)
    (tmp_path / "etc/cdi/nvidia.json").write_text('{"kind": "nvidia.com/gpu"}')
    _dockerd_limits(tmp_path, "unlimited")
    support = gpu_support(_info(), local=True, root=tmp_path)
    assert support.engine_memlock is None and support.problem() is None


def test_the_check_can_be_turned_off_where_the_engine_is_a_vms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    support = gpu_support(_info(), local=True, root=tmp_path)  # nothing on this "host"
    with pytest.raises(EngineError) as info:
        require_gpus(support, "train")
    assert "CARGOHOLD_GPU_CHECK=off" in (info.value.hint or "")
    monkeypatch.setenv("CARGOHOLD_GPU_CHECK", "off")
    require_gpus(support, "train")  # no error: Docker itself decides at start
