"""The engine dies in the middle of an Engine-API transfer, or cargohold does (issue 8, defect
13): the command fails with a clear message and exit 3 (no traceback); after the engine is
back, the next command removes the helper container that was left pinning the volume, and the
same command run again succeeds.

Runs against a private dockerd (``tests/engines.py``) that the test may kill; the shared engine
is never touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SRC, run_cli
from tests.engines import PrivateEngine, link, private_engine

SIZE = 256 << 20  # big enough that the transfer is still running when the engine is killed


@pytest.fixture(scope="module")
def engine() -> Iterator[PrivateEngine]:
    with private_engine() as started:
        yield started


@pytest.fixture(scope="module")
def full_volume(engine: PrivateEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A volume holding one SIZE file (model.safetensors), read by the export and snapshot
    tests (ingested once for both)."""
    volume = "crash-full"
    source = _sparse_source(tmp_path_factory.mktemp("full"), "model.safetensors")
    ingested = run_cli("ingest", str(source), volume, env=_env(engine), timeout=600)
    assert ingested.returncode == 0, ingested.stderr
    try:
        yield volume
    finally:
        engine.docker("volume", "rm", "-f", volume, check=False)


def _env(engine: PrivateEngine) -> dict[str, str]:
    return {**engine.env, "CARGOHOLD_VOLUME_ACCESS": "archive"}


def _start_cli(engine: PrivateEngine, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, **_env(engine)}
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, "-m", "cargohold", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _sparse_source(tmp_path: Path, name: str) -> Path:
    """A folder with one sparse file of SIZE: no disk here, all of it through the engine."""
    source = tmp_path / "data"
    source.mkdir()
    with open(source / name, "wb") as f:
        f.truncate(SIZE)
    return source


def _helpers(engine: PrivateEngine) -> list[str]:
    listed = engine.docker("ps", "-aq", "--filter", "label=cargohold.helper")
    return listed.stdout.split()


def _when_streaming(engine: PrivateEngine, process: subprocess.Popen[str]) -> None:
    """Wait until the transfer's helper exists and data has been flowing for a moment."""
    deadline = time.monotonic() + 60
    while not _helpers(engine):
        assert process.poll() is None, f"ended before the transfer started: {process.stderr}"
        assert time.monotonic() < deadline, "no helper container appeared"
        time.sleep(0.05)
    time.sleep(0.1)
    assert process.poll() is None, "the transfer finished before it could be interrupted"


def _assert_clean_engine_error(process: subprocess.Popen[str]) -> str:
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr
    assert "Traceback" not in stderr
    assert stderr.startswith("error: ") and "cannot reach the Docker engine" in stderr
    assert "hint: " in stderr
    return stderr


def _crash_and_recover(engine: PrivateEngine, process: subprocess.Popen[str],
                       volume: str) -> None:
    _when_streaming(engine, process)
    engine.kill()
    _assert_clean_engine_error(process)
    engine.restart()
    # The helper survived the crash (it was never started, so the engine keeps it) ...
    assert _helpers(engine), "expected the crash to leave the helper behind"
    # ... and the next command of any kind removes it: its creator is gone.
    listed = run_cli("volume", "ls", env=_env(engine))
    assert listed.returncode == 0, listed.stderr
    assert _helpers(engine) == []
    users = engine.docker("ps", "-aq", "--filter", f"volume={volume}").stdout.split()
    assert users == [], "a helper still pins the volume"


def test_engine_killed_mid_ingest_then_rerun(engine: PrivateEngine, tmp_path: Path) -> None:
    source = _sparse_source(tmp_path, "shard-000.bin")
    (source / "labels.csv").write_text("id,label\n1,cat\n")
    volume = "crash-ingest"
    try:
        process = _start_cli(engine, "ingest", str(source), volume)
        _crash_and_recover(engine, process, volume)
        rerun = run_cli("ingest", str(source), volume, env=_env(engine), timeout=600)
        assert rerun.returncode == 0, rerun.stderr
        files = run_cli("volume", "files", volume, "--json", env=_env(engine))
        assert files.returncode == 0, files.stderr
        assert '"shard-000.bin"' in files.stdout and str(SIZE) in files.stdout
        assert _helpers(engine) == []
    finally:
        engine.docker("volume", "rm", "-f", volume, check=False)


