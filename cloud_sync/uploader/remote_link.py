"""Cloud-to-device control riding on the uploader's connection: what the uploader needs of it."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from cloud_sync.mqtt import Client, Message

log = logging.getLogger(__name__)


class RemoteLink(Protocol):
    """Remote config and commands (``agent.remote.link.Remote``), seen from the uploader."""

    def filters(self, prefix: str, device_id: str) -> list[str]: ...
    def received(self, prefix: str, topic: str, payload: bytes, retain: bool, properties: Any) -> None: ...
    def connected(self) -> None: ...
    def status_fields(self) -> dict[str, Any]: ...


async def subscribe(client: Client, remote: RemoteLink, prefix: str, device_id: str) -> list[str]:
    """Subscribe to the remote control topics; returns the filters the broker refused."""
    filters = remote.filters(prefix, device_id)
    refused: list[str] = []
    if filters:
        granted = await client.subscribe([(f, 1) for f in filters])
        refused = [f for f, code in zip(filters, granted, strict=False) if refused_code(code)]
        if not refused:
            log.info("remote control: subscribed to %s", ", ".join(filters))
    remote.connected()
    return refused


def deliver(remote: RemoteLink | None, prefix: str, message: Message) -> None:
    """Hand a message that is not an ack to remote control."""
    if remote is None or not isinstance(message.payload, bytes | bytearray):
        return
    remote.received(prefix, str(message.topic), bytes(message.payload), message.retain, message.properties)


def refused_code(code: Any) -> bool:
    """A SUBACK code (or reason code) of 0x80 and above is a refusal."""
    return int(getattr(code, "value", code)) >= 0x80
