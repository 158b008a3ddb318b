"""Alert rules on readings: above, below, outside a band, or changing too fast; with hysteresis
and minimum durations, so noise around a limit never makes an alert flap."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from agent import Context, Duration, Module, ModuleConfig, Record
from modules._common import (
    OUT_OF_ORDER,
    TOO_MANY_SENSORS,
    SensorPatterns,
    SensorSelector,
    numeric_readings,
)

Severity = Literal["info", "warning", "critical"]
RuleName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class Rule(ModuleConfig):
    """One alert rule. Set ``above`` and/or ``below`` (both: outside the band between them) for
    a rule on the value, or ``rate_above`` and/or ``rate_below`` (units per second) for a rule on
    its rate of change."""

    name: RuleName
    sensors: SensorPatterns = ("*",)
    above: float | None = None
    below: float | None = None
    rate_above: float | None = None
    rate_below: float | None = None
    hysteresis: Annotated[float, Field(ge=0)]
    """How far back inside the limit the value (or rate) must come to clear: required, because
    with no hysteresis and no ``for``, noise around the limit raises and clears on every
    reading. Write 0 to rely on ``for`` and ``clear_for`` alone."""
    for_: Duration = Field(0.0, alias="for")
    """The condition must hold this long (reading time) before the alert is raised."""
    clear_for: Duration = 0.0
    """The value must stay back inside this long before the alert is cleared."""
    severity: Severity = "warning"

    @model_validator(mode="after")
    def _one_kind_of_limit(self) -> Rule:
        on_value = self.above is not None or self.below is not None
        on_rate = self.rate_above is not None or self.rate_below is not None
        if on_value == on_rate:
            raise ValueError(
                "set above and/or below (a limit on the value), or rate_above and/or rate_below "
                "(a limit on its change per second), not both kinds"
                if on_value else "set a limit: above, below, rate_above or rate_below"
            )
        high, low = (self.above, self.below) if on_value else (self.rate_above, self.rate_below)
        if high is not None and low is not None and high - low <= 2 * self.hysteresis:
            which = "above and below" if on_value else "rate_above and rate_below"
            raise ValueError(
                f"{which} must be more than twice the hysteresis apart, or the alert could "
                "never clear"
            )
        return self


class ThresholdConfig(ModuleConfig):
    rules: Annotated[list[Rule], Field(min_length=1)]
    max_sensors: Annotated[int, Field(ge=1)] = 100_000
    """Readings of further sensors are dropped and counted as ``too_many_sensors``."""
    triggers: bool = False
    """Also emit the reading that raised each alert on the ``triggers`` output (the stream
    ``<name>.triggers``), for a module or the cloud to look at what set it off."""

    @field_validator("rules")
    @classmethod
    def _names_unique(cls, rules: list[Rule]) -> list[Rule]:
        names = [rule.name for rule in rules]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"rule names must be unique: {', '.join(repeated)} used twice")
        return rules


@dataclass
class _Alert:
    """One rule on one sensor: normal, pending (breached, waiting for ``for``), raised, or
    clearing (back inside, waiting for ``clear_for``)."""

    status: str = "normal"
    since: float = 0.0
    raised_at: float = 0.0
    condition: str = ""
    limit: float = 0.0


@dataclass
class _Sensor:
    alerts: dict[str, _Alert]
    rules: list[Rule]
    newest: float = float("-inf")
    prev_value: float | None = None
    prev_ts: float = float("-inf")


class Threshold(Module[ThresholdConfig]):
    """Checks every reading against the rules for its sensor and emits ``raised`` and
    ``cleared`` events with the rule, sensor, value, severity, condition and limit.

    Durations (``for``, ``clear_for``) are reading time. A reading older than the sensor's
    newest is counted as ``out_of_order`` and skipped; two readings with the same time are both
    checked, but give no rate. Alerts that are raised survive restarts (they are kept in the
    module's state), so a restart neither raises them again nor forgets to clear them.
    """

    Config = ThresholdConfig
    description = "Alert rules (above, below, outside a band, rate of change) with hysteresis."
    outputs = ("triggers",)

    def __init__(self, config: ThresholdConfig, context: Context) -> None:
        super().__init__(config, context)
        self._selectors = [(rule, SensorSelector(rule.sensors)) for rule in config.rules]
        self._sensors: dict[str, _Sensor] = {}

    async def start(self) -> None:
        self._saved: dict[str, dict[str, Any]] = self.context.state.setdefault("raised", {})
        names = {rule.name for rule in self.config.rules}
        for key in [key for key in self._saved if key.split("\x1f", 1)[0] not in names]:
            del self._saved[key]  # the rule is gone from the config

    def process(self, record: Record) -> None:
        self.process_batch((record,))

    def process_batch(self, records: Iterable[Record]) -> None:
        counters = self.context.counters
        for record, value, name in numeric_readings(records, counters):
            sensor = self._sensors.get(name) or self._new_sensor(name)
            if sensor is None:
                continue
            ts = record.ts
            if ts < sensor.newest:
                counters.incr(OUT_OF_ORDER)
                continue
            rate = None
            if sensor.prev_value is not None and ts > sensor.prev_ts:
                rate = (value - sensor.prev_value) / (ts - sensor.prev_ts)
            sensor.newest = ts
            if ts > sensor.prev_ts:
                sensor.prev_value, sensor.prev_ts = value, ts
            for rule in sensor.rules:
                on_value = rule.above is not None or rule.below is not None
                if on_value:
                    self._check(rule, name, sensor.alerts[rule.name], value, value, ts, None)
                elif rate is not None:
                    self._check(rule, name, sensor.alerts[rule.name], rate, value, ts, rate)

    def _new_sensor(self, name: str) -> _Sensor | None:
        if len(self._sensors) >= self.config.max_sensors:
            self.context.counters.incr(TOO_MANY_SENSORS)
            return None
        rules = [rule for rule, selects in self._selectors if selects(name)]
        alerts = {}
        for rule in rules:
            alerts[rule.name] = _restored(self._saved.get(_key(rule.name, name)))
        sensor = self._sensors[name] = _Sensor(alerts=alerts, rules=rules)
        return sensor

    def _check(
        self, rule: Rule, sensor: str, alert: _Alert, x: float, value: float, ts: float,
        rate: float | None,
    ) -> None:
        """Move one rule's alert for one sensor along, given the checked quantity ``x``."""
        high, low = (rule.above, rule.below) if rate is None else (rule.rate_above, rule.rate_below)
        breach = _breach(x, high, low, "" if rate is None else "rate_")
        status = alert.status
        if status in ("normal", "pending"):
            if breach is None:
                alert.status = "normal"
                return
            if status == "normal":
                alert.status, alert.since = "pending", ts
            if ts - alert.since >= rule.for_:
                alert.status, alert.raised_at = "raised", ts
                alert.condition, alert.limit = breach
                self._saved[_key(rule.name, sensor)] = vars(alert).copy()
                self._event("raised", rule, sensor, alert, value, ts, rate)
            return
        inside = (high is None or x <= high - rule.hysteresis) and (
            low is None or x >= low + rule.hysteresis
        )
        if not inside:
            alert.status = "raised"
            return
        if status == "raised":
            alert.status, alert.since = "clearing", ts
        if ts - alert.since >= rule.clear_for:
            self._event("cleared", rule, sensor, alert, value, ts, rate)
            alert.status = "normal"
            self._saved.pop(_key(rule.name, sensor), None)

    def _event(
        self, event: str, rule: Rule, sensor: str, alert: _Alert, value: float, ts: float,
        rate: float | None,
    ) -> None:
        data: dict[str, Any] = {
            "event": event,
            "rule": rule.name,
            "sensor": sensor,
            "severity": rule.severity,
            "value": value,
            "condition": alert.condition,
            "limit": alert.limit,
        }
        if rate is not None:
            data["rate"] = rate
        if event == "raised":
            data["since"] = alert.since
            if self.config.triggers:
                trigger = {"sensor": sensor, "value": value, "rule": rule.name}
                self.context.emit(trigger, ts, output="triggers")
        else:
            data["raised_at"] = alert.raised_at
            data["duration"] = ts - alert.raised_at
        self.context.emit(data, ts)


def _breach(
    x: float, high: float | None, low: float | None, prefix: str
) -> tuple[str, float] | None:
    if high is not None and x > high:
        return (f"{prefix}above", high)
    if low is not None and x < low:
        return (f"{prefix}below", low)
    return None


def _restored(saved: Any) -> _Alert:
    """An alert from saved state; a fresh one if the state is missing or from another version."""
    try:
        return _Alert(**saved) if isinstance(saved, dict) else _Alert()
    except TypeError:
        return _Alert()


def _key(rule: str, sensor: str) -> str:
    return f"{rule}\x1f{sensor}"
