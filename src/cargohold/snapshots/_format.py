"""The records a repository stores, their encoding, and their validation on read.

Everything in a repository is one of five records; each is encoded here and nowhere else, and
each is validated when read -- a file crafted by whoever can write the bucket is an error with a
message, never a ``KeyError``, a traceback, or a path outside the restore target:

    repository.json     ``RepoConfig``: format version, chunker and pack parameters, encryption
                        parameters (KDF, salt, the wrapped master key). Plain JSON: it must be
                        readable before the password is known.
    packs/ab/<id>       blobs back to back, each *sealed* (below); no header -- the index says
                        where each blob lies. Data blobs and tree blobs go to separate packs, so
                        a tree pack is small and cheap to cache.
    index/<id>          ``IndexRecord``: which blobs each pack holds, as fixed 40-byte binary
                        records (id 32, offset 4, length 4); sealed. Binary, not JSON: a million
                        blobs parse in a fraction of a second and cost ~40 bytes each on disk.
    trees (blobs)       ``Tree``: the nodes of one folder (name, kind, mode, owner, times, size,
                        content blob ids or sub-tree ids), at most ``TREE_NODES`` per blob; a
                        bigger folder is a list of tree blobs. Content-addressed, so a folder
                        whose listing did not change is the same blob as last time and costs
                        nothing; one folder is listed without reading any other. Version 2
                        trees also hold the bytes of small files (up to the config's
                        ``inline_max``) after their JSON: see *Small files* below.
    snapshots/<id>      ``SnapshotRecord``: what was snapshotted, when, counts, the root trees.

*Small files* (datasets of millions of 0.2-2 KB files): as a blob of its own, a file costs its
id twice (in its folder's tree and in the index, 32 incompressible bytes each) plus the index's
offset and length -- ~96 bytes, 17% of a 1 KB file after compression. A file of at most
``RepoConfig.inline_max`` bytes is therefore kept inside its folder's tree: the tree's JSON, one
newline (compact JSON has none), then those files' bytes back to back, each node naming its
length as a 12th field. The tree is compressed and sealed as one, so the small files cost ~25
bytes each and are deduplicated per folder (an unchanged folder is still the same tree). A
folder keeps at most ``INLINE_PER_FOLDER`` bytes so (the rest become blobs), so one folder's
tree -- held in memory while it is built -- stays small whatever the folder's size.
Repositories made before this have no ``inline_max`` (0: never) and keep version-1 trees.

*Sealing*: one byte saying how the payload is compressed (0 stored, 1 zstd) followed by the
payload, then -- in an encrypted repository -- AES-256-GCM with a random 96-bit nonce
(``nonce || ciphertext || tag``). Incompressible data is stored as is (compressing it again only
costs time and grows it). Blob ids are sha256 of the plaintext, or HMAC-SHA256 under the
repository's MAC key when encrypted, so that a reader of the bucket cannot confirm that a known
file is inside.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import struct
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import zstandard
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cargohold.errors import CargoholdError
from cargohold.snapshots._backend import RepositoryError

__all__ = [
    "ENTRY_SIZE",
    "FORMAT_VERSION",
    "INLINE_MAX",
    "INLINE_PER_FOLDER",
    "TREE_NODES",
    "ChunkerParams",
    "EncryptionParams",
    "Keys",
    "Node",
    "PasswordError",
    "RepoConfig",
    "SnapshotRecord",
    "decode_tree",
    "encode_index",
    "encode_packed_index",
    "encode_tree",
    "index_entries",
    "index_packs",
    "pack_entry",
]

FORMAT_VERSION = 2
TREE_NODES = 2000  # nodes per tree blob: ~100 kB of JSON before compression
INLINE_MAX = 4096  # new repositories keep files up to this size in their folder's tree
INLINE_PER_FOLDER = 4 << 20  # bytes of small files one folder's trees hold, at most
_ID = re.compile(r"^[0-9a-f]{64}$")
_INDEX_ENTRY = struct.Struct("<32sII")
ENTRY_SIZE = _INDEX_ENTRY.size  # bytes of one packed index entry: blob id, offset, length
_LEVEL = 3  # zstd level of metadata (trees, indexes): small, written once, read often


class PasswordError(CargoholdError):
    """An encrypted repository was opened without its password, or with a wrong one."""

    exit_code = 5


def damaged(what: str, detail: str) -> RepositoryError:
    return RepositoryError(
        f"{what} is damaged: {detail}.",
        hint="`cargohold repo check` reports the extent; restore another snapshot, or from "
        "another copy of the repository.",
    )


# -- repository.json ----------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChunkerParams(_Strict):
    """FastCDC parameters. Files up to ``min`` bytes are one blob each."""

    algorithm: Literal["fastcdc2020"] = "fastcdc2020"
    min: int = Field(default=256 << 10, ge=64, le=1 << 20)
    avg: int = Field(default=1 << 20, ge=256, le=4 << 20)
    max: int = Field(default=4 << 20, ge=1024, le=16 << 20)
    seed: int = Field(default=0, ge=0, lt=1 << 31)


class KdfParams(_Strict):
    name: Literal["scrypt"] = "scrypt"
    n: int = Field(default=1 << 15, ge=1 << 10, le=1 << 22)
    r: int = Field(default=8, ge=1, le=32)
    p: int = Field(default=1, ge=1, le=16)
    salt: str


class EncryptionParams(_Strict):
    cipher: Literal["aes-256-gcm"] = "aes-256-gcm"
    kdf: KdfParams
    wrapped_key: str  # base64 of nonce || AES-GCM(kdf key, master key) || tag


class RepoConfig(_Strict):
    format: Literal["cargohold-repository"] = "cargohold-repository"
    version: Literal[2] = 2
    id: str = Field(pattern=r"^[0-9a-f]{32}$")
    chunker: ChunkerParams = ChunkerParams()
    pack_size: int = Field(default=16 << 20, ge=1 << 20, le=256 << 20)
    compression: Literal["zstd"] = "zstd"
    compression_level: int = Field(default=1, ge=-5, le=19)
    # Files up to this many bytes live in their folder's tree (0: never, as in repositories
    # made before small files were inlined; a cargohold that predates the field refuses the
    # config with "upgrade cargohold" rather than misreading version-2 trees).
    inline_max: int = Field(default=0, ge=0, le=64 << 10)
    encryption: EncryptionParams | None = None


def parse_config(data: bytes, url: str) -> RepoConfig:
    try:
        return RepoConfig.model_validate_json(data)
    except ValidationError as exc:
        raise RepositoryError(
            f"{url}/repository.json is not a repository this cargohold can read: "
            f"{exc.errors()[0]['msg']} at {'.'.join(str(p) for p in exc.errors()[0]['loc'])}.",
            hint="Upgrade cargohold, or check --repo.",
        ) from None


# -- keys, sealing, blob ids --------------------------------------------------------------


# Data that compresses by less than ~10% is stored as it is: float32 weights gain 7.6% from zstd
# level 1 at 0.35 GB/s, the slowest step of a snapshot, for almost nothing on disk. A sample
# from the middle of each large blob decides (random bytes and most float arrays fail it; CSV,
# JSON and text pass at once); the format does not change (a blob says which it is).
_PROBE_FROM = 128 << 10
_PROBE = 32 << 10
_WORTH = 0.9


def _hardly_compresses(compressor: Any, data: bytes | memoryview) -> bool:
    middle = len(data) // 2
    sample = memoryview(data)[middle : middle + _PROBE]
    return len(compressor.compress(sample)) > _WORTH * len(sample)


class Keys:
    """The repository's secrets: none (plain), or an AES key and an HMAC key."""

    def __init__(self, master: bytes | None, level: int) -> None:
        self._level = level
        self._local = threading.local()  # a zstd context is not safe to share between threads
        self.encrypted = master is not None
        self._aead: Any = None
        self._mac = b""
        if master is not None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._aead = AESGCM(master[:32])
            self._mac = master[32:64]

    def blob_id(self, data: bytes | memoryview) -> str:
        if self.encrypted:
            return hmac.new(self._mac, data, hashlib.sha256).hexdigest()
        return hashlib.sha256(data).hexdigest()

    def id_hasher(self) -> Any:
        """A running hash whose hexdigest is ``blob_id`` of everything fed to it."""
        if self.encrypted:
            return hmac.new(self._mac, digestmod=hashlib.sha256)
        return hashlib.sha256()

    def seal(self, data: bytes | memoryview, *, metadata: bool = False) -> bytes:
        """Compress (unless it does not help) and, in an encrypted repository, encrypt."""
        local = self._local
        if not hasattr(local, "data"):
            local.data = zstandard.ZstdCompressor(level=self._level)
            local.meta = zstandard.ZstdCompressor(level=_LEVEL)
            local.plain = zstandard.ZstdDecompressor()
        if not metadata and len(data) >= _PROBE_FROM and _hardly_compresses(local.data, data):
            packed = b""
        else:
            packed = (local.meta if metadata else local.data).compress(data)
        # (join: one copy, where bytes(memoryview) + concatenation made two)
        body = b"\x01" + packed if 0 < len(packed) < len(data) else b"".join((b"\x00", data))
        if self._aead is None:
            return body
        nonce = os.urandom(12)
        return nonce + bytes(self._aead.encrypt(nonce, body, None))

    def unseal(self, sealed: bytes | memoryview, what: str) -> bytes:
        """The plaintext of ``seal``'s output.

        Raises:
            RepositoryError: it was altered, or is not what it claims to be.
        """
        body = sealed
        if self._aead is not None:
            from cryptography.exceptions import InvalidTag

            if len(sealed) < 29:
                raise damaged(what, "it is too short to be encrypted data")
            try:
                body = self._aead.decrypt(sealed[:12], sealed[12:], None)
            except InvalidTag:
                raise damaged(what, "its authentication tag does not match") from None
        if not body:
            raise damaged(what, "it is empty")
        if body[0] == 0:
            return bytes(body[1:])
        if body[0] != 1:
            raise damaged(what, f"unknown compression {body[0]}")
        try:
            return zstandard.ZstdDecompressor().decompress(body[1:], max_output_size=64 << 20)
        except zstandard.ZstdError as exc:
            raise damaged(what, f"it does not decompress ({exc})") from None


