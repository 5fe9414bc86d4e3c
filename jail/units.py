"""Human sizes and durations: the one place they are parsed and printed."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)\s*$", re.IGNORECASE)
_SIZE_MULT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_MULT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_size(value: object) -> int:
    """'256M' -> 268435456. Binary units (K=1024); plain ints are bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 256M, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a size like 256M, got {value!r}")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_MULT[m.group(2).upper()])
    raise ValueError(f"expected a size like 256M, got {value!r}")


def parse_duration(value: object) -> float:
    """'30s' -> 30.0, '500ms' -> 0.5, '2m' -> 120.0; plain numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30s, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"expected a duration like 30s, got {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _DURATION_MULT[m.group(2)]
    raise ValueError(f"expected a duration like 30s, got {value!r}")


def format_size(n: int) -> str:
    for unit in ("T", "G", "M", "K"):
        mult = _SIZE_MULT[unit]
        if n >= mult and n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)
