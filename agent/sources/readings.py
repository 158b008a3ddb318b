"""Turning a local sensor payload into a reading record, or into a named reason to drop it.

A payload is a JSON object ``{"value": number, "ts": time?, "unit": str?}`` or a bare JSON
number; ``ts`` is Unix seconds or an ISO 8601 time (UTC when it has no offset). Anything else is
refused with one of the reasons below, which become the ``dropped`` counters of
``edge-agent status``.

Every source checks reading times the same way (``check_ts``): a time more than the agent's
``max_clock_skew`` ahead of the gateway's clock is refused as ``bad_ts``, so that a millisecond
timestamp taken for seconds (a date in the year 55,800) never reaches a window. Replay passes
no skew and accepts any finite time, also before 1970.
"""

from __future__ import annotations

import math
import sys
from datetime import UTC, datetime, tzinfo
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

DEFAULT_MAX_CLOCK_SKEW = 86400.0
"""Seconds a reading time may be ahead of the gateway's clock (the ``max_clock_skew`` key)."""

_NUMBER = (int, float)
_BIGGEST = int(sys.float_info.max)
_new_record = tuple.__new__  # Record(...) without the namedtuple's Python-level __new__


class Rejected(Exception):
    """A payload that is not a reading; ``reason`` is one of this module's constants."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_time(text: str, zone: tzinfo | None = UTC) -> float:
    """Unix seconds from an ISO 8601 time; one without an offset is in ``zone`` (None: the
    gateway's local zone). ``ValueError`` when ``text`` is not such a time."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        if zone is None:
            return moment.timestamp()  # a naive datetime's timestamp() reads it as local time
        moment = moment.replace(tzinfo=zone)
    return moment.timestamp()


def time_of(value: Any, zone: tzinfo | None = UTC) -> float:
    """Unix seconds from a number, a numeric string or an ISO 8601 string; ``Rejected(BAD_TS)``
    for anything else. The result is not yet checked against the clock: see ``check_ts``."""
    kind = type(value)
    if kind is float:
        return value  # type: ignore[no-any-return]
    if kind is int:
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float
            raise Rejected(BAD_TS) from None
    if kind is str:
        try:
            return float(value)
        except ValueError:
            pass
        try:
            return parse_time(value, zone)
        except (ValueError, OverflowError):
            pass
    raise Rejected(BAD_TS)


def check_ts(ts: float, now: float, max_skew: float | None) -> float:
    """``ts`` if it is a reading time a source may take at ``now``: finite, not before 1970 and
    at most ``max_skew`` seconds ahead of ``now``. ``max_skew`` None (replay): any finite time."""
    if max_skew is None:
        if math.isfinite(ts):
            return ts
    elif 0.0 <= ts <= now + max_skew:  # NaN fails both comparisons
        return ts
    raise Rejected(BAD_TS)


def decode_reading(
    topic: str, sensor: str, payload: bytes | str, now: float,
    max_skew: float | None = DEFAULT_MAX_CLOCK_SKEW,
) -> Record:
    """The reading in ``payload``, or ``Rejected`` naming why it is not one."""
    try:
        body = codec.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise Rejected(NOT_JSON) from None
    return reading_from(topic, sensor, body, now, max_skew)


def reading_from(
    topic: str, sensor: str, body: Any, now: float,
    max_skew: float | None = DEFAULT_MAX_CLOCK_SKEW,
) -> Record:
    """The reading in an already parsed payload ``body`` (times checked as ``check_ts`` does)."""
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
    if value - value != 0.0 or (type(value) is int and not -_BIGGEST <= value <= _BIGGEST):
        # NaN or an infinity (faster than math.isfinite, every reading), or an integer beyond
        # any float (the standard library's JSON makes them)
        raise Rejected(NOT_FINITE)
    if type(ts) not in _NUMBER:
        ts = time_of(ts)
    if max_skew is None:
        if not math.isfinite(ts):
            raise Rejected(BAD_TS)
    elif not 0 <= ts <= now + max_skew:  # NaN fails both comparisons
        raise Rejected(BAD_TS)
    data = {"sensor": sensor, "value": value}
    if unit is not None and type(unit) is str:
        data["unit"] = unit
    return _new_record(Record, (topic, ts if type(ts) is float else float(ts), data))
