"""Turning a local sensor payload into a reading record, or into a named reason to drop it.

A payload is a JSON object ``{"value": number, "ts": unix_seconds?, "unit": str?}`` or a bare
JSON number. Anything else is refused with one of the reasons below, which become the
``dropped`` counters of ``edge-agent status``.
"""

from __future__ import annotations

import math
from typing import Any

from agent import codec
from agent.api import Record

NOT_JSON = "not_json"
NOT_AN_OBJECT = "not_an_object"
NO_VALUE = "no_value"
NOT_A_NUMBER = "value_not_a_number"
NOT_FINITE = "value_not_finite"
BAD_TS = "bad_ts"
OVERSIZED = "oversized"

_NUMBER = (int, float)


class Rejected(Exception):
    """A payload that is not a reading; ``reason`` is one of this module's constants."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_reading(topic: str, sensor: str, payload: bytes | str, now: float) -> Record:
    """The reading in ``payload``, or ``Rejected`` naming why it is not one."""
    try:
        body = codec.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise Rejected(NOT_JSON) from None
    return reading_from(topic, sensor, body, now)


def reading_from(topic: str, sensor: str, body: Any, now: float) -> Record:
    """The reading in an already parsed payload ``body``."""
    body_type = type(body)
    if body_type is dict:
        value = body.get("value")
        if value is None:
            raise Rejected(NO_VALUE)
        ts = body.get("ts", now)
        unit = body.get("unit")
    elif body_type in _NUMBER:
        value, ts, unit = body, now, None
    else:
        raise Rejected(NOT_AN_OBJECT)
    if type(value) not in _NUMBER:  # bool is an int subclass, but not a reading
        raise Rejected(NOT_A_NUMBER)
    if not math.isfinite(value):
        raise Rejected(NOT_FINITE)
    if type(ts) not in _NUMBER or not math.isfinite(ts) or ts < 0:
        raise Rejected(BAD_TS)
    data = {"sensor": sensor, "value": value}
    if unit is not None and type(unit) is str:
        data["unit"] = unit
    return Record(topic, float(ts), data)
