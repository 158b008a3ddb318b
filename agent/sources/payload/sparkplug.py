"""Sparkplug B (Eclipse): protobuf payloads on ``spBv1.0/<group>/<type>/<edge node>[/<device>]``.

Births (``NBIRTH``, ``DBIRTH``) name every metric and may give each an alias; data messages
(``NDATA``, ``DDATA``) may then carry the alias alone. The mapper remembers the aliases of each
edge node and device from its births and resolves them; a metric whose alias no birth named
(the agent started after the birth) is dropped as ``unknown_alias`` until the next birth.
Births carry current values, so their metrics are readings too. Deaths, commands and the
host's ``STATE`` are not readings. Times are milliseconds: a metric's own, else the payload's,
else the time of receipt.
"""

from __future__ import annotations

from typing import Any

from agent.api import Record
from agent.sources.payload.mapping import PrefixOf, Tally
from agent.sources.payload.sparkplug_schema import SIGNED_BITS, Payload
from agent.sources.payload.values import text_value, to_value
from agent.sources.readings import DEFAULT_MAX_CLOCK_SKEW, Rejected, check_ts

NOT_PROTOBUF = "not_protobuf"
"""Drop reason: a Sparkplug payload that does not decode."""
UNKNOWN_ALIAS = "unknown_alias"
"""Drop reason: a metric by an alias no birth has named."""
NAMESPACE = "spBv1.0"
_BIRTHS = frozenset({"NBIRTH", "DBIRTH"})
_READINGS = _BIRTHS | {"NDATA", "DDATA"}
_MAX_DEVICES = 100_000
# Metrics every edge node has, about the session rather than the process.
_SESSION = ("bdSeq", "Node Control/", "Device Control/", "Properties/")


class SparkplugB:
    """The ``sparkplug_b`` format's mapper."""

    def __init__(
        self, max_skew: float | None = DEFAULT_MAX_CLOCK_SKEW, prefix_of: PrefixOf | None = None
    ) -> None:
        self.max_skew = max_skew
        self._prefix_of = prefix_of
        self._aliases: dict[str, dict[int, str]] = {}

    def excludes(self, topic: str) -> bool:
        levels = topic.split("/")
        return not (4 <= len(levels) <= 5 and levels[0] == NAMESPACE and levels[2] in _READINGS)

    def handle(self, topic: str, payload: bytes, now: float, out: list[Record], tally: Tally) -> None:
        _, group, kind, *node = topic.split("/")
        owner = "/".join((group, *node))
        try:
            message = Payload.FromString(payload)
        except Exception:  # protobuf's DecodeError, and what its C parser raises
            raise Rejected(NOT_PROTOBUF) from None
        if kind in _BIRTHS:
            self._birth(owner, message)
        aliases = self._aliases.get(owner, {})
        if not message.metrics:  # a birth or data message with no metrics: nothing to take
            tally.empty += 1
        prefix = self._prefix_of(topic) if self._prefix_of is not None else None
        default_ts = message.timestamp / 1000.0 if message.HasField("timestamp") else now
        for metric in message.metrics:
            name = metric.name if metric.HasField("name") else aliases.get(metric.alias)
            if name is None:
                tally.drop(UNKNOWN_ALIAS)
                continue
            if name.startswith(_SESSION) or metric.is_null:
                tally.fields_ignored += 1
                continue
            try:
                value = metric_value(metric)
                ts = metric.timestamp / 1000.0 if metric.HasField("timestamp") else default_ts
                ts = check_ts(ts, now, self.max_skew)
            except Rejected as rejected:
                tally.drop(rejected.reason)
                continue
            if value is None:
                tally.fields_ignored += 1
                continue
            sensor = f"{owner}/{name}"
            out.append(Record(topic if prefix is None else prefix + sensor, ts,
                              {"sensor": sensor, "value": value}))

    def _birth(self, owner: str, message: Any) -> None:
        """A birth starts the owner's aliases afresh (a rebirth may number them anew)."""
        if owner not in self._aliases and len(self._aliases) >= _MAX_DEVICES:
            self._aliases.clear()
        self._aliases[owner] = {
            metric.alias: metric.name
            for metric in message.metrics if metric.HasField("alias") and metric.HasField("name")
        }


def metric_value(metric: Any) -> float | int | None:
    """A metric's value as a reading: numbers, booleans as 1/0, numeric strings; None for
    what is not a reading (bytes, data sets, templates, other strings)."""
    field = metric.WhichOneof("value")
    if field is None or field == "bytes_value":
        return None
    value = getattr(metric, field)
    bits = SIGNED_BITS.get(metric.datatype)
    if bits is not None and field in ("int_value", "long_value") and value >= 1 << (bits - 1):
        value -= 1 << bits  # two's complement in an unsigned field (specification 6.4.16)
    if field == "string_value":
        return text_value(value)
    return to_value(value)
