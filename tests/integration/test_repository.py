"""The repository format on plain folders (no Docker needed): round trips, forget, gc under
concurrent snapshots, check, encryption, hostile repositories, kills, memory."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import resource
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cargohold.snapshots import SnapshotInfo, open_repository
from cargohold.snapshots._format import Node, SnapshotRecord
from cargohold.snapshots.forget import Policy, apply_policy
from cargohold.snapshots.repository import new_snapshot_id
from tests.conftest import SRC, peak_rss_mb, remove_bucket, run_cli, s3_filesystem
from tests.trees import listing, make_awkward_tree


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"CARGOHOLD_REPO": str(tmp_path / "repo"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
            **extra}


def _popen(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    full = {**os.environ, **env, "PYTHONPATH": str(SRC)}
    return subprocess.Popen([sys.executable, "-m", "cargohold", *args], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _fill(root: Path, seed: int, *, files: int = 40, big: int = 0) -> Path:
    rng = random.Random(seed)
    (root / "shared").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        sub = root / f"part-{i % 4}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i}.bin").write_bytes(rng.randbytes(rng.randint(0, 5000)))
    (root / "shared" / "common.txt").write_text("the same in every tree\n" * 100)
    if big:
        (root / "big.bin").write_bytes(rng.randbytes(big))
    return root


# -- forget: restic's policy semantics, table-driven -----------------------------------------

_T0 = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)  # a Tuesday


def _snaps(*hours_ago: float) -> list[SnapshotInfo]:
    return [
        SnapshotInfo(id=f"s{i}", volume="v", kind="volume",
                     created=(_T0 - timedelta(hours=h)).isoformat(), tag=None, files=0, bytes=0,
                     new_objects=0, new_bytes_stored=0, data_version=0, repo="r")
        for i, h in enumerate(hours_ago)
    ]


@pytest.mark.parametrize(
    ("hours_ago", "policy", "kept"),
    [
        ((0, 1, 2, 3), Policy(last=2), {"s0", "s1"}),
        ((0, 1, 2, 3), Policy(last=10), {"s0", "s1", "s2", "s3"}),
        # hourly: the newest of each hour that has snapshots
        ((0, 0.2, 0.5, 1, 1.5, 3), Policy(hourly=2), {"s0", "s3"}),
        # daily 2: newest of today and of the most recent earlier day with a snapshot
        ((0, 5, 30, 31, 100), Policy(daily=2), {"s0", "s2"}),
        # a day without snapshots does not count against the daily budget
        ((0, 72, 73, 200), Policy(daily=3), {"s0", "s1", "s3"}),
        # weekly uses ISO weeks (Monday first): 0h and 30h ago are the same week
        ((0, 30, 24 * 7, 24 * 15), Policy(weekly=2), {"s0", "s2"}),
        ((0, 24 * 5, 24 * 40, 24 * 70), Policy(monthly=2), {"s0", "s2"}),
        # rules combine: a snapshot kept by any rule is kept
        ((0, 1, 30, 60), Policy(last=1, daily=3), {"s0", "s2", "s3"}),
    ],
)
def test_forget_policy_follows_restic(
    hours_ago: tuple[float, ...], policy: Policy, kept: set[str]
) -> None:
    keep, remove = apply_policy(_snaps(*hours_ago), policy)
    assert {s.id for s, _ in keep} == kept
    assert {s.id for s in remove} == {f"s{i}" for i in range(len(hours_ago))} - kept


def test_forget_keeps_tags_and_lists_before_removing(tmp_path: Path) -> None:
    env = _env(tmp_path)
    source = _fill(tmp_path / "src", 1)
    ids = []
    for i in range(4):
        (source / "counter").write_text(str(i))
        tag = ["--tag", "release"] if i == 0 else []
        ids.append(json.loads(_ok(run_cli("snapshot", str(source), "--json", *tag, env=env)))["id"])
    dry = json.loads(_ok(run_cli("forget", "--keep-last", "1", "--keep-tag", "release",
                                 "--dry-run", "--json", env=env)))
    assert {k["id"] for k in dry["keep"]} == {ids[0], ids[3]}
    assert set(dry["remove"]) == {ids[1], ids[2]}
    assert len(json.loads(_ok(run_cli("snapshots", "--json", env=env)))) == 4
    done = _ok(run_cli("forget", "--keep-last", "1", "--keep-tag", "release", env=env))
    assert done.index("keep") < done.index("forget")  # what stays is listed first
    assert [s["id"] for s in json.loads(_ok(run_cli("snapshots", "--json", env=env)))] == \
        [ids[0], ids[3]]
    refused = run_cli("forget", env=env)
    assert refused.returncode == 2 and "keep" in refused.stderr


# -- round trip, incremental, check, stats on a plain folder --------------------------------


def test_folder_round_trip_incremental_and_chunked(tmp_path: Path) -> None:
    env = _env(tmp_path)
    source = make_awkward_tree(tmp_path / "src")
    rng = random.Random(7)
    (source / "models" / "big.bin").write_bytes(rng.randbytes(6 << 20))
    first = json.loads(_ok(run_cli("snapshot", str(source), "--json", env=env)))
    second = json.loads(_ok(run_cli("snapshot", str(source), "--json", env=env)))
    assert second["new_objects"] == 0 and second["new_bytes_stored"] == 0
    with (source / "models" / "big.bin").open("ab") as f:  # an append stores about a chunk
        f.write(rng.randbytes(100_000))
    third = json.loads(_ok(run_cli("snapshot", str(source), "--json", env=env)))
    assert 0 < third["new_bytes_stored"] < 4_500_000
    for snap in (first, third):
        out = tmp_path / f"out-{snap['id']}"
        _ok(run_cli("restore", snap["id"], "--to", str(out), env=env))
    assert listing(tmp_path / f"out-{third['id']}") == listing(source)
    checked = _ok(run_cli("repo", "check", "--read-data", env=env))
    assert "no problems" in checked
    stats = json.loads(_ok(run_cli("repo", "stats", "--json", env=env)))
    assert stats["snapshots"] == 3 and stats["dedup_ratio"] > 2.5
    packs = list((tmp_path / "repo" / "packs").rglob("*"))
    assert len([p for p in packs if p.is_file()]) <= 6  # packs, not one file per object
    refused = run_cli("restore", first["id"], "--to", str(tmp_path / f"out-{third['id']}"),
                      env=env)
    assert refused.returncode == 2 and "--force" in refused.stderr


# -- encryption ------------------------------------------------------------------------------


def test_encrypted_repository_hides_plaintext_and_needs_the_password(tmp_path: Path) -> None:
    marker = b"CARGOHOLD-PLAINTEXT-MARKER-93e1"
    source = tmp_path / "secret"
    source.mkdir()
    (source / "notes-with-marker.txt").write_bytes(marker + b" " + os.urandom(3000) + marker)
    (source / "empty").write_bytes(b"")
    env = _env(tmp_path, CARGOHOLD_PASSWORD="correct horse")
    _ok(run_cli("repo", "init", "--encrypt", env=env))
    snap = json.loads(_ok(run_cli("snapshot", str(source), "--json", env=env)))
    for path in (tmp_path / "repo").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert marker not in data and b"notes-with-marker" not in data, path
    _ok(run_cli("restore", snap["id"], "--to", str(tmp_path / "back"), env=env))
    assert listing(tmp_path / "back") == listing(source)
    password_file = tmp_path / "pw"
    password_file.write_text("correct horse\n")
    no_env = {k: v for k, v in env.items() if k != "CARGOHOLD_PASSWORD"}
    _ok(run_cli("snapshots", "--password-file", str(password_file), env=no_env))
    for extra, variables in (([], no_env), ([], {**env, "CARGOHOLD_PASSWORD": "wrong"})):
        refused = run_cli("restore", snap["id"], "--to", str(tmp_path / "never"), *extra,
                          env=variables)
        assert refused.returncode == 5, refused.stderr
        assert "password" in refused.stderr.lower() and "hint:" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert not (tmp_path / "never").exists()


# -- hostile repositories ------------------------------------------------------------------


def _craft(repo_url: str, root_nodes: list[Node], extra: dict[str, list[Node]] | None = None
           ) -> str:
    """A snapshot whose trees say whatever an attacker with write access wants."""
    repo = open_repository(repo_url, create=True)
    repo.begin_session()
    try:
        subtrees = {name: repo.store_tree(nodes)[0] for name, nodes in (extra or {}).items()}
        nodes = [dataclasses.replace(n, refs=(subtrees[n.name],))
                 if n.kind == "dir" and n.name in subtrees else n for n in root_nodes]
        # store_tree does not validate: it writes exactly what it is given
        root = Node("root", "dir", 0o755, 0, 0, 0, refs=(repo.store_tree(nodes)[0],))
        repo.flush()
        record = SnapshotRecord(id=new_snapshot_id(), source="/evil", kind="path",
                                created=datetime.now(UTC).isoformat(), files=1, bytes=1,
                                root=root)
        repo.save_snapshot(record)
    finally:
        repo.end_session()
    return record.id


@pytest.mark.parametrize(
    "case",
    ["dotdot", "slash", "empty", "dot", "hardlink-out", "symlink-then-dir", "bad-blob-id",
     "small-file-size-lie", "folder-with-bytes"],
)
def test_hostile_trees_never_write_outside_the_target(tmp_path: Path, case: str) -> None:
    url = str(tmp_path / "repo")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    blob = "0" * 64
    link = Node("x", "symlink", 0o777, 0, 0, 0, target=str(outside))
    file_node = Node("pwned", "file", 0o644, 0, 0, 0, size=0)
    nodes: dict[str, list[Node]] = {}
    roots = {
        "dotdot": [Node("..", "dir", 0o755, 0, 0, 0, refs=(blob,))],
        "slash": [Node("../outside/pwned", "file", 0o644, 0, 0, 0)],
        "empty": [Node("", "symlink", 0o777, 0, 0, 0, target="/")],
        "dot": [Node(".", "file", 0o644, 0, 0, 0)],
        "hardlink-out": [Node("h", "hardlink", 0o644, 0, 0, 0, target="../outside/precious")],
        "symlink-then-dir": [link, Node("x", "dir", 0o755, 0, 0, 0, refs=(blob,))],
        "bad-blob-id": [Node("f", "file", 0o644, 0, 0, 0, size=3, refs=("../../etc",))],
        # small files kept in a tree: bytes that are not the size the node claims, a folder
        # holding bytes of its own
        "small-file-size-lie": [Node("f", "file", 0o644, 0, 0, 0, size=99, data=b"abc")],
        "folder-with-bytes": [Node("d", "dir", 0o755, 0, 0, 0, refs=(blob,), data=b"abc")],
    }
    if case == "symlink-then-dir":
        nodes = {"x": [file_node]}
    snapshot_id = _craft(url, roots[case], nodes)
    target = tmp_path / "target"
    result = run_cli("restore", snapshot_id, "--to", str(target), "--repo", url,
                     env=_env(tmp_path))
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr and "hint:" in result.stderr
    assert sorted(p.name for p in outside.iterdir()) == ["precious"]
    assert (outside / "precious").read_text() == "keep"
    assert target.is_dir() and not target.is_symlink()
    assert [p.name for p in target.iterdir()] == []  # nothing half-restored


def test_damaged_records_give_clear_errors(tmp_path: Path) -> None:
    env = _env(tmp_path)
    source = _fill(tmp_path / "src", 3)
    snap = json.loads(_ok(run_cli("snapshot", str(source), "--json", env=env)))
    repo = tmp_path / "repo"
    record = repo / "snapshots" / snap["id"]
    original = record.read_bytes()
    index = next((repo / "index").iterdir())
    for victim, content in [(record, b"\x00{}"), (record, b"\x00" + b'{"format":"x"}'),
                            (index, b"\x01garbage"), (index, b"\x00CHIX\x02\xff\xff\xff\xff"),
                            (repo / "repository.json", b'{"format": "cargohold-repository"}')]:
        saved = victim.read_bytes()
        victim.write_bytes(content)
        for args in (("restore", snap["id"], "--to", str(tmp_path / "t")),
                     ("repo", "check"), ("snapshots",)):
            result = run_cli(*args, env=env)
            assert "Traceback" not in result.stderr, (victim, args, result.stderr)
            assert result.returncode != 0 or args == ("snapshots",), (victim, args)
        victim.write_bytes(saved)
    assert record.read_bytes() == original
    _ok(run_cli("repo", "check", env=env))


def _blob_tree(root: Path, seed: int) -> Path:
    """60 files of 5-20 KB (each its own blob), three folders."""
    rng = random.Random(seed)
    for i in range(60):
        sub = root / f"d{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}").write_bytes(rng.randbytes(rng.randint(5000, 20000)))
    return root


@pytest.mark.parametrize(
    "case", ["pack-in-two-indexes", "missing-pack-condemned", "missing-pack-in-use", "wrong-offset"]
)
def test_crafted_index_files_never_make_gc_delete_what_a_snapshot_needs(
    tmp_path: Path, case: str
) -> None:
    """Found by adversarial reviews: gc kept only the last index's entries of a pack named by
    two index files (its live blobs looked unreferenced: the pack was deleted), and counted a
    blob as kept elsewhere on the word of an index entry -- into a missing pack, or at a wrong
    offset in a real one -- so a repack dropped the only copy. gc now trusts another copy only
    once it reads back right, and leaves out of its index what points nowhere or proved false."""
    from cargohold.snapshots._format import encode_index

    env = _env(tmp_path)
    source = _blob_tree(tmp_path / "src", 1)
    _ok(run_cli("snapshot", str(source), env=env))
    rng = random.Random(2)
    for path in sorted(source.rglob("f*"))[::2]:  # half rewritten: the first packs repacked
        path.write_bytes(rng.randbytes(path.stat().st_size))
    _ok(run_cli("snapshot", str(source), env=env))
    _ok(run_cli("forget", "--keep-last", "1", env=env))
    repo_dir = tmp_path / "repo"
    repo = open_repository(str(repo_dir))
    real = [entry for name in repo.index_files() for entry in repo.read_index_packed(name)]
    data = [(pack, _entries(entries)) for pack, kind, entries in real if kind == "d"]
    live = [b.hex() for _, entries in data for b, _, _ in entries]
    missing = "packs/00/" + "0" * 64
    if case == "pack-in-two-indexes":  # a real pack, listed again with three unknown blobs
        crafted = [(real[0][0], "d", [(os.urandom(32).hex(), 0, 10) for _ in range(3)])]
    elif case == "missing-pack-condemned":  # ... and as many unknown: mostly garbage
        unknown = [os.urandom(32).hex() for _ in live]
        crafted = [(missing, "d", [(b, 0, 10) for b in live + unknown])]
    elif case == "missing-pack-in-use":  # every live data blob, in a pack that is not there
        crafted = [(missing, "d", [(b, 0, 10) for b in live])]
    else:  # a pack that stays (all its blobs in use) said to hold the live blobs of the one
        # being repacked, at offset 0
        from cargohold.snapshots.maintenance import referenced_blobs

        used, _ = referenced_blobs(repo)
        staying = next(p for p, entries in data if all(b in used for b, _, _ in entries))
        moving = [b.hex() for p, entries in data if p != staying
                  for b, _, _ in entries if b in used]
        assert moving, "no pack to repack: not the case tested"
        crafted = [(staying, "d", [(b, 0, 10) for b in moving])]
    (repo_dir / "index" / ("f" * 32)).write_bytes(b"\x00" + encode_index(crafted))  # read last
    _ok(run_cli("repo", "gc", env=env))
    _ok(run_cli("repo", "gc", env=env))
    check = run_cli("repo", "check", "--read-data", env=env)
    said = check.stdout + check.stderr
    assert "is missing" not in said, said
    if case != "pack-in-two-indexes":  # (its three unknown entries stay: nothing needs them)
        assert check.returncode == 0, said
    target = tmp_path / "back"
    _ok(run_cli("restore", f"{source}@latest", "--to", str(target), env=env))
    assert listing(target) == listing(source)


def test_gc_keeps_a_pack_whose_needed_blob_is_damaged_and_says_so(tmp_path: Path) -> None:
    """gc copied the blobs a snapshot still needs out of a pack it deletes without reading
    them back: a damaged one was carried over and the original deleted. Now a pack with a
    damaged needed blob stays (exit 1, named), nothing of it is copied, the rest goes on."""
    env = _env(tmp_path)
    source = _blob_tree(tmp_path / "src", 5)
    _ok(run_cli("snapshot", str(source), env=env))
    for path in sorted(source.rglob("f*"))[::2]:  # half rewritten: the first packs repacked
        path.write_bytes(os.urandom(path.stat().st_size))
    _ok(run_cli("snapshot", str(source), env=env))
    _ok(run_cli("forget", "--keep-last", "1", env=env))
    repo = open_repository(str(tmp_path / "repo"))
    data_packs = [tmp_path / "repo" / pack for name in repo.index_files()
                  for pack, kind, _ in repo.read_index_packed(name) if kind == "d"]
    for pack in data_packs:  # a flipped byte in every blob of every data pack
        damaged = bytearray(pack.read_bytes())
        for i in range(100, len(damaged), 1000):
            damaged[i] ^= 0xFF
        pack.write_bytes(bytes(damaged))
    for _ in range(2):
        result = run_cli("repo", "gc", env=env)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "kept (damaged)" in result.stderr and "repo check --read-data" in result.stderr
        assert all(pack.exists() for pack in data_packs)  # the old ones stay, condemned


def _entries(view: memoryview) -> list[tuple[bytes, int, int]]:
    from cargohold.snapshots._format import index_entries

    return list(index_entries(view))


def test_records_nested_thousands_deep_and_odd_session_names_are_named_not_tracebacks(
    tmp_path: Path,
) -> None:
    """JSON nested 200,000 deep raised RecursionError, which no reader caught; a session
    file named ``1abc-x`` made gc parse "1abc" as a time."""
    env = _env(tmp_path)
    source = _blob_tree(tmp_path / "src", 3)
    snap = json.loads(_ok(run_cli("snapshot", str(source), "--json", env=env)))
    repo_dir = tmp_path / "repo"
    (repo_dir / "sessions" / "1abc-x").write_bytes(b"")
    _ok(run_cli("repo", "gc", env=env))
    deep = b"\x00" + b"[" * 200_000 + b"]" * 200_000
    record = repo_dir / "snapshots" / snap["id"]
    saved = record.read_bytes()
    for victim, commands in [
        (repo_dir / "condemned" / "1-abc", [("repo", "gc")]),
        (record, [("repo", "gc"), ("repo", "check"), ("repo", "stats"), ("snapshots",),
                  ("restore", snap["id"], "--to", str(tmp_path / "t"))]),
    ]:
        victim.write_bytes(deep)
        for args in commands:
            result = run_cli(*args, env=env)
            assert "Traceback" not in result.stderr, (victim.name, args, result.stderr[-800:])
            said = result.stdout + result.stderr
            if args not in (("snapshots",), ("repo", "stats")):  # (these name it and go on)
                assert result.returncode != 0, (victim.name, args)
                assert "nested too deeply" in said, (victim.name, args, said[-800:])
        victim.unlink() if victim != record else victim.write_bytes(saved)
    _ok(run_cli("repo", "check", "--read-data", env=env))


def test_format_1_repositories_keep_restoring(tmp_path: Path) -> None:
    import hashlib

    import zstandard

    repo = tmp_path / "old"
    (repo / "snapshots").mkdir(parents=True)
    (repo / "cargohold-repository.json").write_text('{"format":"cargohold-repository","version":1}')
    data = b"weights from 2025\n"
    digest = hashlib.sha256(data).hexdigest()
    (repo / "objects" / digest[:2]).mkdir(parents=True)
    (repo / "objects" / digest[:2] / digest).write_bytes(zstandard.compress(data))
    manifest = {"format": "cargohold-snapshot", "version": 1,
                "id": "20250101T000000.000000Z-abc123",
                "volume": "old-vol", "created": "2025-01-01T00:00:00+00:00", "tag": None,
                "files": 1, "bytes": len(data), "entries": [
                    {"path": "", "kind": "dir", "mode": 0o755, "uid": 0, "gid": 0, "mtime_ns": 0},
                    {"path": "w.txt", "kind": "file", "mode": 0o644, "uid": 0, "gid": 0,
                     "mtime_ns": 0, "size": len(data), "hash": digest}]}
    (repo / "snapshots" / f"{manifest['id']}.json").write_text(json.dumps(manifest))
    env = _env(tmp_path, CARGOHOLD_REPO=str(repo))
    listed = json.loads(_ok(run_cli("snapshots", "--json", env=env)))
    assert [s["id"] for s in listed] == [manifest["id"]]
    del manifest["entries"][1]["path"]  # defect 15: a manifest missing a field
    (repo / "snapshots" / f"{manifest['id']}.json").write_text(json.dumps(manifest))
    broken = run_cli("restore", str(manifest["id"]), "some-volume", env=env)
    assert broken.returncode != 0 and "damaged" in broken.stderr
    assert "Traceback" not in broken.stderr


# -- gc while snapshots are written ---------------------------------------------------------


def _gc_race(tmp_path: Path, env: dict[str, str], rounds: int,
             expected: dict[str, object] | None = None) -> None:
    sources = [_fill(tmp_path / f"src-{i}", i, files=30, big=300_000) for i in range(rounds * 2)]
    expected = {**(expected or {}), **{str(s): listing(s) for s in sources}}
    for i in range(rounds):
        batch = sources[2 * i: 2 * i + 2]
        writers = [_popen(["snapshot", str(s), "--json"], env) for s in batch]
        try:
            for _ in range(2):
                for args in (["forget", "--keep-last", "1"], ["repo", "gc"]):
                    other = _popen(args, env)
                    _, errors = other.communicate(timeout=120)
                    assert other.returncode == 0, errors
            outs = [w.communicate(timeout=180) for w in writers]
        finally:
            for w in writers:
                if w.poll() is None:
                    w.kill()
                w.communicate()
        assert [w.returncode for w in writers] == [0, 0], outs
    _ok(run_cli("repo", "gc", env=env))
    _ok(run_cli("repo", "gc", env=env))
    snaps = json.loads(_ok(run_cli("snapshots", "--json", env=env)))
    assert len(snaps) == len(expected)  # keep-last 1 per source keeps every source's one
    for snap in snaps:
        out = tmp_path / "restored" / snap["id"]
        _ok(run_cli("restore", snap["id"], "--to", str(out), env=env))
        assert listing(out) == expected[snap["volume"]]
    assert "no problems" in _ok(run_cli("repo", "check", "--read-data", env=env))


def test_gc_racing_snapshots_loses_nothing(tmp_path: Path) -> None:
    env = _env(tmp_path)
    # Old data that forget + gc really remove while the new snapshots are written.
    old = _fill(tmp_path / "old", 99, files=10, big=500_000)
    _ok(run_cli("snapshot", str(old), env=env))
    # The first big.bin shares its pack with files every later snapshot still uses: gc must
    # rewrite that pack without it (repack), under the concurrent snapshots below.
    (old / "big.bin").write_bytes(os.urandom(400_000))
    _ok(run_cli("snapshot", str(old), env=env))
    _gc_race(tmp_path, env, rounds=2, expected={str(old): listing(old)})
    stored = sum(p.stat().st_size for p in (tmp_path / "repo" / "packs").rglob("*")
                 if p.is_file())
    kept = sum(p.stat().st_size for p in tmp_path.glob("src-*/**/*") if p.is_file())
    kept += sum(p.stat().st_size for p in old.rglob("*") if p.is_file())
    assert stored < kept * 1.05 + 150_000  # the forgotten first big.bin is gone


def test_gc_racing_snapshots_on_s3(tmp_path: Path, s3_endpoint: dict[str, str]) -> None:

    bucket = f"cht-gc-{os.getpid()}-{random.randrange(1 << 30):x}"
    env = {**_env(tmp_path), **s3_endpoint, "CARGOHOLD_REPO": f"s3://{bucket}/repo"}
    fs = s3_filesystem(s3_endpoint)
    try:
        # The race starts forget and gc next to the first snapshots: the repository must exist
        # already (a snapshot creates it on first use, forget and gc never do).
        _ok(run_cli("repo", "init", env=env))
        _gc_race(tmp_path, env, rounds=1)
    finally:
        remove_bucket(fs, bucket)


def test_snapshot_records_from_an_object_store_are_cached_and_the_cache_is_not_trusted(
    tmp_path: Path, s3_endpoint: dict[str, str]
) -> None:
    """Records are kept on this machine (a snapshot read every record to find its parent, one
    GET each); a damaged or swapped cached record is read from the store again."""

    bucket = f"cht-rec-{os.getpid()}-{random.randrange(1 << 30):x}"
    env = {**_env(tmp_path), **s3_endpoint, "CARGOHOLD_REPO": f"s3://{bucket}/repo"}
    fs = s3_filesystem(s3_endpoint)
    source = _fill(tmp_path / "src", 3)
    try:
        first = json.loads(_ok(run_cli("snapshot", str(source), "--json", env=env)))
        (source / "new.txt").write_text("second\n")
        second = json.loads(_ok(run_cli("snapshot", str(source), "--json", env=env)))
        cached = {p.name: p for p in (tmp_path / "cache" / "cargohold" / "snapshots").rglob("*")
                  if p.is_file()}
        assert set(cached) == {first["id"], second["id"]}
        cached[second["id"]].write_bytes(cached[first["id"]].read_bytes())  # another's record
        cached[first["id"]].write_bytes(b"\x00not a record")
        listed = json.loads(_ok(run_cli("snapshots", "--json", env=env)))
        assert [s["id"] for s in listed] == [first["id"], second["id"]]
        assert [s["files"] for s in listed] == [first["files"], second["files"]]
        _ok(run_cli("forget", "--keep-last", "1", env=env))
        assert not cached[first["id"]].exists() and cached[second["id"]].exists()
    finally:
        remove_bucket(fs, bucket)


def test_a_pack_upload_cut_off_and_retried_stores_the_whole_pack(
    tmp_path: Path, s3_endpoint: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pack is sent from its file; when a send fails after reading it (the connection is
    cut), the retry must send the whole file again, not the rest of it (nothing)."""
    from botocore.exceptions import ConnectionClosedError
    from fsspec.asyn import sync

    from cargohold.snapshots._backend import FsspecBackend

    for key, value in s3_endpoint.items():
        monkeypatch.setenv(key, value)
    bucket = f"cht-put-{os.getpid()}-{random.randrange(1 << 30):x}"
    backend = FsspecBackend(f"s3://{bucket}/repo")
    backend.ensure_bucket()
    data = random.Random(4).randbytes(3 << 20)
    path = tmp_path / "pack"
    path.write_bytes(data)
    client = sync(backend.fs.loop, backend.fs.set_session)
    real, calls = client.put_object, []

    async def cut_once(**kwargs: Any) -> Any:
        calls.append(kwargs["Key"])
        if len(calls) == 1:
            kwargs["Body"].read()  # sent, then the connection was cut
            raise ConnectionClosedError(endpoint_url="http://cut")
        return await real(**kwargs)

    monkeypatch.setattr(client, "put_object", cut_once)
    try:
        backend.put_file("packs/ab/pack", str(path))
        assert len(calls) == 2 and not path.exists()
        assert backend.read("packs/ab/pack") == data
    finally:
        monkeypatch.undo()
        backend.fs.rm(bucket, recursive=True)


