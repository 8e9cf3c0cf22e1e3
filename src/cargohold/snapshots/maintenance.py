"""Keeping a repository for years: ``repo gc``, ``repo check [--read-data]``, ``repo stats``.

gc never takes a lock that writers wait for. It follows the protocol in ``repository.py``:

1. It announces itself as a session named ``gc-…`` (held by ``flock`` locally, a heartbeat on
   S3); if another gc is live it stops -- two gc runs at once could each rewrite the index.
   A crashed gc's session dies with it (locally) or expires after the TTL (S3).
2. It lists live sessions *before* listing snapshots, then computes every blob referenced by
   every snapshot (walking trees, each tree once).
3. Packs no snapshot references (indexed or orphaned by a dead writer) that are not yet
   condemned are written into a new ``condemned/<id>`` record with the current time.
4. A condemned pack is deleted when it is still unreferenced now and no live writer session
   started before its condemnation (plus a margin for clock skew between machines): such a
   writer may have loaded the index before the pack was condemned and may be about to
   reference it. Later writers skip condemned packs' blobs and store them again if needed.
   Deletion order: a new index without the deleted packs, then the old index files this run
   read, then the packs, then the records -- a crash anywhere leaves extra data, never an index
   entry a writer could trust that points at nothing.

A pack whose bytes are at least ``REPACK`` (30%) unreferenced is condemned too; when it is deleted
its blobs still referenced are first copied, sealed as they are, into new packs whose index is
published before the old pack goes -- blobs are found by id, so snapshots never notice.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from cargohold.snapshots._format import (
    ENTRY_SIZE,
    Node,
    encode_packed_index,
    index_entries,
    pack_entry,
)
from cargohold.snapshots._lookup import BlobSet, BlobTable
from cargohold.snapshots.repository import Repository, RepositoryError

__all__ = [
    "CheckResult",
    "GcResult",
    "RepoStats",
    "check_repository",
    "collect_garbage",
    "repository_stats",
]

log = logging.getLogger(__name__)

SKEW = 60.0  # seconds of clock difference tolerated between machines writing one repository
REPACK = 0.3  # a pack with this share of unreferenced bytes is rewritten without them


def _waste(entries: memoryview, referenced: BlobSet) -> float:
    total = dead = 0
    for blob, _, length in index_entries(entries):
        total += length
        if blob not in referenced:
            dead += length
    return dead / total if total else 1.0


def ensure_modern(repo: Repository) -> None:
    if getattr(repo, "legacy", False):
        raise RepositoryError(
            f"{repo.url} is a format-1 repository: it can only be restored from.",
            hint="Restore its snapshots and take them again into a new repository "
            "(`cargohold repo init --repo NEW`).",
        )


# -- references ----------------------------------------------------------------------------


def _walk_refs(
    repo: Repository,
    root: Node,
    snapshot_id: str,
    seen_trees: BlobSet,
    blobs: BlobSet,
    problems: list[str] | None,
) -> None:
    # Only folders wait on the stack: a folder of a million files is never a million nodes.
    stack: list[tuple[Node, str]] = []

    def reach(node: Node, path: str) -> None:
        if node.kind == "dir":
            stack.append((node, path))
            return
        for ref in node.refs:
            blobs.add(bytes.fromhex(ref))
            if problems is not None and repo.locate(ref) is None:
                problems.append(f"snapshot {snapshot_id}, {path}: blob {ref[:12]}… is missing")

    reach(root, "")
    while stack:
        node, path = stack.pop()
        for ref in node.refs:
            raw = bytes.fromhex(ref)
            blobs.add(raw)
            if not seen_trees.add(raw):
                continue
            try:
                children = repo.read_tree(ref, f"snapshot {snapshot_id}, {path or '/'}")
            except RepositoryError as exc:
                if problems is None:
                    raise
                problems.append(exc.message)
                continue
            for child in children:
                reach(child, f"{path}/{child.name}" if path else child.name)


def referenced_blobs(repo: Repository, problems: list[str] | None = None) -> tuple[BlobSet, int]:
    """Every blob id any snapshot references, and the number of snapshots. (Compact sets:
    ~33 bytes a blob, so a repository of millions of blobs is walked in bounded memory.)"""
    blobs = BlobSet()
    seen = BlobSet()
    ids = repo.snapshot_ids()
    for snapshot_id in ids:
        try:
            record = repo.load_snapshot(snapshot_id)
        except RepositoryError as exc:
            if problems is None:
                raise
            problems.append(exc.message)
            continue
        if record.root is not None:
            _walk_refs(repo, record.root, snapshot_id, seen, blobs, problems)
    return blobs, len(ids)


# -- gc --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GcResult:
    deleted_packs: int
    deleted_bytes: int
    condemned_packs: int
    waiting_sessions: int
    kept_packs: int
    repacked_blobs: int = 0
    damaged: list[str] = field(default_factory=list)  # packs kept: a blob to copy is damaged


def collect_garbage(repo: Repository) -> GcResult:
    """Delete packs no snapshot references, safely under concurrent snapshots (see above).

    Raises:
        RepositoryError: another gc is running, or the repository is damaged.
    """
    ensure_modern(repo)
    own = repo.begin_session(prefix="gc")
    try:
        others = [s for s in repo.live_sessions() if s.startswith("gc-") and s != own]
        if others:
            raise RepositoryError(
                f"Another gc is running on {repo.url} ({others[0]}).",
                hint="Wait for it to finish; a crashed one stops counting after a while.",
            )
        return _collect(repo, own)
    finally:
        repo.end_session()


def _blocking(repo: Repository, own: str, condemned_at: float) -> int:
    margin = 2.0 if repo.backend.local else SKEW
    return sum(
        1
        for session, started in repo.live_sessions().items()
        if session != own and not session.startswith("gc-") and started <= condemned_at + margin
    )


def _records(entries: memoryview) -> Iterator[bytes]:
    """A pack's packed index entries, one 40-byte record each."""
    for start in range(0, len(entries), ENTRY_SIZE):
        yield bytes(entries[start : start + ENTRY_SIZE])


