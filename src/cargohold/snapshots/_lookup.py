"""Where each stored blob is: a lookup table for millions of blobs in ~50 bytes each.

A ``dict`` of blob id → location cost about 110 bytes a blob (a 33-byte ``bytes`` key, an int
and the table's slots, doubled while it grows): a million-file snapshot spent 107 MB on it.
Here each blob is one 44-byte record — its 32-byte id, pack number, offset, length — appended
to one of 65,536 byte buckets chosen by Python's own hash of the id (SipHash, keyed anew in
each process unless PYTHONHASHSEED fixes it): ids are hashes and would spread evenly by their
first bytes too, but a crafted repository can hold ids that share them, and one bucket holding
them all made gc quadratic. A
lookup is one ``bytes.find`` over its bucket (15 records at a million blobs),
done in C; a hit counts only at a record boundary, so a match straddling two records is
skipped. Nothing is ever sorted or rebuilt, so adding is as cheap as looking up.
"""

from __future__ import annotations

import struct

_RECORD = struct.Struct("<32sIII")  # blob id, pack number, offset in the pack, sealed length
_SIZE = _RECORD.size
_LOCATION = struct.Struct("<III")
_ENTRY = struct.Struct("<32sII")  # as an index file has them


def bucket_of(blob: bytes) -> int:
    """The bucket of ``blob`` in this process (tests use it to build colliding ids)."""
    return hash(blob) & 0xFFFF


def _at_record(bucket: bytearray, blob: bytes, size: int) -> int:
    """Where ``blob`` starts a record of ``size`` bytes in ``bucket``; -1 if nowhere."""
    pos = bucket.find(blob)
    while pos >= 0 and pos % size:
        pos = bucket.find(blob, pos + 1)
    return pos


class _Buckets:
    """65,536 byte buckets of fixed-size records, each starting with a 32-byte blob id."""

    __slots__ = ("_buckets", "_count")
    _record_size = 32

    def __init__(self) -> None:
        self._buckets: list[bytearray | None] = [None] * 65536
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _find(self, bucket: bytearray, blob: bytes) -> int:
        return _at_record(bucket, blob, self._record_size)

    def _position(self, blob: bytes) -> tuple[bytearray | None, int]:
        """The bucket of ``blob`` and where its record starts there, or -1. (On every lookup
        of a snapshot: bucket_of and the usual first find inlined.)"""
        bucket = self._buckets[hash(blob) & 0xFFFF]
        if bucket is None or len(blob) != 32:
            return bucket, -1
        pos = bucket.find(blob)
        if pos > 0 and pos % self._record_size:  # a match straddling two records
            pos = self._find(bucket, blob)
        return bucket, pos

    def __contains__(self, blob: bytes) -> bool:
        return self._position(blob)[1] >= 0

    def _slot(self, blob: bytes) -> tuple[bytearray, int]:
        """The bucket ``blob`` belongs in (made if needed) and where its record starts, or -1."""
        if len(blob) != 32:
            raise ValueError("a blob id is 32 bytes")
        bucket, pos = self._position(blob)
        if bucket is None:
            bucket = self._buckets[bucket_of(blob)] = bytearray()
        return bucket, pos


class BlobTable(_Buckets):
    """Blob id (32 raw bytes) → (pack number, offset, length). Not thread-safe."""

    __slots__ = ()
    _record_size = _SIZE

    def get(self, blob: bytes) -> tuple[int, int, int] | None:
        bucket, pos = self._position(blob)
        if bucket is None or pos < 0:
            return None
        # (from a copy: unpack_from would hold an export of the bucket while it allocates,
        # and a writer's append meanwhile would raise BufferError)
        return _LOCATION.unpack(bucket[pos + 32 : pos + _SIZE])

    def add(self, blob: bytes, pack: int, offset: int, length: int) -> None:
        """Record where a blob is; a blob known already moves to the new place (as gc's
        repacking moves it)."""
        bucket, pos = self._slot(blob)
        if pos >= 0:
            bucket[pos + 32 : pos + _SIZE] = _LOCATION.pack(pack, offset, length)
            return
        bucket += _RECORD.pack(blob, pack, offset, length)
        self._count += 1

    def add_packed(self, entries: memoryview, pack: int) -> None:
        """Add an index's packed entries of one pack (``<32sII`` each: id, offset, length);
        like ``add``, a later copy of a blob wins, as it did in a dict. (``add`` inlined: this
        loop loads every index entry a command reads.)"""
        record, location = _RECORD.pack, _LOCATION.pack
        buckets = self._buckets
        find = self._find
        added = 0
        for blob, offset, length in _ENTRY.iter_unpack(entries):
            key = hash(blob) & 0xFFFF  # bucket_of, inlined
            bucket = buckets[key]
            if bucket is None:
                bucket = buckets[key] = bytearray()
            elif (pos := bucket.find(blob)) >= 0 and (
                pos % _SIZE == 0 or (pos := find(bucket, blob)) >= 0
            ):
                bucket[pos + 32 : pos + _SIZE] = location(pack, offset, length)
                continue
            bucket += record(blob, pack, offset, length)
            added += 1
        self._count += added


class BlobSet(_Buckets):
    """A set of blob ids (32 raw bytes) in ~33 bytes each, where a ``set`` of ``bytes`` takes
    ~120: gc and check hold every blob a repository's snapshots reference. ``BlobTable``'s
    buckets, records of the id alone. Not thread-safe."""

    __slots__ = ()

    def add(self, blob: bytes) -> bool:
        """Add ``blob``; False if it was there already."""
        bucket, pos = self._slot(blob)
        if pos >= 0:
            return False
        bucket += blob
        self._count += 1
        return True
