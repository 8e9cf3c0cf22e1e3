"""The host-side lookup of the newest whole checkpoint, on folders a hostile container wrote."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from cargohold.checkpoint import CheckpointManager
from cargohold.resume import latest_whole_checkpoint


def _saved(folder: Path, *steps: int) -> None:
    manager = CheckpointManager(str(folder), keep_last=0)
    for step in steps:
        manager.save(step, {"w.bin": f"weights {step}".encode(), "sub/x.bin": b"x" * step})
    manager.close()


def _manifest(folder: Path, step: int) -> tuple[Path, dict[str, object]]:
    path = folder / f"step-{step:010d}" / "manifest.json"
    return path, json.loads(path.read_text())


def test_finds_the_newest_whole_checkpoint(tmp_path: Path) -> None:
    _saved(tmp_path, 1, 2, 3)
    assert latest_whole_checkpoint(str(tmp_path)) == "step-0000000003"
    (tmp_path / "step-0000000003" / "w.bin").write_bytes(b"torn")
    assert latest_whole_checkpoint(str(tmp_path)) == "step-0000000002"
    assert latest_whole_checkpoint(str(tmp_path / "absent")) is None


def test_hostile_manifests_and_files_are_skipped_without_escaping(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"host data")
    ckpt = tmp_path / "ckpt"
    _saved(ckpt, 1, 2, 3, 4, 5, 6)
    # 6: a file is a link to a device that never ends.
    data = ckpt / "step-0000000006" / "w.bin"
    data.unlink()
    data.symlink_to("/dev/zero")
    # 5: the manifest names a host file through "..", with its true size and checksum.
    path, manifest = _manifest(ckpt, 5)
    import zlib

    manifest["files"] = {"../../outside/secret": {
        "size": 9, "crc32": f"{zlib.crc32(b'host data'):08x}"}}
    path.write_text(json.dumps(manifest))
    # 4: an entry that is not a table; 3: a FIFO where a file should be.
    path, manifest = _manifest(ckpt, 4)
    manifest["files"] = {"w.bin": 5}
    path.write_text(json.dumps(manifest))
    fifo = ckpt / "step-0000000003" / "w.bin"
    fifo.unlink()
    os.mkfifo(fifo)
    # 2: the manifest itself is a link to the host's file.
    manifest_2 = ckpt / "step-0000000002" / "manifest.json"
    manifest_2.unlink()
    manifest_2.symlink_to(outside / "secret")
    result: list[str | None] = []
    worker = threading.Thread(target=lambda: result.append(latest_whole_checkpoint(str(ckpt))),
                              daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "the lookup hung on a hostile file"
    assert result == ["step-0000000001"]


def test_a_step_folder_that_is_a_link_is_ignored(tmp_path: Path) -> None:
    real = tmp_path / "real"
    _saved(real, 7)
    ckpt = tmp_path / "ckpt"
    _saved(ckpt, 1)
    (ckpt / "step-0000000009").symlink_to(real / "step-0000000007")
    assert latest_whole_checkpoint(str(ckpt)) == "step-0000000001"
