"""Moving data in and out of real volumes, on both access paths (direct and Engine API)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Resources, run_cli
from tests.trees import HOSTILE, make_awkward_tree, tar_with


@pytest.fixture(params=["local", "archive"])
def access(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _env(tmp_path: Path, access: str, **extra: str) -> dict[str, str]:
    return {"CARGOHOLD_VOLUME_ACCESS": access, "CARGOHOLD_REPO": str(tmp_path / "repo"),
            "XDG_CACHE_HOME": str(tmp_path / "cache"), **extra}


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


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
