"""Can this engine give a container NVIDIA GPUs? One answer for ``doctor`` and for ``run``.

Docker hands GPUs to a container through a device driver that exists only when the NVIDIA
Container Toolkit is installed: its ``nvidia-container-runtime-hook`` on the daemon's host (what
``--gpus`` uses), an ``nvidia`` runtime registered in ``daemon.json``, or a CDI specification
naming ``nvidia.com/gpu`` (``nvidia-ctk cdi generate``). Without one of them Docker fails only
when the container starts, with "could not select device driver "" with capabilities: [[gpu]]",
which tells nobody what to install. ``require_gpus`` fails before anything is created, with the
commands that fix it.

Host files are only meaningful when the engine runs on this machine; for a remote engine only the
runtimes it reports are known, and the check trusts them.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from cargohold.engine.types import EngineInfo
from cargohold.errors import EngineError

__all__ = ["GpuSupport", "gpu_support", "require_gpus"]

HOOKS = ("nvidia-container-runtime-hook", "nvidia-container-toolkit")
CDI_DIRS = ("etc/cdi", "var/run/cdi")
INSTALL_HINT = (
    "Install the NVIDIA driver and the NVIDIA Container Toolkit on the engine's host "
    "(`apt-get install nvidia-container-toolkit`), then run "
    "`sudo nvidia-ctk runtime configure --runtime=docker` and restart dockerd. "
    "`cargohold doctor` checks it again. Where GPUs work although this host shows no "
    "driver (Docker Desktop's WSL2 engine runs in its own VM), CARGOHOLD_GPU_CHECK=off "
    "skips the check."
)
GPU_CHECK_ENV = "CARGOHOLD_GPU_CHECK"
MEMLOCK_HINT = (
    "Raise dockerd's own limit: LimitMEMLOCK=infinity in docker.service (systemctl edit docker), "
    "then restart dockerd; or ask for a smaller memlock in ulimits."
)
_DRIVER_RE = re.compile(r"Kernel Module\s+(?:for\s+\S+\s+)?([0-9][0-9.]*)")


@dataclass(frozen=True)
class GpuSupport:
    """What the engine and its host offer for NVIDIA GPUs."""

    local: bool  # the engine runs here, so the host facts below are its host's
    runtime: bool  # an "nvidia" runtime is registered with the engine
    hook: str | None  # the toolkit's hook binary that backs `--gpus`
    cdi: tuple[str, ...]  # CDI specification files that name nvidia.com/gpu
    driver: str | None  # the NVIDIA kernel driver's version
    # dockerd's hard RLIMIT_MEMLOCK in bytes when finite and readable (NCCL wants unlimited).
    engine_memlock: int | None = None

    @property
    def usable(self) -> bool:
        if not self.local:
            return self.runtime
        return (self.runtime or self.hook is not None or bool(self.cdi)) and bool(self.driver)

    def problem(self, memlock: int | None = -1) -> str | None:
        """Why GPUs cannot work for a job asking for ``memlock`` bytes of locked memory (-1:
        unlimited, as NCCL wants; None: no limit asked), or None."""
        short = self.engine_memlock is not None and (
            memlock == -1 or (memlock is not None and memlock > self.engine_memlock)
        )
        if self.usable and not short:
            return None
        if not self.local:
            return "the remote engine reports no nvidia runtime"
        missing = []
        if not self.driver:
            missing.append("no NVIDIA driver is loaded (/proc/driver/nvidia/version is absent)")
        if not (self.runtime or self.hook or self.cdi):
            missing.append(
                "no NVIDIA Container Toolkit: no nvidia runtime in the engine, no "
                "nvidia-container-runtime-hook, no CDI specification in /etc/cdi or /var/run/cdi"
            )
        if short:
            missing.append(
                f"dockerd's hard memlock limit is {self.engine_memlock} bytes, so the unlimited "
                "memlock NCCL needs cannot be granted (LimitMEMLOCK=infinity in docker.service)"
            )
        return "; ".join(missing)

    def hint(self, memlock: int | None = -1) -> str:
        """What to do about ``problem(memlock)``: the toolkit's install, or only dockerd's
        memlock limit when that is all that is missing."""
        toolkit_missing = not self.usable
        return INSTALL_HINT if toolkit_missing else MEMLOCK_HINT

    def describe(self) -> str:
        parts = [f"driver {self.driver}" if self.driver else "no NVIDIA driver"]
        if self.engine_memlock is not None:
            parts.append(f"dockerd memlock limit {self.engine_memlock} bytes")
        if self.runtime:
            parts.append("nvidia runtime")
        if self.hook:
            parts.append(f"toolkit hook {self.hook}")
        if self.cdi:
            parts.append("CDI " + ", ".join(self.cdi))
        if not (self.runtime or self.hook or self.cdi):
            parts.append("no NVIDIA Container Toolkit")
        return ", ".join(parts)


def _driver_version(root: Path) -> str | None:
    """From the loaded kernel module: /proc's banner, or /sys's bare version number."""
    try:
        banner = (root / "proc/driver/nvidia/version").read_text(encoding="utf-8", errors="replace")
        if match := _DRIVER_RE.search(banner):
            return match.group(1)
    except OSError:
        pass
    try:
        text = (root / "sys/module/nvidia/version").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return text.strip() or None


def _cdi_specs(root: Path) -> tuple[str, ...]:
    found = []
    for folder in CDI_DIRS:
        try:
            entries = sorted((root / folder).iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.suffix not in (".json", ".yaml", ".yml"):
                continue
            try:
                if "nvidia.com/gpu" in entry.read_text(encoding="utf-8", errors="replace"):
                    found.append(f"/{folder}/{entry.name}")
            except OSError:
                continue
    return tuple(found)


def _engine_memlock(root: Path) -> int | None:
    """The default dockerd's hard memlock limit, when finite and readable here."""
    try:
        pid = int((root / "var/run/docker.pid").read_text().strip())
        limits = (root / f"proc/{pid}/limits").read_text()
    except (OSError, ValueError):
        return None
    for line in limits.splitlines():
        if line.startswith("Max locked memory"):
            hard = line.split()[4]
            return None if hard == "unlimited" else int(hard) if hard.isdigit() else None
    return None


