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
        """The readings of ``lines`` (without their line endings); counts what was received and
        rejects (by reason) what was not a reading."""
        out: list[Record] = []
        drops: dict[str, int] = {}
        first_bad: dict[str, bytes] = {}
        if self._decode == self._json:
            lines = self._fast_json(lines, now, out)  # what remains needs a closer look
        decode = self._decode
        max_line = self._max_line
        for line in lines:
            if len(line) > max_line:
                reason = LINE_TOO_LONG
            elif not line or line.isspace():
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
        context.counters.incr("received", len(lines))
        for reason, count in drops.items():
            context.reject(reason, f"line starts {first_bad[reason][:64]!r}", count=count, received=False)
        return out

    def _fast_json(self, lines: list[bytes], now: float, out: list[Record]) -> list[bytes]:
        """The common case inlined (one reading object a line, every field as it should be):
        the hot path of ``tail`` and ``exec``. Lines it does not take whole are returned, and
        decoded again the careful way, which names the reason of a refusal."""
        loads, topics, topic_of = codec.loads, self._topics, self._topic
        latest = now + self._max_skew
        max_line = self._max_line
        isfinite = math.isfinite
        append = out.append
        rest: list[bytes] = []
        for line in lines:
            try:
                body = loads(line) if len(line) <= max_line else None
            except ValueError:
                body = None
            if type(body) is dict:
                sensor = body.get("sensor")
                value = body.get("value")
                ts = body.get("ts", now)
                unit = body.get("unit")
                if (type(sensor) is str and sensor and (type(value) is float or type(value) is int)
                        and isfinite(value) and (type(ts) is float or type(ts) is int)
                        and 0 <= ts <= latest and (unit is None or type(unit) is str)):
                    data = {"sensor": sensor, "value": value}
                    if unit is not None:
                        data["unit"] = unit
                    append(Record(topics.get(sensor) or topic_of(sensor), float(ts), data))
                    continue
            rest.append(line)
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


def split_lines(buffer: bytearray, chunk: bytes) -> list[bytes]:
    """Append ``chunk`` to ``buffer`` and take the complete lines out of it (``\\r\\n`` or
    ``\\n`` endings); a partial last line stays in ``buffer``."""
    buffer += chunk
    end = buffer.rfind(b"\n")
    if end < 0:
        return []
    block = bytes(buffer[:end])
    del buffer[: end + 1]
    lines = block.split(b"\n")
    if b"\r" in block:
        lines = [line.rstrip(b"\r") for line in lines]
    return lines