# -- kills -----------------------------------------------------------------------------------


def _kill_after(proc: subprocess.Popen[str], delay: float) -> None:
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


def test_sigkill_during_snapshot_gc_and_restore_then_rerun(tmp_path: Path) -> None:
    """Seeded kills: 8 snapshots, 4 gc runs, 8 restores. After each: the repository checks
    clean with every byte read; a rerun completes; debris of the dead is gone."""
    rng = random.Random(int(os.environ.get("CARGOHOLD_KILL_SEED", "12")))
    env = _env(tmp_path)
    source = _fill(tmp_path / "src", 5, files=200, big=12 << 20)
    _ok(run_cli("snapshot", str(source), env=env))
    kills = 0
    for i in range(8):
        (source / "big.bin").write_bytes(rng.randbytes(12 << 20))  # new data every time
        _kill_after(_popen(["snapshot", str(source)], env), rng.uniform(0.3, 1.5))
        kills += 1
        assert "no problems" in _ok(run_cli("repo", "check", "--read-data", env=env))
        if i % 2:
            _ok(run_cli("forget", "--keep-last", "1", env=env))
            _kill_after(_popen(["repo", "gc"], env), rng.uniform(0.05, 0.6))
            kills += 1
            assert "no problems" in _ok(run_cli("repo", "check", "--read-data", env=env))
    last = json.loads(_ok(run_cli("snapshot", str(source), "--json", env=env)))
    assert list((tmp_path / "repo" / "tmp").iterdir()) == []  # debris of the killed removed
    _ok(run_cli("repo", "gc", env=env))
    target = tmp_path / "target"
    for _ in range(8):
        _kill_after(_popen(["restore", last["id"], "--to", str(target), "--force"], env),
                    rng.uniform(0.2, 1.2))
        kills += 1
        # The state says what happened: either untouched, or mid-restore with a state file.
        leftovers = {p.name for p in target.iterdir()} if target.exists() else set()
        ours = {n for n in leftovers if n == ".cargohold-incomplete"
                or n.startswith(".cargohold-staging")}
        assert leftovers - ours <= {p.name for p in source.iterdir()}
        _ok(run_cli("restore", last["id"], "--to", str(target), "--force", env=env))
        assert listing(target) == listing(source)
    assert kills >= 20


