"""Running one source: its context (readings, counters, health, backpressure) and its restarts.

Every source, built-in or installed, runs under a ``SourceRunner``: a source whose ``run``
raises is named in status with its error and replaced by a new instance after a capped,
jittered delay, and the other sources never notice. agent/api.py lists the promises.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from agent.api import Record, Source, SourceConfig
from agent.backoff import Backoff
from agent.bus import Bus
from agent.counters import CounterSet, ScopedCounters, ThrottledLog
from agent.health.clock import CLOCK
from agent.sources.acks import AckLedger
from agent.sources.readings import (
    BAD_TS,
    DEFAULT_MAX_CLOCK_SKEW,
    NOT_A_NUMBER,
    NOT_FINITE,
    Rejected,
    check_ts,
)
from agent.sources.retained import RetainedMemory
from agent.sources.taken import TakenCount

log = logging.getLogger("agent.sources")

RESTART_FIRST = 1.0
RESTART_CAP = 60.0
HEALTHY_RUN = 60.0
"""A source instance that ran this long before failing starts the backoff afresh."""
STOP_TIMEOUT = 5.0
_NUMBER = (int, float)


class SourceContextImpl:
    """The ``SourceContext`` of one source instance name (kept across its restarts)."""

    def __init__(
        self, config: SourceConfig, device_id: str, bus: Bus, counters: CounterSet,
        data_dir: Path | None = None, max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
    ) -> None:
        self.name = config.name
        self.device_id = device_id
        self.data_dir = data_dir
        self.max_clock_skew = max_clock_skew
        self.log = log.getChild(config.name)
        self.counters = ScopedCounters(counters, f"source:{config.name}")
        self.prefix: str = getattr(config, "topic_prefix", "sensors/")
        self.connected = False
        self.last_error: str | None = None
        self.attempted = asyncio.Event()
        """Set once the source has said how its first attempt went (or failed)."""
        self._bus = bus
        self._all = counters
        self._throttled = ThrottledLog(self.log)
        self._topics: dict[str, str] = {}
        self.retained = RetainedMemory()
        """The retained messages an MQTT source took, kept across its restarts and saved with
        each checkpoint (``SourceRunner.retained_cut``)."""
        self.taken = TakenCount(data_dir / f"{config.name}.taken" if data_dir is not None else None)
        """Readings taken that the broker will not deliver again (QoS 0): what a crash loses of
        them is the count less the one the last checkpoint saved (``SourceRunner.taken_cut``)."""
        self.acks = AckLedger(self.counters, f"source:{config.name}")
        """The QoS 1 acknowledgements an MQTT source owes the broker, kept across its restarts:
        a new instance resumes the broker's session, whose resends of what the failed one took
        are then skipped, not taken twice."""

    @property
    def paused(self) -> bool:
        return self._bus.full

    def clock(self) -> float:
        return time.time()

    def reading(
        self, sensor: str, value: Any, ts: float | None = None, unit: str | None = None
    ) -> Record | None:
        self.counters.incr("received")
        if type(value) not in _NUMBER:  # bool is an int subclass, but not a reading
            self.reject(NOT_A_NUMBER, f"{sensor}: {value!r}", received=False)
            return None
        if not math.isfinite(value):
            self.reject(NOT_FINITE, f"{sensor}: {value!r}", received=False)
            return None
        unsynced = False
        now = time.time()
        if ts is None:
            ts = now
            unsynced = not CLOCK.synchronised
        else:
            try:
                if type(ts) not in _NUMBER:
                    raise Rejected(BAD_TS)
                check_ts(ts, now, self.max_clock_skew)
            except Rejected:
                self.reject(BAD_TS, f"{sensor}: ts {ts!r}", received=False)
                return None
        topic = self._topics.get(sensor)
        if topic is None:
            topic = self._topic_of(sensor)
        data: dict[str, Any] = {"sensor": sensor, "value": value}
        if unit is not None:
            data["unit"] = unit
        if unsynced:  # stamped by a gateway clock not known to be right: say so, as MQTT does
            data["clock"] = "unsynced"
        return Record(topic, float(ts), data)

    def reject(self, reason: str, detail: str = "", count: int = 1, received: bool = True) -> None:
        if received:
            self.counters.incr("received", count)
        self._all.incr("dropped", reason, count)
        self.counters.incr(f"dropped.{reason}", count)
        if detail:
            self._throttled.warning(f"dropped.{reason}", "dropped an input: %s; %s", reason, detail)

    def fault(self, reason: str, detail: str = "") -> None:
        self.counters.incr(f"errors.{reason}")
        self._throttled.warning(f"errors.{reason}", "fault: %s; %s", reason, detail)

    def report_ok(self) -> None:
        if not self.connected:
            self.log.info("connected")
        self.connected, self.last_error = True, None
        self.attempted.set()

    def report_error(self, error: str) -> None:
        self.connected, self.last_error = False, error
        self.attempted.set()

    async def publish(self, records: list[Record]) -> None:
        if self.publish_nowait(records):
            self.counters.incr("paused")
            await self._bus.wait_room()

    def publish_nowait(self, records: list[Record]) -> bool:
        if not records:
            return False
        self.counters.incr("accepted", len(records))
        return self._bus.publish(records)

    async def wait_room(self) -> None:
        await self._bus.wait_room()

    async def ticks(self, interval: float) -> AsyncIterator[float]:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            now = loop.time()
            if now < due:
                await asyncio.sleep(due - now)
            elif now - due >= interval:  # the last poll overran: skip what fell due meanwhile
                missed = int((now - due) // interval)
                self.counters.incr("skipped_polls", missed)
                due += missed * interval
            due += interval
            if self._bus.full:
                self.counters.incr("skipped_polls")
                continue
            yield time.time()

    def _topic_of(self, sensor: str) -> str:
        if len(self._topics) > 100_000:
            self._topics.clear()
        topic = self._topics[sensor] = f"{self.prefix}{sensor}"
        return topic


class SourceRunner:
    """One configured source: a fresh instance per attempt, restarted with backoff."""

    def __init__(
        self, cls: type[Source[Any]], config: SourceConfig, device_id: str, bus: Bus, counters: CounterSet,
        data_dir: Path | None = None, max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
    ) -> None:
        self.cls = cls
        self.config = config
        self.name = config.name
        self.context = SourceContextImpl(config, device_id, bus, counters, data_dir, max_clock_skew)
        self.restarts = 0
        self.state = "starting"
        self._current: Source[Any] | None = None  # the instance running now
        self.owed_restore: list[int] = []
        """Packet ids the checkpoint before a crash covered (``restore_owed`` of the source)."""
        self.resume: Any = None
        """The source's latest place in its input (``checkpoint``), handed to each new instance."""
        self._saved: Any = None  # the place last handed to a commit
        self._backoff = Backoff(first=RESTART_FIRST, cap=RESTART_CAP)

    @property
    def attempted(self) -> asyncio.Event:
        return self.context.attempted

    async def run(self) -> None:
        """Run instances of the source until cancelled (or until one returns)."""
        context = self.context
        while True:
            started = time.monotonic()
            source = None
            try:
                source = self._current = self.cls(self.config, context)
                if self.resume is not None:
                    source.restore(self.resume)
                restore_owed = getattr(source, "restore_owed", None)
                if self.owed_restore and restore_owed is not None:
                    restore_owed(self.owed_restore)
                self.owed_restore = []
                self.state = "running"
                await source.run()
                self.state = "ended"
                context.log.info("ended")
                return
            except Exception as exc:  # any failure of a plugin: named, counted, retried
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # Stopped while a library turned the cancellation into an error of its own
                    # (pymodbus does): stop, do not retry.
                    raise asyncio.CancelledError from exc
                error = _describe(exc)
                context.report_error(error)
                context.counters.incr("restarts")
                self.restarts += 1
                if time.monotonic() - started >= HEALTHY_RUN:
                    self._backoff.reset()
                delay = self._backoff.next_delay()
                self.state = "backoff"
                context.log.warning("failed: %s; restarting in %.1f s", error, delay)
            finally:
                if source is not None:
                    self.resume = self._place_of(source)
                    await self._stop(source)
            await asyncio.sleep(delay)

    async def _stop(self, source: Source[Any]) -> None:
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await source.stop()
        except Exception as exc:
            self.context.log.warning("stop failed: %s", _describe(exc))

    def cut(self) -> Callable[[], None] | None:
        """A checkpoint is being taken: what to call once it has committed (a source that
        acknowledges its input, as the MQTT source does at QoS 1, says it through ``cut``)."""
        cut = getattr(self._current, "cut", None)
        return cut() if cut is not None else None

    def retained_cut(self) -> dict[str, int]:
        """The retained-message memory's changes since the last checkpoint, for this one."""
        return self.context.retained.cut()

    def taken_cut(self) -> int | None:
        """The count of readings taken that cannot come again, if it changed since the last cut."""
        return self.context.taken.cut()

    def place(self) -> Any:
        """The source's place in its input, for the commit being taken, if it changed since the
        last one (None otherwise)."""
        if self._current is not None:
            self.resume = self._place_of(self._current)
        if self.resume is None or self.resume == self._saved:
            return None
        self._saved = self.resume
        return self.resume

    def _place_of(self, source: Source[Any]) -> Any:
        try:
            place = source.checkpoint()
        except Exception as exc:  # a plugin's bug: named, and the last place kept
            self.context.log.warning("checkpoint failed: %s", _describe(exc))
            return self.resume
        return self.resume if place is None else place

    def owed_ids(self) -> list[int] | None:
        owed = getattr(self._current, "owed_ids", None)
        result: list[int] | None = owed() if owed is not None else None
        return result

    def pause(self) -> None:
        """Stop taking input, before the last checkpoint of a stop (if the source can)."""
        pause = getattr(self._current, "pause", None)
        if pause is not None:
            pause()

    def health(self) -> dict[str, Any]:
        return {
            "type": self.config.type,
            "state": self.state,
            "connected": self.context.connected,
            "last_error": self.context.last_error,
            "restarts": self.restarts,
        }


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:  # a source's own TaskGroup
        exc = exc.exceptions[0]
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