def _merged(first: memoryview, second: memoryview) -> memoryview:
    """Two lists of a pack's packed entries as one, each entry once, in the order seen."""
    return memoryview(b"".join(dict.fromkeys([*_records(first), *_records(second)])))


def _without(entries: memoryview, drop: set[bytes]) -> memoryview:
    """A pack's packed entries without those in ``drop``."""
    return memoryview(b"".join(r for r in _records(entries) if r not in drop))


def _damage(repo: Repository, pack: str, blob: bytes, sealed: bytes) -> str | None:
    """Why a sealed copy of ``blob`` from ``pack`` cannot be trusted; None if it can."""
    try:
        repo.open_sealed(sealed, blob.hex(), f"{pack} blob {blob.hex()[:12]}…")
    except RepositoryError as exc:
        return exc.message
    return None


def _other_copy(repo: Repository, pack: str, where: tuple[int, int], blob: bytes) -> str:
    """How ``pack``'s copy of ``blob`` at ``where`` (offset, length) reads back: "good",
    "false" (read, and not that blob), or "unread" (the read failed: nothing is concluded)."""
    offset, length = where
    try:
        sealed = repo.backend.read(pack, offset, length)
    except RepositoryError:
        return "unread"
    return "good" if _damage(repo, pack, blob, sealed) is None else "false"


