"""What the mirror counts as a committed checkpoint, for each writer it knows."""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from cargohold.checkpoint import CheckpointManager
from cargohold.mirror import Mirror, MirrorStatus, committed_checkpoints


def _age(path: Path, seconds: float) -> None:
    """Make a file or a whole folder look ``seconds`` old."""
    when = time.time() - seconds
    targets = [path] if path.is_file() else [path, *path.rglob("*")]
    for target in targets:
        os.utime(target, (when, when), follow_symlinks=False)


def test_cargohold_checkpoints_need_their_manifest_and_intact_files(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last=0)
    for step in (1, 2, 3):
        manager.save(step, {"w.bin": b"x" * (1000 * step)})
    manager.close()
    # A save killed before its manifest, and one whose file was cut short afterwards.
    (tmp_path / "step-0000000004").mkdir()
    (tmp_path / "step-0000000004" / "w.bin").write_bytes(b"partial")
    with open(tmp_path / "step-0000000002" / "w.bin", "r+b") as f:
        f.truncate(10)
    (tmp_path / ".tmp-step-0000000005-1-abc").mkdir()
    found = committed_checkpoints(tmp_path, settle=0)
    assert [(f.name, f.step, f.writer) for f in found] == [
        ("step-0000000001", 1, "cargohold"),
        ("step-0000000003", 3, "cargohold"),
    ]
    assert found[-1].tag == "mirror:cargohold:3:step-0000000003"


def _trainer_checkpoint(root: Path, step: int, *, global_step: int | None = None) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"w" * 100)
    (folder / "trainer_state.json").write_text(
        json.dumps({"global_step": step if global_step is None else global_step})
    )
    return folder


def test_trainer_checkpoints_need_their_state_and_to_settle(tmp_path: Path) -> None:
    first = _trainer_checkpoint(tmp_path, 10)
    # Just written, and nothing newer: the Trainer may still be writing into it.
    assert committed_checkpoints(tmp_path, settle=30) == []
    _age(first, 60)
    assert [f.name for f in committed_checkpoints(tmp_path, settle=30)] == ["checkpoint-10"]
    # A newer folder means the older one is finished, however recent.
    second = _trainer_checkpoint(tmp_path, 20)
    _trainer_checkpoint(tmp_path, 30)
    os.utime(first, None)
    assert [f.name for f in committed_checkpoints(tmp_path, settle=30)] == [
        "checkpoint-10",
        "checkpoint-20",
    ]
    assert second.exists()
    # No trainer_state.json yet, or a state from another step: not a checkpoint.
    (tmp_path / "checkpoint-40").mkdir()
    _age(_trainer_checkpoint(tmp_path, 50, global_step=49), 60)
    _age(tmp_path / "checkpoint-40", 60)
    names = [f.name for f in committed_checkpoints(tmp_path, settle=30)]
    assert "checkpoint-40" not in names and "checkpoint-50" not in names


def _lightning_file(path: Path) -> Path:
    # torch.save writes a zip archive; its central directory is written last.
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00." * 100)
        archive.writestr("archive/version", b"3\n")
    return path


def test_lightning_files_need_a_whole_zip_and_to_settle(tmp_path: Path) -> None:
    good = _lightning_file(tmp_path / "epoch=1-step=200.ckpt")
    assert committed_checkpoints(tmp_path, settle=30) == []  # just written
    _age(good, 60)
    cut = _lightning_file(tmp_path / "epoch=2-step=400.ckpt")
    cut.write_bytes(cut.read_bytes()[:-30])  # the central directory is missing
    _age(cut, 60)
    found = committed_checkpoints(tmp_path, settle=30)
    assert [(f.name, f.step, f.writer) for f in found] == [
        ("epoch=1-step=200.ckpt", 200, "lightning")
    ]
    # last.ckpt is rewritten in place: its stamp changes with it, so it is pushed again.
    last = _lightning_file(tmp_path / "last.ckpt")
    _age(last, 60)
    before = next(f for f in committed_checkpoints(tmp_path, settle=30) if f.name == "last.ckpt")
    _lightning_file(last)
    _age(last, 40)
    after = next(f for f in committed_checkpoints(tmp_path, settle=30) if f.name == "last.ckpt")
    assert before.stamp != after.stamp


def test_a_missing_store_has_no_checkpoints(tmp_path: Path) -> None:
    assert committed_checkpoints(tmp_path / "nope") == []


