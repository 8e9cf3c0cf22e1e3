"""The lookup of the newest whole checkpoint, on folders a hostile container wrote, read both ways
``cargohold run`` reads them: a folder on this host (random access: checksums are verified) and
a tar stream as the Engine API sends it (sizes and structure; the job's library verifies the
checksums on restore)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cargohold import resume
from cargohold.archive import EntrySource, TarReader
from cargohold.archive.confined import ConfinedDir, ConfinedReader
from cargohold.checkpoint import CheckpointManager
from cargohold.jobs import Resume, resolve_resume
from cargohold.plan import Plan, make_plan
from cargohold.resume import MAX_MANIFEST, latest_whole_checkpoint
from cargohold.spec import parse_spec
from tests.conftest import SRC


def _folder(root: Path) -> EntrySource:
    """The folder as ``cargohold run`` reads a local volume or a bind-mounted store."""
    return ConfinedReader(ConfinedDir.open(root))


def _stream(root: Path) -> EntrySource:
    """The folder as the engine's archive endpoint streams it: a tar whose first member is the
    folder itself, FIFOs and links as members (the reader judges them), read once."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(root, arcname="_data", recursive=True)
    buffer.seek(0)
    return TarReader(buffer, strip=1)


Reader = Callable[[Path], EntrySource]
BOTH = pytest.mark.parametrize("reader", [_folder, _stream], ids=["folder", "stream"])


