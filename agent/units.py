"""Durations ("500ms", "60s", "5m"), sizes ("500MB", "1GiB") and names for config fields."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``"500ms"``, ``"60s"``, ``"5m"``, ``"1h"``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '500ms', '60s', '5m' or a number of seconds")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return float(match[1]) * _DURATION_UNITS[match[2]]
    raise ValueError(
        f"{value!r} is not a duration: use '500ms', '60s', '5m', '1h', '1d' or a number of seconds"
    )


def parse_size(value: Any) -> int:
    """Bytes from a number or a string such as ``"500MB"`` (10^6) or ``"1GiB"`` (2^30)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as '500MB' or a number of bytes")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and (match := _SIZE.match(value)):
        unit = (match[2] or "b").lower()
        unit = unit if unit.endswith("b") else unit + "b"
        return int(float(match[1]) * _SIZE_UNITS[unit])
    raise ValueError(f"{value!r} is not a size: use '500MB', '1GiB', '64kB' or a number of bytes")


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
"""Seconds, written as a number or as "500ms", "60s", "5m", "1h", "1d"."""
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]
"""Bytes, written as a number or as "64kB", "500MB", "1GiB"."""


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"{value!r}: use 1 to 64 letters, digits, '_' or '-'")
    return value


_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
Name = Annotated[str, AfterValidator(_check_name)]
"""A source, module or device name: 1 to 64 letters, digits, '_' or '-'."""