def _kdf(password: bytes, params: KdfParams) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    salt = base64.b64decode(params.salt)
    return Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p).derive(password)


def new_encryption(password: bytes) -> tuple[EncryptionParams, bytes]:
    """Fresh encryption parameters and the master key (64 random bytes) they wrap."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    master = os.urandom(64)
    kdf = KdfParams(salt=base64.b64encode(os.urandom(16)).decode())
    nonce = os.urandom(12)
    wrapped = nonce + AESGCM(_kdf(password, kdf)).encrypt(nonce, master, b"cargohold-key")
    return EncryptionParams(kdf=kdf, wrapped_key=base64.b64encode(wrapped).decode()), master


def unwrap_key(params: EncryptionParams, password: bytes | None, url: str) -> bytes:
    """The master key, from the password.

    Raises:
        PasswordError: no password, or the wrong one.
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if password is None:
        raise PasswordError(
            f"The repository {url} is encrypted and no password was given.",
            hint="Set CARGOHOLD_PASSWORD, or pass --password-file FILE.",
        )
    try:
        wrapped = base64.b64decode(params.wrapped_key, validate=True)
        master = AESGCM(_kdf(password, params.kdf)).decrypt(
            wrapped[:12], wrapped[12:], b"cargohold-key"
        )
    except (InvalidTag, ValueError):
        raise PasswordError(
            f"Wrong password for the repository {url}.",
            hint="Check CARGOHOLD_PASSWORD or the --password-file; nothing was read or written.",
        ) from None
    if len(master) != 64:
        raise damaged(f"{url}/repository.json", "its key has the wrong length")
    return master