def _collect(repo: Repository, own: str) -> GcResult:
    repo.load_index()
    index_files = repo.index_files()
    # Sessions are listed inside _blocking before the snapshots are read below: a writer that
    # finished in between has published its snapshot, so its packs count as referenced.
    _blocking(repo, own, time.time())
    referenced, _ = referenced_blobs(repo)
    sizes = dict(repo.backend.list("packs"))
    # Each pack's entries stay packed, 40 bytes a blob, as the index files hold them. A pack
    # named by two index files (a gc that died between writing its index and deleting the old
    # ones, or a crafted file) has the entries of both, each once: keeping only the last made
    # a pack whose live blobs were listed in the other look unreferenced, and gc deleted it.
    indexed: dict[str, tuple[str, memoryview]] = {}
    for name in index_files:
        for pack, kind, entries in repo.read_index_packed(name):
            known = indexed.get(pack)
            if known is None:
                indexed[pack] = (kind, entries)
            elif known[1] != entries:
                indexed[pack] = (known[0], _merged(known[1], entries))
    used = {
        p
        for p, (_, entries) in indexed.items()
        if any(b in referenced for b, _, _ in index_entries(entries))
    }
    # Packs at least REPACK garbage are rewritten: live blobs copied to new packs, then deleted.
    wasteful = {p for p in used if _waste(indexed[p][1], referenced) >= REPACK}
    candidates = (set(indexed) | set(sizes)) - used | wasteful
    records = {name: repo.read_condemned(name) for name, _ in repo.backend.list("condemned")}
    already = {p for _, packs in records.values() for p in packs}
    fresh = sorted(candidates - already)
    if fresh:
        now = time.time()
        name = f"condemned/{int(now)}-{secrets.token_hex(6)}"
        body = json.dumps({"time": now, "packs": fresh}).encode()
        repo.backend.put(name, repo.keys.seal(body, metadata=True))
        records[name] = (now, fresh)
    deletable: set[str] = set()
    waiting = 0
    for _name, (when, packs) in records.items():
        blocking = _blocking(repo, own, when)
        waiting = max(waiting, blocking)
        if not blocking:
            deletable.update(p for p in packs if p in candidates)
    copied = 0
    damaged_packs: list[str] = []
    if deletable:
        # References again, after the sessions: a snapshot published meanwhile may use blobs of
        # these packs. Every blob still referenced is copied first, unless a pack that stays
        # holds a copy that reads back right: an index entry alone is not trusted (one into a
        # missing pack, or at a wrong offset, once let the only good copy go).
        referenced, _ = referenced_blobs(repo)
        staying = [p for p in indexed if p not in deletable and p in sizes]
        elsewhere = BlobTable()
        for number, p in enumerate(staying):
            for b, o, n in index_entries(indexed[p][1]):
                if o + n <= sizes[p]:
                    elsewhere.add(b, number, o, n)
        kept = BlobSet()  # blobs with a checked copy that stays
        wrong: dict[str, set[bytes]] = {}  # entries of staying packs that proved false
        for pack in sorted(deletable):
            if pack not in sizes:  # only an index names it: nothing to copy, nothing to lose
                continue
            kind, entries = indexed[pack] if pack in indexed else ("d", memoryview(b""))
            needed = [(b, o, n) for b, o, n in index_entries(entries) if b in referenced]
            if not needed:
                continue
            data = repo.backend.read(pack)
            copies: dict[bytes, bytes] = {}
            false: list[tuple[str, bytes]] = []  # staying entries that read back as another blob
            problem = None
            for blob, offset, length in needed:
                if blob in kept or blob in copies:
                    continue
                where = elsewhere.get(blob)
                if where is not None:
                    verdict = _other_copy(repo, staying[where[0]], where[1:], blob)
                    if verdict == "good":
                        kept.add(blob)
                        continue
                    if verdict == "false":
                        false.append((staying[where[0]], pack_entry(blob, *where[1:])))
                sealed = data[offset : offset + length]
                problem = _damage(repo, pack, blob, sealed)
                if problem is not None:
                    break
                copies[blob] = sealed
            if problem is not None:  # the pack stays (and stays condemned): nothing is lost
                deletable.discard(pack)
                damaged_packs.append(problem)
                continue
            for blob, sealed in copies.items():
                repo.add_sealed(kind, blob.hex(), sealed)
                kept.add(blob)
                copied += 1
            for staying_pack, entry in false:  # its blob now has a good copy: the entry goes
                wrong.setdefault(staying_pack, set()).add(entry)
    if deletable:
        repo.flush()  # the copies and their index are published before anything goes
        survivors = [
            (p, kind, _without(e, wrong[p]) if p in wrong else e)
            for p, (kind, e) in indexed.items()
            if p not in deletable and p in sizes  # (entries into missing packs point nowhere)
        ]
        if survivors:
            repo.backend.put(
                f"index/{secrets.token_hex(16)}",
                repo.keys.seal(encode_packed_index(survivors), metadata=True),
            )
        for name in index_files:
            repo.backend.delete(name)
        for pack in sorted(deletable):
            repo.backend.delete(pack)
    remaining = 0
    for name, (when, packs) in records.items():
        left = [p for p in packs if p not in deletable and p in candidates]
        if not left:
            repo.backend.delete(name)
        elif len(left) != len(packs):
            body = json.dumps({"time": when, "packs": left}).encode()
            repo.backend.put(name, repo.keys.seal(body, metadata=True))
        remaining += len(left)
    return GcResult(
        deleted_packs=len(deletable),
        deleted_bytes=sum(sizes.get(p, 0) for p in deletable),
        condemned_packs=remaining,
        waiting_sessions=waiting,
        kept_packs=len(used - deletable),
        repacked_blobs=copied,
        damaged=damaged_packs,
    )


