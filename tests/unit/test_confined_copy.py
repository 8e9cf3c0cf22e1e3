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

    def fake_syncfs(fd: int) -> None:
        calls.append(fd)
        flushed.set()

    monkeypatch.setattr(_fs, "syncfs", fake_syncfs)
    with _fs.flushing(7, every=0.01):
        assert flushed.wait(5)
    count = len(calls)
    time.sleep(0.05)
    assert calls and set(calls) == {7} and len(calls) == count  # stopped with the block