def chunker_seed(master: bytes | None) -> int:
    """Encrypted repositories cut chunks with a secret gear table (from the key), so chunk
    lengths do not fingerprint known files."""
    if master is None:
        return 0
    return int.from_bytes(hashlib.sha256(b"chunker" + master).digest()[:4], "little") >> 1


# -- index --------------------------------------------------------------------------------


def encode_index(packs: list[tuple[str, str, list[tuple[str, int, int]]]]) -> bytes:
    """``[(pack name, blob kind, [(blob id, offset, length)])]`` → the index's plaintext."""
    return encode_packed_index(
        [
            (name, kind, b"".join(_INDEX_ENTRY.pack(bytes.fromhex(b), o, n) for b, o, n in blobs))
            for name, kind, blobs in packs
        ]
    )


def encode_packed_index(packs: Sequence[tuple[str, str, bytes | memoryview]]) -> bytes:
    """``encode_index`` with each pack's entries packed already, as ``index_packs`` gives
    them (40 bytes an entry): gc rewrites an index of millions of blobs without a tuple each."""
    out = bytearray(b"CHIX\x02")
    out += struct.pack("<I", len(packs))
    for name, kind, entries in packs:
        raw = name.encode()
        count = len(entries) // _INDEX_ENTRY.size
        out += struct.pack("<H", len(raw)) + raw + kind.encode()[:1] + struct.pack("<I", count)
        out += entries
    return bytes(out)


