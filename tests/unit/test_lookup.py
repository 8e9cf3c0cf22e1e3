"""The blob lookup table: exact answers for millions of blobs in a few dozen bytes each."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from cargohold.snapshots._format import (
    encode_index,
    encode_packed_index,
    index_entries,
    index_packs,
)
from cargohold.snapshots._lookup import BlobSet, BlobTable, bucket_of


def _entries(items: list[tuple[bytes, int, int]]) -> memoryview:
    return memoryview(b"".join(struct.pack("<32sII", b, o, n) for b, o, n in items))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.integers(0, 2**32 - 1),
                       st.integers(0, 2**32 - 1)), max_size=300),
    st.lists(st.binary(min_size=32, max_size=32), max_size=50),
)
def test_it_answers_like_a_dict_where_the_last_copy_wins(
    items: list[tuple[bytes, int, int]], others: list[bytes]
) -> None:
    table, model = BlobTable(), {}
    half = len(items) // 2
    table.add_packed(_entries(items[:half]), 3)
    for blob, offset, length in items[half:]:
        table.add(blob, 4, offset, length)
    for number, part in ((3, items[:half]), (4, items[half:])):
        for blob, offset, length in part:
            model[blob] = (number, offset, length)
    assert len(table) == len(model)
    for blob, where in model.items():
        assert blob in table and table.get(blob) == where
    for blob in others:
        assert (blob in table) == (blob in model)
        assert table.get(blob) == model.get(blob)


def _same_bucket(fixed: bytes, make: Callable[[bytes], bytes]) -> bytes:
    """An id ``make(random bytes)`` that falls into the bucket of ``fixed``."""
    while True:
        candidate = make(os.urandom(16))
        if bucket_of(candidate) == bucket_of(fixed):
            return candidate


def test_a_match_across_two_records_is_not_a_hit() -> None:
    """Records share a bucket: the bytes of one record's tail and its location can spell
    another id; only a match at a record's start counts."""
    location = (0x01020304, 0x05060708, 0x090A0B0C)
    tail = struct.pack("<III", *location)
    # first's last 20 bytes and the location spell ``straddling``, of first's bucket
    while True:
        first = os.urandom(32)
        straddling = first[12:] + tail
        if bucket_of(first) == bucket_of(straddling):
            break
    table = BlobTable()
    table.add(first, *location)
    assert straddling not in table and table.get(straddling) is None
    table.add(straddling, 9, 10, 11)
    assert table.get(straddling) == (9, 10, 11) and table.get(first) == location
    assert len(table) == 2


def test_ids_crafted_to_share_their_first_bytes_spread_over_the_buckets() -> None:
    """A crafted repository's ids all starting 0000 once filled one bucket: gc went quadratic."""
    ids = [b"\0\0" + os.urandom(30) for _ in range(20_000)]
    table, blobs = BlobTable(), BlobSet()
    for blob in ids:
        table.add(blob, 1, 2, 3)
        blobs.add(blob)
    assert all(blob in table and blob in blobs for blob in ids)
    fullest = max(len(b or b"") for b in blobs._buckets)
    assert fullest < 32 * 20, fullest  # about one id a bucket, never thousands


def test_a_million_blobs_fit_in_sixty_megabytes() -> None:
    """(A dict of the same took about 140 MB: a bytes key, an int and its slots per blob.)"""
    import sys

    ids = os.urandom(32 * 1_000_000)
    table = BlobTable()
    table.add_packed(
        memoryview(b"".join(ids[i : i + 32] + b"\0" * 8 for i in range(0, len(ids), 32))), 1
    )
    assert len(table) == 1_000_000
    assert table.get(ids[32 * 777 : 32 * 778]) == (1, 0, 0)
    used = sys.getsizeof(table._buckets) + sum(sys.getsizeof(b) for b in table._buckets if b)
    assert used < 60 << 20, used


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.binary(min_size=32, max_size=32), max_size=300),
    st.lists(st.binary(min_size=32, max_size=32), max_size=50),
)
def test_the_blob_set_answers_like_a_set(added: list[bytes], others: list[bytes]) -> None:
    blobs, model = BlobSet(), set()
    for blob in added:
        assert blobs.add(blob) == (blob not in model)
        model.add(blob)
    assert len(blobs) == len(model)
    for blob in added + others:
        assert (blob in blobs) == (blob in model)
    assert b"short" not in blobs


def test_the_blob_set_counts_only_whole_records() -> None:
    """Ids share a bucket back to back: the second half of one and the first of the next
    spell a third id, which is not in the set until added."""
    first = os.urandom(32)
    straddling = _same_bucket(first, lambda r: first[16:] + r)
    second = _same_bucket(first, lambda r: straddling[16:] + r)  # first + second spell it
    blobs = BlobSet()
    blobs.add(first)
    blobs.add(second)
    assert first in blobs and second in blobs and straddling not in blobs
    assert blobs.add(straddling) and straddling in blobs and len(blobs) == 3


def test_a_million_referenced_blobs_fit_in_forty_megabytes() -> None:
    """(gc held them in a set of bytes: about 120 MB.)"""
    import sys

    ids = os.urandom(32 * 1_000_000)
    blobs = BlobSet()
    for i in range(0, len(ids), 32):
        blobs.add(ids[i : i + 32])
    assert len(blobs) == 1_000_000 and ids[32 * 5 : 32 * 6] in blobs
    used = sys.getsizeof(blobs._buckets) + sum(sys.getsizeof(b) for b in blobs._buckets if b)
    assert used < 40 << 20, used


def test_a_packed_index_encodes_like_a_listed_one() -> None:
    packs = [
        ("packs/ab/" + "ab" * 32, "d", [(os.urandom(32).hex(), 0, 10),
          (os.urandom(32).hex(), 10, 7)]),
        ("packs/cd/" + "cd" * 32, "t", []),
    ]
    listed = encode_index(packs)
    read = index_packs(listed, "index")
    assert encode_packed_index(read) == listed
    assert [(b.hex(), o, n) for b, o, n in index_entries(read[0][2])] == packs[0][2]


def test_a_pack_named_by_several_index_files_keeps_each_entry_once() -> None:
    """gc merges a pack's entries across index files; with E1 in one, E2 in another and
    E1+E2 in a third (a gc killed after writing its index), each entry counts once."""
    from cargohold.snapshots.maintenance import _merged

    e1 = struct.pack("<32sII", os.urandom(32), 0, 10)
    e2 = struct.pack("<32sII", os.urandom(32), 10, 5)
    merged = memoryview(e1 + e2)
    for other in (memoryview(e1), memoryview(e2)):
        merged = _merged(merged, other)
    assert bytes(merged) == e1 + e2
    assert bytes(_merged(memoryview(e2), memoryview(e1 + e2))) == e2 + e1