def test_engine_killed_mid_export_then_rerun(engine: PrivateEngine, full_volume: str,
                                            tmp_path: Path) -> None:
    out = tmp_path / "out"
    process = _start_cli(engine, "export", full_volume, str(out))
    _crash_and_recover(engine, process, full_volume)
    rerun = run_cli("export", full_volume, str(out), "--force", env=_env(engine), timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert (out / "model.safetensors").stat().st_size == SIZE
    assert _helpers(engine) == []


def test_sigkilled_cargohold_leaves_no_helper_for_long(engine: PrivateEngine,
                                                      tmp_path: Path) -> None:
    source = _sparse_source(tmp_path, "weights.bin")
    volume = "killed-cli"
    try:
        process = _start_cli(engine, "ingest", str(source), volume)
        _when_streaming(engine, process)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        assert _helpers(engine), "expected SIGKILL to leave the helper behind"
        removed = engine.docker("volume", "rm", volume, check=False)
        assert removed.returncode != 0 and "in use" in removed.stderr  # pinned, as reported
        listed = run_cli("volume", "ls", env=_env(engine))
        assert listed.returncode == 0, listed.stderr
        assert _helpers(engine) == []
        engine.docker("volume", "rm", volume)  # no longer pinned
    finally:
        engine.docker("volume", "rm", "-f", volume, check=False)


def test_watch_exits_3_when_the_engine_dies(engine: PrivateEngine) -> None:
    """watch follows the engine's events; a dead engine is an engine error, never read as "the
    container is gone" (ContainerNotFound is only what the engine itself says)."""
    process = _start_cli(engine, "watch", "--seconds", "120")
    try:
        assert process.stdout is not None
        assert "watching" in process.stdout.readline()
        engine.kill()
        stderr = _assert_clean_engine_error(process)
        assert "Following engine events" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        engine.restart()


def test_linked_private_engines_reach_each_other(engine: PrivateEngine) -> None:
    """The fixture's own promise (cluster tests build a two-node swarm on it)."""
    with private_engine() as other:
        here, there = link(engine, other)
        with subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{other.netns}", sys.executable, "-c",
             "import socket,sys; s=socket.create_server((sys.argv[1], 7946)); print('up', "
             "flush=True); c, _ = s.accept(); c.sendall(c.recv(64))", there],
            stdout=subprocess.PIPE, text=True) as server:
            try:
                assert server.stdout is not None and server.stdout.readline().strip() == "up"
                echoed = subprocess.run(
                    ["nsenter", f"--net=/var/run/netns/{engine.netns}", sys.executable, "-c",
                     "import socket,sys; c=socket.create_connection((sys.argv[1], 7946), 5); "
                     "c.sendall(sys.argv[2].encode()); print(c.recv(64).decode())", there, here],
                    capture_output=True, text=True, timeout=30)
                assert echoed.stdout.strip() == here, echoed.stderr
            finally:
                server.kill()
        # The host has no route into either namespace.
        assert here not in subprocess.run(["ip", "addr"], capture_output=True,
                                          text=True).stdout


def test_an_engine_whose_test_was_killed_is_reaped_by_the_next(tmp_path: Path) -> None:
    """The fixture's promise when no teardown can run: a SIGKILLed test process leaves its
    engine, and the next private_engine() removes it (processes, netns, socket, folders)."""
    from tests.conftest import REPO
    from tests.engines import ROOT

    ready = tmp_path / "ready"
    code = (
        "import sys, time, pathlib\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from tests.engines import private_engine\n"
        "with private_engine() as e:\n"
        f"    pathlib.Path({str(ready)!r}).write_text(e.name)\n"
        "    time.sleep(600)\n"
    )
    with subprocess.Popen([sys.executable, "-c", code],
                          env={**os.environ, "PYTHONPATH": str(SRC)}) as owner:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert owner.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        name = ready.read_text()
        owner.kill()
    abandoned = ROOT / name
    dockerd = int((abandoned / "dockerd.pid").read_text())
    assert abandoned.exists() and Path(f"/proc/{dockerd}").exists()
    with private_engine():
        assert not abandoned.exists()
        assert name not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                          text=True).stdout
        assert not Path(f"/tmp/{name}.sock").exists()
        time.sleep(0.2)
        assert not Path(f"/proc/{dockerd}").exists() or \
            Path(f"/proc/{dockerd}/stat").read_text().rpartition(")")[2].split()[0] == "Z"


def test_engine_killed_mid_snapshot_then_rerun(engine: PrivateEngine, full_volume: str,
                                              tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    process = _start_cli(engine, "snapshot", full_volume, "--repo", repo)
    _crash_and_recover(engine, process, full_volume)
    rerun = run_cli("snapshot", full_volume, "--repo", repo, env=_env(engine), timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    listed = run_cli("snapshots", "--repo", repo, "--json", env=_env(engine))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count(f'"{full_volume}"') == 1  # the interrupted one is not listed


def test_a_failing_source_is_not_reported_as_a_dead_engine(engine: PrivateEngine,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The tar stream for put_archive is produced while it is sent; an OSError there (an
    unreadable source file) must surface as itself, not as urllib3's "Connection aborted"
    read as a lost engine (exit 3 with a hint to start Docker)."""
    import io
    import tarfile

    from cargohold.engine import connect
    from cargohold.errors import EngineUnavailable

    monkeypatch.setenv("DOCKER_HOST", engine.host)
    volume = "failing-source"
    docker_engine = connect()
    docker_engine.create_volume(volume, {})

    def chunks() -> Iterator[bytes]:
        header = tarfile.TarInfo("v/big.bin")
        header.size = 64 << 20
        buffer = io.BytesIO()
        buffer.write(header.tobuf())
        yield buffer.getvalue()
        yield b"\0" * (1 << 20)
        raise PermissionError(13, "Permission denied", "/data/secret.bin")

    try:
        with docker_engine.archive_helper(volume, readonly=False) as helper, \
                pytest.raises(PermissionError) as raised:
            helper.put_archive(chunks())
        assert not isinstance(raised.value, EngineUnavailable)
        assert raised.value.filename == "/data/secret.bin"
        assert _helpers(engine) == []  # the helper went away with the failure
    finally:
        engine.docker("volume", "rm", "-f", volume, check=False)
