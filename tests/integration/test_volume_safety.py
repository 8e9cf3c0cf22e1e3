"""Issue 8 through the real CLI on real volumes, on both access paths: hostile archives, links a
container planted, content-proven prune, full disks and SIGKILL at seeded random moments.

Links are planted the way a container would leave them: as files in the volume's folder, made
here directly (the tests run as root, like dockerd), pointing at a folder of this test outside.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from tests.conftest import SRC, Resources, run_cli
from tests.trees import listing, member, tar_with

SEED = int(os.environ.get("CARGOHOLD_FAULT_SEED", "8"))
KILLS = int(os.environ.get("CARGOHOLD_FAULT_KILLS", "7"))  # per operation: 21 in CI
CLI_EXAMPLES = int(os.environ.get("CARGOHOLD_FUZZ_CLI_EXAMPLES", "4"))


@pytest.fixture(params=["local", "archive"])
def access(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _env(tmp_path: Path, access: str) -> dict[str, str]:
    return {"CARGOHOLD_VOLUME_ACCESS": access, "CARGOHOLD_REPO": str(tmp_path / "repo"),
            "XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_STATE_HOME": str(tmp_path / "state")}


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _refused(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr and "error:" in result.stderr, result.stderr
    return result.stderr


def _volume(docker_client: Any, resources: Resources, suffix: str) -> tuple[str, Path]:
    name = f"{resources.project}-{suffix}"
    resources.volumes.append(name)
    volume = docker_client.volumes.create(name, labels={"cargohold.project": resources.project})
    return name, Path(volume.attrs["Mountpoint"])


def _mountpoint(docker_client: Any, name: str) -> Path:
    return Path(docker_client.volumes.get(name).attrs["Mountpoint"])


def _outside(tmp_path: Path) -> tuple[Path, bytes]:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.chmod(outside, 0o755)
    secret = os.urandom(24)
    (outside / "secret").write_bytes(secret)
    return outside, secret


def _holds(root: Path, secret: bytes) -> list[str]:
    """Regular files under ``root`` (links not followed) whose content is ``secret``."""
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder, name)
            if not path.is_symlink() and path.read_bytes() == secret:
                found.append(str(path))
    return found


# -- defects 1, 2, 10, 15, 18 -----------------------------------------------------------------


def test_an_archive_never_replaces_the_volume_root(
    tmp_path: Path, access: str, docker_resources: Resources, docker_client: Any
) -> None:
    """Defect 1: `.` as a symlink to / made every container mounting the volume see the host."""
    volume, mount = _volume(docker_client, docker_resources, "root")
    for name in (".", "./", ""):
        for kind in (tarfile.SYMTYPE, tarfile.REGTYPE):
            archive = tmp_path / "evil.tar"
            data = b"x" if kind == tarfile.REGTYPE else None
            archive.write_bytes(tar_with([(member(name, kind, "/"), data),
                                          (member("after.txt"), b"y")]))
            stderr = _refused(run_cli("ingest", str(archive), volume, env=_env(tmp_path, access)))
            assert "root" in stderr, (name, kind)
            assert mount.is_dir() and not mount.is_symlink()
            assert not (mount / "after.txt").exists()


def test_links_a_container_planted_are_never_followed(
    tmp_path: Path, access: str, docker_resources: Resources, docker_client: Any
) -> None:
    """Defect 2: `ln -s /tmp/outside /mnt/data2` in a container made ingest write to the host
    and export copy host files out."""
    env = _env(tmp_path, access)
    volume, mount = _volume(docker_client, docker_resources, "planted")
    outside, secret = _outside(tmp_path)
    before = listing(outside)
    os.symlink(outside, mount / "data2")
    os.symlink(outside / "secret", mount / "s")
    (mount / "real").mkdir()
    (mount / "real" / "f.txt").write_text("volume data")
    payload = tmp_path / "payload.txt"
    payload.write_text("from the host")

    assert "symlink" in _refused(run_cli("ingest", str(payload), f"{volume}:data2", env=env))
    assert "symlink" in _refused(run_cli("ingest", str(payload), f"{volume}:data2/x", env=env))
    assert "not a folder" in _refused(run_cli("ingest", str(payload), f"{volume}:real/f.txt/y",
                                              env=env))
    _ok(run_cli("ingest", str(payload), f"{volume}:real/new", env=env))
    assert (mount / "real" / "new" / "payload.txt").read_text() == "from the host"
    assert listing(outside) == before

    for target in (f"{volume}:data2", volume):
        dest = tmp_path / f"export-{len(target)}"
        _ok(run_cli("export", target, str(dest), env=env))
        assert _holds(dest, secret) == []
        assert os.stat(dest).st_mode & 0o777 != 0o777
    assert os.readlink(tmp_path / f"export-{len(volume)}" / "s") == str(outside / "secret")

    for path in ("s", "data2/secret"):
        cat = run_cli("volume", "cat", volume, path, env=env)
        _refused(cat)
        assert secret.hex() not in cat.stdout
    files = json.loads(_ok(run_cli("volume", "files", volume, "data2", "--json", env=env)))
    assert [(f["path"], f["kind"]) for f in files] == [("data2", "symlink")]
    du = json.loads(_ok(run_cli("volume", "du", volume, "--json", env=env)))
    assert du["files"] == 2  # real/f.txt and real/new/payload.txt: links count for nothing
    copy = f"{volume}-copy"
    docker_resources.volumes.append(copy)
    _ok(run_cli("clone", volume, copy, env=env))
    assert _holds(_mountpoint(docker_client, copy), secret) == []
    assert listing(outside) == before


def test_volume_paths_that_climb_are_usage_errors(
    tmp_path: Path, docker_resources: Resources, docker_client: Any
) -> None:
    """Defect 15: `volume files 'V:../..'` was a KeyError traceback."""
    volume, _ = _volume(docker_client, docker_resources, "climb")
    env = _env(tmp_path, "auto")
    for args in (("volume", "files", f"{volume}:../.."), ("volume", "files", volume, "../.."),
                 ("volume", "cat", f"{volume}:../../etc/passwd"), ("volume", "du", "../x"),
                 ("export", f"{volume}:/etc", str(tmp_path / "x"))):
        result = run_cli(*args, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr and "hint:" in result.stderr


def test_foreign_archives_lose_setuid_and_a_tar_without_folders_works(
    tmp_path: Path, access: str, docker_resources: Resources, docker_client: Any
) -> None:
    """Defects 18 and 10: an archive planted a setuid-root binary; `tar cf x.tar a/b/c` failed."""
    volume, mount = _volume(docker_client, docker_resources, "suid")
    tool = member("data/train/tool")
    tool.mode, tool.uid, tool.gid = 0o6755, 0, 0
    shared = member("data/train/x.npy")
    shared.mode, shared.uid, shared.gid = 0o2644, 4321, 4321
    archive = tmp_path / "x.tar"
    archive.write_bytes(tar_with([(tool, b"#!/bin/sh\n"), (shared, b"array")]))
    _ok(run_cli("ingest", str(archive), volume, env=_env(tmp_path, access)))
    tool_st = os.stat(mount / "data" / "train" / "tool")
    assert tool_st.st_mode & 0o7777 == 0o755
    shared_st = os.stat(mount / "data" / "train" / "x.npy")
    assert shared_st.st_mode & 0o7777 == 0o644
    assert (shared_st.st_uid, shared_st.st_gid) == (os.getuid(), os.getgid())
    assert (mount / "data" / "train" / "x.npy").read_bytes() == b"array"


# -- defect 3: prune proves a snapshot is current -----------------------------------------------


def test_prune_compares_content_when_a_stamp_cannot_prove_it(
    tmp_path: Path, docker_resources: Resources, docker_client: Any
) -> None:
    """Defect 3: through the Engine API, a change that kept mtimes (cp -p, tar x, touch -d)
    looked snapshotted and prune removed the volume."""
    labels = {"cargohold.project": docker_resources.project, "cargohold.kind": "cache",
              "cargohold.store": "s"}
    names = {k: f"{docker_resources.project}-{k}" for k in ("same", "touched")}
    for key, name in names.items():
        docker_resources.volumes.append(name)
        docker_client.volumes.create(name, labels=labels)
        (tmp_path / key).mkdir()
        (tmp_path / key / "weights.bin").write_bytes(b"A" * 4096)
        _ok(run_cli("ingest", str(tmp_path / key), name, env=_env(tmp_path, "auto")))
        _ok(run_cli("snapshot", name, env=_env(tmp_path, "auto")))
    changed = _mountpoint(docker_client, names["touched"]) / "weights.bin"
    st = os.stat(changed)
    changed.write_bytes(b"B" * 4096)  # same size ...
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the old mtime
    for access in ("archive", "local"):
        dry = json.loads(_ok(run_cli("prune", "--dry-run", "--json", env=_env(tmp_path, access))))
        decided = {d["volume"]: d for d in dry}
        assert not decided[names["touched"]]["remove"], (access, decided)
        assert "weights.bin changed" in decided[names["touched"]]["reason"]
        assert decided[names["same"]]["remove"], (access, decided)
    refused = run_cli("volume", "rm", names["touched"], env=_env(tmp_path, "archive"))
    assert refused.returncode == 2 and "weights.bin changed" in refused.stderr
    _ok(run_cli("prune", env=_env(tmp_path, "archive")))
    remaining = {v.name for v in docker_client.volumes.list()}
    assert names["touched"] in remaining and names["same"] not in remaining


# -- defect 14: a full disk changes nothing, or says what it changed ---------------------------


@contextlib.contextmanager
def _small_tmpfs(path: Path, size: str = "1m") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _big_source(root: Path, *, files: int = 4, size: int = 600_000) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"part-{i}.bin").write_bytes(os.urandom(size))
    return root


def test_a_full_disk_during_export_changes_nothing(
    tmp_path: Path, docker_resources: Resources, docker_client: Any
) -> None:
    env = _env(tmp_path, "local")
    volume, _ = _volume(docker_client, docker_resources, "big")
    _ok(run_cli("ingest", str(_big_source(tmp_path / "src")), volume, env=env))
    with _small_tmpfs(tmp_path / "small") as small:
        dest = small / "dest"
        dest.mkdir()
        (dest / "keep.txt").write_text("the user's file")
        before = listing(dest)
        stderr = _refused(run_cli("export", "--force", volume, str(dest), env=env))
        assert "No space" in stderr and "unchanged" in stderr
        assert listing(dest) == before
        stderr = _refused(run_cli("export", volume, str(small / "new"), env=env))
        assert "Nothing was written" in stderr
        assert sorted(os.listdir(small)) == ["dest"]


def test_a_full_disk_during_ingest_changes_nothing_in_the_volume(
    tmp_path: Path, access: str, docker_resources: Resources, docker_client: Any
) -> None:
    """Defect 14 on both paths: the Engine API stages too (inside the volume, hard-linked into
    place only when every byte landed), so a full disk leaves every name as it was."""
    env = _env(tmp_path, access)
    volume, mount = _volume(docker_client, docker_resources, "full")
    with _small_tmpfs(mount):
        (mount / "model.bin").write_bytes(b"trained" * 1000)
        (mount / "data").mkdir()
        (mount / "data" / "old.csv").write_text("a,b\n1,2\n")
        # (the engine's archive stream gives the root's mtime to the second)
        resolution = 1 if access == "local" else 10**9
        before = _visible(mount, resolution)
        stderr = _refused(run_cli("ingest", str(_big_source(tmp_path / "src")), volume, env=env))
        assert "no space" in stderr.lower() and f"Nothing in volume {volume} changed" in stderr
        assert _visible(mount, resolution) == before  # the root's own mode and times included
        # what is left of the staging (an empty file through the Engine API) costs no space
        assert all(os.lstat(mount / n).st_size == 0 for n in os.listdir(mount)
                   if n.startswith(".cargohold-"))
        assert "model.bin" in _ok(run_cli("volume", "files", volume, env=env))


# -- defect 7: SIGKILL at random moments, then the same command again -------------------------


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    full = {**os.environ, **env, "PYTHONPATH": str(SRC)}
    return subprocess.Popen([sys.executable, "-m", "cargohold", *args], env=full,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_after(args: list[str], env: dict[str, str], delay: float) -> bool:
    """Run the command and SIGKILL it after ``delay`` seconds; False when it finished first."""
    process = _start(args, env)
    try:
        process.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return True


def _timed(args: list[str], env: dict[str, str]) -> float:
    began = time.monotonic()
    process = _start(args, env)
    assert process.wait(timeout=300) == 0
    return time.monotonic() - began


def _visible(root: Path, mtime_resolution_ns: int = 1) -> list[tuple[object, ...]]:
    rows = listing(root, mtime_resolution_ns=mtime_resolution_ns)
    return [row for row in rows if not str(row[0]).startswith(".cargohold-")]


def _data_tree(root: Path) -> Path:
    root.mkdir(parents=True)
    rng = random.Random(SEED)
    for d in range(6):
        folder = root / f"shard-{d}"
        folder.mkdir()
        for f in range(40):
            (folder / f"sample-{f}.bin").write_bytes(rng.randbytes(rng.randrange(1, 40_000)))
    (root / "model.bin").write_bytes(rng.randbytes(1_500_000))
    os.symlink("model.bin", root / "latest")
    return root


def _content(root: Path) -> list[tuple[object, ...]]:
    """What must survive: paths, types, modes, sizes, hashes, link targets (not the root's
    own times, which an interrupted-then-finished run may legitimately touch)."""
    return [(r[0], r[1], r[2], r[6], r[7], r[8]) for r in _visible(root) if r[0] != "."]


def _assert_whole_or_marked(docker_client: Any, volume: str, want: object) -> None:
    """Right after a kill: no volume, an empty or whole one, or one marked as interrupted."""
    try:
        mount = _mountpoint(docker_client, volume)
    except Exception:  # the kill came before the volume was created
        return
    if not (mount / ".cargohold-incomplete").exists():
        assert _content(mount) in ([], want), f"{volume}: partial data without a marker"


def test_sigkill_at_random_moments_then_rerun(
    tmp_path: Path, docker_resources: Resources, docker_client: Any
) -> None:
    """Defect 7 (and 14): after a SIGKILL a volume or folder is whole, untouched, or marked as
    interrupted; the same command run again finishes it. Seeded (CARGOHOLD_FAULT_SEED)."""
    rng = random.Random(SEED)
    env = _env(tmp_path, "local")
    source = _data_tree(tmp_path / "source")
    want = _content(source)
    kills = 0

    base = f"{docker_resources.project}-kill"
    probe = f"{base}-probe"
    docker_resources.volumes.append(probe)
    duration = _timed(["ingest", str(source), probe], env)
    for i in range(KILLS):
        volume = f"{base}-in-{i}"
        docker_resources.volumes.append(volume)
        kills += _kill_after(["ingest", str(source), volume], env, rng.uniform(0.2, duration))
        _assert_whole_or_marked(docker_client, volume, want)
        _ok(run_cli("ingest", str(source), volume, env=env))
        assert _content(_mountpoint(docker_client, volume)) == want
        assert not any(n.startswith(".cargohold-")
                       for n in os.listdir(_mountpoint(docker_client, volume)))

    for i in range(KILLS):
        copy = f"{base}-clone-{i}"
        docker_resources.volumes.append(copy)
        kills += _kill_after(["clone", probe, copy], env, rng.uniform(0.2, duration))
        _assert_whole_or_marked(docker_client, copy, want)
        again = run_cli("clone", probe, copy, env=env)
        if again.returncode == 2:  # the killed run had in fact finished: nothing to redo
            assert "not empty" in again.stderr
        else:
            assert copy in _ok(again)
        assert _content(_mountpoint(docker_client, copy)) == want

    for i in range(KILLS):
        dest = tmp_path / f"export-{i}"
        force = i % 2 == 1
        if force:
            dest.mkdir()
            (dest / "old.txt").write_text("before")
        args = ["export", *(["--force"] if force else []), probe, str(dest)]
        kills += _kill_after(args, env, rng.uniform(0.2, duration))
        if not force and dest.exists():
            assert _content(dest) == want, "a fresh export is whole or absent"
        else:
            _ok(run_cli(*args, env=env))
        assert [r for r in _content(dest) if r[0] != "old.txt"] == want
        assert not [n for n in os.listdir(tmp_path) if ".partial-" in n]
    assert kills >= 2 * KILLS, f"only {kills} runs were killed before they finished"


def test_sigkill_through_the_engine_api_then_rerun(
    tmp_path: Path, docker_resources: Resources, docker_client: Any
) -> None:
    """The Engine API cannot stage; a volume the killed command created is journalled and the
    rerun starts it over."""
    rng = random.Random(SEED + 1)
    env = _env(tmp_path, "archive")
    source = _data_tree(tmp_path / "source")
    want = _content(source)
    base = f"{docker_resources.project}-akill"
    probe = f"{base}-probe"
    docker_resources.volumes.append(probe)
    duration = _timed(["ingest", str(source), probe], env)
    for i in range(2):
        for command in (["ingest", str(source)], ["clone", probe]):
            volume = f"{base}-{command[0]}-{i}"
            docker_resources.volumes.append(volume)
            _kill_after([*command, volume], env, rng.uniform(0.5, duration))
            again = run_cli(*command, volume, env=env)
            if again.returncode == 2:  # the killed clone had in fact finished
                assert command[0] == "clone" and "not empty" in again.stderr
            else:
                _ok(again)
            assert _content(_mountpoint(docker_client, volume)) == want
    for container in docker_client.containers.list(all=True,
                                                   filters={"label": "cargohold.helper"}):
        with contextlib.suppress(Exception):  # helpers of the killed runs (issue 8 defect 13)
            mounts = [m.get("Name", "") for m in container.attrs.get("Mounts", [])]
            if any(m.startswith(base) for m in mounts):
                container.remove(force=True)


def _write_records(tmp_path: Path) -> list[str]:
    """The host-side records of Engine-API writes in progress (``volumes._journal``)."""
    folder = tmp_path / "state" / "cargohold" / "unfinished"
    return sorted(p.name for p in folder.glob("*.write.json")) if folder.exists() else []


def test_sigkill_of_engine_api_writes_into_volumes_with_data_then_rerun(
    tmp_path: Path, docker_resources: Resources, docker_client: Any
) -> None:
    """Defect 7 through the Engine API, into volumes that already hold data: `ingest` (a merge,
    staged inside the volume), `restore --force` (staged in a second volume) and `restore` into
    a new volume. Right after each kill the visible content is the old one, the new one, or a
    host-side record says a write was under way; the same command again finishes it, and no
    staging volume is left."""
    rng = random.Random(SEED + 2)
    env = _env(tmp_path, "archive")
    source = _data_tree(tmp_path / "source")
    want = _content(source)
    old_tree = tmp_path / "old"
    (old_tree / "shard-0").mkdir(parents=True)
    (old_tree / "shard-0" / "sample-0.bin").write_bytes(b"old sample")
    (old_tree / "notes.txt").write_text("kept by a merge, dropped by a restore")
    base = f"{docker_resources.project}-wkill"
    probe = f"{base}-probe"
    docker_resources.volumes.append(probe)
    duration = _timed(["ingest", str(source), probe], env)
    _ok(run_cli("snapshot", probe, env=env))
    merged = [r for r in _content(old_tree) if r[0] == "notes.txt"] + want
    merged.sort(key=lambda r: str(r[0]))
    kills = 0
    for i in range(3):
        cases = [
            (["ingest", str(source)], True, merged),
            (["restore", f"{probe}@latest", "--force"], True, want),
            (["restore", f"{probe}@latest"], False, want),
        ]
        for command, with_data, expected in cases:
            volume = f"{base}-{command[0]}-{i}-{int(with_data)}"
            docker_resources.volumes.append(volume)
            docker_resources.volumes.append(f"{volume}.cargohold-staging")
            old: list[tuple[object, ...]] = []
            if with_data:
                _ok(run_cli("ingest", str(old_tree), volume, env=env))
                old = _content(_mountpoint(docker_client, volume))
            args = [command[0], *command[1:2], volume, *command[2:]]
            kills += _kill_after(args, env, rng.uniform(0.3, duration))
            with contextlib.suppress(Exception):  # absent when killed before it was made
                now = _content(_mountpoint(docker_client, volume))
                if now not in (old, expected, []):
                    assert _write_records(tmp_path), f"{volume}: partial data and no record"
            again = run_cli(*args, env=env)
            if again.returncode == 2:  # the killed restore into a new volume had finished
                assert not with_data and "not empty" in again.stderr, again.stderr
            else:
                _ok(again)
            assert _content(_mountpoint(docker_client, volume)) == expected, volume
            assert not _write_records(tmp_path)
            staging = [v.name for v in docker_client.volumes.list()
                       if v.name.startswith(base) and v.name.endswith(".cargohold-staging")]
            assert not staging, staging
    assert kills >= 5, f"only {kills} runs were killed before they finished"


def _records_dir(tmp_path: Path) -> Path:
    return tmp_path / "state" / "cargohold" / "unfinished"


def test_engine_api_writes_never_undo_what_others_wrote_and_refuse_a_second_writer(
    tmp_path: Path, docker_resources: Resources, docker_client: Any
) -> None:
    """Review findings on the staged Engine-API path: undoing a killed write removes only its
    own staging folder (never what a job wrote meanwhile); a second cargohold writing the same
    volume on this host is refused; an interrupted replace whose staged volume is gone is
    refused and the volume left as it is; a tar without folder entries never writes through
    a link planted where a folder would be made."""
    from cargohold.volumes._journal import Journal, WriteRecord

    env = _env(tmp_path, "archive")
    journal = Journal(_records_dir(tmp_path))
    volume, mount = _volume(docker_client, docker_resources, "review")
    gone_pid = subprocess.Popen(["true"])  # a pid that is gone
    gone_pid.wait()

    # 1. a killed merge into an empty volume; then a job writes; the rerun keeps the job's file
    journal.record_write(WriteRecord(volume, "ingest x", "merge", "writing",
                                     ".cargohold-staging-api", gone_pid.pid, "2026-01-01"))
    (mount / ".cargohold-staging-api").mkdir()
    (mount / ".cargohold-staging-api" / "half.bin").write_bytes(b"partial")
    (mount / "job-output.txt").write_text("written by a job after the kill")
    payload = tmp_path / "payload"
    payload.mkdir()
    (payload / "a.txt").write_text("a")
    result = run_cli("ingest", str(payload), volume, env=env)
    assert "cleaned up after an interrupted" in _ok(result) + result.stderr
    assert (mount / "job-output.txt").read_text() == "written by a job after the kill"
    assert (mount / "a.txt").read_text() == "a"

    # 2. a second writer on this host is refused while the first holds the volume
    with journal.hold(volume, "test"):
        stderr = _refused(run_cli("ingest", str(payload), volume, env=env))
        assert "being written by another cargohold run" in stderr

    # 3. finishing a replace whose staged volume is gone: refused, nothing emptied
    journal.record_write(WriteRecord(volume, "restore x", "replace", "committing",
                                     f"{volume}.cargohold-staging", gone_pid.pid, "2026-01-01"))
    stderr = _refused(run_cli("ingest", str(payload), volume, env=env))
    assert "is gone" in stderr
    assert (mount / "job-output.txt").exists()
    journal.end_write(volume)

    # 4. a tar without folder entries, into a volume where a container planted models -> /etc
    os.symlink("/etc", mount / "models")
    archive = tmp_path / "flat.tar"
    archive.write_bytes(tar_with([(member("models/bert/w.bin"), b"weights")]))
    before = _visible(mount, 10**9)
    stderr = _refused(run_cli("ingest", str(archive), volume, env=env))
    assert "symlink" in stderr and "models" in stderr
    assert _visible(mount, 10**9) == before
    assert not [n for n in os.listdir(_records_dir(tmp_path)) if n.endswith(".write.json")]


# -- generated hostile archives through the CLI, both paths -----------------------------------


@pytest.mark.parametrize("path", ["local", "archive"])
def test_generated_hostile_archives_through_the_cli(
    tmp_path: Path, path: str, docker_resources: Resources, docker_client: Any
) -> None:
    from tests.unit.test_confined_properties import _archive, members

    env = _env(tmp_path, path)
    outside, secret = _outside(tmp_path)
    count = [0]

    @settings(max_examples=CLI_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(spec=members)
    def run(spec: list[tuple[str, str, str, int]]) -> None:
        data = _archive(spec, str(outside))
        if data is None:
            return
        count[0] += 1
        volume, mount = _volume(docker_client, docker_resources, f"fuzz-{count[0]}")
        os.symlink(outside, mount / "planted")
        os.symlink(outside / "secret", mount / "secret")
        before = listing(outside)
        archive = tmp_path / f"fuzz-{count[0]}.tar"
        archive.write_bytes(data)
        result = run_cli("ingest", str(archive), volume, env=env)
        if result.returncode != 0:
            _refused(result)
        assert mount.is_dir() and not mount.is_symlink()
        assert listing(outside) == before
        dest = tmp_path / f"out-{count[0]}"
        _ok(run_cli("export", volume, str(dest), env=env))
        assert _holds(dest, secret) == []
        docker_client.volumes.get(volume).remove(force=True)

    run()


# -- restore stages through the same confinement ---------------------------------------------


def _marker(operation: str, phase: str, staging: str) -> str:
    return json.dumps({"operation": operation, "mode": "replace", "phase": phase,
                       "staging": staging, "started": "2026-01-01T00:00:00+00:00", "format": 1})


@pytest.mark.parametrize("into", ["volume", "folder"])
def test_restore_never_follows_links_planted_where_it_stages(
    tmp_path: Path, into: str, docker_resources: Resources, docker_client: Any
) -> None:
    """restore once staged and swapped by path: `.cargohold-restore.old` planted as a link to a
    host folder made `restore --force` (or its rerun after a kill) move the volume's files onto
    the host. Every name restore's staging uses, old and new, is planted here as such a link,
    with the state of an interrupted run that would resume through it."""
    env = _env(tmp_path, "local")
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "weights.bin").write_bytes(os.urandom(50_000))
    (source / "sub" / "a.txt").write_text("from the snapshot")
    snap = json.loads(_ok(run_cli("snapshot", str(source), "--json", env=env)))
    if into == "volume":
        name, root = _volume(docker_client, docker_resources, "planted-restore")
        target = [name]
    else:
        root = tmp_path / "target"
        root.mkdir()
        target = ["--to", str(root)]
    links = (".cargohold-restore.old", ".cargohold-restore.staging", ".cargohold-staging",
             ".cargohold-staging-0000", ".cargohold-staging-1111")
    outside = {}
    for i, link in enumerate(links):
        folder = tmp_path / f"outside-{i}"
        folder.mkdir()
        (folder / "secret").write_bytes(os.urandom(24))
        os.symlink(folder, root / link)
        outside[folder] = listing(folder)
    (root / "old.txt").write_text("the volume's old content")

    # A run killed while writing (today's marker), and one the old code resumed mid-swap
    # through `.cargohold-restore.old`: the rerun discards the first; the second is just data.
    (root / ".cargohold-incomplete").write_text(
        _marker(f"restore {snap['id']}", "writing", ".cargohold-staging-0000"))
    (root / ".cargohold-restore.json").write_text(
        json.dumps({"snapshot": snap["id"], "phase": "swapping"}))
    _ok(run_cli("restore", snap["id"], *target, "--force", env=env))
    assert {folder: listing(folder) for folder in outside} == outside
    assert listing(root) == listing(source)
    assert root.is_dir() and not root.is_symlink()

    # A run killed while clearing, whose staging folder is now a link: nothing is followed,
    # nothing is removed, and the message names it.
    os.symlink(tmp_path / "outside-4", root / ".cargohold-staging-1111")
    (root / ".cargohold-incomplete").write_text(
        _marker(f"restore {snap['id']}", "clearing", ".cargohold-staging-1111"))
    stderr = _refused(run_cli("restore", snap["id"], *target, "--force", env=env))
    assert ".cargohold-staging-1111" in stderr and "symlink" in stderr
    assert {folder: listing(folder) for folder in outside} == outside
    assert (root / "sub" / "a.txt").read_text() == "from the snapshot"
    assert (root / "weights.bin").read_bytes() == (source / "weights.bin").read_bytes()