def test_status_is_a_versioned_record(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    assert MirrorStatus.read(path) is None
    path.write_text("{not json")
    assert MirrorStatus.read(path) is None
    path.write_text(json.dumps({"format": "cargohold-mirror-status", "version": 99}))
    assert MirrorStatus.read(path) is None
    path.write_text(json.dumps({"format": "cargohold-mirror-status", "version": 1, "pushed": 3}))
    status = MirrorStatus.read(path)
    assert status is not None and status.pushed == 3 and status.state == "starting"


def test_a_checkpoint_removed_by_retention_is_skipped_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cargohold.snapshots as snapshots

    store = tmp_path / "ckpt"
    manager = CheckpointManager(store, keep_last=0)
    for step in (1, 2):
        manager.save(step, {"w.bin": b"x" * 1000})
    manager.close()
    real = snapshots.snapshot_path

    def retention_strikes(folder: Path, repo: object, **kwargs: object) -> object:
        if folder.name == "step-0000000001":
            shutil.rmtree(folder)  # the writer's keep_last removed it under the mirror
        return real(folder, repo, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshots, "snapshot_path", retention_strikes)
    mirror = Mirror(store, str(tmp_path / "repo"), say=lambda text, loud: None)
    pushed = mirror.push_new()
    assert [f.name for f in pushed] == ["step-0000000002"]
    assert mirror.status.state == "ok"


def test_restore_skips_a_mirrored_copy_that_is_not_whole(tmp_path: Path) -> None:
    from cargohold.snapshots import open_repository, snapshot_path

    store = tmp_path / "ckpt"
    manager = CheckpointManager(store, keep_last=0)
    manager.save(5, {"w.bin": b"five" * 100})
    manager.save(9, {"w.bin": b"nine" * 100})
    manager.close()
    url = str(tmp_path / "repo")
    Mirror(store, url, say=lambda text, loud: None).push_new()
    # A copy of step 9 taken while it was being deleted: its file is missing.
    broken = tmp_path / "broken" / "step-0000000010"
    shutil.copytree(store / "step-0000000009", broken)
    (broken / "manifest.json").write_text(
        (broken / "manifest.json").read_text().replace('"step": 9', '"step": 10')
    )
    (broken / "w.bin").unlink()
    snapshot_path(broken, open_repository(url), tag="mirror:cargohold:10:step-0000000010")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    said: list[str] = []
    restored = Mirror(fresh, url, say=lambda text, loud: said.append(text)).restore_latest()
    assert restored == fresh / "step-0000000009"
    assert sorted(p.name for p in fresh.iterdir() if not p.name.startswith(".")) == [
        "step-0000000009"
    ]
    assert any("not whole" in line for line in said)


def test_names_that_only_look_like_checkpoints_are_not_mirrored(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep_last=0)
    manager.save(1, {"w.bin": b"x"})
    manager.close()
    os.rename(tmp_path / "step-0000000001", tmp_path / "step-0000000001\n")
    _age(_trainer_checkpoint(tmp_path, 7), 60)
    os.rename(tmp_path / "checkpoint-7", tmp_path / "checkpoint-7\n")
    assert committed_checkpoints(tmp_path, settle=0) == []


def test_the_last_push_takes_a_final_trainer_checkpoint_that_has_not_settled(
    tmp_path: Path,
) -> None:
    """The job ended seconds after its final Trainer save: the mirror's last push must not
    wait for the settle period (it exits right after), or the final checkpoint stays behind.
    Then a fresh node restores it, bytes and all."""
    import threading

    store = tmp_path / "out"
    store.mkdir()
    _age(_trainer_checkpoint(store, 10), 60)
    final = _trainer_checkpoint(store, 20)  # just written
    (final / "optimizer.pt").write_bytes(os.urandom(5000))
    url = str(tmp_path / "repo")
    mirror = Mirror(store, url, settle=30, say=lambda text, loud: None)
    assert [f.name for f in mirror.push_new()] == ["checkpoint-10"]
    stop = threading.Event()
    stop.set()  # the writer has exited
    mirror.run(interval=0.01, stop=stop)
    assert mirror.status.last_pushed == "checkpoint-20" and mirror.status.pushed == 2
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    restored = Mirror(fresh, url, say=lambda text, loud: None).restore_latest()
    assert restored == fresh / "checkpoint-20"
    for name in ("model.safetensors", "trainer_state.json", "optimizer.pt"):
        assert (restored / name).read_bytes() == (final / name).read_bytes()


def test_a_lightning_file_restores_from_the_mirror(tmp_path: Path) -> None:
    store = tmp_path / "ckpt"
    store.mkdir()
    made = _lightning_file(store / "epoch=3-step=400.ckpt")
    _age(made, 60)
    url = str(tmp_path / "repo")
    assert [f.name for f in Mirror(store, url, say=lambda t, loud: None).push_new()] == [
        made.name
    ]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    restored = Mirror(fresh, url, say=lambda t, loud: None).restore_latest()
    assert restored == fresh / made.name and restored.read_bytes() == made.read_bytes()
    assert [p.name for p in fresh.iterdir()] == [made.name]