_PACK_NAME = re.compile(r"^packs/[0-9a-f]{2}/[0-9a-f]{64}$")


def pack_entry(blob: bytes, offset: int, length: int) -> bytes:
    """One packed index entry, as ``index_entries`` reads them."""
    return _INDEX_ENTRY.pack(blob, offset, length)


def index_entries(view: memoryview) -> Iterator[tuple[bytes, int, int]]:
    """The (blob id, offset, length) entries of one pack, as ``index_packs`` gives them."""
    return _INDEX_ENTRY.iter_unpack(view)


def index_packs(data: bytes, what: str) -> list[tuple[str, str, memoryview]]:
    """The inverse of ``encode_index``: an index's packs with their entries still packed (40
    bytes each, read lazily with ``index_entries``): loading a million-blob index no longer
    builds a million tuples before the lookup table.

    Raises:
        RepositoryError: it is malformed.
    """
    if data[:5] != b"CHIX\x02":
        raise damaged(what, "it is not an index of format 2")
    packs: list[tuple[str, str, memoryview]] = []
    try:
        (count,) = struct.unpack_from("<I", data, 5)
        pos = 9
        for _ in range(count):
            (size,) = struct.unpack_from("<H", data, pos)
            name = data[pos + 2 : pos + 2 + size].decode()
            kind = data[pos + 2 + size : pos + 3 + size].decode()
            (blobs,) = struct.unpack_from("<I", data, pos + 3 + size)
            pos += 7 + size
            end = pos + blobs * _INDEX_ENTRY.size
            if not _PACK_NAME.match(name) or kind not in ("d", "t") or end > len(data):
                raise ValueError(f"bad pack entry {name!r}")
            packs.append((name, kind, memoryview(data)[pos:end]))
            pos = end
        if pos != len(data):
            raise ValueError("trailing bytes")
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise damaged(what, str(exc)) from None
    return packs


# -- trees --------------------------------------------------------------------------------

Kind = Literal["dir", "file", "symlink", "hardlink"]
_KINDS: dict[str, Kind] = {"d": "dir", "f": "file", "l": "symlink", "h": "hardlink"}
_CODES = {v: k for k, v in _KINDS.items()}


