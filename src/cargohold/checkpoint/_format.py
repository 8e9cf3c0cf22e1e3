"""The on-disk checkpoint format, and how to tell a whole checkpoint from debris.

    <dir>/step-0000000042/            one finished checkpoint per step
        manifest.json                 written last: format, step, time, metrics, size + sha256 of
        model.pt ...                  every file. No manifest, no checkpoint.
                                      Checksums are crc32 by default (integrity against torn
                                      writes and bit rot at 3+ GB/s; sha256 on request).
    <dir>/.tmp-step-0000000042-<token>/  a save in progress (or killed mid-way)
    <dir>/.lock-<token>               held (fcntl) by the writer of everything named <token>:
                                      its liveness, valid across containers (see _locks.py)
    <dir>/.trash-<token>-step-.../    a deletion in progress (renamed first, then removed)
    <dir>/.replaced-<token>-step-.../ an older copy of a step being saved again

This module is self-contained (standard library, no imports from cargohold) on purpose:
``cargohold run`` sends its source to a helper container to find the latest valid checkpoint in a
volume it cannot read directly, so the rules for "valid" exist exactly once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from pathlib import Path
from typing import Any

FORMAT_NAME = "cargohold-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STEP_DIR_RE = re.compile(r"^step-(\d{10,})$")
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
REPLACED_PREFIX = ".replaced-"
_CHUNK = 4 * 1024 * 1024


def step_dir_name(step: int) -> str:
    return f"step-{step:010d}"


CHECKSUMS = ("crc32", "sha256")


def checksum_file(path: Path | str, algorithm: str) -> str:
    """The file's checksum as hex: ``crc32`` (zlib) or ``sha256``."""
    if algorithm not in CHECKSUMS:
        raise ValueError(f"unknown checksum {algorithm!r}")
    digest = hashlib.sha256() if algorithm == "sha256" else None
    crc = 0
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        while True:
            n = f.readinto(buffer)
            if not n:
                break
            if digest is not None:
                digest.update(view[:n])
            else:
                crc = zlib.crc32(view[:n], crc)
    return digest.hexdigest() if digest is not None else f"{crc:08x}"


def read_manifest(folder: Path) -> dict[str, Any]:
    """Parse and sanity-check a checkpoint folder's manifest.

    Raises:
        ValueError: with the reason the folder is not a checkpoint.
    """
    try:
        raw = (folder / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise ValueError("no manifest (the save never finished)") from None
    except OSError as exc:
        raise ValueError(f"manifest unreadable: {exc}") from None
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise ValueError("manifest is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ValueError("manifest is not a cargohold checkpoint manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise ValueError(f"unknown checkpoint format version {manifest.get('version')!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(manifest.get("step"), int):
        raise ValueError("manifest lacks its step or file list")
    return manifest


def check_folder(folder: Path, *, verify: bool) -> dict[str, Any]:
    """The manifest of a whole checkpoint.

    Args:
        folder: a ``step-…`` folder.
        verify: also recompute every file's sha256 (else sizes only).

    Raises:
        ValueError: with the reason the checkpoint cannot be trusted.
    """
    manifest = read_manifest(folder)
    for name, entry in manifest["files"].items():
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError:
            raise ValueError(f"{name} is missing") from None
        if size != entry.get("size"):
            raise ValueError(f"{name} has {size} bytes, the manifest says {entry.get('size')}")
        if verify:
            algorithm = next((a for a in CHECKSUMS if a in entry), None)
            if algorithm is None:
                raise ValueError(f"{name} has no checksum in the manifest")
            if checksum_file(path, algorithm) != entry[algorithm]:
                raise ValueError(f"{name} does not match its {algorithm} checksum (corrupt)")
    return manifest


def step_folders(directory: Path) -> list[tuple[int, Path]]:
    """Every ``step-…`` folder, newest step first (whole or not)."""
    found = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = STEP_DIR_RE.match(entry.name)
        if match and entry.is_dir(follow_symlinks=False):
            found.append((int(match.group(1)), Path(entry.path)))
    found.sort(reverse=True)
    return found


def latest_valid(directory: Path | str, *, verify: bool = True) -> Path | None:
    """The newest checkpoint folder whose manifest and files hold, or None."""
    for _, folder in step_folders(Path(directory)):
        try:
            check_folder(folder, verify=verify)
        except ValueError:
            continue
        return folder
    return None


if __name__ == "__main__":  # used by `cargohold run` in a helper container
    import sys

    found = latest_valid(sys.argv[1])
    print(found.name if found else "")  # noqa: T201 - the helper container's answer
