"""The fast paths of a confined copy: the kernel copy (and its fallback), openers that reuse the
walk's open folder (and fall back, confined, once it is closed), and the early writeback."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cargohold.archive import _fs, confined
from cargohold.archive._entries import CHUNK
from cargohold.archive.confined import ConfinedDir, ConfinedReader, ConfinedWriter, RegularFile
from cargohold.errors import TransferError, UnsafeArchive

SIZES = [0, 1, 4095, CHUNK - 1, CHUNK, CHUNK + 5, 3 * CHUNK + 17]


def _source(root: Path) -> dict[str, bytes]:
    files = {f"d/f{size}": os.urandom(size) for size in SIZES}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _copy(source: Path, target: Path) -> ConfinedWriter:
    target.mkdir()
    with ConfinedDir.open(source) as src, ConfinedDir.open(target) as dst:
        writer = ConfinedWriter(dst)
        writer.write_all(ConfinedReader(src))
    return writer


def test_a_tree_copied_in_the_kernel_is_exact(tmp_path: Path) -> None:
    files = _source(tmp_path / "src")
    writer = _copy(tmp_path / "src", tmp_path / "dst")
    for rel, data in files.items():
        assert (tmp_path / "dst" / rel).read_bytes() == data
    assert (writer.files, writer.bytes) == (len(files), sum(map(len, files.values())))


@pytest.mark.parametrize("fail_after", [0, 1, 2])
def test_when_the_kernel_cannot_copy_the_rest_is_read_and_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_after: int
) -> None:
    """EXDEV (another file system) on the first call or in the middle of a file: the offsets
    the kernel advanced are where read and write go on."""
    real = os.copy_file_range
    calls: dict[int, int] = {}

    def flaky(src: int, dst: int, count: int) -> int:
        calls[dst] = calls.get(dst, 0) + 1
        if calls[dst] > fail_after:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(src, dst, count)

    monkeypatch.setattr(confined, "_COPY_RANGE", flaky)
    files = _source(tmp_path / "src")
    _copy(tmp_path / "src", tmp_path / "dst")
    for rel, data in files.items():
        assert (tmp_path / "dst" / rel).read_bytes() == data


def test_a_real_error_of_the_kernel_copy_is_not_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(src: int, dst: int, count: int) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(confined, "_COPY_RANGE", broken)
    _source(tmp_path / "src")
    with pytest.raises(OSError, match="Input/output error"):
        _copy(tmp_path / "src", tmp_path / "dst")


def test_an_opener_outlives_the_walk_and_stays_confined(tmp_path: Path) -> None:
    """Openers handed out by a walk reuse its open folder; once the walk has closed it they go
    from the root again, name by name -- through nothing a container swapped in meanwhile."""
    root = tmp_path / "volume"
    (root / "data").mkdir(parents=True)
    (root / "data" / "x.bin").write_bytes(b"inside")
    outside = tmp_path / "host"
    outside.mkdir()
    (outside / "x.bin").write_bytes(b"HOST SECRET")
    with ConfinedDir.open(root) as base:
        walked = list(ConfinedReader(base))  # the walk is over: every folder closed
        opener = next(o for e, o in walked if e.path == "data/x.bin")
        assert opener is not None
        with opener() as f:
            assert isinstance(f, RegularFile) and f.read() == b"inside"
        (root / "data").rename(root / "moved")
        (root / "data").symlink_to(outside)
        with pytest.raises((TransferError, UnsafeArchive)):
            opener()


def test_an_opener_used_during_the_walk_reads_through_the_open_folder(tmp_path: Path) -> None:
    root = tmp_path / "volume"
    for i in range(40):  # more folders than a walk keeps open
        (root / f"d{i:02}").mkdir(parents=True)
        (root / f"d{i:02}" / "f").write_bytes(f"{i}".encode())
    with ConfinedDir.open(root) as base:
        seen = {}
        for entry, opener in ConfinedReader(base):
            if opener is not None:
                with opener() as f:
                    seen[entry.path] = f.read()
        late = [o for e, o in ConfinedReader(base) if o is not None]
        assert [_read(o) for o in late] == [f"{i}".encode() for i in range(40)]
    assert seen == {f"d{i:02}/f": f"{i}".encode() for i in range(40)}


def _read(opener: Callable[[], RegularFile]) -> bytes:
    with opener() as f:
        return f.read()


def test_a_fifo_swapped_in_for_a_file_is_refused_not_read(tmp_path: Path) -> None:
    root = tmp_path / "volume"
    root.mkdir()
    (root / "f").write_bytes(b"x")
    with ConfinedDir.open(root) as base:
        for _entry, opener in ConfinedReader(base):
            if opener is not None:
                (root / "f").unlink()
                os.mkfifo(root / "f")
                with pytest.raises(TransferError, match="not a regular file"):
                    opener()


def test_flushing_writes_back_while_the_block_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    flushed = threading.Event()
    calls: list[int] = []

    def fake_syncfs(fd: int) -> bool:
        calls.append(fd)
        flushed.set()
        return True

    monkeypatch.setattr(_fs, "_syncfs_only", fake_syncfs)
    with _fs.flushing(7, every=0.01):
        assert flushed.wait(5)
    count = len(calls)
    time.sleep(0.05)
    assert calls and set(calls) == {7} and len(calls) == count  # stopped with the block


def _dataset(src: Path) -> None:
    """50 folders of small files, each with a nested folder, a symlink, and a hardlink to a
    file of the folder before (so links cross the two processes' shares)."""
    for d in range(50):
        for sub in ("", "/inner"):
            folder = src / f"c{d:02}{sub}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(20):
                (folder / f"{i}.bin").write_bytes(os.urandom(i * 10))
        os.symlink("0.bin", src / f"c{d:02}" / "link")
        if d:
            os.link(src / f"c{d - 1:02}" / "1.bin", src / f"c{d:02}" / "hl")
        os.utime(src / f"c{d:02}", ns=(10**18, 10**18 + d))


def _same_tree(a: Path, b: Path) -> None:
    for folder, dirs, files in os.walk(a):
        for name in dirs + files:
            x = Path(folder, name)
            y = b / x.relative_to(a)
            sx, sy = x.lstat(), y.lstat()
            assert (sx.st_mode, sx.st_mtime_ns, sx.st_nlink, sx.st_size) == (
                sy.st_mode, sy.st_mtime_ns, sy.st_nlink, sy.st_size
            ), x
            if x.is_symlink():
                assert os.readlink(x) == os.readlink(y)
            elif x.is_file():
                assert x.read_bytes() == y.read_bytes()
    assert sum(len(f) + len(d) for _, d, f in os.walk(a)) == sum(
        len(f) + len(d) for _, d, f in os.walk(b)
    )


def test_a_twin_process_copies_part_of_a_large_walk_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files, folder times, symlinks and hardlinks (across both processes' shares) are as
    with one process; the twin really copied a share."""
    from cargohold.archive import _twin
    from cargohold.archive.folder import FolderReader

    monkeypatch.setattr(_twin, "TWIN_AFTER", 10)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1})
    waited: list[tuple[int, int]] = []
    real_wait = _twin.Twin.wait

    def wait(self: _twin.Twin) -> tuple[int, int]:
        waited.append(real_wait(self))
        return waited[-1]

    monkeypatch.setattr(_twin.Twin, "wait", wait)
    _dataset(tmp_path / "src")
    (tmp_path / "dst").mkdir()
    with ConfinedDir.open(tmp_path / "dst") as root:
        writer = ConfinedWriter(root, workers=4)
        writer.write_all(FolderReader(tmp_path / "src"))
    assert len(waited) == 1 and 0 < waited[0][0] < 2000
    assert writer.files == 2000
    _same_tree(tmp_path / "src", tmp_path / "dst")


def test_a_failing_twin_fails_the_copy_with_its_own_message(tmp_path: Path) -> None:
    """The twin's error reaches the first process as the same kind of error, never a
    traceback; here its target folder was removed under it."""
    from cargohold.archive import _twin
    from cargohold.archive.confined import Share, TwinSource

    _dataset(tmp_path / "src")
    (tmp_path / "gone").mkdir()
    with ConfinedDir.open(tmp_path / "src") as source, ConfinedDir.open(tmp_path / "gone") as gone:
        (tmp_path / "gone").rmdir()
        writer = ConfinedWriter(gone, workers=2)
        twin = _twin.Twin.start(
            TwinSource(source, "", Share(0, before=True)), "c01", writer, lambda n, files=0: None
        )
        assert twin is not None
        try:
            with pytest.raises((OSError, TransferError)) as failed:
                twin.wait()
        finally:
            twin.stop()
            writer.close()
    assert "Traceback" not in str(failed.value)
    assert "No such file" in str(failed.value) or "does not exist" in str(failed.value)


def _twins_of(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"cargohold.archive._twin" in cmdline and marker.encode() in cmdline:
                found.append(int(pid))
    return found


def test_a_twin_dies_with_a_killed_first_process(tmp_path: Path) -> None:
    """SIGKILL leaves the first process no chance to stop its twin: the kernel does
    (PR_SET_PDEATHSIG), so nothing goes on writing into a staging folder a rerun removes."""
    import signal
    import subprocess
    import sys

    src = tmp_path / "src"
    for d in range(300):  # (the twin's half takes seconds: it must die well before it ends)
        (src / f"c{d:03}").mkdir(parents=True)
        for i in range(200):
            (src / f"c{d:03}" / f"{i}").write_bytes(b"x" * 100)
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from cargohold.archive import _twin\n"
        "from cargohold.archive.confined import ConfinedDir, ConfinedWriter\n"
        "from cargohold.archive.folder import FolderReader\n"
        "_twin.TWIN_AFTER = 10\n"
        "os.sched_getaffinity = lambda _: {0, 1}\n"
        "with ConfinedDir.open(Path(sys.argv[2]), create=True) as root:\n"
        "    ConfinedWriter(root, workers=2).write_all(FolderReader(Path(sys.argv[1])))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(confined.__file__).parents[2])}
    first = subprocess.Popen([sys.executable, "-c", script, str(src), str(tmp_path / "dst")],
                             env=env)
    try:
        deadline = time.monotonic() + 30
        while not _twins_of(str(tmp_path)) and time.monotonic() < deadline:
            assert first.poll() is None, "the copy ended before a twin was seen"
            time.sleep(0.01)
        assert _twins_of(str(tmp_path)), "no twin started"
        time.sleep(0.8)  # the twin is past its start, copying
        assert first.poll() is None and _twins_of(str(tmp_path)), "the copy ended too soon"
        first.send_signal(signal.SIGKILL)
        first.wait()
        deadline = time.monotonic() + 0.5
        while _twins_of(str(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _twins_of(str(tmp_path))
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        for pid in _twins_of(str(tmp_path)):
            os.kill(pid, signal.SIGKILL)


def test_a_twin_shares_from_a_position_even_when_the_start_folder_is_gone(
    tmp_path: Path,
) -> None:
    """The split starts at a position in the walk, not at a name: a start folder renamed or
    removed before the twin's walk gets there must not leave the files after it to nobody
    (they were the parent's to skip)."""
    import zlib

    from cargohold.archive import _twin
    from cargohold.archive.confined import Share, TwinSource

    src = tmp_path / "src"
    names = ["a", "b", "d", "e", "f/g", "f/h", "k", "m"]  # "c" (the start) is gone
    for name in names:
        (src / name).mkdir(parents=True)
        for i in range(5):
            (src / name / f"{i}.bin").write_bytes(b"x")
    (tmp_path / "dst").mkdir()
    with ConfinedDir.open(src) as source, ConfinedDir.open(tmp_path / "dst") as target:
        writer = ConfinedWriter(target, workers=2)
        twin = _twin.Twin.start(
            TwinSource(source, "", Share(0, before=True)), "c", writer, lambda n, files=0: None
        )
        assert twin is not None
        try:
            files, _ = twin.wait()
        finally:
            twin.stop()
            writer.close()
    copied = {str(p.relative_to(tmp_path / "dst")) for p in (tmp_path / "dst").rglob("*.bin")}
    expected = {
        f"{name}/{i}.bin"
        for name in names
        if name > "c" and zlib.crc32(name.encode()) % 2 == 1
        for i in range(5)
    }
    assert expected and copied == expected and files == len(expected)


def test_a_twin_imports_nothing_from_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The working folder may be a copied volume (`cd out && sudo cargohold ingest . v`): a
    `cargohold` package planted there never runs in the twin."""
    from cargohold.archive import _twin
    from cargohold.archive.confined import Share, TwinSource

    planted = tmp_path / "cwd" / "cargohold"
    (planted / "archive").mkdir(parents=True)
    marker = tmp_path / "ran"
    (planted / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (planted / "archive" / "__init__.py").write_text("")
    (planted / "archive" / "_twin.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path / "cwd")
    for d in ("a", "b", "c"):
        (tmp_path / "src" / d).mkdir(parents=True)
        (tmp_path / "src" / d / "f").write_bytes(b"x")
    (tmp_path / "dst").mkdir()
    with ConfinedDir.open(tmp_path / "src") as source, ConfinedDir.open(tmp_path / "dst") as dst:
        writer = ConfinedWriter(dst, workers=2)
        twin = _twin.Twin.start(
            TwinSource(source, "", Share(0, before=True)), "a", writer, lambda n, files=0: None
        )
        assert twin is not None
        try:
            twin.wait()
        finally:
            twin.stop()
            writer.close()
    assert not marker.exists()


@pytest.mark.parametrize(
    "argv", [[], ["not json"], ["[]"], ['{"parent": "x"}'], ["{}"], ['{"parent": 1}']]
)
def test_a_twin_started_by_hand_says_so_without_a_traceback(argv: list[str]) -> None:
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(confined.__file__).parents[2])}
    run = subprocess.run([sys.executable, "-P", "-m", "cargohold.archive._twin", *argv],
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "started by cargohold itself" in run.stderr