@dataclass(frozen=True, slots=True)
class Node:
    """One entry of a folder. ``refs``: content blob ids (file) or tree blob ids (dir)."""

    name: str
    kind: Kind
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    target: str = ""  # a symlink's target; a hardlink's path (from the root) sharing its data
    refs: tuple[str, ...] = ()
    ino: int = 0
    ctime_ns: int = 0
    data: bytes | None = None  # a small file's bytes, kept in the tree (then ``refs`` is empty)

    def to_json(self) -> list[Any]:
        return [
            self.name,
            _CODES[self.kind],
            self.mode,
            self.uid,
            self.gid,
            self.mtime_ns,
            self.size,
            self.target,
            list(self.refs),
            self.ino,
            self.ctime_ns,
        ]


def encode_tree(nodes: list[Node]) -> bytes:
    """Version 1 (JSON) when no node holds its bytes; else version 2: the JSON, a newline, and
    the bytes of the nodes that hold them, in order, each node's 12th field its length."""
    inline = [n.data for n in nodes if n.data is not None]
    if not inline:
        body = {"format": "cargohold-tree", "version": 1, "nodes": [n.to_json() for n in nodes]}
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    listed = [n.to_json() + ([len(n.data)] if n.data is not None else []) for n in nodes]
    body = {"format": "cargohold-tree", "version": 2, "nodes": listed}
    head = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return b"".join((head, b"\n", *inline))


_BIG = (1 << 63) - 1
_U32 = 1 << 32
_U64 = 1 << 64


def valid_name(name: Any) -> str:
    """A single path component: what a tree may name. Anything else could climb out."""
    if (
        type(name) is not str
        or name in ("", ".", "..")
        or "/" in name
        or "\0" in name
        or (len(name) > 63 and len(name.encode("utf-8", "surrogateescape")) > 255)
    ):
        raise ValueError(f"{name!r} is not a file name")
    return name


def _is_id(ref: Any) -> bool:
    # (what _ID matches, without a regex: a tree of 1,000 files is decoded 3x faster)
    return type(ref) is str and len(ref) == 64 and not ref.strip("0123456789abcdef")


def _node(raw: Any, tail: memoryview | None = None, pos: int = 0) -> Node:
    """A node from its JSON list; a small file's (12 fields, its length last) takes its bytes
    from ``tail`` at ``pos``."""
    data = None
    if type(raw) is list and len(raw) == 12 and tail is not None:
        length = raw.pop()
        if type(length) is not int or not 0 < length <= tail.nbytes - pos:
            raise ValueError("a small file's length runs past the tree's data")
        data = bytes(tail[pos : pos + length])
    if type(raw) is not list or len(raw) != 11:
        raise ValueError("a node is not a list of 11 fields")
    name, code, mode, uid, gid, mtime, size, target, refs, ino, ctime = raw
    if data is not None and (code != "f" or refs or size != len(data)):
        raise ValueError(f"{name!r} holds bytes but is not a small file of that size")
    kind = _KINDS.get(code) if type(code) is str else None
    if kind is None:
        raise ValueError(f"unknown kind {code!r}")
    if type(target) is not str or "\0" in target:
        raise ValueError("a bad link target")
    if type(refs) is not list:
        raise ValueError("bad blob ids")
    for ref in refs:
        if not _is_id(ref):
            raise ValueError("bad blob ids")
    if kind in ("symlink", "hardlink") and not target:
        raise ValueError(f"{kind} without a target")
    if kind == "dir" and not refs:
        raise ValueError("a folder without a tree")
    if not (
        type(mode) is int
        and type(uid) is int
        and type(gid) is int
        and type(mtime) is int
        and type(size) is int
        and type(ino) is int
        and type(ctime) is int
        and 0 <= mode <= 0o7777
        and 0 <= uid < _U32
        and 0 <= gid < _U32
        and -_BIG <= mtime <= _BIG
        and 0 <= size <= _BIG
        and 0 <= ino < _U64
        and -_BIG <= ctime <= _BIG
    ):
        raise ValueError(f"a number out of range in {(mode, uid, gid, mtime, size, ino, ctime)!r}")
    return Node(
        valid_name(name), kind, mode, uid, gid, mtime, size, target, tuple(refs), ino, ctime, data
    )


