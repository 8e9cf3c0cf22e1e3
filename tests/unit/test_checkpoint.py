"""cargohold.checkpoint on a real file system: atomic saves, verified restores, retention,
async saves, preemption, debris, and the ephemeral-storage report."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from cargohold.checkpoint import (
    CheckpointError,
    CheckpointManager,
    CorruptCheckpointWarning,
    EphemeralStorageWarning,
    _format,
    numpy_file,
    storage_report,
)
from tests.conftest import SRC


def _manager(path: Path, **kwargs: object) -> CheckpointManager:
    return CheckpointManager(path, warn_ephemeral=False, **kwargs)  # type: ignore[arg-type]


def test_save_and_restore_round_trip(tmp_path: Path) -> None:
    ckpt = _manager(tmp_path)
    assert ckpt.restore_latest() is None
    ckpt.save(1, {"model.bin": b"one", "nested/opt.bin": lambda f: f.write(b"two")},
              metrics={"loss": 0.5})
    latest = ckpt.restore_latest()
    assert latest is not None and latest.step == 1
    assert latest.read_bytes("model.bin") == b"one"
    assert latest.read_bytes("nested/opt.bin") == b"two"
    assert latest.metrics == {"loss": 0.5}
    manifest = json.loads((latest.path / "manifest.json").read_text())
    assert manifest["files"]["model.bin"]["size"] == 3
    assert manifest["files"]["model.bin"]["crc32"] == f"{zlib.crc32(b'one'):08x}"
    assert manifest["version"] == 1 and manifest["created"] > 0


def test_sha256_checksums_on_request(tmp_path: Path) -> None:
    ckpt = _manager(tmp_path, checksum="sha256")
    ckpt.save(1, {"model.bin": b"one"})
    manifest = json.loads((tmp_path / "step-0000000001" / "manifest.json").read_text())
    assert manifest["files"]["model.bin"]["sha256"] == hashlib.sha256(b"one").hexdigest()
    (tmp_path / "step-0000000001" / "model.bin").write_bytes(b"two")
    with pytest.warns(CorruptCheckpointWarning, match="sha256"):
        assert ckpt.restore_latest() is None


def test_numpy_helper(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    ckpt = _manager(tmp_path)
    weights = np.arange(6, dtype=np.float32)
    ckpt.save(3, {"w.npz": numpy_file({"w": weights})})
    restored = np.load(ckpt.get(3).files["w.npz"])
    assert restored["w"].tolist() == weights.tolist()


def test_saving_a_step_again_replaces_it(tmp_path: Path) -> None:
    ckpt = _manager(tmp_path)
    ckpt.save(1, {"a": b"old"})
    ckpt.save(1, {"a": b"new"})
    assert ckpt.get(1).read_bytes("a") == b"new"
    ckpt.close()  # the old copy is deleted in the background
    assert sorted(os.listdir(tmp_path)) == ["step-0000000001"]


def test_retention_keeps_last_and_never_the_best(tmp_path: Path) -> None:
    ckpt = _manager(tmp_path, keep_last=2, metric="loss", mode="min")
    losses = [0.9, 0.1, 0.5, 0.7, 0.8, 0.6]
    for step, loss in enumerate(losses):
        ckpt.save(step, {"a": b"x"}, metrics={"loss": loss})
    assert [c.step for c in ckpt.list()] == [1, 4, 5]  # best (1) survives, last two kept
    best = ckpt.best()
    assert best is not None and best.step == 1


def test_retention_keep_best_k_max_mode_and_keep_every(tmp_path: Path) -> None:
    ckpt = _manager(tmp_path, keep_last=1, keep_best=2, keep_every=4, metric="acc", mode="max")
    accs = [0.1, 0.9, 0.2, 0.8, 0.3, 0.4, 0.5]
    for step, acc in enumerate(accs):
        ckpt.save(step, {"a": b"x"}, metrics={"acc": acc})
    assert [c.step for c in ckpt.list()] == [0, 1, 3, 4, 6]


def test_keep_last_zero_keeps_everything(tmp_path: Path) -> None:
    ckpt = _manager(tmp_path, keep_last=0)
    for step in range(5):
        ckpt.save(step, {"a": b"x"})
    assert len(ckpt.list()) == 5


def test_corrupt_checkpoint_is_skipped_with_a_warning(tmp_path: Path) -> None:
    ckpt = _manager(tmp_path, keep_last=0)
    ckpt.save(1, {"a": b"good one"})
    ckpt.save(2, {"a": b"good two"})
    target = tmp_path / "step-0000000002" / "a"
    target.write_bytes(b"bad! two")  # same size, different bytes: only the checksum can tell
    with pytest.warns(CorruptCheckpointWarning, match="checksum"):
        latest = ckpt.restore_latest()
    assert latest is not None and latest.step == 1
    # Without verification the size check still catches a truncated file.
    target.write_bytes(b"short")
    with pytest.warns(CorruptCheckpointWarning, match="bytes"):
        latest = ckpt.restore_latest(verify=False)
    assert latest is not None and latest.step == 1
    with pytest.raises(CheckpointError, match="step 2"):
        ckpt.get(2)


def test_partial_checkpoint_without_manifest_is_skipped(tmp_path: Path) -> None:
    ckpt = _manager(tmp_path)
    ckpt.save(1, {"a": b"x"})
    partial = tmp_path / "step-0000000005"
    partial.mkdir()
    (partial / "a").write_bytes(b"half")
    with pytest.warns(CorruptCheckpointWarning, match="no manifest"):
        latest = ckpt.restore_latest()
    assert latest is not None and latest.step == 1


def test_debris_is_cleaned_and_only_debris(tmp_path: Path) -> None:
    ckpt = _manager(tmp_path)
    ckpt.save(1, {"a": b"x"})
    (tmp_path / ".tmp-step-0000000002-4194311-abcd1234").mkdir()  # an old-style pid name
    (tmp_path / ".tmp-step-0000000004-deadbeefdeadbeef").mkdir()  # its writer's lock is free
    (tmp_path / ".lock-deadbeefdeadbeef").touch()
    (tmp_path / ".trash-abcd1234-step-0000000000").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "user-file.txt").write_text("keep me")
    # A live writer in another process (another container, for all PIDs can tell): it holds
    # the fcntl lock named after its temporary folder.
    live = tmp_path / ".tmp-step-0000000003-0123456789abcdef"
    holder = _child(
        """
        import sys, time
        from pathlib import Path
        from cargohold.checkpoint._locks import LivenessLock
        lock = LivenessLock(Path(sys.argv[1]) / ".lock-0123456789abcdef")
        Path(sys.argv[1], ".tmp-step-0000000003-0123456789abcdef").mkdir()
        print("holding", flush=True)
        sys.stdin.read()
        """,
        str(tmp_path),
    )
    with holder:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "holding"
        _manager(tmp_path)
        assert sorted(os.listdir(tmp_path)) == sorted(
            ["step-0000000001", "notes", "user-file.txt", live.name, ".lock-0123456789abcdef"])
        holder.stdin.close()
        holder.wait(timeout=30)
    _manager(tmp_path)  # the writer is gone: now its folder is debris
    assert sorted(os.listdir(tmp_path)) == ["notes", "step-0000000001", "user-file.txt"]


def test_interrupted_replacement_is_rolled_back(tmp_path: Path) -> None:
    ckpt = _manager(tmp_path)
    ckpt.save(4, {"a": b"x"})
    # A writer died between moving the old step aside and renaming the new one in.
    os.rename(tmp_path / "step-0000000004", tmp_path / ".replaced-0a0b0c0d-step-0000000004")
    reopened = _manager(tmp_path)
    assert reopened.get(4).read_bytes("a") == b"x"


def test_bad_names_and_inputs_are_refused(tmp_path: Path) -> None:
    ckpt = _manager(tmp_path)
    for name in ("../escape", "/abs", "manifest.json", ""):
        with pytest.raises(CheckpointError):
            ckpt.save(1, {name: b"x"})
    with pytest.raises(CheckpointError, match="bytes, a function"):
        ckpt.save(1, {"a": 42})
    with pytest.raises(CheckpointError, match="non-negative"):
        ckpt.save(-1, {"a": b"x"})
    with pytest.raises(CheckpointError, match="metric"):
        _manager(tmp_path, keep_best=1)
    assert ckpt.list() == []


def test_directory_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARGOHOLD_CHECKPOINT_DIR", str(tmp_path / "c"))
    assert CheckpointManager(warn_ephemeral=False).directory == tmp_path / "c"
    monkeypatch.delenv("CARGOHOLD_CHECKPOINT_DIR")
    with pytest.raises(CheckpointError, match="CARGOHOLD_CHECKPOINT_DIR"):
        CheckpointManager()


def test_resume_policy_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = _manager(tmp_path, keep_last=0)
    ckpt.save(1, {"a": b"1"})
    ckpt.save(2, {"a": b"2"})
    monkeypatch.setenv("CARGOHOLD_RESUME", "never")
    assert ckpt.restore_latest() is None
    monkeypatch.setenv("CARGOHOLD_RESUME", "path")
    monkeypatch.setenv("CARGOHOLD_RESUME_FROM", str(tmp_path / "step-0000000001"))
    chosen = ckpt.restore_latest()
    assert chosen is not None and chosen.step == 1
    monkeypatch.setenv("CARGOHOLD_RESUME_FROM", str(tmp_path / "step-0000000009"))
    with pytest.raises(CheckpointError, match="cannot be used"):
        ckpt.restore_latest()


def test_save_async_captures_data_before_returning(tmp_path: Path) -> None:
    ckpt = _manager(tmp_path)
    buffer = bytearray(b"before")
    state = {"value": b"before"}

    def writer(f: object) -> None:
        f.write(state["value"])  # type: ignore[attr-defined]

    ckpt.save_async(1, {"buf": buffer, "fn": writer})
    buffer[:] = b"after!"
    state["value"] = b"after!"
    ckpt.wait()
    saved = ckpt.get(1)
    assert saved.read_bytes("buf") == b"before"
    assert saved.read_bytes("fn") == b"before"


def test_save_async_numpy_arrays_are_copied(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    ckpt = _manager(tmp_path)
    weights = np.zeros(1000, dtype=np.float32)
    ckpt.save_async(1, {"w.npz": numpy_file({"w": weights})})
    weights += 1  # training goes on at once
    ckpt.close()
    assert float(np.load(ckpt.get(1).files["w.npz"])["w"].sum()) == 0.0


def test_async_errors_surface_on_the_next_call(tmp_path: Path) -> None:
    ckpt = _manager(tmp_path)

    class Exploding:
        def write(self, f: object) -> None:
            raise OSError(28, "No space left on device")

        def capture(self, staging: object = None) -> Exploding:
            return self

    ckpt.save_async(1, {"a": Exploding()})
    with pytest.raises(CheckpointError, match="No space left"):
        ckpt.save_async(2, {"a": b"x"})
    # The error is reported once; nothing partial is visible.
    ckpt.save(3, {"a": b"x"})
    assert [c.step for c in ckpt.list()] == [3]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]
    ckpt.save_async(4, {"a": Exploding()})
    with pytest.raises(CheckpointError):
        ckpt.wait()
    ckpt.save_async(5, {"a": Exploding()})
    with pytest.raises(CheckpointError):
        ckpt.close()


def _child(script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_sigterm_finishes_in_flight_save_then_final_save(tmp_path: Path) -> None:
    child = _child(
        """
        import sys, time
        from cargohold.checkpoint import CheckpointManager
        ckpt = CheckpointManager(sys.argv[1], keep_last=0, warn_ephemeral=False)
        class SlowInBackground:
            def capture(self, staging=None):
                return self
            def write(self, f):
                time.sleep(5.0)  # still writing at SIGTERM, 0.3 s in (a loaded machine too)
                f.write(b"two")
        ckpt.handle_sigterm(lambda: ckpt.save(999, {"a": b"final"}))
        ckpt.save(1, {"a": b"one"})
        ckpt.save_async(2, {"a": SlowInBackground()})
        print("ready", flush=True)
        while True:
            time.sleep(0.05)
        """,
        str(tmp_path),
    )
    with child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=30)
    assert child.returncode == 143, stderr
    ckpt = _manager(tmp_path)
    assert [c.step for c in ckpt.list()] == [1, 2, 999]
    assert ckpt.get(999).read_bytes("a") == b"final"


def test_sigterm_during_a_synchronous_save_still_makes_the_final_save(tmp_path: Path) -> None:
    """Issue 8, defect 6: the README's pattern deadlocked when SIGTERM hit inside save()."""
    child = _child(
        """
        import sys, time
        from cargohold.checkpoint import CheckpointManager
        ckpt = CheckpointManager(sys.argv[1], keep_last=0, warn_ephemeral=False)
        step = 0
        class Slow:
            def capture(self, staging=None):
                return self
            def write(self, f):
                print("saving", flush=True)
                time.sleep(5.0)  # SIGTERM lands here, 0.3 s in, even on a loaded machine
                f.write(b"slow")
        ckpt.handle_sigterm(lambda: ckpt.save(999, {"a": b"final-%d" % step}))
        while True:
            step += 1
            ckpt.save(step, {"a": Slow()})
        """,
        str(tmp_path),
    )
    with child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "saving"
        time.sleep(0.3)
        child.send_signal(signal.SIGTERM)
        try:
            _, stderr = child.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            pytest.fail("the SIGTERM handler deadlocked inside save()")
    assert child.returncode == 143, stderr
    ckpt = _manager(tmp_path)
    # The interrupted save of step 1 finished first, then the final save ran exactly once.
    assert [c.step for c in ckpt.list()] == [1, 999]
    assert ckpt.get(999).read_bytes("a") == b"final-1"
    assert ckpt.get(1).read_bytes("a") == b"slow"


