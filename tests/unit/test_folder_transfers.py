"""ingest and export with plain folders: no Docker at all (an initContainer, a sidecar, a Slurm
job). DOCKER_HOST points at nothing, so any attempt to reach an engine would fail the command."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from tests.conftest import run_cli

NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def _tree(root: Path) -> dict[str, bytes | None]:
    found: dict[str, bytes | None] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = Path(path).read_bytes()
    return found


def _source(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    (source / "train" / "shard").mkdir(parents=True)
    (source / "train" / "shard" / "0.bin").write_bytes(os.urandom(300_000))
    (source / "labels.csv").write_text("a,1\n")
    return source


def test_ingest_into_a_folder_merges_and_verifies_without_docker(tmp_path: Path) -> None:
    source = _source(tmp_path)
    target = tmp_path / "claim" / "content"
    result = run_cli("ingest", str(source), str(target), "--verify", env=NO_ENGINE)
    assert result.returncode == 0, result.stderr
    assert "2 files" in result.stdout and "verified" in result.stdout
    assert _tree(target) == _tree(source)
    # A second ingest merges: what was there stays.
    (target / "mine.txt").write_text("kept")
    other = tmp_path / "more"
    other.mkdir()
    (other / "extra.txt").write_text("new")
    result = run_cli("ingest", str(other), str(target), env=NO_ENGINE)
    assert result.returncode == 0, result.stderr
    assert (target / "mine.txt").read_text() == "kept"
    assert (target / "extra.txt").read_text() == "new"
    assert not [n for n in os.listdir(target) if n.startswith(".cargohold")]


def test_ingest_of_a_hostile_archive_into_a_folder_writes_nothing(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        good = tarfile.TarInfo("fine.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        link = tarfile.TarInfo("out")
        link.type = tarfile.SYMTYPE
        link.linkname = str(tmp_path / "victim")
        tar.addfile(link)
        through = tarfile.TarInfo("out/pwned.txt")
        through.size = 2
        tar.addfile(through, io.BytesIO(b"no"))
    (tmp_path / "victim").mkdir()
    target = tmp_path / "target"
    result = run_cli("ingest", str(archive), str(target), env=NO_ENGINE)
    assert result.returncode != 0
    assert "passes through symlink" in result.stderr and "Traceback" not in result.stderr
    assert not target.exists() and os.listdir(tmp_path / "victim") == []


def test_ingest_never_writes_through_a_link_planted_in_the_target(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "f.txt").write_text("data")
    target = tmp_path / "target"
    target.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (target / "sub").symlink_to(outside)
    result = run_cli("ingest", str(source), str(target), env=NO_ENGINE)
    assert result.returncode == 0, result.stderr
    # The link was replaced by the source's folder, as a merge replaces any entry: never followed.
    assert os.listdir(outside) == []
    assert not (target / "sub").is_symlink() and (target / "sub" / "f.txt").read_text() == "data"


def test_export_of_a_folder_to_an_archive_and_a_folder_without_docker(tmp_path: Path) -> None:
    source = _source(tmp_path)
    archive = tmp_path / "out.tar.zst"
    result = run_cli("export", str(source), str(archive), env=NO_ENGINE)
    assert result.returncode == 0, result.stderr
    back = tmp_path / "back"
    result = run_cli("ingest", str(archive), str(back), env=NO_ENGINE)
    assert result.returncode == 0, result.stderr
    assert _tree(back) == _tree(source)
    copy = tmp_path / "copy"
    result = run_cli("export", str(source), str(copy), env=NO_ENGINE)
    assert result.returncode == 0, result.stderr
    assert _tree(copy) == _tree(source)
    refused = run_cli("export", str(source), str(copy), env=NO_ENGINE)
    assert refused.returncode == 2 and "is not empty" in refused.stderr


def test_folder_arguments_that_cannot_work_are_clear_errors(tmp_path: Path) -> None:
    source = _source(tmp_path)
    a_file = source / "labels.csv"
    cases = [
        (("ingest", str(tmp_path / "missing"), str(tmp_path / "t")), "does not exist"),
        (("ingest", str(source), str(a_file)), "is not a folder"),
        (("export", str(a_file), str(tmp_path / "t2")), "is not a folder"),
    ]
    for args, message in cases:
        result = run_cli(*args, env=NO_ENGINE)
        assert result.returncode != 0, args
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    # A volume name still means a volume: it needs the engine, and says so.
    result = run_cli("ingest", str(source), "somevolume", env=NO_ENGINE)
    assert result.returncode == 3 and "Docker" in result.stderr


def test_a_folder_is_never_copied_into_itself(tmp_path: Path) -> None:
    source = _source(tmp_path)
    for args in (("ingest", str(source), str(source / "train" / "copy")),
                 ("ingest", str(source), str(source)),
                 ("export", str(source), str(source / "copy"))):
        result = run_cli(*args, env=NO_ENGINE, timeout=60)
        assert result.returncode == 2, (args, result.stderr)
        assert "would read itself" in result.stderr
    assert sorted(p.name for p in (source / "train").iterdir()) == ["shard"]