# -- changes during a snapshot -------------------------------------------------------------


def test_files_changing_during_a_snapshot_are_named_with_exit_4(tmp_path: Path) -> None:
    env = _env(tmp_path)
    source = _fill(tmp_path / "src", 8, files=20)
    hot = source / "hot.bin"
    hot.write_bytes(os.urandom(40 << 20))
    stop = threading.Event()

    def churn() -> None:
        chunk = os.urandom(1 << 20)
        while not stop.is_set():
            with hot.open("r+b") as f:
                f.seek(random.randrange(40) << 20)
                f.write(chunk)
            vanishing = source / "part-0" / "rotating.ckpt"
            vanishing.write_bytes(chunk[:1000])
            vanishing.unlink()

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        results = [run_cli("snapshot", str(source), "--json", env=env) for _ in range(3)]
    finally:
        stop.set()
        writer.join()
    assert all(r.returncode in (0, 4) for r in results), [r.stderr for r in results]
    changed = [r for r in results if r.returncode == 4]
    assert changed, "the churned file was never seen changing"
    assert "hot.bin" in changed[0].stderr and "Traceback" not in changed[0].stderr
    assert "hot.bin" in json.dumps(json.loads(changed[0].stdout)["changed"])
    assert "no problems" in _ok(run_cli("repo", "check", env=env))


