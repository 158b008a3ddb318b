"""Lines of text as readings, for the sources that read lines (``exec``, ``tail``, ``serial``).

``format = "json"``: each line a JSON object in the agent's reading shape with a ``sensor``
field (``{"sensor": "t1", "value": 21.5, "ts": 1700000000, "unit": "C"}``), or, with a
``[sources.payload]`` table, any JSON mapped by it exactly as the MQTT source maps payloads
(``{topic}`` in its ``sensor`` template is the source's name). ``format = "text"``: each line
``sensor value [ts]``, separated by spaces or tabs. ``format = "regex"`` (serial lines): a
regular expression with the named groups ``sensor`` (or a fixed ``sensor`` key), ``value`` and
optionally ``ts`` and ``unit``. Lines that are not readings are counted by reason.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import model_validator

from agent import codec
from agent.api import Record, SourceConfig, SourceContext
from agent.sources.payload.config import PayloadConfig
from agent.sources.payload.mapping import PayloadMapping, Tally
from agent.sources.readings import NOT_JSON, Rejected, reading_from
from agent.units import Size

NO_SENSOR = "no_sensor"
NOT_TEXT_READING = "not_sensor_value_ts"
NO_MATCH = "no_match"
LINE_TOO_LONG = "line_too_long"
_NUMBERS = frozenset((int, float))  # bool is an int subclass, but not a reading


class LineSourceConfig(SourceConfig):
    """The keys every line-reading source shares."""

    format: Literal["json", "text"] = "json"
    """``json``: a reading object a line (or any JSON, mapped by ``[sources.payload]``);
    ``text``: ``sensor value [ts]``."""
    payload: PayloadConfig | None = None
    """With ``format = "json"``: how each line's JSON becomes readings (as for MQTT payloads)."""
    topic_prefix: str = "sensors/"
    """Readings go on the bus as ``<topic_prefix><sensor>``."""
    max_line: Size = 65536
    """A longer line is skipped and counted as ``line_too_long``."""

    @model_validator(mode="after")
    def _payload_with_json(self) -> LineSourceConfig:
        if self.payload is not None and self.format != "json":
            raise ValueError('[sources.payload] goes with format = "json"')
        return self


