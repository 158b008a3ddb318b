"""Per-sensor calibration, unit conversion and renaming, and filtering with a safe expression
language (see ``modules._expr``)."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from agent import Context, Module, ModuleConfig, Record
from modules._common import NOT_A_NUMBER, NOT_FINITE, sensor_of
from modules._expr import BOOL, NUM, Compiled, EvalError, compile_expression

# unit: (dimension, factor, offset) with base = value * factor + offset
UNITS: dict[str, tuple[str, float, float]] = {
    "K": ("temperature", 1.0, 0.0),
    "C": ("temperature", 1.0, 273.15),
    "F": ("temperature", 5 / 9, 273.15 - 32 * 5 / 9),
    "Pa": ("pressure", 1.0, 0.0), "hPa": ("pressure", 100.0, 0.0), "kPa": ("pressure", 1e3, 0.0),
    "mbar": ("pressure", 100.0, 0.0), "bar": ("pressure", 1e5, 0.0),
    "psi": ("pressure", 6894.757293168, 0.0),
    "mm": ("length", 1e-3, 0.0), "cm": ("length", 1e-2, 0.0), "m": ("length", 1.0, 0.0),
    "km": ("length", 1e3, 0.0), "in": ("length", 0.0254, 0.0), "ft": ("length", 0.3048, 0.0),
    "m/s": ("speed", 1.0, 0.0), "km/h": ("speed", 1 / 3.6, 0.0),
    "mph": ("speed", 0.44704, 0.0), "kn": ("speed", 1852 / 3600, 0.0),
    "mV": ("voltage", 1e-3, 0.0), "V": ("voltage", 1.0, 0.0),
    "mA": ("current", 1e-3, 0.0), "A": ("current", 1.0, 0.0),
    "W": ("power", 1.0, 0.0), "kW": ("power", 1e3, 0.0),
    "Wh": ("energy", 3600.0, 0.0), "kWh": ("energy", 3.6e6, 0.0), "J": ("energy", 1.0, 0.0),
    "kJ": ("energy", 1e3, 0.0), "MJ": ("energy", 1e6, 0.0),
    "%": ("ratio", 0.01, 0.0), "ratio": ("ratio", 1.0, 0.0),
    "L": ("volume", 1e-3, 0.0), "m3": ("volume", 1.0, 0.0), "gal": ("volume", 3.785411784e-3, 0.0),
}
ALIASES = {"°C": "C", "degC": "C", "celsius": "C", "°F": "F", "degF": "F", "fahrenheit": "F",
           "kelvin": "K", "l": "L", "m³": "m3", "kmh": "km/h", "kph": "km/h"}
_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")


def _unit(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in UNITS:
        raise ValueError(f"unknown unit {name!r}; known: {', '.join(UNITS)}")
    return name


def convert(value: float, source: str, target: str) -> float:
    """``value`` in ``source`` units, in ``target`` units; ``ValueError`` if they do not match."""
    src, dst = UNITS[_unit(source)], UNITS[_unit(target)]
    if src[0] != dst[0]:
        raise ValueError(f"cannot convert {source} ({src[0]}) to {target} ({dst[0]})")
    if source == target:
        return value
    return (value * src[1] + src[2] - dst[2]) / dst[1]


def _expression(source: str | None, want: str) -> Compiled | None:
    return None if source is None else compile_expression(source, want)


class SensorRule(ModuleConfig):
    """What happens to the readings of one sensor (or of every sensor a pattern matches)."""

    scale: float = 1.0
    offset: float = 0.0
    """Calibration: ``value * scale + offset``, before any unit conversion."""
    value: str | None = None
    """An expression for the value instead of scale and offset, such as
    ``"0.5 * pow(raw, 2) - 3"``; ``raw`` and ``value`` are the value as it arrived."""
    unit: str | None = None
    """Convert to this unit (C, F, K, hPa, bar, psi, m/s, km/h, ...) from the reading's unit."""
    from_unit: str | None = None
    """The unit of readings that carry none."""
    rename: Annotated[str, Field(pattern=_NAME.pattern)] | None = None
    """The sensor's new name (a pattern rule renames every sensor it matches to the same)."""
    where: str | None = None
    """Keep only readings for which this is true (after calibration and conversion)."""

    @field_validator("value")
    @classmethod
    def _value_compiles(cls, source: str | None) -> str | None:
        _expression(source, NUM)
        return source

    @field_validator("where")
    @classmethod
    def _where_compiles(cls, source: str | None) -> str | None:
        _expression(source, BOOL)
        return source

    @field_validator("unit", "from_unit")
    @classmethod
    def _known_unit(cls, unit: str | None) -> str | None:
        return None if unit is None else _unit(unit)

    @model_validator(mode="after")
    def _consistent(self) -> SensorRule:
        if self.value is not None and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError("set value (an expression) or scale and offset, not both")
        if self.from_unit is not None and self.unit is not None:
            convert(0.0, self.from_unit, self.unit)  # the dimensions must match
        if self.from_unit is not None and self.unit is None:
            raise ValueError("from_unit says what to convert from: set unit (the target) too")
        return self

    @property
    def calibrates(self) -> bool:
        return self.value is not None or self.scale != 1.0 or self.offset != 0.0 or bool(self.unit)


