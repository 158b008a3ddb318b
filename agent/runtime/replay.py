"""Replay: a config's modules over recorded readings, by their timestamps, with no broker and no
outbox. This is how an operator tries a pipeline on last week's data before deploying it.

Input is JSON lines, each the local payload plus its sensor (``{"sensor": "t1", "ts": ...,
"value": ..., "unit"?: ...}``), or CSV with a header naming at least ``sensor,ts,value``
(``unit`` optional). ``ts`` is Unix seconds or an ISO 8601 time (UTC when it has no offset),
any finite time, also before 1970 (a climate record from the 1950s replays as it is). Lines are
checked as the MQTT source checks payloads, and refused for the same reasons
(``value_not_a_number``, ``bad_ts``...), plus ``no_sensor`` and ``no_ts``; a refused line is
counted and named by its line number, never fatal. Only the live path bounds reading times by
the gateway's clock (``max_clock_skew``).

The module clock follows the readings (the newest reading time seen), so windows, resampling
and gap detection behave as they would have live; modules start with empty state.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from agent import codec
from agent.api import Record
from agent.config import LoadedConfig, MqttSourceConfig, SimulatorSourceConfig
from agent.runtime.stepper import Stepper
from agent.sources.readings import NO_VALUE, Rejected, reading_from, time_of
from agent.topics import fixed_prefix

NO_SENSOR = "no_sensor"
NO_TS = "no_ts"
TICK = 0.1
"""With ``--speed``, the longest sleep between two ticks of the modules, in wall seconds."""


class InputError(Exception):
    """The recording cannot be read at all (missing file, a CSV without the needed columns)."""


@dataclass
class ReplayReport:
    """What a replay did: readings fed, lines refused by reason, records emitted, module errors."""

    readings: int = 0
    emitted: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    first_refused_line: dict[str, int] = field(default_factory=dict)
    unprintable: int = 0
    start_failed: list[str] = field(default_factory=list)
    module_errors: list[str] = field(default_factory=list)
    module_counters: dict[str, dict[str, int]] = field(default_factory=dict)

    def refuse(self, line: int, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        self.first_refused_line.setdefault(reason, line)

    def summary(self) -> str:
        refused = sum(self.refused.values())
        text = f"replayed {self.readings} readings"
        if refused:
            reasons = ", ".join(
                f"{reason} {count} (first at line {self.first_refused_line[reason]})"
                for reason, count in sorted(self.refused.items())
            )
            text += f"; refused {refused} lines: {reasons}"
        text += f"; emitted {self.emitted} records"
        if self.unprintable:
            text += f" ({self.unprintable} not JSON-serialisable, left out)"
        text += f"; {len(self.module_errors)} module errors"
        for name, counters in sorted(self.module_counters.items()):
            if counters:
                text += "\n  " + name + ": " + ", ".join(
                    f"{key} {value}" for key, value in sorted(counters.items())
                )
        for error in self.module_errors[:5]:
            text += f"\n  error: {error}"
        return text


def topic_prefix(loaded: LoadedConfig) -> str:
    """The topic prefix the config's first source gives readings (``sensors/`` by default)."""
    for source in loaded.agent.sources:
        if isinstance(source, MqttSourceConfig):
            return fixed_prefix(source.topics[0])
        if isinstance(source, SimulatorSourceConfig):
            return source.topic_prefix
    return "sensors/"


def read_recording(
    path: Path | str, prefix: str, report: ReplayReport, fmt: str = "auto"
) -> Iterator[Record]:
    """The readings of a recording, in file order; refused lines go to ``report``."""
    stream = _open(path)
    try:
        is_csv = fmt == "csv" or (fmt == "auto" and str(path).lower().endswith(".csv"))
        rows = _csv_rows(stream) if is_csv else _jsonl_rows(stream)
        for line, body in rows:
            try:
                yield _reading(body, prefix)
            except Rejected as exc:
                report.refuse(line, exc.reason)
    finally:
        if stream is not sys.stdin:
            stream.close()


def _open(path: Path | str) -> TextIO:
    if str(path) == "-":
        return sys.stdin
    try:
        return open(path, encoding="utf-8", newline="")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None


def _jsonl_rows(stream: TextIO) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            yield number, codec.loads(line)
        except (ValueError, UnicodeDecodeError):
            yield number, _NotJson()


