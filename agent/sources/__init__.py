"""Where readings come from: an MQTT broker or the built-in simulator."""

from __future__ import annotations

import asyncio
from typing import Protocol

from agent.bus import Bus
from agent.config import MqttSourceConfig, SimulatorSourceConfig
from agent.counters import CounterSet
from agent.sources.mqtt import MqttSource
from agent.sources.simulator import SimulatorSource


class Source(Protocol):
    name: str
    connected: bool
    last_error: str | None
    attempted: asyncio.Event

    async def run(self) -> None: ...

    def stop(self) -> None: ...


def build_source(
    config: MqttSourceConfig | SimulatorSourceConfig, device_id: str, bus: Bus, counters: CounterSet
) -> Source:
    if isinstance(config, MqttSourceConfig):
        return MqttSource(config, device_id, bus, counters)
    return SimulatorSource(config, bus, counters)


__all__ = ["MqttSource", "SimulatorSource", "Source", "build_source"]