# -- check -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    snapshots: int
    packs: int
    blobs: int
    problems: list[str] = field(default_factory=list)


def check_repository(repo: Repository, *, read_data: bool = False) -> CheckResult:
    """Every index readable, every indexed pack present and long enough, every snapshot's trees
    readable and every blob they name indexed; ``read_data``: every blob of every pack read
    and verified against its id."""
    ensure_modern(repo)
    problems: list[str] = []
    try:
        repo.load_index()
    except RepositoryError as exc:
        return CheckResult(0, 0, 0, [exc.message])
    sizes = dict(repo.backend.list("packs"))
    packs = 0
    blobs = 0
    for name in repo.index_files():
        try:
            packed = repo.read_index_packed(name)
        except RepositoryError as exc:
            problems.append(exc.message)
            continue
        for pack, _kind, pack_blobs in packed:
            count = len(pack_blobs) // ENTRY_SIZE
            packs += 1
            blobs += count
            end = max((o + n for _, o, n in index_entries(pack_blobs)), default=0)
            if pack not in sizes:
                problems.append(f"{pack} is missing ({count} blobs)")
                continue
            if sizes[pack] < end:
                problems.append(f"{pack} is shorter than its index says")
                continue
            if read_data:
                problems += _read_pack(repo, pack, pack_blobs)
    _, count = referenced_blobs(repo, problems)
    return CheckResult(count, packs, blobs, problems)


def _read_pack(repo: Repository, pack: str, blobs: memoryview) -> list[str]:
    try:
        data = repo.backend.read(pack)
    except RepositoryError as exc:
        return [exc.message]
    found = (
        _damage(repo, pack, blob, data[offset : offset + length])
        for blob, offset, length in index_entries(blobs)
    )
    return [problem for problem in found if problem is not None]


# -- stats -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepoStats:
    snapshots: int
    logical_bytes: int
    stored_bytes: int
    metadata_bytes: int
    packs: int
    blobs: int
    dedup_ratio: float


def repository_stats(repo: Repository) -> RepoStats:
    ensure_modern(repo)
    packs = repo.backend.list("packs")
    metadata = sum(size for _, size in repo.backend.list("index"))
    metadata += sum(size for _, size in repo.backend.list("snapshots"))
    logical = 0
    ids = repo.snapshot_ids()
    for snapshot_id in ids:
        try:
            logical += repo.load_snapshot(snapshot_id).bytes
        except RepositoryError as exc:
            log.warning("%s", exc)
    stored = sum(size for _, size in packs)
    return RepoStats(
        snapshots=len(ids),
        logical_bytes=logical,
        stored_bytes=stored,
        metadata_bytes=metadata,
        packs=len(packs),
        blobs=repo.blob_count(),
        dedup_ratio=logical / stored if stored else 0.0,
    )
