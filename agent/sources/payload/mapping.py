"""``PayloadMapping``: a decoded payload (a JSON object or array) as readings, one per mapped
field, each its own sensor, plus a tally of what was not a reading and why.

It is pure: no I/O, no clock of its own (the time of receipt is an argument), no knowledge of
MQTT beyond the topic string whose levels the sensor template may use. Every source that reads
JSON (the MQTT source, and any source of JSON lines) uses it through ``map``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from agent.api import Record
from agent.sources.payload.config import TS_SCALE, PayloadConfig
from agent.sources.payload.paths import split_path
from agent.sources.payload.template import compile_template
from agent.sources.payload.values import to_value
from agent.sources.readings import (
    BAD_TS,
    DEFAULT_MAX_CLOCK_SKEW,
    NOT_AN_OBJECT,
    Rejected,
    check_ts,
    parse_time,
)

NOT_AN_ARRAY = "not_an_array"
"""Drop reason: with ``each``, the path does not hold an array."""
_CACHE_LIMIT = 100_000
_MISSING = object()
Path = tuple[str, ...]
_Field = tuple[str, str | None, str | None]
"""A mapped path: (its levels joined by /, the configured unit, its ``unit_key``)."""
_UNSEEN: _Field = ("", None, None)
_Leaf = tuple[str, str, str | None, str | None]
"""A field met under one topic: (sensor id, the reading's topic, configured unit, unit key)."""
_UNMET: _Leaf = ("", "", None, None)
PrefixOf = Callable[[str], str]
"""The topic prefix of the readings of a message received on a topic: they go on the bus as
``<prefix><sensor>``, as every reading does."""


class Tally:
    """What mapping did besides readings, for the source's counters.

    ``fields_ignored``: fields matched that were not readings (strings, objects, null).
    ``excluded``: objects that ``where`` (or a preset) passed over. ``empty``: objects with none
    of the mapped fields. ``dropped``: readings refused, by reason (``value_not_finite``...);
    ``drops`` grows with every one, so a caller can tell that a message caused one."""

    __slots__ = ("dropped", "drops", "empty", "excluded", "fields_ignored", "last_reason")

    def __init__(self) -> None:
        self.fields_ignored = 0
        self.excluded = 0
        self.empty = 0
        self.drops = 0
        self.dropped: dict[str, int] = {}
        self.last_reason = ""

    def drop(self, reason: str, by: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + by
        self.drops += by
        self.last_reason = reason


def value_at(node: Any, path: Path) -> Any:
    """The value at ``path`` (object keys, or array indexes as digits); ``_MISSING`` if absent."""
    for level in path:
        kind = type(node)
        if kind is dict:
            node = node.get(level, _MISSING)
        elif kind is list and level.isdigit() and int(level) < len(node):
            node = node[int(level)]
        else:
            return _MISSING
    return node


def _expand(node: Any, pattern: Path, depth: int, path: Path, out: list[tuple[Path, Any]]) -> None:
    """Append to ``out`` every (path, value) that ``pattern`` matches below ``node``. Plain
    recursion and loops, no generators: this runs for every field of every message."""
    level = pattern[depth]
    last = depth + 1 == len(pattern)
    kind = type(node)
    if level == "*":
        if kind is dict:
            if last:
                for key, child in node.items():
                    out.append(((*path, key), child))
            else:
                for key, child in node.items():
                    _expand(child, pattern, depth + 1, (*path, key), out)
        elif kind is list:
            for index, child in enumerate(node):
                if last:
                    out.append(((*path, str(index)), child))
                else:
                    _expand(child, pattern, depth + 1, (*path, str(index)), out)
        return
    child = value_at(node, (level,))
    if child is _MISSING:
        return
    if last:
        out.append(((*path, level), child))
    else:
        _expand(child, pattern, depth + 1, (*path, level), out)


def _depth(path: Path | str) -> int:
    return 1 if type(path) is str else len(path)


_new_record = tuple.__new__
"""``Record(...)`` without the namedtuple's Python-level ``__new__``: a reading a field."""


def _leaves(node: Any, left: int, path: Path, out: list[tuple[Path, Any]]) -> None:
    """Every field below ``node`` down to ``left`` levels: what ``["*", "*.*", ...]`` match,
    in one walk, an object or array above the last level entered rather than listed."""
    kind = type(node)
    if kind is dict:
        items: Any = node.items()
    elif kind is list:
        items = ((str(index), child) for index, child in enumerate(node))
    else:
        return
    for key, child in items:
        child_kind = type(child)
        if left > 1 and (child_kind is dict or child_kind is list):
            _leaves(child, left - 1, (*path, key), out)
        else:
            out.append(((*path, key), child))


def _overlap(a: Path, b: Path) -> bool:
    """Whether two patterns can match one path (then their matches are deduplicated)."""
    return len(a) == len(b) and all(x == y or "*" in (x, y) for x, y in zip(a, b, strict=True))


def _matches(pattern: Path, path: Path) -> bool:
    return len(pattern) == len(path) and all(p in ("*", q) for p, q in zip(pattern, path, strict=True))


class _Level:
    """The fields met at one level of one topic's objects, each resolved once: a key's
    ``_Leaf``, or None when it is not mapped; the levels below the keys that held objects."""

    __slots__ = ("below", "head", "leaves", "path", "prefix")

    def __init__(self, head: tuple[str | None, ...], prefix: str | None, path: Path) -> None:
        self.head = head
        self.prefix = prefix
        self.path = path
        self.leaves: dict[str, _Leaf | None] = {}
        self.below: dict[str, _Level] = {}


class PayloadMapping:
    """One ``[sources.payload]`` table, compiled. ``map`` appends the readings of one decoded
    payload to ``out`` and tallies the rest; it raises ``Rejected`` only when the message as a
    whole is refused (not an object, a reading time that is not one).

    ``prefix_of`` places the readings on the bus: ``<prefix_of(topic)><sensor>``; without it
    they keep the topic they came on."""

    def __init__(
        self, config: PayloadConfig, max_skew: float | None = DEFAULT_MAX_CLOCK_SKEW,
        prefix_of: PrefixOf | None = None,
    ) -> None:
        self.config = config
        self.max_skew = max_skew
        self._prefix_of = prefix_of
        self._patterns = [split_path(field) for field in dict.fromkeys(config.fields)]
        self._ignore = [split_path(path) for path in config.ignore]
        self._ts: Path | None = split_path(config.ts, wildcards=False) if config.ts else None
        if self._ts is not None:
            self._ignore.append(self._ts)  # the time is not a reading of its own
        self._scale = TS_SCALE[config.ts_format]
        self._zone = ZoneInfo(config.timezone) if config.timezone else None
        self._each: Path | None = None
        if config.each is not None:
            self._each = () if config.each == "." else split_path(config.each, wildcards=False)
        self._where = None
        if config.where is not None:
            from modules._expr import BOOL, compile_expression  # only when used

            self._where = compile_expression(config.where, BOOL)
        self._template = compile_template(config.sensor)
        self._per_item = self._template.per_item
        self._field_last = self._template.field_last
        self._top_level = self._patterns == [("*",)]
        self._depth = max(len(pattern) for pattern in self._patterns)
        self._overlapping = any(
            _overlap(a, b) for i, a in enumerate(self._patterns) for b in self._patterns[i + 1:]
        )
        # fields = ["*", "*.*", ...]: every field down to that depth, in one walk
        wild = [("*",) * depth for depth in range(1, self._depth + 1)]
        self._wild = self._depth if sorted(self._patterns) == wild else 0
        self._unit_hook = type(self).payload_units is not PayloadMapping.payload_units
        self._heads: dict[str, tuple[str | None, ...]] = {}
        self._fields: dict[Path | str, _Field | None] = {}
        # fields = ["*", ...] with a sensor id from the topic alone: whole sensor ids cached per
        # topic and level, so a field costs two dict lookups and no string or tuple is built
        self._by_topic: dict[str, _Level] | None = {} if self._wild and not self._per_item else None
        self._cached = 0
        self._last_time: tuple[str, float] = ("", 0.0)  # devices that share a clock share a Time

    # -- the mapping ---------------------------------------------------------------------------

    def map(self, topic: str, body: Any, now: float, out: list[Record], tally: Tally) -> None:
        """The readings of ``body`` (received on ``topic`` at ``now``) appended to ``out``."""
        if self._each is None:
            if type(body) is not dict and type(body) is not list:
                raise Rejected(NOT_AN_OBJECT)
            self.map_item(topic, body, 0, now, out, tally)
            return
        items = value_at(body, self._each)
        if type(items) is not list:
            raise Rejected(NOT_AN_ARRAY)
        for index, item in enumerate(items):
            if type(item) is not dict:
                tally.fields_ignored += 1
                continue
            try:
                self.map_item(topic, item, index, now, out, tally)
            except Rejected as rejected:  # one element's bad time spoils that element only
                tally.drop(rejected.reason)

    def map_item(
        self, topic: str, item: Any, index: int, now: float, out: list[Record], tally: Tally
    ) -> None:
        """The readings of one object: the payload, or one element of its ``each`` array."""
        if self._where is not None and not self._passes(item):
            tally.excluded += 1
            return
        ts = self.time_of(item, now)
        produced = len(out)
        ignored, drops = tally.fields_ignored, tally.drops
        if self._by_topic is not None:
            level = self._by_topic.get(topic)
            if level is None:
                level = self._topic_level(topic)
            units = self.payload_units(item) if self._unit_hook else None
            self._walk(item, level, self._wild, topic, ts, units, out, tally)
            if len(out) == produced and tally.fields_ignored == ignored and tally.drops == drops:
                tally.empty += 1
            return
        head = self._head(topic, item, index)
        prefix = self._prefix_of(topic) if self._prefix_of is not None else None
        # Every field of every message passes here: the top-level case iterates the object as
        # it is, with the key itself (not a one-level path tuple) as the cache key.
        pairs: Any = item.items() if self._top_level and type(item) is dict else self._pairs(item)
        fields = self._fields
        field_last, template = self._field_last, self._template
        units = self.payload_units(item) if self._unit_hook else None
        append = out.append
        for path, raw in pairs:
            entry = fields.get(path, _UNSEEN)
            if entry is _UNSEEN:
                entry = self._field_entry(path)
            if entry is None:
                continue
            kind = type(raw)
            if kind is float and raw - raw == 0.0:  # the common case, without a call
                value = raw
            else:
                try:
                    value = to_value(raw)
                except Rejected as rejected:
                    tally.drop(rejected.reason)
                    continue
                if value is None:
                    if (kind is not dict and kind is not list) or _depth(path) >= self._depth:
                        tally.fields_ignored += 1  # (an object a longer path goes into is no loss)
                    continue
            field, unit, unit_key = entry
            if field_last:
                sensor = head[0] + field  # type: ignore[operator]
            else:
                sensor = template.sensor(head, (path,) if type(path) is str else path)
            if unit is None and units and unit_key is not None:
                unit = units.get(unit_key)
            data = {"sensor": sensor, "value": value}
            if unit:
                data["unit"] = unit
            append(_new_record(Record, (topic if prefix is None else prefix + sensor, ts, data)))
        if len(out) == produced and tally.fields_ignored == ignored and tally.drops == drops:
            tally.empty += 1

    def _walk(
        self, node: Any, level: _Level, left: int, topic: str, ts: float,
        units: dict[str, str] | None, out: list[Record], tally: Tally,
    ) -> None:
        """``map_item``'s loop for ``_by_topic``: the readings of ``node``'s fields, entering
        objects and arrays down to ``left`` levels (as ``_leaves`` lists them)."""
        kind = type(node)
        if kind is dict:
            items: Any = node.items()
        elif kind is list:
            items = [(str(index), child) for index, child in enumerate(node)]
        else:
            return
        leaves = level.leaves
        append = out.append
        for key, raw in items:
            kind = type(raw)
            if left > 1 and (kind is dict or kind is list):
                below = level.below.get(key)
                if below is None:
                    below = self._level_below(level, key)
                self._walk(raw, below, left - 1, topic, ts, units, out, tally)
                continue
            entry = leaves.get(key, _UNMET)
            if entry is _UNMET:
                entry = self._leaf(level, key, topic)
            if entry is None:
                continue
            if kind is float and raw - raw == 0.0:  # the common case, without a call
                value = raw
            else:
                try:
                    value = to_value(raw)
                except Rejected as rejected:
                    tally.drop(rejected.reason)
                    continue
                if value is None:
                    tally.fields_ignored += 1
                    continue
            sensor, placed, unit, unit_key = entry
            if unit is None and units and unit_key is not None:
                unit = units.get(unit_key)
            data = {"sensor": sensor, "value": value}
            if unit:
                data["unit"] = unit
            append(_new_record(Record, (placed, ts, data)))

    def time_of(self, item: Any, now: float) -> float:
        """The reading time of an object: its ``ts`` field, or ``now`` when it has none."""
        if self._ts is None:
            return now
        raw = value_at(item, self._ts)
        kind = type(raw)
        try:
            if kind is float or kind is int:
                ts = raw * self._scale
            elif kind is str:
                text, ts = self._last_time
                if raw != text:
                    try:
                        ts = float(raw) * self._scale
                    except ValueError:
                        ts = parse_time(raw, self._zone)
                    self._last_time = (raw, ts)
            elif raw is _MISSING or raw is None:
                return now
            else:
                raise Rejected(BAD_TS)
        except (ValueError, OverflowError):
            raise Rejected(BAD_TS) from None
        return check_ts(ts, now, self.max_skew)

    def unit_key(self, name: str) -> str | None:
        """Presets whose payload names units (Tasmota's ``TempUnit``): which key of
        ``payload_units`` gives the unit of a reading named ``name``; None: no such unit."""
        return None

    def payload_units(self, item: Any) -> dict[str, str] | None:
        """The units an object names, by key (looked up once per object, not per reading)."""
        return None

    # -- compiled pieces -----------------------------------------------------------------------

    def _passes(self, item: Any) -> bool:
        assert self._where is not None
        if type(item) is not dict:
            return False
        try:
            return bool(self._where(item))
        except (ValueError, TypeError, ArithmeticError):  # a field missing or of another type
            return False

    def _head(self, topic: str, item: Any, index: int) -> tuple[str | None, ...]:
        """The message part of the sensor id; when ``field_last``, head[0] is it as one string."""
        if not self._per_item:
            head = self._heads.get(topic)
            if head is not None:
                return head
        parts = self._template.head(topic.split("/"), item, index)
        head = ("".join(p for p in parts[:-1] if p is not None),) if self._field_last else parts
        if not self._per_item:
            if len(self._heads) >= _CACHE_LIMIT:
                self._heads.clear()
            self._heads[topic] = head
        return head

    def _pairs(self, item: Any) -> list[tuple[Path, Any]]:
        out: list[tuple[Path, Any]] = []
        if self._wild:
            _leaves(item, self._wild, (), out)
            return out
        for pattern in self._patterns:
            _expand(item, pattern, 0, (), out)
        if self._overlapping:
            return list(dict(reversed(out)).items())[::-1]  # each path once, first match first
        return out

    def _field_entry(self, key: Path | str) -> _Field | None:
        """The ``_Field`` of a path (a top-level field: its key), None for an ignored one; cached."""
        entry = self._resolve((key,) if isinstance(key, str) else key)
        if len(self._fields) >= _CACHE_LIMIT:
            self._fields.clear()
        self._fields[key] = entry
        return entry

    def _resolve(self, path: Path) -> _Field | None:
        if any(_matches(pattern, path) for pattern in self._ignore):
            return None
        units = self.config.units
        unit = units.get(".".join(path)) or units.get(path[-1])
        return ("/".join(path), unit, self.unit_key(path[-1]))

    def _topic_level(self, topic: str) -> _Level:
        assert self._by_topic is not None
        self._count_cached()
        prefix = self._prefix_of(topic) if self._prefix_of is not None else None
        level = self._by_topic[topic] = _Level(self._template.head(topic.split("/")), prefix, ())
        return level

    def _level_below(self, level: _Level, key: str) -> _Level:
        self._count_cached()
        below = level.below[key] = _Level(level.head, level.prefix, (*level.path, key))
        return below

    def _leaf(self, level: _Level, key: str, topic: str) -> _Leaf | None:
        self._count_cached()
        path = (*level.path, key)
        field = self._resolve(path)
        entry = None
        if field is not None:
            sensor = self._template.sensor(level.head, path)
            placed = topic if level.prefix is None else level.prefix + sensor
            entry = (sensor, placed, field[1], field[2])
        level.leaves[key] = entry
        return entry

    def _count_cached(self) -> None:
        """Bounds the per-topic caches: a flood of new topics or keys starts them afresh."""
        assert self._by_topic is not None
        self._cached += 1
        if self._cached > _CACHE_LIMIT:
            self._by_topic.clear()
            self._cached = 0