class _NotJson:
    """A line that did not parse; ``_reading`` refuses it as ``not_json``."""


def _csv_rows(stream: TextIO) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(stream)
    missing = {"sensor", "ts", "value"} - set(reader.fieldnames or ())
    if missing:
        raise InputError(
            f"the CSV header must name sensor, ts and value; {', '.join(sorted(missing))} "
            f"missing (header: {','.join(reader.fieldnames or []) or 'none'})"
        )
    for row in reader:
        body: dict[str, Any] = {"sensor": row["sensor"], "ts": row["ts"]}
        value = (row.get("value") or "").strip()
        if value:
            try:
                body["value"] = float(value)
            except ValueError:
                body["value"] = value  # refused below as value_not_a_number
        for optional in ("unit", "topic"):
            if row.get(optional):
                body[optional] = row[optional]
        yield reader.line_num, body


def _reading(body: Any, prefix: str) -> Record:
    if isinstance(body, _NotJson):
        raise Rejected("not_json")
    if type(body) is not dict:
        raise Rejected("not_an_object")
    sensor = body.get("sensor")
    if type(sensor) is not str or not sensor.strip():
        raise Rejected(NO_SENSOR)
    if "ts" not in body:
        raise Rejected(NO_TS)
    if "value" not in body or body["value"] is None:
        raise Rejected(NO_VALUE)
    body = {**body, "ts": time_of(body["ts"])}
    return reading_from(f"{body.get('topic') or prefix + sensor}", sensor, body, math.nan, max_skew=None)


def replay(
    loaded: LoadedConfig,
    records: Iterable[Record],
    out: Callable[[Record], None],
    report: ReplayReport,
    speed: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> None:
    """Feed ``records`` through the config's modules and hand every emitted record to ``out``.

    ``speed`` None replays as fast as possible; a number plays the recording that many times
    faster than it happened, ticking the modules while it waits.
    """

    def emitted(record: Record) -> None:
        report.emitted += 1
        out(record)

    stepper = Stepper(loaded.modules, strict=False, on_emit=emitted, keep=False)
    try:
        stepper.run(stepper.astart())
        if stepper.start_errors:
            return
        counted = _counted(records, report)
        if speed is None:
            stepper.run(stepper.afeed(counted))
        else:
            stepper.run(_paced(stepper, counted, speed, sleep, monotonic))
        stepper.run(stepper.astop())
    finally:
        report.start_failed = [name for name, _ in stepper.start_errors]
        report.module_errors += [f"{name}: start: {exc}" for name, exc in stepper.start_errors]
        report.module_errors += [
            f"{q.module}: {q.hook}: {q.error!r}" for q in stepper.quarantined
        ]
        report.module_counters = {
            stage.name: dict(stage.counters.values) for stage in stepper.stages
        }
        stepper.close()


def _counted(records: Iterable[Record], report: ReplayReport) -> Iterator[Record]:
    for record in records:
        report.readings += 1
        yield record


async def _paced(
    stepper: Stepper, records: Iterable[Record], speed: float,
    sleep: Callable[[float], None], monotonic: Callable[[], float],
) -> None:
    started = monotonic()
    first: float | None = None
    for record in records:
        if first is None:
            first = record.ts
            await stepper.aadvance_to(first)
        due = started + (record.ts - first) / speed
        while (wait := due - monotonic()) > 0:
            sleep(min(wait, TICK))
            await stepper.aadvance_to(first + (monotonic() - started) * speed)
        await stepper.afeed([record])


def printer(stream: TextIO, report: ReplayReport, flush: bool = False) -> Callable[[Record], None]:
    """An ``out`` for ``replay`` that writes each record as one JSON line."""

    def write(record: Record) -> None:
        try:
            line = codec.dumps({"stream": record.topic, "ts": record.ts, "data": record.data})
        except (TypeError, ValueError):
            report.unprintable += 1
            return
        stream.write(line + "\n")
        if flush:
            stream.flush()

    return write


def sorted_by_time(records: Iterable[Record]) -> list[Record]:
    """The records in time order (stable: ties keep their file order). Holds them all."""
    return sorted(records, key=lambda record: record.ts)


__all__ = [
    "InputError",
    "ReplayReport",
    "printer",
    "read_recording",
    "replay",
    "sorted_by_time",
    "topic_prefix",
]
