"""What counts as a reading's value in a device's payload, and what is ignored.

Numbers are values; so are numeric strings (``"37.00"``, as Zigbee2MQTT sends some), booleans
and the binary words devices use (``ON``/``OFF``, ``OPEN``/``CLOSED``, ``on``/``off``,
``true``/``false``), as 1/0. Other strings, null, objects and arrays are not readings: the
mapping ignores them and counts them as ``fields_ignored``. ``nan``, infinities and integers
beyond a float are values that are not finite, dropped as ``value_not_finite``.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from agent.sources.readings import NOT_FINITE, Rejected

BINARY = {
    "on": 1, "off": 0, "true": 1, "false": 0, "open": 1, "closed": 0,
}
_MAX_TEXT = 64  # longer strings are never numbers a device meant; skip them unread
_BIG = int(sys.float_info.max)  # beyond this an integer does not fit a float


def to_value(value: Any) -> float | int | None:
    """The reading value of a payload field, None when the field is not a reading, or
    ``Rejected(NOT_FINITE)``."""
    kind = type(value)
    if kind is float:
        if value - value == 0.0:  # false for NaN and the infinities, faster than isfinite
            return value  # type: ignore[no-any-return]
        raise Rejected(NOT_FINITE)
    if kind is int:
        if -_BIG < value < _BIG:
            return value  # type: ignore[no-any-return]
        raise Rejected(NOT_FINITE)
    if kind is bool:
        return 1 if value else 0
    if kind is str:
        return text_value(value)
    return None


def text_value(text: str) -> float | int | None:
    """A plain-text or string value: a number, a binary word as 1/0, else None."""
    if len(text) > _MAX_TEXT:
        return None
    try:
        number = float(text)
    except ValueError:
        return BINARY.get(text.strip().lower())
    if math.isfinite(number):
        return number
    raise Rejected(NOT_FINITE)