class LineDecoder:
    """Turns a batch of lines into records; what is not a reading is tallied by reason."""

    def __init__(
        self, config: LineSourceConfig, context: SourceContext, pattern: re.Pattern[str] | None = None,
        sensor: str | None = None,
    ) -> None:
        self._context = context
        self._prefix = config.topic_prefix
        self._max_skew = context.max_clock_skew
        self._max_line = config.max_line
        self._mapping = None
        if config.payload:
            prefix = config.topic_prefix
            self._mapping = PayloadMapping(config.payload, self._max_skew, lambda _: prefix)
        self._pattern = pattern
        self._sensor = sensor
        self._topics: dict[str, str] = {}
        if pattern is not None:
            self._decode = self._regex
        elif self._mapping is not None:
            self._decode = self._mapped
        elif config.format == "text":
            self._decode = self._text
        else:
            self._decode = self._json

    def decode(self, lines: list[bytes], now: float) -> list[Record]:
        """The readings of ``lines`` (without their line endings); counts every line that is
        not blank as ``received`` and rejects (by reason) what was not a reading."""
        out: list[Record] = []
        drops: dict[str, int] = {}
        first_bad: dict[str, bytes] = {}
        rest = self._fast_json(lines, now, out) if self._decode == self._json else lines
        decode = self._decode
        max_line = self._max_line
        blank = 0
        for line in rest:  # what the inlined path did not take whole: the careful way
            if len(line) > max_line:
                reason = LINE_TOO_LONG
            elif not line or line.isspace():
                blank += 1
                continue
            else:
                try:
                    decode(line, now, out)
                    continue
                except Rejected as rejected:
                    reason = rejected.reason
            drops[reason] = drops.get(reason, 0) + 1
            first_bad.setdefault(reason, line)
        context = self._context
        context.counters.incr("received", len(lines) - blank)
        for reason, count in drops.items():
            context.reject(reason, f"line starts {first_bad[reason][:64]!r}", count=count, received=False)
        return out

    def _fast_json(self, lines: list[bytes], now: float, out: list[Record]) -> list[bytes]:
        """The common case inlined (one reading object a line, every field as it should be):
        the hot path of ``tail`` and ``exec``, one parse and no other allocation than the
        record a line (the parsed object becomes its data). Lines it does not take whole are
        returned, and decoded again the careful way, which names the reason of a refusal."""
        if lines and max(map(len, lines)) > self._max_line:
            return lines  # a rare batch: every line is measured the careful way
        loads, topics, topic_of = codec.loads, self._topics, self._topic
        latest = now + self._max_skew
        new, record, isfinite = tuple.__new__, Record, math.isfinite
        append = out.append
        rest: list[bytes] = []
        keep = rest.append
        for line in lines:
            try:
                body = loads(line)
                sensor, value = body["sensor"], body["value"]
                ts = body.pop("ts", now)  # a list or a scalar raises TypeError here
                if (type(sensor) is str and sensor and type(value) in _NUMBERS
                        and isfinite(value)  # an int beyond any float raises OverflowError
                        and type(ts) in _NUMBERS and 0 <= ts <= latest):
                    size = len(body)
                    if size != 2 and (size != 3 or type(body.get("unit")) is not str):
                        unit = body.get("unit")  # other keys: only the reading's are kept
                        body = {"sensor": sensor, "value": value}
                        if type(unit) is str:
                            body["unit"] = unit
                    append(new(record, (topics.get(sensor) or topic_of(sensor), float(ts), body)))
                    continue
            except (ValueError, TypeError, KeyError, OverflowError):
                pass
            keep(line)
        return rest

    def _topic(self, sensor: str) -> str:
        topic = self._topics.get(sensor)
        if topic is None:
            if len(self._topics) > 100_000:
                self._topics.clear()
            topic = self._topics[sensor] = self._prefix + sensor
        return topic

    def _json(self, line: bytes, now: float, out: list[Record]) -> None:
        try:
            body = codec.loads(line)
        except (ValueError, UnicodeDecodeError):
            raise Rejected(NOT_JSON) from None
        if type(body) is list:  # several readings in one document (an HTTP endpoint's reply)
            for item in body:
                self._one(item, now, out)
            return
        self._one(body, now, out)

    def _one(self, body: Any, now: float, out: list[Record]) -> None:
        sensor = body.get("sensor") if type(body) is dict else None
        if type(sensor) is not str or not sensor:
            raise Rejected(NO_SENSOR)
        topic = self._topics.get(sensor) or self._topic(sensor)
        out.append(reading_from(topic, sensor, body, now, self._max_skew))

    def _mapped(self, line: bytes, now: float, out: list[Record]) -> None:
        try:
            body = codec.loads(line)
        except (ValueError, UnicodeDecodeError):
            raise Rejected(NOT_JSON) from None
        assert self._mapping is not None
        tally = Tally()
        self._mapping.map(self._context.name, body, now, out, tally)  # on <prefix><sensor>
        for reason, count in tally.dropped.items():
            self._context.reject(reason, count=count, received=False)

    def _text(self, line: bytes, now: float, out: list[Record]) -> None:
        parts = line.split()
        if not 2 <= len(parts) <= 3:
            raise Rejected(NOT_TEXT_READING)
        try:
            sensor = parts[0].decode()
            value: Any = float(parts[1])
            ts: Any = float(parts[2]) if len(parts) == 3 else now
        except (ValueError, UnicodeDecodeError):
            raise Rejected(NOT_TEXT_READING) from None
        topic = self._topics.get(sensor) or self._topic(sensor)
        out.append(reading_from(topic, sensor, {"value": value, "ts": ts}, now, self._max_skew))

    def _regex(self, line: bytes, now: float, out: list[Record]) -> None:
        assert self._pattern is not None
        try:
            text = line.decode()
        except UnicodeDecodeError:
            raise Rejected(NO_MATCH) from None
        match = self._pattern.search(text)
        if match is None:
            raise Rejected(NO_MATCH)
        groups = match.groupdict()
        sensor = groups.get("sensor") or self._sensor
        if not sensor:
            raise Rejected(NO_SENSOR)
        try:
            body: dict[str, Any] = {"value": float(groups["value"])}
            if groups.get("ts"):
                body["ts"] = float(groups["ts"])
        except (TypeError, ValueError):
            raise Rejected(NO_MATCH) from None
        if groups.get("unit"):
            body["unit"] = groups["unit"]
        out.append(reading_from(self._topic(sensor), sensor, body, now, self._max_skew))


def split_lines(buffer: bytearray, chunk: bytes, limit: int | None = None) -> list[bytes]:
    """The complete lines of what ``buffer`` held and ``chunk`` (``\\r\\n`` or ``\\n`` endings);
    a partial last line stays in ``buffer``. The chunk is split once, not copied first. Of a
    partial line longer than ``limit`` only ``limit + 1`` bytes are kept: enough to drop it as
    too long once it ends, and a writer that never ends its line cannot fill the memory."""
    lines = chunk.split(b"\n")
    if buffer:
        lines[0] = bytes(buffer) + lines[0]
        buffer.clear()
    buffer += lines.pop()
    if limit is not None and len(buffer) > limit:
        del buffer[limit + 1 :]
    if b"\r" in chunk or (lines and lines[0].endswith(b"\r")):
        lines = [line.rstrip(b"\r") for line in lines]
    return lines
