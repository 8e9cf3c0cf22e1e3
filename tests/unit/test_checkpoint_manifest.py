"""A checkpoint's manifest is read in one place, ``_format.Manifest.parse``, into a typed record.

Whatever a manifest holds -- wrong types at every level, no JSON, huge numbers, negative sizes,
names that leave the folder -- reading it gives a ``ValueError`` that says why, and every reader
built on it (``latest_valid``, ``CheckpointManager.list``/``restore_latest``/``get``, and
``cargohold run``'s host-side lookup in ``cargohold.resume``) treats that checkpoint as not
valid and falls back to the previous one: never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cargohold.archive.confined import ConfinedDir, ConfinedReader
from cargohold.checkpoint import (
    CheckpointError,
    CheckpointManager,
    CorruptCheckpointWarning,
    _format,
    latest_valid,
)
from cargohold.resume import latest_whole_checkpoint

Edit = Callable[[dict[str, Any]], object]


def _files(value: object) -> Edit:
    return lambda m: {**m, "files": value}


def _entry(value: object) -> Edit:
    return lambda m: {**m, "files": {"model.pt": value}}


def _key(key: str, value: object) -> Edit:
    return lambda m: {**m, key: value}


def _without(key: str) -> Edit:
    return lambda m: {k: v for k, v in m.items() if k != key}


def _named(name: str) -> Edit:
    """The real file under another name (with its true size and checksum)."""
    return lambda m: {**m, "files": {name: m["files"]["model.pt"]}}


def _ranked(world: object, ranks: object) -> Edit:
    return lambda m: {**m, "world_size": world, "ranks": ranks}


HUGE = 10**400  # more digits than any 64-bit number; JSON and Python take it, we must not
# (what the manifest becomes, what the error must say)
HOSTILE: dict[str, tuple[Edit | bytes, str]] = {
    "not json": (b"{this is not json", "not valid JSON"),
    "not utf-8": (b'{"format": "\xff\xfe"}', "not valid JSON"),
    "empty": (b"", "not valid JSON"),
    "nested past recursion": (b"[" * 200_000 + b"]" * 200_000, "not valid JSON"),
    "a list": (lambda m: [m], "a list, not a JSON object"),
    "a number": (lambda m: 5, "an integer, not a JSON object"),
    "null": (lambda m: None, "null, not a JSON object"),
    "another format": (_key("format", "safetensors"), "not a cargohold checkpoint manifest"),
    "no format": (_without("format"), "not a cargohold checkpoint manifest"),
    "version a string": (_key("version", "1"), "format version is '1', not a number"),
    "version missing": (_without("version"), "format version is None"),
    "version true": (_key("version", True), "format version is True"),
    "version newer": (_key("version", 2), "newer than this cargohold reads"),
    "version huge": (_key("version", HUGE), "a huge number"),
    "version infinite": (b'{"format": "cargohold-checkpoint", "version": 1e400}', "inf"),
    "version zero": (_key("version", 0), "unknown checkpoint format version 0"),
    "step a string": (_key("step", "2"), "step is '2', not a non-negative integer"),
    "step negative": (_key("step", -1), "step is -1"),
    "step a fraction": (_key("step", 1.5), "step is 1.5"),
    "step missing": (_without("step"), "step is None"),
    "step huge": (_key("step", HUGE), "step is a huge number"),
    "step past 64 bits": (_key("step", 2**63), "larger than any can be"),
    "time a string": (_key("created", "yesterday"), "time is a string, not a number"),
    "time huge": (_key("created", HUGE), "too large a number"),
    "metrics a list": (_key("metrics", [1]), "metrics are a list, not an object"),
    "files a list": (_files(["model.pt"]), "file list is a list, not an object"),
    "files missing": (_without("files"), "file list is null"),
    "entry a number": (_entry(5), "entry for model.pt is an integer, not an object"),
    "entry a list": (_entry([3, "x"]), "entry for model.pt is a list"),
    "size a string": (_entry({"size": "3", "crc32": "0"}), "size of model.pt is '3'"),
    "size negative": (_entry({"size": -1, "crc32": "0"}), "size of model.pt is -1"),
    "size huge": (_entry({"size": HUGE, "crc32": "0"}), "size of model.pt is a huge number"),
    "size true": (_entry({"size": True, "crc32": "0"}), "size of model.pt is True"),
    "no checksum": (_entry({"size": 3}), "model.pt has no checksum"),
    "checksum a number": (_entry({"size": 3, "crc32": 5}), "crc32 checksum of model.pt is 5"),
    "name climbs out": (_named("../outside/secret"), "climbs out of the folder"),
    "name climbs deeper": (_named("sub/../../outside/secret"), "climbs out of the folder"),
    "name absolute": (_named("/etc/hostname"), "is absolute"),
    "name empty": (_named(""), "names no file"),
    "name the manifest": (_named("manifest.json"), "the manifest's own"),
    "name not plain": (_named("sub//model.pt"), "not in its plain form"),
    "name with NUL": (_named("model\x00.pt"), "NUL byte"),
    "world a string": (_ranked("1", {"0": ["model.pt"]}), "world size is '1'"),
    "world zero": (_ranked(0, {}), "world size is 0"),
    "world huge": (_ranked(10**12, {}), "every one of 1000000000000 ranks"),
    "ranks a list": (_ranked(1, [["model.pt"]]), "rank lists are a list"),
    "rank list a string": (_ranked(1, {"0": "model.pt"}), "rank 0 is not a list of names"),
    "a rank missing": (_ranked(2, {"0": ["model.pt"]}), "every one of 2 ranks"),
    "a file nobody's": (_ranked(1, {"0": []}), "rank lists and its files differ"),
    "a file twice": (_ranked(2, {"0": ["model.pt"], "1": ["model.pt"]}), "under two ranks"),
}


def _saved(folder: Path) -> Path:
    """Checkpoints of steps 1 and 2 (one file, ``model.pt``); step 2's manifest path."""
    with CheckpointManager(folder, keep_last=0, warn_ephemeral=False) as ckpt:
        ckpt.save(1, {"model.pt": b"one"}, metrics={"loss": 1.0})
        ckpt.save(2, {"model.pt": b"two"}, metrics={"loss": 0.5})
    return folder / "step-0000000002" / "manifest.json"