# -- memory --------------------------------------------------------------------------------


def test_memory_stays_bounded_at_100000_files(tmp_path: Path) -> None:
    files = int(os.environ.get("CARGOHOLD_MANY_FILES", "100000"))
    source = tmp_path / "many"
    rng = random.Random(3)
    for i in range(files):
        folder = source / f"d{i // 1000:04}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        (folder / f"{i}.txt").write_bytes(rng.randbytes(rng.randint(20, 400)))
    env = _env(tmp_path)
    log = tmp_path / "stderr"
    first = peak_rss_mb(["snapshot", str(source)], env, log)
    back = peak_rss_mb(["restore", f"{source}@latest", "--to", str(tmp_path / "back")], env,
                        log)
    assert max(first, back) < 300, (first, back)
    assert sum(1 for _ in (tmp_path / "back").rglob("*.txt")) == files
    # Repository overhead over the data (random bytes: compressed, they are as big): small
    # files live in their folder's tree, so each costs ~25 bytes, not a blob id twice.
    data = sum(p.stat().st_size for p in source.rglob("*.txt"))
    stored = sum(p.stat().st_size for p in (tmp_path / "repo").rglob("*") if p.is_file())
    assert stored <= 1.10 * data, (stored, data)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 < 2000


def test_scheduled_snapshots_run_log_and_apply_retention(tmp_path: Path) -> None:
    env = _env(tmp_path, PYTHONUNBUFFERED="1")
    source = _fill(tmp_path / "src", 11)
    proc = _popen(["snapshot", str(source), "--every", "1s", "--keep-last", "2"], env)
    runs = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("run "):
                runs.append(line)
                (source / "counter").write_text(str(len(runs)))
            if len(runs) == 4:
                break
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    assert [r.split(":")[0] for r in runs] == ["run 1", "run 2", "run 3", "run 4"]
    assert "kept 2, forgot 1" in runs[-1]
    snaps = json.loads(_ok(run_cli("snapshots", "--json", env=env)))
    assert 2 <= len(snaps) <= 3
    bad = run_cli("snapshot", str(source), "--every", "soon", env=env)
    assert bad.returncode == 2 and "duration" in bad.stderr
