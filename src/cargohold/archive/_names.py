"""Judging member names: the one rule that turns a name from an archive, a manifest or a user
into a relative POSIX path inside a target, or refuses it.

A name never climbs (``..``) and is never absolute; ``.``, ``./`` and ``""`` all mean the
target's root, which writers treat specially (a root is never replaced by what a name says).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from cargohold.errors import UnsafeArchive

__all__ = ["clean_member_name"]


def clean_member_name(name: str, *, what: str = "member") -> str:
    """Normalise an archive name to a relative POSIX path, refusing anything that escapes.

    Returns:
        The path, ``""`` for the root itself.

    Raises:
        UnsafeArchive: an absolute name, or one with ``..``.
    """
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(
            f"Refused {what} {name!r}: an absolute path would be written outside the target.",
            hint="Only extract archives you trust; re-create it with relative names (tar -C DIR).",
        )
    if "\0" in name:
        raise UnsafeArchive(
            f"Refused {what} {name!r}: a NUL byte in a name.",
            hint="Only extract archives you trust.",
        )
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(
            f"Refused {what} {name!r}: '..' would climb out of the target.",
            hint="Only extract archives you trust; re-create it without '..' in names.",
        )
    return "/".join(parts)
