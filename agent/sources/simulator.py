"""Synthetic sensor readings, so the agent runs with no hardware: a slow daily-like cycle,
noise, and a little drift per sensor, deterministic when seeded."""

from __future__ import annotations

import asyncio
import math
import random
import time

from agent.api import Record, Source, SourceContext
from agent.config import SimulatorSourceConfig

TICK = 0.1


class SimulatorSource(Source[SimulatorSourceConfig]):
    Config = SimulatorSourceConfig
    description = "Synthetic readings, for trying the agent with no hardware."

    def __init__(self, config: SimulatorSourceConfig, context: SourceContext) -> None:
        super().__init__(config, context)
        self._rng = random.Random(config.seed)
        self._sensors = [
            (f"{config.topic_prefix}sim-{index}", f"sim-{index}", 15 + self._rng.uniform(0, 10))
            for index in range(config.sensors)
        ]

    async def run(self) -> None:
        self.context.report_ok()
        due = 0.0  # readings owed per sensor, carried between ticks so any rate comes out right
        started = time.monotonic()
        ticks = 0
        while True:
            ticks += 1
            await asyncio.sleep(max(0.0, started + ticks * TICK - time.monotonic()))
            due += self.config.rate * TICK
            whole = int(due)
            due -= whole
            if whole:
                readings = self._readings(whole, time.time())
                self.context.counters.incr("received", len(readings))  # made whole: nothing to refuse
                await self.context.publish(readings)

    def _readings(self, per_sensor: int, now: float) -> list[Record]:
        gauss = self._rng.gauss
        records = []
        for step in range(per_sensor):
            ts = now - (per_sensor - 1 - step) * TICK / per_sensor
            cycle = math.sin(2 * math.pi * (ts % 86_400) / 86_400)
            for topic, sensor, base in self._sensors:
                value = round(base + 5 * cycle + gauss(0, 0.3), 3)
                records.append(Record(topic, ts, {"sensor": sensor, "value": value, "unit": "C"}))
        return records
