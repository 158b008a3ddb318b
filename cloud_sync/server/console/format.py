"""How figures read on the pages: ages, durations, sizes, counts (Jinja2 filters).

Each returns plain text; Jinja2 escapes it like any other value.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from agent import codec

DASH = "\u2013"  # an en dash: "no figure"


def duration(seconds: float | None) -> str:
    """``45 s``, ``12 min``, ``3 h 5 min``, ``2 d 4 h``."""
    if seconds is None:
        return DASH
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{s:.0f} s" if s >= 10 or s == int(s) else f"{s:.1f} s"
    if s < 3600:
        return f"{s // 60:.0f} min"
    if s < 86400:
        hours, rest = divmod(s, 3600)
        return f"{hours:.0f} h {rest // 60:.0f} min" if rest >= 60 else f"{hours:.0f} h"
    days, rest = divmod(s, 86400)
    return f"{days:.0f} d {rest // 3600:.0f} h" if rest >= 3600 else f"{days:.0f} d"


def ago(at: float | None, now: float) -> str:
    if at is None:
        return "never"
    delta = now - at
    if delta < 1:
        return "just now"
    return f"{duration(delta)} ago"


def _utc(at: float) -> dt.datetime | None:
    """``at`` as a UTC time; None for a time no calendar holds (a device may send ``1e300``)."""
    try:
        return dt.datetime.fromtimestamp(at, dt.UTC)
    except (OverflowError, ValueError, OSError):
        return None


def timestamp(at: float | None) -> str:
    """UTC, to the second, as ISO 8601 (for ``<time datetime>`` and tooltips)."""
    when = None if at is None else _utc(at)
    return "" if when is None else when.strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(at: float | None) -> str:
    when = None if at is None else _utc(at)
    return "" if when is None else when.isoformat(timespec="seconds")


def size(n: float | None) -> str:
    if n is None:
        return DASH
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.1f} {unit}"
        value /= 1000
    return DASH  # pragma: no cover


def count(n: float | None) -> str:
    """``1,234,567``; a dash for unknown."""
    if n is None or not math.isfinite(n):
        return DASH
    return f"{n:,.0f}" if float(n) == int(n) else f"{n:,.1f}"


def rate(n: float | None) -> str:
    if n is None:
        return DASH
    return f"{n:,.1f}/s" if n < 100 else f"{n:,.0f}/s"


def value(v: Any) -> str:
    """A record field as text: numbers trimmed, other JSON as JSON."""
    if isinstance(v, bool) or v is None:
        return "true" if v is True else ("false" if v is False else "null")
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.6g}"
    if isinstance(v, int | str):
        return str(v)
    return codec.dumps(v)


def field(name: str, v: Any) -> str:
    """A record field as text; the time fields of summaries and events as UTC clock times."""
    if name in TIME_FIELDS and type(v) in (int, float) and v > 1e9 and (when := _utc(v)) is not None:
        return when.strftime("%H:%M:%S")
    return value(v)


TIME_FIELDS = frozenset({"start", "end", "since", "raised_at", "last_seen"})


def skew(seconds: float | None) -> str:
    """A clock offset with its sign, ``+1.2 s`` or ``-0.4 s``; under 0.05 s either way, ``0.0 s``
    (not ``-0.0 s``)."""
    if seconds is None or not math.isfinite(float(seconds)):
        return DASH
    tenths = round(float(seconds), 1)
    return "0.0 s" if tenths == 0 else f"{tenths:+.1f} s"

FILTERS = {
    "duration": duration, "ago": ago, "timestamp": timestamp, "iso": iso, "size": size, "count": count,
    "rate": rate, "value": value, "skew": skew,
}