def _lookup(reader: Reader, root: Path) -> str | None:
    """The lookup, on a thread that must finish: a hostile file must never make it hang."""
    result: list[str | None] = []
    worker = threading.Thread(target=lambda: result.append(latest_whole_checkpoint(reader(root))),
                              daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "the lookup hung on a hostile file"
    return result[0]


def _saved(folder: Path, *steps: int) -> None:
    manager = CheckpointManager(str(folder), keep_last=0)
    for step in steps:
        manager.save(step, {"w.bin": f"weights {step}".encode(), "sub/x.bin": b"x" * step})
    manager.close()


def _manifest(folder: Path, step: int) -> tuple[Path, dict[str, object]]:
    path = folder / f"step-{step:010d}" / "manifest.json"
    return path, json.loads(path.read_text())


@BOTH
def test_finds_the_newest_whole_checkpoint(tmp_path: Path, reader: Reader) -> None:
    _saved(tmp_path, 1, 2, 3)
    assert _lookup(reader, tmp_path) == "step-0000000003"
    (tmp_path / "step-0000000003" / "w.bin").write_bytes(b"torn")  # a size the manifest denies
    assert _lookup(reader, tmp_path) == "step-0000000002"
    (tmp_path / "step-0000000004").mkdir()  # a newer save that never wrote its manifest
    (tmp_path / "step-0000000004" / "w.bin").write_bytes(b"half")
    assert _lookup(reader, tmp_path) == "step-0000000002"


@BOTH
def test_bit_rot_under_crc32_is_caught_both_ways(tmp_path: Path, reader: Reader) -> None:
    """Same size, other bytes: the folder is checksummed after the walk, the stream's crc32 is
    computed as it passes."""
    _saved(tmp_path, 1, 2)
    (tmp_path / "step-0000000002" / "w.bin").write_bytes(b"weightz 2")
    assert _lookup(reader, tmp_path) == "step-0000000001"


def test_a_sha256_in_the_stream_is_left_to_the_library(tmp_path: Path) -> None:
    """sha256 on request: the folder path checks it; the stream path checks sizes and leaves the
    checksum to the library, which verifies on restore and falls back itself."""
    manager = CheckpointManager(str(tmp_path), keep_last=0, checksum="sha256")
    for step in (1, 2):
        manager.save(step, {"w.bin": f"weights {step}".encode()})
    manager.close()
    (tmp_path / "step-0000000002" / "w.bin").write_bytes(b"weightz 2")
    assert _lookup(_folder, tmp_path) == "step-0000000001"
    assert _lookup(_stream, tmp_path) == "step-0000000002"
    restored = CheckpointManager(str(tmp_path), keep_last=0)
    with pytest.warns(UserWarning, match="step 2"):
        latest = restored.restore_latest()
    restored.close()
    assert latest is not None and latest.step == 1


@BOTH
def test_hostile_manifests_and_files_are_skipped_without_escaping(
    tmp_path: Path, reader: Reader
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"host data")
    ckpt = tmp_path / "ckpt"
    _saved(ckpt, 1, 2, 3, 4, 5, 6, 7, 8)
    # 8: a file is a link to a device that never ends.
    data = ckpt / "step-0000000008" / "w.bin"
    data.unlink()
    data.symlink_to("/dev/zero")
    # 7: the manifest names a host file through "..", with its true size and checksum.
    path, manifest = _manifest(ckpt, 7)
    manifest["files"] = {"../../outside/secret": {
        "size": 9, "crc32": f"{zlib.crc32(b'host data'):08x}"}}
    path.write_text(json.dumps(manifest))
    # 6: an entry that is not a table; 5: a manifest nested deeper than any parser recurses.
    path, manifest = _manifest(ckpt, 6)
    manifest["files"] = {"w.bin": 5}
    path.write_text(json.dumps(manifest))
    (ckpt / "step-0000000005" / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    # 4: a manifest larger than any real one (sparse: nothing is written).
    with open(ckpt / "step-0000000004" / "manifest.json", "r+b") as huge:
        huge.truncate(MAX_MANIFEST + 1)
    # 3: an absolute name and a number as the step; 2: the manifest is a link to a host file.
    path, manifest = _manifest(ckpt, 3)
    manifest["files"] = {"/etc/hostname": {"size": 1, "crc32": "00000000"}}
    path.write_text(json.dumps(manifest))
    manifest_2 = ckpt / "step-0000000002" / "manifest.json"
    manifest_2.unlink()
    manifest_2.symlink_to(outside / "secret")
    assert _lookup(reader, ckpt) == "step-0000000001"


def test_a_fifo_is_never_opened(tmp_path: Path) -> None:
    """On a folder the FIFO is skipped (its checkpoint is not whole); in the engine's stream a
    FIFO is refused by the tar reader as a whole, and the library decides."""
    _saved(tmp_path, 1, 2)
    fifo = tmp_path / "step-0000000002" / "w.bin"
    fifo.unlink()
    os.mkfifo(fifo)
    assert _lookup(_folder, tmp_path) == "step-0000000001"
    assert _lookup(_stream, tmp_path) is None


@BOTH
def test_a_step_name_with_a_newline_is_not_a_checkpoint(tmp_path: Path, reader: Reader) -> None:
    _saved(tmp_path, 1, 2)
    (tmp_path / "step-0000000002").rename(tmp_path / "step-0000000009\n")
    assert _lookup(reader, tmp_path) == "step-0000000001"


@BOTH
def test_a_step_folder_that_is_a_link_is_ignored(tmp_path: Path, reader: Reader) -> None:
    real = tmp_path / "real"
    _saved(real, 7)
    ckpt = tmp_path / "ckpt"
    _saved(ckpt, 1)
    (ckpt / "step-0000000009").symlink_to(real / "step-0000000007")
    assert _lookup(reader, ckpt) == "step-0000000001"


RANK_WORKER = """
import sys
from cargohold.checkpoint import CheckpointManager
from cargohold.jobs import Resume, resolve_resume
from cargohold.plan import Plan, make_plan
ckpt = CheckpointManager(sys.argv[1], keep_last=0, warn_ephemeral=False, timeout=60)
for step in (1, 2):
    ckpt.save(step, {f"shard-{ckpt.rank}.bin": bytes([step]) * (1000 + ckpt.rank)})
ckpt.close()
"""


def test_a_checkpoint_saved_by_two_ranks_is_whole_only_with_every_shard(tmp_path: Path) -> None:
    """The real many-rank format (two processes, ``RANK``/``WORLD_SIZE``), read both ways."""
    ranks = [subprocess.Popen([sys.executable, "-c", RANK_WORKER, str(tmp_path)],
                              env={**os.environ, "PYTHONPATH": str(SRC), "RANK": str(rank),
                                   "WORLD_SIZE": "2"}, stderr=subprocess.PIPE, text=True)
             for rank in range(2)]
    for rank in ranks:
        _, err = rank.communicate(timeout=120)
        assert rank.returncode == 0, err
    assert _manifest(tmp_path, 2)[1]["ranks"] == {"0": ["shard-0.bin"], "1": ["shard-1.bin"]}
    for reader in (_folder, _stream):
        assert _lookup(reader, tmp_path) == "step-0000000002"
    (tmp_path / "step-0000000002" / "shard-1.bin").unlink()
    for reader in (_folder, _stream):
        assert _lookup(reader, tmp_path) == "step-0000000001"


@BOTH
def test_many_rank_manifests_must_name_every_rank(tmp_path: Path, reader: Reader) -> None:
    """ckpt's rank-aware format: ``world_size`` and ``ranks`` (each rank's files), merged."""
    _saved(tmp_path, 1, 2)
    path, manifest = _manifest(tmp_path, 1)
    path.write_text(json.dumps({**manifest, "world_size": 2,
                                "ranks": {"0": ["w.bin"], "1": ["sub/x.bin"]}}))
    path, manifest = _manifest(tmp_path, 2)
    path.write_text(json.dumps({**manifest, "world_size": 2, "ranks": {"0": ["w.bin"]}}))
    assert _lookup(reader, tmp_path) == "step-0000000001"
    path.write_text(json.dumps({**manifest, "world_size": 10**12, "ranks": {}}))
    assert _lookup(reader, tmp_path) == "step-0000000001"
    path.write_text(json.dumps({**manifest, "world_size": 1, "ranks": {"0": ["w.bin"]}}))
    assert _lookup(reader, tmp_path) == "step-0000000001"  # sub/x.bin is nobody's
    path.write_text(json.dumps({**manifest, "world_size": 1,
                                "ranks": {"0": ["w.bin", "sub/x.bin"]}}))
    assert _lookup(reader, tmp_path) == "step-0000000002"


@BOTH
def test_a_hardlinked_file_counts_with_its_bytes(tmp_path: Path, reader: Reader) -> None:
    _saved(tmp_path, 1, 2)
    shared = tmp_path / "step-0000000002" / "sub" / "x.bin"
    shared.unlink()
    (tmp_path / "step-0000000002" / "sub" / "x.bin").write_bytes(b"xx")
    path, manifest = _manifest(tmp_path, 2)
    os.link(tmp_path / "step-0000000002" / "w.bin", tmp_path / "step-0000000002" / "same.bin")
    files = dict(manifest["files"])  # type: ignore[call-overload]
    files["same.bin"] = files["w.bin"]
    path.write_text(json.dumps({**manifest, "files": files}))
    assert _lookup(reader, tmp_path) == "step-0000000002"


def _bind_plan(tmp_path: Path) -> Plan:
    spec = parse_spec(textwrap.dedent("""
        [project]
        name = "p"
        [stores.checkpoints]
        kind = "checkpoints"
        source = "./ckpt"
        target = "/ckpt"
        [jobs.train]
        image = "busybox"
        command = ["true"]
    """), base_dir=tmp_path)
    return make_plan(spec, "train", host_user=(0, 0))


def test_a_bind_mounted_store_is_read_from_this_host(tmp_path: Path) -> None:
    """A store in a host folder needs no engine: the newest whole checkpoint, none for an
    empty or missing folder, and a folder that cannot be walked leaves it to the library."""
    plan = _bind_plan(tmp_path)
    no_engine: Any = None
    assert resolve_resume(no_engine, plan, Resume("auto")) == {"CARGOHOLD_RESUME": "auto"}
    _saved(tmp_path / "ckpt", 1, 2)
    (tmp_path / "ckpt" / "step-0000000002" / "w.bin").write_bytes(b"torn")
    assert resolve_resume(no_engine, plan, Resume("auto")) == {
        "CARGOHOLD_RESUME": "auto", "CARGOHOLD_RESUME_FROM": "/ckpt/step-0000000001"}
    assert resolve_resume(no_engine, plan, Resume("never")) == {"CARGOHOLD_RESUME": "never"}
    (tmp_path / "ckpt").rename(tmp_path / "elsewhere")
    (tmp_path / "ckpt").symlink_to(tmp_path / "elsewhere")  # followed, as Docker follows it
    assert resolve_resume(no_engine, plan, Resume("auto"))["CARGOHOLD_RESUME_FROM"] == (
        "/ckpt/step-0000000001")
    (tmp_path / "ckpt").unlink()
    (tmp_path / "ckpt").write_text("a file where the folder should be")
    assert resolve_resume(no_engine, plan, Resume("auto")) == {"CARGOHOLD_RESUME": "auto"}


@BOTH
def test_manifests_beyond_the_memory_budget_give_no_answer_rather_than_an_old_one(
    tmp_path: Path, reader: Reader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only about one manifest fits: the oldest are dropped as newer ones arrive; when the
    newest is not whole, the older ones were not judged, so there is no answer (the library
    decides), never an older checkpoint than the newest whole one."""
    _saved(tmp_path, 1, 2, 3)
    size = (tmp_path / "step-0000000003" / "manifest.json").stat().st_size
    monkeypatch.setattr(resume, "_MAX_MANIFESTS_KEPT", size + size // 2)
    assert _lookup(reader, tmp_path) == "step-0000000003"
    (tmp_path / "step-0000000003" / "w.bin").write_bytes(b"torn")
    assert _lookup(reader, tmp_path) is None
