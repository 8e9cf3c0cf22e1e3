"""The words of the spec that every layer shares: store kinds, backings, sizes.

Kept apart from ``spec.py`` (pydantic) so that the engine, the planner and the renderers can use
them without loading the spec's validation machinery: ``cargohold snapshot`` should not pay for
parsing a TOML schema it never reads.
"""

from __future__ import annotations

import re
from enum import StrEnum

__all__ = [
    "MAX_SIZE",
    "Backing",
    "StoreKind",
    "format_size",
    "is_url",
    "looks_like_a_mistyped_url",
    "parse_duration",
    "parse_size",
]

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)

_URL_RE = re.compile(r"^[a-z][a-z0-9+.-]*://")
_DURATION_RE = re.compile(r"^(\d+[smhd])+$")
_DURATION_PART_RE = re.compile(r"(\d+)([smhd])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# No machine has a petabyte of memory; a larger size is a typo (an extra unit or digits).
MAX_SIZE = 1 << 50


class StoreKind(StrEnum):
    DATASET = "dataset"
    CHECKPOINTS = "checkpoints"
    ARTIFACTS = "artifacts"
    CACHE = "cache"
    SCRATCH = "scratch"


class Backing(StrEnum):
    BIND = "bind"
    VOLUME = "volume"
    TMPFS = "tmpfs"


def parse_size(value: str | int) -> int:
    """Turn ``"1g"``, ``"512m"``, ``"64MiB"`` or a byte count into bytes (powers of 1024).

    Raises:
        ValueError: the text is not a size.
    """
    # TOML's `true` is an int to Python; a size it is not.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f'{value!r} is not a size; write it like "512m" or "2g"')
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.match(value)
        if not match:
            raise ValueError(f'{value!r} is not a size; write it like "512m" or "2g"')
        number, unit = match.groups()
        size = int(float(number) * 1024 ** " kmgt".index(unit.lower() or " "))
    if size < 0:
        raise ValueError("a size cannot be negative")
    if size > MAX_SIZE:
        raise ValueError(f"{value!r} is larger than any machine's memory or disk (1 PiB)")
    return size


def is_url(location: str) -> bool:
    """An fsspec URL (``s3://…``, ``file://…``) rather than a host folder."""
    return bool(_URL_RE.match(location))


_SCHEME_WITHOUT_SLASHES_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(?!//)")


def looks_like_a_mistyped_url(location: str) -> bool:
    """``s3:/bucket``, ``S3://x`` or ``s3:bucket``: a URL with a slip, which taken as a folder
    would quietly write into ``./s3:`` instead of the bucket."""
    return bool(_SCHEME_WITHOUT_SLASHES_RE.match(location)) or (
        "://" in location and not is_url(location)
    )


def parse_duration(text: str) -> float:
    """``30s``, ``15m``, ``1h``, ``1d`` (or a sum like ``1h30m``) → seconds.

    Raises:
        ValueError: anything else, or less than a second.
    """
    if not isinstance(text, str) or not _DURATION_RE.match(text.strip()):
        raise ValueError(f"{text!r} is not a duration; write 30s, 15m, 1h, 1d or 1h30m")
    seconds = float(
        sum(int(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART_RE.findall(text.strip()))
    )
    if seconds < 1:
        raise ValueError(f"{text!r} is too short; snapshot at most once a second")
    return seconds


def format_size(n: float) -> str:
    """Bytes for people: ``"1.5 GB"`` (powers of 1000, as ``df -H`` and file managers show)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
