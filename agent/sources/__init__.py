"""Where readings come from: an MQTT broker or the built-in simulator.

Imports are deferred to ``build_source``: ``agent.config`` imports the payload mapping's config
model from this package, so this package must not import ``agent.config`` when it loads.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agent.bus import Bus
    from agent.config import MqttSourceConfig, SimulatorSourceConfig
    from agent.counters import CounterSet


class Source(Protocol):
    name: str
    connected: bool
    last_error: str | None
    attempted: asyncio.Event

    async def run(self) -> None: ...

    def stop(self) -> None: ...


def build_source(
    config: MqttSourceConfig | SimulatorSourceConfig, device_id: str, bus: Bus, counters: CounterSet,
    data_dir: Path | None = None, max_clock_skew: float | None = None,
) -> Source:
    """The source of ``config``. ``data_dir`` holds what a source remembers across restarts
    (the retained messages an MQTT source took); ``max_clock_skew`` bounds reading times."""
    from agent.config import MqttSourceConfig
    from agent.sources.mqtt import MqttSource
    from agent.sources.simulator import SimulatorSource

    if isinstance(config, MqttSourceConfig):
        return MqttSource(config, device_id, bus, counters, data_dir, max_clock_skew)
    return SimulatorSource(config, bus, counters)


def __getattr__(name: str) -> Any:
    if name == "MqttSource":
        from agent.sources.mqtt import MqttSource

        return MqttSource
    if name == "SimulatorSource":
        from agent.sources.simulator import SimulatorSource

        return SimulatorSource
    raise AttributeError(name)


__all__ = ["MqttSource", "SimulatorSource", "Source", "build_source"]
