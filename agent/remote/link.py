"""Cloud-to-device control (``[remote]``): what the uploader's connection hands over from the
device's ``config/desired`` and ``cmd/<name>`` topics goes to ``RemoteConfig`` or ``Commands``.

The uploader knows this only as a ``RemoteLink`` (cloud_sync/uploader/remote_link.py): which filters to
subscribe to, where to pass a message, what to do on each connect, what to add to the status.
One MQTT connection per device carries sync, configs and commands.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from agent.config import RemoteSettings
from agent.remote.commands import Commands
from agent.remote.config import RemoteConfig
from cloud_sync import protocol
from cloud_sync.protocol import ProtocolError

if TYPE_CHECKING:
    from agent.remote.control import AgentControl

log = logging.getLogger(__name__)


class Remote:
    def __init__(self, agent: AgentControl, settings: RemoteSettings) -> None:
        self.agent = agent
        self.settings = settings
        self.config = RemoteConfig(agent, settings) if settings.allow_config else None
        self.commands = Commands(agent) if settings.allow_commands else None

    def filters(self, prefix: str, device_id: str) -> list[str]:
        filters = []
        if self.config is not None:
            filters.append(protocol.config_topic(prefix, device_id, "desired"))
        if self.commands is not None:
            filters.append(protocol.command_topic(prefix, device_id, "+"))
        return filters

    def received(self, prefix: str, topic: str, payload: bytes, retain: bool, properties: Any) -> None:
        """A message on one of our filters (or left over in the broker session from before)."""
        try:
            device_id, kind, rest = protocol.parse_remote_topic(prefix, topic)
        except ProtocolError:
            device_id, kind, rest = "", "", ""
        if device_id != self.agent.file_loaded.agent.device_id:
            kind = ""
        if kind == "config" and rest == "desired" and self.config is not None:
            self.config.received(payload)
        elif kind == "cmd" and self.commands is not None:
            self.commands.received(prefix, rest, payload, retain, properties)
        else:
            self.agent.counters.incr("remote", "ignored")
            log.info("ignoring a message on %s (not enabled in [remote])", topic[:200])

    def connected(self) -> None:
        if self.config is not None:
            self.config.connected()
        if self.commands is not None:
            self.commands.connected()  # replies that waited for the link

    def status_fields(self) -> dict[str, Any]:
        """Added to the retained status: which config runs (the console shows it)."""
        running = self.config.running() if self.config else {"source": "file", "version": None}
        version = running["version"]
        return {"config_version": f"v{version} (remote)" if version else "file", "config": running}

    def summary(self) -> dict[str, Any]:
        """For ``edge-agent status``."""
        return {
            "config": self.config.summary() if self.config else {"source": "file", "version": None},
            "allow_config": self.settings.allow_config,
            "allow_commands": self.settings.allow_commands,
            "signed_only": self.settings.public_key_file is not None,
        }

    async def stop(self) -> None:
        if self.commands is not None:
            await self.commands.stop()
        if self.config is not None:
            await self.config.stop()