def gpu_support(info: EngineInfo, *, local: bool, root: Path = Path("/")) -> GpuSupport:
    """Look at the engine's runtimes and (for a local engine) the host's driver, toolkit and CDI
    specifications. ``root`` is where the host's file system starts (tests point it elsewhere)."""
    runtime = any("nvidia" in name for name in info.runtimes)
    if not local:
        return GpuSupport(local=False, runtime=runtime, hook=None, cdi=(), driver=None)
    hook = None
    if root == Path("/"):
        hook = next((found for name in HOOKS if (found := shutil.which(name))), None)
    else:
        hook = next(
            (str(p) for name in HOOKS for p in [root / "usr/bin" / name] if p.exists()), None
        )
    return GpuSupport(
        local=True,
        runtime=runtime,
        hook=hook,
        cdi=_cdi_specs(root),
        driver=_driver_version(root),
        engine_memlock=_engine_memlock(root),
    )


def require_gpus(support: GpuSupport, job: str, memlock: int | None = -1) -> None:
    """Fail before creating a container that Docker could not start.

    Args:
        support: what the engine offers.
        job: the job's name, for the message.
        memlock: the hard memlock limit the job asks for (-1 unlimited, None none).

    Raises:
        EngineError: naming what is missing, with the commands that install it.
    """
    if os.environ.get(GPU_CHECK_ENV, "").lower() in ("off", "0", "no", "false"):
        return  # the user knows better than what this host shows (the engine may be a VM's)
    problem = support.problem(memlock)
    if problem is not None:
        raise EngineError(f"Job {job!r} asks for GPUs, but {problem}.", hint=support.hint(memlock))