def _inline_nodes(listed: list[Any], tail: memoryview) -> list[Node]:
    """A version-2 tree's nodes: those of 12 fields take their bytes from ``tail``, in order,
    and together exactly all of it."""
    nodes: list[Node] = []
    pos = 0
    for raw in listed:
        node = _node(raw, tail, pos)
        if node.data is not None:
            pos += len(node.data)
        nodes.append(node)
    if pos != tail.nbytes:
        raise ValueError("bytes after the tree's last small file")
    return nodes


def decode_tree(data: bytes, what: str) -> list[Node]:
    """A tree blob's nodes, validated (names are single components, kinds and numbers sane).

    Raises:
        RepositoryError: it is malformed.
    """
    try:
        newline = data.find(b"\n")
        body = json.loads(data if newline < 0 else data[:newline])
        if (
            not isinstance(body, dict)
            or body.get("format") != "cargohold-tree"
            or body.get("version") not in (1, 2)
            or not isinstance(body.get("nodes"), list)
        ):
            raise ValueError("not a tree of version 1 or 2")
        if (body["version"] == 1) != (newline < 0):
            raise ValueError(f"a version-{body['version']} tree of the wrong layout")
        if body["version"] == 1:
            nodes = [_node(raw) for raw in body["nodes"]]
        else:
            nodes = _inline_nodes(body["nodes"], memoryview(data)[newline + 1 :])
        if len({n.name for n in nodes}) != len(nodes):
            raise ValueError("a name appears twice in one folder")
        return nodes
    except RecursionError:
        raise damaged(what, "its JSON is nested too deeply") from None
    except (ValueError, TypeError) as exc:
        raise damaged(what, str(exc)) from None


# -- snapshots ----------------------------------------------------------------------------


class SnapshotRecord(_Strict):
    format: Literal["cargohold-snapshot"] = "cargohold-snapshot"
    version: Literal[2] = 2
    id: str = Field(pattern=r"^[0-9]{8}T[0-9]{6}\.[0-9]{6}Z-[0-9a-f]{6}$")
    source: str = Field(min_length=1, max_length=4096)  # a volume name or a folder's path
    kind: Literal["volume", "path"]
    created: str
    hostname: str = ""
    tag: str | None = None
    labels: dict[str, str] = {}
    files: int = Field(ge=0)
    bytes: int = Field(ge=0)
    new_blobs: int = Field(default=0, ge=0)
    new_bytes_stored: int = Field(default=0, ge=0)
    data_version: int = 0
    root: Node | None = None  # the source's own folder: its attributes and its tree
    changed: list[str] = []  # paths that changed or vanished while they were read

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


def encode_snapshot(record: SnapshotRecord) -> bytes:
    data = record.model_dump(exclude={"root"})
    data["root"] = record.root.to_json() if record.root else None
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def decode_snapshot(data: bytes, what: str) -> SnapshotRecord:
    try:
        body = json.loads(data)
        if not isinstance(body, dict):
            raise ValueError("not an object")
        root = body.pop("root", None)
        node = None
        if root is not None:
            root = list(root) if isinstance(root, list) else root
            if isinstance(root, list) and root and root[0] == "":
                root[0] = "root"  # the root node has no name of its own
            node = _node(root)
            if node.kind != "dir":
                raise ValueError("the root is not a folder")
        return SnapshotRecord.model_validate({**body, "root": node})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise damaged(what, f"{first['msg']} at {'.'.join(str(p) for p in first['loc'])}") from None
    except RecursionError:
        raise damaged(what, "its JSON is nested too deeply") from None
    except (ValueError, TypeError) as exc:
        raise damaged(what, str(exc)) from None
