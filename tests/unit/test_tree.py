"""Tree readers and writers on real files: fidelity, and refusal of hostile archives."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from cargohold.archive import FolderReader, Foreign, TarReader, TarWriter, TreeWriter
from cargohold.archive.confined import ConfinedDir, ConfinedReader, ConfinedWriter
from cargohold.archive.staging import MARKER, STAGING, Marker, recover, staged
from cargohold.errors import CargoholdError, UnsafeArchive
from tests.trees import HOSTILE, listing, make_awkward_tree, member, tar_with


@pytest.mark.parametrize("compression", ["", "gz", "zst"])
def test_folder_to_tar_to_folder_is_identical(tmp_path: Path, compression: str) -> None:
    source = make_awkward_tree(tmp_path / "src")
    buffer = io.BytesIO()
    TarWriter(buffer, compression=compression).write_all(FolderReader(source))
    buffer.seek(0)
    TreeWriter(tmp_path / "dst").write_all(TarReader(buffer))
    assert listing(tmp_path / "dst") == listing(source)


def test_folder_to_folder_is_identical(tmp_path: Path) -> None:
    source = make_awkward_tree(tmp_path / "src")
    TreeWriter(tmp_path / "dst").write_all(FolderReader(source))
    assert listing(tmp_path / "dst") == listing(source)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_and_nothing_escapes(tmp_path: Path, case: str) -> None:
    target = tmp_path / "a" / "b" / "target"
    before = set(os.listdir("/tmp")) | set(os.listdir(tmp_path))
    with pytest.raises(UnsafeArchive) as info:
        TreeWriter(target).write_all(TarReader(io.BytesIO(tar_with(HOSTILE[case]))))
    assert "Refused" in info.value.message
    assert not any("cargohold-escape" in n for n in os.listdir("/tmp"))
    assert set(os.listdir("/tmp")) | set(os.listdir(tmp_path)) <= before | {"a"}
    assert not (tmp_path / "a" / "cargohold-escape-dotdot").exists()


def test_existing_symlink_in_target_is_replaced_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    os.symlink(outside, target / "file.txt")
    TreeWriter(target).write_all(TarReader(io.BytesIO(tar_with([(member("file.txt"), b"new")]))))
    assert outside.read_text() == "keep"
    assert (target / "file.txt").read_text() == "new" and not (target / "file.txt").is_symlink()


# -- issue 8 regressions at the archive level -----------------------------------------------


@pytest.mark.parametrize("name", [".", "./", "", "a/.."])
@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.REGTYPE])
def test_the_root_is_never_replaced(tmp_path: Path, name: str, kind: bytes) -> None:
    """Defect 1: a member named '.', './' or '' of type symlink (or file) replaced the root."""
    target = tmp_path / "target"
    target.mkdir()
    data = b"x" if kind == tarfile.REGTYPE else None
    archive = tar_with([(member(name, kind, "/"), data)])
    with pytest.raises(CargoholdError) as info:
        TreeWriter(target).write_all(TarReader(io.BytesIO(archive)))
    assert "Refused" in info.value.message
    assert target.is_dir() and not target.is_symlink()


def test_a_planted_symlink_on_the_way_is_never_followed(tmp_path: Path) -> None:
    """Defect 2: a symlink inside the target is not a way out, even when it was there before."""
    target, outside = tmp_path / "target", tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    os.symlink(outside, target / "data2")
    archive = tar_with([(member("data2/escaped.txt"), b"x")])
    with pytest.raises(UnsafeArchive):
        TreeWriter(target).write_all(TarReader(io.BytesIO(archive)))
    assert os.listdir(outside) == []


def test_reading_a_folder_never_follows_its_links(tmp_path: Path) -> None:
    """Defect 2 (export side): a link in a volume is read as a link, never as what it names."""
    root, outside = tmp_path / "volume", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("host file")
    os.symlink(outside, root / "data2")
    os.symlink(outside / "secret", root / "s")
    with ConfinedDir.open(root) as base:
        entries = [(e.path, e.kind) for e, _ in ConfinedReader(base)]
        assert entries == [("", "dir"), ("data2", "symlink"), ("s", "symlink")]
        only = [(e.path, e.kind, e.target) for e, _ in ConfinedReader(base, "data2")]
        assert only == [("data2", "symlink", str(outside))]
        with pytest.raises(CargoholdError):
            base.open_file("s")
        with pytest.raises(UnsafeArchive):
            base.open_file("data2/secret")


def test_a_tar_without_folder_entries_makes_its_folders(tmp_path: Path) -> None:
    """Defect 10: `tar cf x.tar data/train/x.npy` holds no folder entries."""
    target = tmp_path / "target"
    archive = tar_with([(member("data/train/x.npy"), b"array")])
    TreeWriter(target).write_all(TarReader(io.BytesIO(archive)))
    assert (target / "data" / "train" / "x.npy").read_bytes() == b"array"


def test_foreign_sources_lose_setuid_and_owners() -> None:
    """Defect 18: an archive must not plant a setuid-root binary; snapshots are not Foreign."""
    info = member("tool")
    info.mode, info.uid, info.gid = 0o6755, 0, 0
    entries = list(Foreign(TarReader(io.BytesIO(tar_with([(info, b"#!/bin/sh\n")])))))
    entry = entries[0][0]
    assert entry.mode == 0o755
    assert (entry.uid, entry.gid) == (os.getuid(), os.getgid())
    exact = next(iter(TarReader(io.BytesIO(tar_with([(info, b"#!/bin/sh\n")])))))[0]
    assert exact.mode == 0o6755


def _staged_write(target: Path, archive: bytes) -> None:
    with ConfinedDir.open(target) as root, staged(root, "test", "merge") as stage:
        writer = ConfinedWriter(stage.dir)
        writer.write_all(TarReader(io.BytesIO(archive)))
        stage.keep_attrs.update(writer.implicit)


def test_a_failed_staged_write_changes_nothing(tmp_path: Path) -> None:
    """Defect 14: a write that fails midway leaves the target as it was."""
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    before = listing(target)
    good = (member("keep.txt"), b"new content")
    bad = (member("dev", tarfile.CHRTYPE), None)
    with pytest.raises(UnsafeArchive):
        _staged_write(target, tar_with([good, bad]))
    assert listing(target) == before


def test_an_interrupted_staged_write_is_finished_or_undone(tmp_path: Path) -> None:
    """Defect 7: a marker says a write was interrupted; recover() finishes or undoes it."""
    target = tmp_path / "target"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with ConfinedDir.open(target) as root:
        marker = Marker("clone a", "replace", "writing", STAGING + "-x", "now")
        (target / marker.staging).mkdir()
        (target / marker.staging / "new.txt").write_text("new")
        (target / MARKER).write_text(json.dumps(dataclasses.asdict(marker)))
        found = recover(root)
        assert found is not None and found[1] == "discarded"
        assert sorted(os.listdir(target)) == ["old.txt"]
        (target / marker.staging).mkdir()
        (target / marker.staging / "new.txt").write_text("new")
        merging = dataclasses.replace(marker, phase="clearing")
        (target / MARKER).write_text(json.dumps(dataclasses.asdict(merging)))
        found = recover(root)
        assert found is not None and found[1] == "completed"
        assert sorted(os.listdir(target)) == ["new.txt"]
        (target / MARKER).write_text("{not json")
        with pytest.raises(CargoholdError, match="damaged"):
            recover(root)


def test_a_walk_reports_what_vanishes_under_it(tmp_path: Path) -> None:
    """Files removed while a walk reaches them are named, not an error (snapshots list them)."""
    root = tmp_path / "volume"
    (root / "a").mkdir(parents=True)
    for i in range(5):
        (root / "a" / f"f{i}").write_text("x")
    vanished: list[str] = []
    with ConfinedDir.open(root) as base:
        seen = []
        for entry, _ in ConfinedReader(base, on_vanished=vanished.append):
            seen.append(entry.path)
            if entry.path == "a/f1":  # the folder's names are already listed
                os.unlink(root / "a" / "f3")
    assert "a/f3" not in seen and vanished == ["a/f3"]
