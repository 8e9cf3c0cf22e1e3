"""Moving data in and out of real volumes, on both access paths (direct and Engine API)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.conftest import SRC, Resources, run_cli
from tests.trees import HOSTILE, listing, make_awkward_tree, tar_with


@pytest.fixture(params=["local", "archive"])
def access(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _env(tmp_path: Path, access: str, **extra: str) -> dict[str, str]:
    return {"CARGOHOLD_VOLUME_ACCESS": access, "CARGOHOLD_REPO": str(tmp_path / "repo"),
            "XDG_CACHE_HOME": str(tmp_path / "cache"), **extra}


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_round_trip_gives_back_an_identical_tree(
    tmp_path: Path, access: str, docker_resources: Resources
) -> None:
    source = make_awkward_tree(tmp_path / "source")
    first, restored = (f"{docker_resources.project}-{n}" for n in ("data", "restored"))
    docker_resources.volumes += [first, restored]
    env = _env(tmp_path, access)
    _ok(run_cli("ingest", str(source), first, "--verify", env=env))
    snap = json.loads(_ok(run_cli("snapshot", first, "--json", env=env)))
    assert snap["files"] == 5 and snap["new_objects"] == 5  # a hardlink is no second file
    _ok(run_cli("restore", snap["id"], restored, env=env))
    _ok(run_cli("export", restored, str(tmp_path / "exported"), env=env))
    # The Engine API's archives carry whole seconds; the direct path keeps nanoseconds.
    resolution = 1 if access == "local" else 1_000_000_000
    assert listing(tmp_path / "exported", mtime_resolution_ns=resolution) == \
        listing(source, mtime_resolution_ns=resolution)

    archive = tmp_path / "export.tar.zst"
    _ok(run_cli("export", f"{restored}:données d'entraînement", str(archive), env=env))
    with archive.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as plain, \
            tarfile.open(fileobj=plain, mode="r|") as tar:
        names = sorted(m.name for m in tar)
    assert names == [".", "line\nbreak.txt", "spaced name.csv"]


def test_second_snapshot_reuses_everything_and_detects_changes(
    tmp_path: Path, access: str, docker_resources: Resources, docker_client: Any
) -> None:
    volume = f"{docker_resources.project}-data"
    docker_resources.volumes.append(volume)
    env = _env(tmp_path, access)
    _ok(run_cli("ingest", str(make_awkward_tree(tmp_path / "src")), volume, env=env))
    first = json.loads(_ok(run_cli("snapshot", volume, "--json", env=env)))
    second = json.loads(_ok(run_cli("snapshot", volume, "--json", env=env)))
    assert second["new_objects"] == 0 and second["files"] == first["files"]
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "new.bin").write_bytes(b"fresh data")
    _ok(run_cli("ingest", str(tmp_path / "more"), f"{volume}:added", env=env))
    third = json.loads(_ok(run_cli("snapshot", volume, "--json", env=env)))
    assert third["new_objects"] == 1 and third["files"] == first["files"] + 1
    listed = json.loads(_ok(run_cli("snapshots", volume, "--json", env=env)))
    assert [s["id"] for s in listed] == [first["id"], second["id"], third["id"]]


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused_before_anything_is_written(
    tmp_path: Path, case: str, docker_resources: Resources, docker_client: Any
) -> None:
    archive = tmp_path / f"{case}.tar"
    archive.write_bytes(tar_with(HOSTILE[case]))
    volume = f"{docker_resources.project}-evil"
    docker_resources.volumes.append(volume)
    result = run_cli("ingest", str(archive), volume, env=_env(tmp_path, "auto"))
    assert result.returncode != 0
    assert "Refused" in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.stderr
    offender = [m for m, _ in HOSTILE[case]][-1].name
    assert repr(offender) in result.stderr or offender in result.stderr
    assert not any("cargohold-escape" in n for n in os.listdir("/tmp"))
    assert not docker_client.volumes.list(filters={"name": volume})  # nothing was created


def test_restore_needs_force_for_a_volume_with_data_and_verifies_checksums(
    tmp_path: Path, docker_resources: Resources
) -> None:
    data, other = f"{docker_resources.project}-a", f"{docker_resources.project}-b"
    docker_resources.volumes += [data, other]
    env = _env(tmp_path, "auto")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "weights.bin").write_bytes(os.urandom(50_000))
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "other.txt").write_text("other")
    _ok(run_cli("ingest", str(tmp_path / "one"), data, env=env))
    _ok(run_cli("ingest", str(tmp_path / "two"), other, env=env))
    snap = json.loads(_ok(run_cli("snapshot", data, "--json", "--tag", "good", env=env)))

    refused = run_cli("restore", "good", other, env=env)
    assert refused.returncode == 2 and "not empty" in refused.stderr and "--force" in refused.stderr
    assert _ok(run_cli("volume", "cat", other, "other.txt", env=env)) == "other"
    _ok(run_cli("restore", f"{data}@latest", other, "--force", env=env))
    files = json.loads(_ok(run_cli("volume", "files", other, "--json", env=env)))
    assert [f["path"] for f in files] == ["weights.bin"]

    # Corrupt the stored object: the restore stops and leaves no half-restored volume.
    repo = tmp_path / "repo"
    objects = [p for p in (repo / "objects").rglob("*") if p.is_file()]
    assert len(objects) == 1
    raw = bytearray(objects[0].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    objects[0].write_bytes(bytes(raw))
    broken = f"{docker_resources.project}-broken"
    docker_resources.volumes.append(broken)
    failed = run_cli("restore", snap["id"], broken, env=env)
    assert failed.returncode != 0 and "weights.bin" in failed.stderr
    assert "Traceback" not in failed.stderr
    missing = run_cli("volume", "inspect", broken, env=env)
    assert missing.returncode == 3 and "does not exist" in missing.stderr


def test_clear_errors_for_missing_things(tmp_path: Path, docker_resources: Resources,
                                        docker_client: Any) -> None:
    env = _env(tmp_path, "auto")
    absent = f"{docker_resources.project}-absent"
    present = f"{docker_resources.project}-present"
    docker_client.volumes.create(present)
    docker_resources.volumes.append(present)
    for args, code, text in [
        (("snapshot", absent), 3, "does not exist"),
        (("export", absent, str(tmp_path / "x")), 3, "does not exist"),
        (("snapshots",), 1, "No snapshot repository"),
        (("restore", "nope", absent), 1, "No snapshot repository"),
        (("ingest", str(tmp_path / "no-such-dir"), absent), 1, "does not exist"),
        (("snapshot", present, "--repo", "/proc/cargohold-repo"), 1, "Cannot create"),
    ]:
        result = run_cli(*args, env=env)
        assert result.returncode == code, (args, result.stderr)
        assert text in result.stderr and "hint:" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_two_snapshots_at_once_into_one_repository(
    tmp_path: Path, docker_resources: Resources
) -> None:
    first, second = f"{docker_resources.project}-one", f"{docker_resources.project}-two"
    restored = f"{docker_resources.project}-check"
    docker_resources.volumes += [first, second, restored]
    env = _env(tmp_path, "local")
    source = make_awkward_tree(tmp_path / "src")
    _ok(run_cli("ingest", str(source), first, env=env))
    _ok(run_cli("ingest", str(source), second, env=env))  # same content: same objects
    full_env = {**os.environ, **env, "PYTHONPATH": str(SRC)}
    runs = [subprocess.Popen([sys.executable, "-m", "cargohold", "snapshot", v, "--json"],
                             env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for v in (first, second)]
    outputs = [r.communicate(timeout=120) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outputs
    ids = [json.loads(o)["id"] for o, _ in outputs]
    for snapshot_id in ids:
        _ok(run_cli("restore", snapshot_id, restored, "--force", env=env))
        _ok(run_cli("export", restored, str(tmp_path / snapshot_id), env=env))
        assert listing(tmp_path / snapshot_id) == listing(source)
    assert not list((tmp_path / "repo" / "tmp").iterdir())  # no staging debris


def test_clone_and_browse(tmp_path: Path, access: str, docker_resources: Resources,
                          docker_client: Any) -> None:
    source, copy = f"{docker_resources.project}-src", f"{docker_resources.project}-copy"
    docker_client.volumes.create(source, labels={"cargohold.project": docker_resources.project,
                                                 "cargohold.kind": "checkpoints",
                                                 "cargohold.store": "ckpt"})
    docker_resources.volumes += [source, copy]
    env = _env(tmp_path, access)
    tree = make_awkward_tree(tmp_path / "src")
    _ok(run_cli("ingest", str(tree), source, env=env))
    _ok(run_cli("clone", source, copy, env=env))
    assert docker_client.volumes.get(copy).attrs["Labels"]["cargohold.kind"] == "checkpoints"
    du = json.loads(_ok(run_cli("volume", "du", copy, "--json", env=env)))
    assert du["files"] == 5 and du["entries"]["models"] == 300_000  # the hardlink once
    assert _ok(run_cli("volume", "cat", copy, "run.sh", env=env)) == "#!/bin/sh\necho hi\n"
    missing = run_cli("volume", "cat", copy, "nope.txt", env=env)
    assert missing.returncode != 0 and "nope.txt" in missing.stderr
    files = json.loads(_ok(run_cli("volume", "files", copy, "models", "--json", env=env)))
    assert sorted(f["path"] for f in files) == ["model-hardlink.bin", "model.bin"]
    assert sorted(f["kind"] for f in files) == ["file", "hardlink"]  # one inode, two names
    again = run_cli("clone", source, copy, env=env)
    assert again.returncode == 2 and "not empty" in again.stderr


def test_prune_removes_only_unused_unprotected_snapshotted_volumes(
    tmp_path: Path, docker_resources: Resources, docker_client: Any, job_image: str
) -> None:
    project = docker_resources.project
    env = _env(tmp_path, "auto")
    labels = {"cargohold.project": project, "cargohold.kind": "cache", "cargohold.store": "s"}
    names = {k: f"{project}-{k}" for k in
             ("snapshotted", "changed", "never", "protected", "in-use", "foreign")}
    docker_resources.volumes += list(names.values())
    for key, name in names.items():
        extra = {"cargohold.protect": "true"} if key == "protected" else {}
        docker_client.volumes.create(name, labels={} if key == "foreign" else
                                     {**labels, **extra})
        (tmp_path / key).mkdir()
        (tmp_path / key / "f.txt").write_text(key)
        _ok(run_cli("ingest", str(tmp_path / key), name, env=env))
        if key != "never":
            _ok(run_cli("snapshot", name, env=env))
    (tmp_path / "late").mkdir()
    (tmp_path / "late" / "g.txt").write_text("after the snapshot")
    _ok(run_cli("ingest", str(tmp_path / "late"), f"{names['changed']}:late", env=env))
    user = f"{project}-user"
    docker_resources.containers.append(user)
    docker_client.containers.create(job_image, ["true"], name=user,
                                    volumes={names["in-use"]: {"bind": "/x", "mode": "rw"}})

    dry = json.loads(_ok(run_cli("prune", "--dry-run", "--json", env=env)))
    decided = {d["volume"]: d for d in dry}
    assert names["foreign"] not in decided
    assert [v for v, d in decided.items() if d["remove"]] == [names["snapshotted"]]
    assert "never snapshotted" in decided[names["never"]]["reason"]
    assert "changed since" in decided[names["changed"]]["reason"]
    assert "protected" in decided[names["protected"]]["reason"]
    assert user in decided[names["in-use"]]["reason"]
    assert docker_client.volumes.get(names["snapshotted"])  # the dry run removed nothing

    _ok(run_cli("prune", env=env))
    remaining = {v.name for v in docker_client.volumes.list()}
    assert names["snapshotted"] not in remaining
    assert {names[k] for k in ("changed", "never", "protected", "in-use", "foreign")} <= remaining
    refused = run_cli("volume", "rm", names["never"], env=env)
    assert refused.returncode == 2 and "not in any snapshot" in refused.stderr


def test_snapshots_on_s3(tmp_path: Path, docker_resources: Resources,
                         s3_endpoint: dict[str, str]) -> None:
    import s3fs

    bucket = docker_resources.project
    volume, restored = f"{docker_resources.project}-data", f"{docker_resources.project}-back"
    docker_resources.volumes += [volume, restored]
    env = {**_env(tmp_path, "auto"), **s3_endpoint}
    repo = f"s3://{bucket}/team/snapshots"
    source = make_awkward_tree(tmp_path / "src")
    fs = s3fs.S3FileSystem(key=s3_endpoint["AWS_ACCESS_KEY_ID"],
                           secret=s3_endpoint["AWS_SECRET_ACCESS_KEY"],
                           client_kwargs={"endpoint_url": s3_endpoint["CARGOHOLD_S3_ENDPOINT"]})
    try:
        _ok(run_cli("ingest", str(source), volume, env=env))
        first = json.loads(_ok(run_cli("snapshot", volume, "--repo", repo, "--json", env=env)))
        second = json.loads(_ok(run_cli("snapshot", volume, "--repo", repo, "--json", env=env)))
        assert first["new_objects"] == 5 and second["new_objects"] == 0
        assert len(fs.find(f"{bucket}/team/snapshots/objects")) == 5
        listed = json.loads(_ok(run_cli("snapshots", "--repo", repo, "--json", env=env)))
        assert len(listed) == 2
        _ok(run_cli("restore", first["id"], restored, "--repo", repo, env=env))
        _ok(run_cli("export", restored, str(tmp_path / "out"), env=env))
        assert listing(tmp_path / "out") == listing(source)
        fs.pipe({f"{bucket}/raw/train/a.csv": b"x,y\n1,2\n",
                 f"{bucket}/raw/train/b.csv": b"x,y\n3,4\n"})
        _ok(run_cli("ingest", f"s3://{bucket}/raw", f"{volume}:from-s3", "--verify", env=env))
        assert _ok(run_cli("volume", "cat", volume, "from-s3/train/b.csv", env=env)) == \
            "x,y\n3,4\n"
        wrong = run_cli("snapshots", "--repo", repo, env={**env, "AWS_SECRET_ACCESS_KEY": "x"})
        assert wrong.returncode != 0 and "hint:" in wrong.stderr
        assert "Traceback" not in wrong.stderr
    finally:
        if fs.exists(bucket):
            fs.rm(bucket, recursive=True)


def test_a_full_disk_gives_a_clear_error_and_publishes_nothing(
    tmp_path: Path, docker_resources: Resources
) -> None:
    small = tmp_path / "small-disk"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        message = f"cannot mount a small tmpfs: {mounted.stderr}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        volume = f"{docker_resources.project}-big"
        docker_resources.volumes.append(volume)
        env = _env(tmp_path, "auto")
        (tmp_path / "big").mkdir()
        for i in range(4):
            (tmp_path / "big" / f"shard-{i}.bin").write_bytes(os.urandom(1 << 20))
        _ok(run_cli("ingest", str(tmp_path / "big"), volume, env=env))
        repo = small / "repo"
        failed = run_cli("snapshot", volume, "--repo", str(repo), env=env)
        assert failed.returncode != 0
        assert "No space left" in failed.stderr and "hint:" in failed.stderr
        assert "Traceback" not in failed.stderr
        assert list((repo / "snapshots").iterdir()) == []
        assert [p for p in (repo / "objects").rglob("*") if p.is_file()] == []
        assert list((repo / "tmp").iterdir()) == []  # nothing half-written left behind
        for name in ("out.tar", "out-folder"):
            exported = run_cli("export", volume, str(small / name), env=env)
            assert exported.returncode != 0 and "No space left" in exported.stderr
            assert "Traceback" not in exported.stderr and "hint:" in exported.stderr
        assert sorted(p.name for p in small.iterdir()) == ["repo"]  # no partial export
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)
