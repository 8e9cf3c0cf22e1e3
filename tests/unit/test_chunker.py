"""The snapshot chunker: block-wise, parallel cutting finds the same chunks as the stream
chunker (snapshots taken before and after deduplicate against each other), and data that
hardly compresses is stored as it is, readable either way."""

from __future__ import annotations

import io
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pyfastcdc import FastCDC

from cargohold.snapshots._format import ChunkerParams, Keys
from cargohold.snapshots.snapshot import _Chunker, _Stats


class _Repo:
    """What the chunker asks of a repository: a config, keys, and add_blob."""

    def __init__(self) -> None:
        self.config = type("Config", (), {"chunker": ChunkerParams()})()
        self.keys = Keys(None, 1)
        self.blobs: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def add_blob(self, kind: str, blob: str, plain: Any) -> int:
        with self.lock:
            self.blobs[blob] = bytes(plain)
        return len(plain)


def _stream_chunks(data: bytes) -> tuple[list[str], int]:
    """What pyfastcdc's own stream chunker cuts, as blob ids: the reference."""
    params, keys = ChunkerParams(), Keys(None, 1)
    cdc = FastCDC(params.avg - params.min, min_size=params.min, max_size=params.max,
                  seed=params.seed)
    chunks = list(cdc.cut_stream(io.BytesIO(data)))  # lengths only: the buffer is reused
    refs, pos = [], 0
    for chunk in chunks:
        refs.append(keys.blob_id(data[pos : pos + chunk.length]))
        pos += chunk.length
    return refs, pos


def _data(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    parts, total = [], 0
    while total < size:  # random runs with repeats, so that chunks recur
        fresh = not parts or rng.random() < 0.7
        part = rng.randbytes(rng.randint(1, 3 << 20)) if fresh else parts[-1]
        parts.append(part)
        total += len(part)
    return b"".join(parts)[:size]


@pytest.mark.parametrize("seed,size,block", [(1, 37 << 20, 5 << 20), (2, (4 << 20) + 7, 4 << 20),
                                             (3, 300_000, 8 << 20), (4, 21 << 20, 8 << 20)])
def test_blocks_cut_where_the_stream_cuts(seed: int, size: int, block: int) -> None:
    data = _data(seed, size)
    block_repo = _Repo()
    want = _stream_chunks(data)
    with ThreadPoolExecutor(2) as sealers:
        chunker = _Chunker(block_repo, _Stats(), lambda _: None, sealers)
        chunker._BLOCK = block
        got = chunker.store(io.BytesIO(data), size)
    assert got[2] is None  # (larger than any file kept in a tree)
    got = got[:2]
    assert got == want
    assert b"".join(block_repo.blobs[r] for r in got[0]) == data
    assert got[1] == size


def test_short_reads_change_nothing() -> None:
    data = _data(5, 13 << 20)

    class Trickle(io.RawIOBase):
        def __init__(self) -> None:
            self._inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            return self._inner.readinto(memoryview(buffer)[: random.randint(1, 300_000)])

    want = _stream_chunks(data)
    with ThreadPoolExecutor(2) as sealers:
        got = _Chunker(_Repo(), _Stats(), lambda _: None, sealers).store(Trickle(), len(data))
    assert got[:2] == want and got[2] is None


@pytest.mark.parametrize("kind", ["random", "text"])
def test_hardly_compressible_data_is_stored_raw_and_reads_back(kind: str) -> None:
    keys = Keys(None, 1)
    data = os.urandom(1 << 20) if kind == "random" else b"step,loss\n1,0.25\n" * 60_000
    sealed = keys.seal(data)
    assert sealed[0] == (0 if kind == "random" else 1)
    assert keys.unseal(sealed, "test") == data
    assert len(sealed) < len(data) // 4 or kind == "random"


def test_a_session_writes_index_files_as_it_goes_and_deduplicates_across_them(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Index files every few blobs (a million-file snapshot must not hold every entry until
    its end): blobs already moved into the lookup table still deduplicate, and the
    snapshot restores whole."""
    from cargohold.snapshots import repository
    from cargohold.snapshots.restore import restore_to_path
    from cargohold.snapshots.snapshot import snapshot_path

    monkeypatch.setattr(repository, "_INDEX_BATCH", 7)
    source = tmp_path / "src"
    source.mkdir()
    rng = random.Random(9)
    for i in range(60):
        (source / f"f{i:02}").write_bytes(rng.randbytes(rng.randint(1, 120_000)))  # raw
    (source / "dup").write_bytes((source / "f07").read_bytes())
    repository.init_repository(str(tmp_path / "repo"))
    config = tmp_path / "repo" / "repository.json"  # 1 MiB packs: several finish mid-session
    config.write_text(config.read_text().replace('"pack_size": 16777216', '"pack_size": 1048576'))
    first = snapshot_path(source, repository.open_repository(str(tmp_path / "repo")))
    assert len(list((tmp_path / "repo" / "index").iterdir())) >= 2  # one only at the end before
    again = snapshot_path(source, repository.open_repository(str(tmp_path / "repo")))
    assert again.new_objects == 0
    restore_to_path(repository.open_repository(str(tmp_path / "repo")), first.id, tmp_path / "out")
    for path in source.iterdir():
        assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes()