def test_imports_nothing_outside_the_standard_library() -> None:
    probe = textwrap.dedent(
        """
        import sys
        before = set(sys.modules)
        import cargohold.checkpoint
        import cargohold.checkpoint.dcp  # torch only when its functions are called
        from cargohold.checkpoint import CheckpointManager
        from cargohold.checkpoint.dcp import dcp_async_save, dcp_save
        assert "torch" not in sys.modules
        loaded = {m.split(".")[0] for m in set(sys.modules) - before}
        outside = sorted(m for m in loaded
                         if m not in sys.stdlib_module_names and m != "cargohold")
        print(",".join(outside))
        """
    )
    result = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; "
                             f"sys.path.insert(0, {str(SRC)!r}); exec({probe!r})"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


MOUNTINFO = """\
22 1 0:21 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
23 22 0:22 / /proc rw - proc proc rw
30 22 8:1 /var/lib/docker/volumes/v/_data /ckpt rw,relatime - ext4 /dev/sda1 rw
31 22 0:40 / /dev/shm rw - tmpfs shm rw,size=65536k
32 22 8:1 /home/me/my\\040data /my\\040data ro - ext4 /dev/sda1 rw
"""


@pytest.mark.parametrize(
    ("path", "ephemeral", "fstype"),
    [("/ckpt/run1", False, "ext4"), ("/workspace/ckpt", True, "overlay"),
     ("/dev/shm/x", True, "tmpfs"), ("/my data/sub", False, "ext4"), ("/ckptx", True, "overlay")],
)
def test_storage_report_from_mountinfo(path: str, ephemeral: bool, fstype: str) -> None:
    report = storage_report(path, mountinfo=MOUNTINFO)
    assert (report.ephemeral, report.fstype) == (ephemeral, fstype)
    assert report.reason


