"""What remote control may do to the agent, and see of it: the one seam between the two.

``agent.supervisor.Agent`` implements ``AgentControl``; remote config and commands are written
against this Protocol alone, so they never import the supervisor (and tests can hand them a
small stand-in).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from agent.config import CloudConfig, LoadedConfig
from agent.counters import CounterSet
from agent.runtime.pipeline import Change, Pipeline
from cloud_sync.uploader.tracker import SendTracker


class Uplink(Protocol):
    """The uploader's connection, as remote control uses it (replies, reports, sync-now)."""

    config: CloudConfig
    connected: bool
    last_error: str | None
    tracker: SendTracker

    def publish(
        self, topic: str, payload: bytes, retain: bool = False, correlation: bytes | None = None
    ) -> bool:
        """Publish at QoS 1 now; False if not connected."""
        ...

    def sync_now(self) -> None:
        """Look for records to send now, and publish a fresh status."""
        ...


class AgentControl(Protocol):
    """The running agent: its configs, counters and modules, and the changes it accepts."""

    loaded: LoadedConfig
    """The config that runs (the operator's file, or a remote config on top of it)."""
    file_loaded: LoadedConfig
    """The operator's file as last read: device id, data directory and the local-only keys."""
    counters: CounterSet
    started_at: float
    apply_lock: asyncio.Lock
    """Held while a config change is applied and watched, so two never interleave."""

    @property
    def pipeline(self) -> Pipeline | None: ...

    @property
    def uploader(self) -> Uplink | None: ...

    async def apply(self, new: LoadedConfig) -> Change:
        """Run ``new`` in place of the running config, changing only what differs."""
        ...

    async def restart_module(self, name: str) -> str | None:
        """Restart one module with its state; its new status, or None if there is no such module."""
        ...
