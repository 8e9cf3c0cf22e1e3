"""The host-side records of Engine-API writes are input read from disk: a damaged, foreign or
hostile record or spool is a clear error naming the file, never a traceback, and never taken
for a write to undo."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cargohold.errors import TransferError
from cargohold.volumes._engine_api import _commit_entries
from cargohold.volumes._journal import Journal, WriteRecord


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_record_round_trips_and_ends(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    record = WriteRecord("v", "ingest x", "merge", "writing", ".cargohold-staging-api",
                         _dead_pid(), "2026-01-01")
    journal.record_write(record)
    assert journal.unfinished_write("v") == record
    journal.end_write("v")
    assert journal.unfinished_write("v") is None


@pytest.mark.parametrize("body", [
    b"", b"{", b"[]", b"null", json.dumps({"volume": "v"}).encode(),
    json.dumps({"volume": "v", "operation": "x", "kind": "wipe", "phase": "writing",
                "staging": "s", "pid": 1, "started": "t", "format": 1}).encode(),
    json.dumps({"volume": "other", "operation": "x", "kind": "merge", "phase": "writing",
                "staging": "s", "pid": 1, "started": "t", "format": 1}).encode(),
    json.dumps({"volume": "v", "operation": "x", "kind": "merge", "phase": "writing",
                "staging": "s", "pid": "1; rm -rf /", "started": "t", "format": 1}).encode(),
    b"\xff\xfe garbage",
])
def test_a_damaged_record_is_an_error_that_names_it(tmp_path: Path, body: bytes) -> None:
    journal = Journal(tmp_path)
    journal.record_write(WriteRecord("v", "x", "merge", "writing", "s", _dead_pid(), "t"))
    path = next(tmp_path.glob("*.write.json"))
    path.write_bytes(body)
    with pytest.raises(TransferError, match="damaged") as raised:
        journal.unfinished_write("v")
    assert str(path) in raised.value.message


def test_a_live_writer_is_refused_and_the_lock_is_exclusive(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        journal.record_write(WriteRecord("v", "ingest x", "merge", "writing", "s",
                                         sleeper.pid, "t"))
        with pytest.raises(TransferError, match="being written by another cargohold run"):
            journal.unfinished_write("v")
    finally:
        sleeper.kill()
        sleeper.wait()
    other = Journal(tmp_path)
    with (
        journal.hold("v", "one"),
        pytest.raises(TransferError, match="another cargohold run"),
        other.hold("v", "two"),
    ):
        pass


@pytest.mark.parametrize("line", [
    "{", "[]", '["v/a", "file", 420]', '["v/a", "file", "x", 0, 0, 0, 0, "", "v/s/a"]',
    '["v/a", "file", 420, 0, 0, 0, 0, ""]', "\x00\x01",
])
def test_a_damaged_spool_is_an_error_that_names_it(tmp_path: Path, line: str) -> None:
    spool = tmp_path / "x.entries"
    spool.write_text('["v", "dir", 493, 0, 0, 0, 0, ""]\n' + line + "\n")
    with pytest.raises(TransferError, match="damaged"):
        list(_commit_entries(spool))


def test_a_missing_spool_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TransferError, match="is gone"):
        list(_commit_entries(tmp_path / "absent.entries"))
