"""Tree blobs, versions 1 and 2 (small files kept in their folder's tree): round trips, and
refusal of crafted trees with a clear error -- never another exception, never bytes that do
not belong to the file that claims them."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cargohold.snapshots._backend import RepositoryError
from cargohold.snapshots._format import Node, decode_tree, encode_tree

BLOB = "ab" * 32


def _file(name: str, data: bytes | None = None, **kw: object) -> Node:
    size = len(data) if data is not None else kw.pop("size", 0)
    return Node(name, "file", 0o644, 1000, 1000, 5, size=size, data=data, **kw)  # type: ignore[arg-type]


def test_a_tree_without_small_files_stays_version_1() -> None:
    nodes = [_file("big", size=10, refs=(BLOB,)), Node("d", "dir", 0o755, 0, 0, 1, refs=(BLOB,))]
    raw = encode_tree(nodes)
    assert b"\n" not in raw and json.loads(raw)["version"] == 1
    assert decode_tree(raw, "t") == nodes


def test_small_files_round_trip_in_order_beside_other_nodes() -> None:
    nodes = [
        _file("a", b"first\n\x00bytes"),
        _file("b", size=9, refs=(BLOB,)),
        _file("c", b"\n"),  # (a newline in a file's bytes is no separator)
        Node("l", "symlink", 0o777, 0, 0, 1, target="a"),
        _file("e", size=0),
        _file("z", bytes(range(256)) * 16),
    ]
    raw = encode_tree(nodes)
    assert json.loads(raw[: raw.index(b"\n")])["version"] == 2
    assert decode_tree(raw, "t") == nodes


def _v2(listed: list[list[object]], tail: bytes) -> bytes:
    head = {"format": "cargohold-tree", "version": 2, "nodes": listed}
    return json.dumps(head).encode() + b"\n" + tail


def _row(name: str, kind: str = "f", size: int = 3, refs: list[str] | None = None) -> list[object]:
    return [name, kind, 0o644, 0, 0, 0, size, "", refs or [], 0, 0]


@pytest.mark.parametrize(
    "raw",
    [
        _v2([[*_row("a"), 3]], b"abcd"),  # bytes left over
        _v2([[*_row("a"), 3]], b"ab"),  # runs past the end
        _v2([[*_row("a", size=4), 3]], b"abc"),  # its size says otherwise
        _v2([[*_row("a"), 0]], b""),  # zero-length "small file"
        _v2([[*_row("a"), -1]], b"abc"),
        _v2([[*_row("a"), True]], b"abc"),
        _v2([[*_row("a"), "3"]], b"abc"),
        _v2([[*_row("a", refs=[BLOB]), 3]], b"abc"),  # bytes and a blob
        _v2([[*_row("d", kind="d", refs=[BLOB]), 3]], b"abc"),  # a folder holding bytes
        _v2([[*_row("a"), 3], [*_row("a"), 3]], b"abcabc"),  # one name twice
        _v2([[*_row("../x"), 3]], b"abc"),
        json.dumps({"format": "cargohold-tree", "version": 2, "nodes": []}).encode(),  # no tail
        json.dumps({"format": "cargohold-tree", "version": 1, "nodes": [[*_row("a"), 3]]}).encode()
        + b"\nabc",  # version 1 has no data part
        json.dumps({"format": "cargohold-tree", "version": 1, "nodes": [[*_row("a"), 3]]}).encode(),
        json.dumps({"format": "cargohold-tree", "version": 3, "nodes": []}).encode() + b"\n",
    ],
)
def test_crafted_trees_are_refused_as_damaged(raw: bytes) -> None:
    with pytest.raises(RepositoryError, match="damaged"):
        decode_tree(raw, "tree t")


_names = st.text(
    st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=20
).filter(lambda n: n not in (".", ".."))


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(_names, st.one_of(st.binary(min_size=1, max_size=300), st.none()), max_size=12)
)
def test_any_folder_round_trips(files: dict[str, bytes | None]) -> None:
    nodes = [
        _file(n, d) if d is not None else _file(n, size=7, refs=(BLOB,)) for n, d in files.items()
    ]
    assert decode_tree(encode_tree(nodes), "t") == nodes


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_damage_is_refused_or_still_a_consistent_tree(data: st.DataObject) -> None:
    nodes = [_file("a", b"x" * 40), _file("b", size=3, refs=(BLOB,)), _file("c", b"\n\n\n")]
    raw = bytearray(encode_tree(nodes))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_tree(bytes(raw), "t")
    except RepositoryError:
        return
    for node in decoded:  # whatever was accepted is self-consistent
        if node.data is not None:
            assert node.kind == "file" and not node.refs and node.size == len(node.data) > 0


@pytest.mark.parametrize("value", [-1, 1 << 20, "many", None, [4096]])
def test_a_repository_config_with_a_bad_inline_max_is_refused(value: object) -> None:
    from cargohold.snapshots._format import parse_config

    config = {"format": "cargohold-repository", "version": 2, "id": "ab" * 16, "inline_max": value}
    with pytest.raises(RepositoryError, match="inline_max"):
        parse_config(json.dumps(config).encode(), "/repo")
