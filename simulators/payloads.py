"""Reading payloads as sensors send them (DESIGN.md), and the broken ones real sensors send too.

Each malformed payload is built to be refused by the agent for one known reason, named as in
``agent/sources/readings.py``, so a test can compare the simulator's counts with the agent's
``dropped`` counters reason by reason.
"""

from __future__ import annotations

import random
from collections.abc import Callable

# The agent's reasons (agent/sources/readings.py); repeated here as plain strings so that the
# simulators do not import the daemon.
NOT_JSON = "not_json"
NOT_AN_OBJECT = "not_an_object"
NO_VALUE = "no_value"
NOT_A_NUMBER = "value_not_a_number"
BAD_TS = "bad_ts"


def reading(value: float, ts: float, unit: str) -> bytes:
    """``{"value": ..., "ts": ..., "unit": ...}``, formatted by hand: it is the hot path."""
    return b'{"value":%r,"ts":%.3f,"unit":"%s"}' % (value, ts, unit.encode())


def _truncated(value: float, ts: float, unit: str) -> bytes:
    return b'{"value":%r,"ts":%.3f,"un' % (value, ts)


def _garbage(value: float, ts: float, unit: str) -> bytes:
    return b"\xff\xfe\x00garbage"


def _string(value: float, ts: float, unit: str) -> bytes:
    return b'"%r %s"' % (value, unit.encode())


def _array(value: float, ts: float, unit: str) -> bytes:
    return b"[%r,%.3f]" % (value, ts)


def _missing_value(value: float, ts: float, unit: str) -> bytes:
    return b'{"ts":%.3f,"unit":"%s"}' % (ts, unit.encode())


def _null_value(value: float, ts: float, unit: str) -> bytes:
    return b'{"value":null,"ts":%.3f}' % ts


def _quoted_value(value: float, ts: float, unit: str) -> bytes:
    return b'{"value":"%r","ts":%.3f,"unit":"%s"}' % (value, ts, unit.encode())


def _bad_ts(value: float, ts: float, unit: str) -> bytes:
    return b'{"value":%r,"ts":"yesterday"}' % value


def _negative_ts(value: float, ts: float, unit: str) -> bytes:
    return b'{"value":%r,"ts":-%.3f}' % (value, ts)


Builder = Callable[[float, float, str], bytes]

# (reason the agent gives, how to build it); drawn uniformly.
MALFORMED: tuple[tuple[str, Builder], ...] = (
    (NOT_JSON, _truncated),
    (NOT_JSON, _garbage),
    (NOT_AN_OBJECT, _string),
    (NOT_AN_OBJECT, _array),
    (NO_VALUE, _missing_value),
    (NO_VALUE, _null_value),
    (NOT_A_NUMBER, _quoted_value),
    (BAD_TS, _bad_ts),
    (BAD_TS, _negative_ts),
)


class MalformedDraw:
    """Decides, reading by reading, whether one sensor's payload is broken and how;
    reproducible for a seed and a sensor."""

    def __init__(self, seed: int, sensor_id: str, share: float) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError("the malformed share must be between 0 and 1")
        self._rng = random.Random(f"{seed}:{sensor_id}:malformed")
        self._share = share

    def draw(self) -> tuple[str, Builder] | None:
        """The reason and builder for this slot's broken payload, or None for a good one."""
        if not self._share:
            return None
        # Always two draws, so one reading's choice never shifts the next one's.
        broken = self._rng.random() < self._share
        pick = MALFORMED[int(self._rng.random() * len(MALFORMED))]
        return pick if broken else None