def test_ephemeral_warning_is_given_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cargohold.checkpoint import storage

    monkeypatch.setattr(storage, "storage_report",
                        lambda path: storage_report("/workspace", mountinfo=MOUNTINFO))
    with pytest.warns(EphemeralStorageWarning, match="Mount a volume at"):
        CheckpointManager(tmp_path / "e")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CheckpointManager(tmp_path / "e")


def test_latest_valid_helper_matches_manager(tmp_path: Path) -> None:
    ckpt = _manager(tmp_path, keep_last=0)
    for step in (1, 2, 3):
        ckpt.save(step, {"a": str(step).encode()})
    (tmp_path / "step-0000000003" / "a").write_bytes(b"X")
    found = _format.latest_valid(tmp_path)
    assert found is not None and found.name == "step-0000000002"


def test_torch_state_dicts_sync_and_async(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from cargohold.checkpoint import torch_file

    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ckpt = _manager(tmp_path, keep_last=0)
    ckpt.save(1, {"model.pt": torch_file(model.state_dict()),
                  "optim.pt": torch_file(optimizer.state_dict())})
    restored = torch.nn.Linear(4, 3)
    restored.load_state_dict(torch.load(ckpt.get(1).files["model.pt"], weights_only=True))
    assert torch.equal(restored.weight, model.weight)

    before = model.weight.detach().clone()
    ckpt.save_async(2, {"model.pt": torch_file(model.state_dict())})
    with torch.no_grad():
        model.weight.add_(1.0)  # training goes on at once
    ckpt.wait()
    saved = torch.load(ckpt.get(2).files["model.pt"], weights_only=True)
    assert torch.equal(saved["weight"], before)
    # The next async save reuses the staging buffers and still captures the new values.
    ckpt.save_async(3, {"model.pt": torch_file(model.state_dict())})
    ckpt.close()
    assert torch.equal(torch.load(ckpt.get(3).files["model.pt"], weights_only=True)["weight"],
                       model.weight.detach())


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MB file system (a tmpfs; mounting needs root, as CI runs)."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_full_disk_fails_the_save_cleanly_and_keeps_the_previous_checkpoints(
    small_disk: Path,
) -> None:
    ckpt = _manager(small_disk, keep_last=2)
    ckpt.save(1, {"a": b"x" * 500_000})
    with pytest.raises(CheckpointError, match="No space left") as failed:
        ckpt.save(2, {"a": b"y" * 3_000_000})
    assert failed.value.hint
    ckpt.save_async(3, {"a": b"z" * 3_000_000})
    with pytest.raises(CheckpointError, match="No space left"):
        ckpt.wait()
    assert [c.step for c in ckpt.list()] == [1]
    assert ckpt.get(1).read_bytes("a") == b"x" * 500_000
    assert sorted(os.listdir(small_disk)) == ["step-0000000001"]  # no debris, no lock files


def test_full_disk_on_one_rank_fails_the_save_on_every_rank(small_disk: Path) -> None:
    ranks = [CheckpointManager(small_disk, rank=r, world_size=2, timeout=20,
                               warn_ephemeral=False) for r in (0, 1)]
    ranks[0].save_async(1, {"shard-0": b"x" * 100})  # rank 0 waits for rank 1 in the background
    with pytest.raises(CheckpointError, match=r"No space left|rank 1"):
        ranks[1].save(1, {"shard-1": b"y" * 3_000_000})
    with pytest.raises(CheckpointError, match=r"No space left|rank 1"):
        ranks[0].wait()  # whichever rank found the disk full first, both fail
    for manager in ranks:
        manager.close()
    assert not [n for n in os.listdir(small_disk) if n.startswith("step-")]
