"""Private Docker engines for tests that must hurt an engine (kill it, restart it, join it to a
swarm) without touching the shared one.

Each engine is a real ``dockerd`` with its own ``--data-root``, ``--exec-root``, socket
(``unix:///tmp/<name>.sock``), ``--pidfile``, containerd namespaces and network namespace
(``ip netns add <name>``; dockerd runs under ``nsenter --net``, so its ``docker0`` bridge and
iptables rules live in that namespace and the host's ``docker0`` is never touched). Everything
is torn down by pid and by name, pass or fail.

API::

    from tests.engines import private_engine, link

    with private_engine(images=["cargohold/volume-helper:1"]) as engine:
        engine.host                     # "unix:///tmp/chx-1a2b3c.sock"
        engine.env                      # {"DOCKER_HOST": engine.host}: for run_cli(env=...)
        engine.docker("volume", "ls")   # the docker CLI against it (CompletedProcess, text)
        engine.client()                 # a docker-py client for it (closed at teardown)
        engine.load_images("img:tag")   # docker save (shared engine) | docker load (this one)
        engine.kill()                   # SIGKILL dockerd (and its containerd): a crash
        engine.restart()                # start again on the same data root; waits for it
        engine.netns, engine.pid

    with private_engine() as a, private_engine() as b:
        a_ip, b_ip = link(a, b)         # a veth pair between the two namespaces, one /30
                                        # address on each end (none on the host)

    private_engine(dockerd_args=[...])  # replaces the default extra flags
                                        # (--iptables=false --ip-masq=false: nothing in a
                                        # private engine needs NAT); e.g. [] for a swarm node

Needs root, ``ip``, ``nsenter`` and ``dockerd``; ``private_engine`` skips the test (fails in
CI, ``CI=true``) when they are missing. Starting one takes about 1-2 s. Each engine's folder
records the test process that owns it; a new engine first removes the engines of test processes
that were killed before their teardown could run.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = ["PrivateEngine", "link", "private_engine"]

ROOT = Path("/tmp/cargohold-engines")
_links = itertools.count(1)


def _run(*args: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, **kwargs)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
            return False
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@dataclass
class PrivateEngine:
    """One private dockerd (see the module docstring)."""

    name: str
    folder: Path
    dockerd_args: tuple[str, ...] = ("--iptables=false", "--ip-masq=false")
    pid: int = 0
    _process: subprocess.Popen[bytes] | None = None
    _clients: list[Any] = field(default_factory=list)

    @property
    def netns(self) -> str:
        return self.name

    @property
    def socket(self) -> str:
        return f"/tmp/{self.name}.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host}

    @property
    def pidfile(self) -> Path:
        return self.folder / "dockerd.pid"

    @property
    def exec_root(self) -> Path:
        return self.folder / "exec"

    @property
    def log(self) -> Path:
        return self.folder / "dockerd.log"

    def docker(self, *args: str, check: bool = True, timeout: float = 120,
               input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this engine."""
        return subprocess.run(["docker", "-H", self.host, *args], check=check,
                              capture_output=True, text=input is None, timeout=timeout,
                              input=input)

    def client(self) -> Any:
        """A docker-py client for this engine, closed at teardown."""
        import docker

        client = docker.DockerClient(base_url=self.host, timeout=120)
        self._clients.append(client)
        return client

    def load_images(self, *images: str) -> None:
        """Copy images from the shared engine: ``docker save | docker -H … load``."""
        if not images:
            return
        save = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE)
        try:
            loaded = subprocess.run(["docker", "-H", self.host, "load", "-q"], stdin=save.stdout,
                                    capture_output=True, timeout=600)
        finally:
            if save.stdout is not None:
                save.stdout.close()
            save.wait(timeout=60)
        if save.returncode != 0 or loaded.returncode != 0:
            raise RuntimeError(f"loading {images} into {self.name} failed: "
                               f"{loaded.stderr.decode(errors='replace')[-500:]}")

    def start(self, timeout: float = 60) -> None:
        """Start dockerd (again, on the same data root) and wait until it answers."""
        assert self.pid == 0 or not _alive(self.pid), "already running"
        self.exec_root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)
        with open(self.log, "ab") as log:
            self._process = subprocess.Popen(
                ["nsenter", f"--net=/var/run/netns/{self.netns}", "dockerd",
                 "--data-root", str(self.folder / "data"), "--exec-root", str(self.exec_root),
                 "-H", self.host, "--pidfile", str(self.pidfile),
                 "--containerd-namespace", self.name,
                 "--containerd-plugins-namespace", f"{self.name}-plugins",
                 *self.dockerd_args],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        # nsenter execs dockerd: the child's pid is dockerd's.
        self.pid = self._process.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            if _run("docker", "-H", self.host, "version", "--format", "{{.Server.Version}}",
                    check=False).returncode == 0:
                return
            time.sleep(0.2)
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise RuntimeError(f"private dockerd {self.name} did not start:\n{tail}")

    def _containerd_pid(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            return int((self.exec_root / "containerd" / "containerd.pid").read_text().strip())
        return 0

    def _shim_pids(self) -> list[int]:
        """containerd-shim processes serving this engine's containers."""
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                if cmdline and b"containerd-shim" in cmdline[0] and any(
                    self.name.encode() in part for part in cmdline
                ):
                    found.append(int(proc.name))
        return found

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Crash the engine: ``sig`` to dockerd and its containerd (and their shims)."""
        targets = [p for p in (self.pid, self._containerd_pid(), *self._shim_pids()) if p]
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        for pid in targets:
            _wait_gone(pid, 30)
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=5)
        # A killed containerd may stay a zombie (this machine's init may not reap orphans):
        # its pid file would make the next dockerd wait for it forever.
        for stale in (self.pidfile, self.exec_root / "containerd" / "containerd.pid"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def restart(self) -> None:
        """Start the engine again after ``kill()`` (its state is on disk)."""
        if self.pid and _alive(self.pid):
            self.kill()
        self.start()

    def stop(self) -> None:
        """Everything this engine started, then dockerd itself: SIGTERM, then SIGKILL."""
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        if self.pid and _alive(self.pid):
            listed = _run("docker", "-H", self.host, "ps", "-aq", check=False, timeout=30)
            ids = listed.stdout.split() if listed.returncode == 0 else []
            if ids:
                _run("docker", "-H", self.host, "rm", "-f", *ids, check=False, timeout=120)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            if not _wait_gone(self.pid, 30):
                self.kill()
        self.kill()  # containerd and shims, if any survived


def _processes_using(folder: Path) -> list[int]:
    """Processes whose command line names ``folder`` (a dockerd, its containerd and shims)."""
    needle = str(folder).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
    return found


def _owner_gone(folder: Path) -> bool:
    from cargohold.engine.helpers import process_start

    try:
        pid, start = (folder / "owner").read_text().split()
    except (OSError, ValueError):
        # Being created this very moment, or by a version without owner files.
        return time.time() - folder.stat().st_mtime > 600
    return process_start(int(pid)) != start


def _reap_abandoned() -> None:
    """Private engines whose test process was killed (no teardown ran): stop them by pid and
    remove their namespace, socket and folders, so that they cannot pile up."""
    if not ROOT.is_dir():
        return
    for folder in ROOT.iterdir():
        if not folder.is_dir() or not _owner_gone(folder):
            continue
        for pid in _processes_using(folder):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _unmount_under(folder)
        _run("ip", "netns", "delete", folder.name, check=False)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/tmp/{folder.name}.sock")
        shutil.rmtree(folder, ignore_errors=True)


def _unmount_under(folder: Path) -> None:
    """Mounts a killed engine left under its folders (overlays, netns files), deepest first."""
    prefix = str(folder) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        _run("umount", "-l", point, check=False)


@contextlib.contextmanager
def private_engine(name: str | None = None, *, images: tuple[str, ...] | list[str] = (),
                   dockerd_args: tuple[str, ...] | list[str] | None = None,
                   ) -> Iterator[PrivateEngine]:
    """A private dockerd in its own network namespace, removed afterwards (see module doc).

    Args:
        name: the engine's name (netns, socket, folders); default ``chx-<random>``.
        images: images copied from the shared engine before the engine is handed over.
        dockerd_args: extra dockerd flags instead of the defaults (never ``--bridge=none``:
            that deletes the host's docker0).
    """
    missing = [tool for tool in ("ip", "nsenter", "dockerd", "docker") if not shutil.which(tool)]
    if os.geteuid() != 0 or missing:
        reason = f"a private engine needs root and {', '.join(missing) or 'nothing else'}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    name = name or f"chx-{secrets.token_hex(3)}"
    engine = PrivateEngine(name, ROOT / name)
    if dockerd_args is not None:
        assert "--bridge=none" not in dockerd_args, "--bridge=none deletes the host's docker0"
        engine.dockerd_args = tuple(dockerd_args)
    _reap_abandoned()
    engine.folder.mkdir(parents=True, exist_ok=False)
    from cargohold.engine.helpers import process_start

    (engine.folder / "owner").write_text(f"{os.getpid()} {process_start(os.getpid())}\n")
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "-n", name, "link", "set", "lo", "up")
        engine.start()
        engine.load_images(*images)
        yield engine
    finally:
        engine.stop()
        _unmount_under(engine.folder)
        _run("ip", "netns", "delete", name, check=False)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(engine.socket)
        shutil.rmtree(engine.folder, ignore_errors=True)


def link(a: PrivateEngine, b: PrivateEngine) -> tuple[str, str]:
    """Connect two private engines' namespaces with a veth pair; returns (a's address, b's).

    The addresses (a /30 out of 10.213.0.0/16) exist only inside the two namespaces; the pair
    disappears with either namespace.
    """
    n = next(_links) + (os.getpid() % 4000) * 16
    third, fourth = (n * 4 // 256) % 256, (n * 4) % 256
    a_ip, b_ip = f"10.213.{third}.{fourth + 1}", f"10.213.{third}.{fourth + 2}"
    a_if, b_if = f"{a.name[-6:]}-{b.name[-6:]}"[:15], f"{b.name[-6:]}-{a.name[-6:]}"[:15]
    _run("ip", "link", "add", a_if, "netns", a.netns, "type", "veth", "peer", "name", b_if,
         "netns", b.netns)
    for ns, iface, ip in ((a.netns, a_if, a_ip), (b.netns, b_if, b_ip)):
        _run("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", iface)
        _run("ip", "-n", ns, "link", "set", iface, "up")
    return a_ip, b_ip