def _hostile(path: Path, how: Edit | bytes) -> bytes:
    raw = how if isinstance(how, bytes) else json.dumps(how(json.loads(path.read_text()))).encode()
    path.write_bytes(raw)
    return raw


def _every_reader_skips_step_2(folder: Path, reason: str) -> None:
    found = latest_valid(folder)
    assert found is not None and found.name == "step-0000000001"
    ckpt = CheckpointManager(folder, keep_last=0, warn_ephemeral=False)
    assert [c.step for c in ckpt.list()] == [1]
    with pytest.warns(CorruptCheckpointWarning, match="step 2") as warned:
        latest = ckpt.restore_latest()
    assert latest is not None and latest.step == 1
    assert reason in str(warned[0].message)
    with pytest.raises(CheckpointError, match="cannot be used") as failed:
        ckpt.get(2)
    assert reason in failed.value.message and failed.value.hint
    ckpt.close()
    # cargohold run's lookup outside the container: the same parser, the same answer.
    assert latest_whole_checkpoint(ConfinedReader(ConfinedDir.open(folder))) == (
        "step-0000000001"
    )


@pytest.mark.parametrize(("how", "reason"), HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_manifest_is_a_clear_error_and_never_a_traceback(
    tmp_path: Path, how: Edit | bytes, reason: str
) -> None:
    raw = _hostile(_saved(tmp_path), how)
    with pytest.raises(ValueError) as parsed:
        _format.Manifest.parse(raw)
    assert reason in str(parsed.value)
    assert len(str(parsed.value)) < 200  # a line, however large the manifest
    _every_reader_skips_step_2(tmp_path, reason)


def test_a_name_leaving_the_folder_never_reads_outside(tmp_path: Path) -> None:
    """The bytes outside have the size and checksum the manifest claims: only the name is
    wrong, and that is enough."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"two")
    folder = tmp_path / "ckpt"
    path = _saved(folder)
    manifest = json.loads(path.read_text())
    manifest["files"] = {"../../outside/secret": {"size": 3, "crc32": f"{zlib.crc32(b'two'):08x}"}}
    path.write_text(json.dumps(manifest))
    _every_reader_skips_step_2(folder, "climbs out of the folder")


def test_a_manifest_that_is_no_regular_file_is_never_read(tmp_path: Path) -> None:
    """A FIFO (a read that never starts), a device (one that never ends), a folder, and a file
    past the size limit (sparse: nothing is written) are refused without reading them."""
    path = _saved(tmp_path)
    for make, reason in [
        (lambda: os.mkfifo(path), "not a regular file"),
        (lambda: path.symlink_to("/dev/zero"), "not a regular file"),
        (lambda: path.mkdir(), "not a regular file"),
        (lambda: (path.touch(), os.truncate(path, _format.MAX_MANIFEST + 1)),
         "larger than 16 MiB"),
    ]:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
        make()
        worker = threading.Thread(target=_every_reader_skips_step_2, args=(tmp_path, reason),
                                  daemon=True)
        worker.start()
        worker.join(timeout=30)
        assert not worker.is_alive(), f"a reader hung on a manifest that is {reason}"


def test_a_checkpoint_file_that_is_no_regular_file_is_never_read(tmp_path: Path) -> None:
    _saved(tmp_path)
    data = tmp_path / "step-0000000002" / "model.pt"
    data.unlink()
    os.mkfifo(data)
    with pytest.raises(ValueError, match=r"model\.pt is not a regular file"):
        _format.check_folder(data.parent, verify=True)
    found = latest_valid(tmp_path)
    assert found is not None and found.name == "step-0000000001"
    with ConfinedDir.open(tmp_path) as root:  # the host-side lookup applies the same rule
        assert latest_whole_checkpoint(ConfinedReader(root)) == "step-0000000001"


def test_a_manifest_is_a_frozen_typed_record(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    manifest = _format.read_manifest(path.parent)
    assert (manifest.format, manifest.version, manifest.step) == ("cargohold-checkpoint", 1, 2)
    assert manifest.files["model.pt"] == _format.FileEntry(
        3, "crc32", f"{zlib.crc32(b'two'):08x}")
    assert dict(manifest.metrics) == {"loss": 0.5} and manifest.world_size is None
    assert _format.Manifest.from_json(manifest.to_json()) == manifest
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.step = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        manifest.files["other"] = manifest.files["model.pt"]  # type: ignore[index]


def test_a_manifest_is_read_tolerantly_where_that_is_safe(tmp_path: Path) -> None:
    """Keys a newer writer may add are ignored at every level, ``created`` and ``metrics`` may
    be absent, a version written ``1.0`` is 1, and a metric saved as a boolean is a number."""
    path = _saved(tmp_path)
    manifest = json.loads(path.read_text())
    del manifest["created"]
    manifest.update(version=1.0, metrics={"best": True}, future={"anything": [1, 2]})
    manifest["files"]["model.pt"]["future"] = "ignored"
    path.write_text(json.dumps(manifest))
    parsed = _format.read_manifest(path.parent)
    assert (parsed.version, parsed.created, dict(parsed.metrics)) == (1, 0.0, {"best": 1.0})
    ckpt = CheckpointManager(tmp_path, warn_ephemeral=False)
    latest = ckpt.restore_latest()
    assert latest is not None and latest.step == 2 and latest.read_bytes("model.pt") == b"two"


def test_metrics_are_numbers_before_anything_is_written(tmp_path: Path) -> None:
    """A metric the manifest could not keep as a number fails the save up front (it used to be
    written, and made every later list() raise)."""
    ckpt = CheckpointManager(tmp_path, warn_ephemeral=False)
    with pytest.raises(CheckpointError, match="Metric 'loss' is 'low', not a number"):
        ckpt.save(1, {"a": b"x"}, metrics={"loss": "low"})
    ckpt.save(2, {"a": b"x"}, metrics={"loss": "0.5", "epoch": 3})  # numbers in other clothes
    assert ckpt.get(2).metrics == {"loss": 0.5, "epoch": 3.0}
    assert sorted(os.listdir(tmp_path)) == ["step-0000000002"]


def test_a_metric_an_old_writer_stored_as_text_still_counts(tmp_path: Path) -> None:
    """Before the typed manifest, `metrics={"loss": "0.25"}` was written as text and read as
    0.25: such checkpoints must still be found (metrics are not integrity data); a metric that
    is no number at all is dropped, not the checkpoint."""
    from cargohold.checkpoint import CheckpointManager, latest_valid
    from cargohold.checkpoint._format import read_manifest

    manager = CheckpointManager(tmp_path, keep_last=0)
    manager.save(4, {"w.bin": b"weights"})
    manager.close()
    manifest_path = tmp_path / "step-0000000004" / "manifest.json"
    raw = json.loads(manifest_path.read_text())
    raw["metrics"] = {"loss": "0.25", "note": "best so far", "acc": 0.5, "none": None}
    manifest_path.write_text(json.dumps(raw))
    found = latest_valid(tmp_path)
    assert found is not None and found.name == "step-0000000004"
    assert dict(read_manifest(found).metrics) == {"loss": 0.25, "acc": 0.5}


def test_a_manifest_whose_step_is_not_its_folders_is_not_a_checkpoint(tmp_path: Path) -> None:
    from cargohold.checkpoint import CheckpointManager, latest_valid

    manager = CheckpointManager(tmp_path, keep_last=0)
    manager.save(1, {"w.bin": b"one"})
    manager.save(3, {"w.bin": b"three"})
    manager.close()
    manifest_path = tmp_path / "step-0000000003" / "manifest.json"
    raw = json.loads(manifest_path.read_text())
    raw["step"] = 1000
    manifest_path.write_text(json.dumps(raw))
    found = latest_valid(tmp_path)
    assert found is not None and found.name == "step-0000000001"
    with ConfinedDir.open(tmp_path) as root:  # the host-side lookup applies the same rule
        assert latest_whole_checkpoint(ConfinedReader(root)) == "step-0000000001"


@pytest.mark.parametrize("step", [True, 2**63, -1, 1.0])
def test_a_step_that_is_no_plain_integer_is_a_checkpoint_error(
    tmp_path: Path, step: object
) -> None:
    from cargohold.checkpoint import CheckpointManager
    from cargohold.errors import CheckpointError

    manager = CheckpointManager(tmp_path, keep_last=0)
    with pytest.raises(CheckpointError, match="step must be a non-negative integer"):
        manager.save(step, {"w.bin": b"x"})  # type: ignore[arg-type]
    manager.close()