class TransformConfig(ModuleConfig):
    sensors: dict[str, SensorRule] = Field(default_factory=dict)
    """Rules by sensor id or pattern (``"t1"``, ``"boiler-*"``): an exact id wins over patterns,
    and among patterns the first in the file."""
    where: str | None = None
    """Keep only records for which this is true, after the sensor's own rule."""

    @field_validator("where")
    @classmethod
    def _where_compiles(cls, source: str | None) -> str | None:
        _expression(source, BOOL)
        return source

    @model_validator(mode="after")
    def _something_to_do(self) -> TransformConfig:
        if not self.sensors and self.where is None:
            raise ValueError("nothing to do: set where, or rules under sensors")
        return self


class _Plan:
    """A rule with its expressions compiled."""

    def __init__(self, rule: SensorRule) -> None:
        self.rule = rule
        self.value = _expression(rule.value, NUM)
        self.where = _expression(rule.where, BOOL)


_PASS = _Plan(SensorRule())


class Transform(Module[TransformConfig]):
    """Calibrates, converts, filters and renames records, in that order, and emits them with the
    same time. Records of sensors with no rule pass through unchanged (then the global ``where``
    applies). Records dropped are counted by reason: ``filtered`` (a ``where`` was false),
    ``expression_errors`` (an expression failed on a record: a missing field, a division by
    zero; logged with its column), ``unit_errors`` (no unit, or one that does not convert),
    ``not_a_number`` (a value to calibrate that is not a number) and ``not_finite`` (NaN or an
    infinity, dropped whatever the rule).
    """

    Config = TransformConfig
    description = "Calibrate (scale, offset, units), rename, and filter with safe expressions."

    def __init__(self, config: TransformConfig, context: Context) -> None:
        super().__init__(config, context)
        self._exact = {name: _Plan(rule) for name, rule in config.sensors.items()
                       if not _is_pattern(name)}
        self._patterns = [(re.compile(fnmatch.translate(name)), _Plan(rule))
                          for name, rule in config.sensors.items() if _is_pattern(name)]
        self._where = _expression(config.where, BOOL)
        self._cache: dict[str, _Plan] = {}
        self._last_error_logged: dict[str, int] = {}

    def process(self, record: Record) -> None:
        self.process_batch((record,))

    def process_batch(self, records: Iterable[Record]) -> None:
        for record in records:
            value = record.data.get("value")
            if type(value) is float and value - value != 0:  # NaN, inf: never a reading
                self.context.counters.incr(NOT_FINITE)
                continue
            sensor = sensor_of(record)
            plan = self._cache.get(sensor) or self._plan_for(sensor)
            data = self._calibrated(record, plan)
            if data is None:
                continue
            env = None
            for expression in (plan.where, self._where):
                if expression is None:
                    continue
                env = env or {"ts": record.ts, "topic": record.topic,
                              "raw": record.data.get("value"), **data}
                if not self._holds(expression, env, sensor):
                    break
            else:
                if plan.rule.rename is not None:
                    data["sensor"] = plan.rule.rename
                self.context.emit(data, record.ts)

    def _plan_for(self, sensor: str) -> _Plan:
        plan = self._exact.get(sensor) or next(
            (plan for regex, plan in self._patterns if regex.match(sensor)), _PASS
        )
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[sensor] = plan
        return plan

    def _calibrated(self, record: Record, plan: _Plan) -> dict[str, Any] | None:
        data = dict(record.data)
        rule = plan.rule
        if not rule.calibrates:
            return data
        value = data.get("value")
        if type(value) is not float and type(value) is not int:
            self.context.counters.incr(NOT_A_NUMBER)
            return None
        if plan.value is not None:
            env = {"ts": record.ts, "topic": record.topic, **data, "raw": value}
            try:
                value = plan.value(env)
            except EvalError as exc:
                self._expression_failed("value", exc, sensor_of(record))
                return None
        else:
            value = value * rule.scale + rule.offset
        if rule.unit is not None:
            source = data.get("unit") or rule.from_unit
            try:
                if not isinstance(source, str):
                    raise ValueError("the reading has no unit: set from_unit")
                value = convert(value, source, rule.unit)
            except ValueError as exc:
                self.context.counters.incr("unit_errors")
                self._log_once("unit", "sensor %s: %s", sensor_of(record), exc)
                return None
            data["unit"] = rule.unit
        data["value"] = value
        return data

    def _holds(self, expression: Compiled, env: dict[str, Any], sensor: str) -> bool:
        try:
            result = expression(env)
        except EvalError as exc:
            self._expression_failed("where", exc, sensor)
            return False
        if result is not True:
            if result is not False:
                self._expression_failed(
                    "where", EvalError(f"gave {result!r}, not true/false", 1), sensor
                )
                return False
            self.context.counters.incr("filtered")
            return False
        return True

    def _expression_failed(self, where: str, exc: EvalError, sensor: str) -> None:
        self.context.counters.incr("expression_errors")
        self._log_once(f"{where}:{exc.message}", "%s on sensor %s: %s", where, sensor, exc)

    def _log_once(self, kind: str, message: str, *args: object) -> None:
        """Log each kind of problem the first time and then every 1000th time."""
        seen = self._last_error_logged.get(kind, 0)
        self._last_error_logged[kind] = seen + 1
        if seen % 1000 == 0:
            more = f" (seen {seen + 1} times)" if seen else ""
            self.context.log.warning(message + more, *args)


def _is_pattern(name: str) -> bool:
    return any(char in name for char in "*?[")
