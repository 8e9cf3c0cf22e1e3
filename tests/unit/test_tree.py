"""Tree readers and writers on real files: fidelity, and refusal of hostile archives."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from cargohold.archive import FolderReader, TarReader, TarWriter, TreeWriter
from cargohold.errors import UnsafeArchive
from tests.trees import HOSTILE, listing, make_awkward_tree, tar_with


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
    from tests.trees import member

    TreeWriter(target).write_all(TarReader(io.BytesIO(tar_with([(member("file.txt"), b"new")]))))
    assert outside.read_text() == "keep"
    assert (target / "file.txt").read_text() == "new" and not (target / "file.txt").is_symlink()
