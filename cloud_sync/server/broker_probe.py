"""What the cloud broker can do, found out by trying it, once at start-up.

Every broker takes plain MQTT 3.1.1, but the features the cloud side leans on vary, and some
brokers grant a subscription they will never deliver on (NATS 2.9 and RabbitMQ 3.10 both answer
``$share/...`` with "granted" and treat it as an ordinary, never-published topic). So each
feature is checked by a round trip on a connection of its own, on topics no device uses:

* ``protocol``: MQTT 5, or 3.1.1 when the broker refuses 5 (NATS, RabbitMQ 3.10);
* ``shared_subscriptions``: a message published to T arrives on ``$share/<g>/T``;
* ``retained_exact``: a retained message arrives on a subscription to its exact topic (the
  devices' acks rely on this; without it they resend until a live ack comes);
* ``retained_wildcard``: ...and on a wildcard filter (the ingest's ``<prefix>/+/status`` and the
  console's desired configs at start-up; RabbitMQ 3.10 delivers retained messages only to
  exact-topic subscriptions);
* ``max_packet_size`` as announced (MQTT 5 only) and ``large_message``: whether a message of
  ``probe_bytes`` (the devices' default ``max_message_bytes``) makes the round trip.

The answers go to the log and to ``/api/stats`` (``ingest.broker``); ``serve`` picks the fallbacks
(docs/scale.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.config import BrokerLogin
from cloud_sync.mqtt import Client, MqttError, make_client, ssl_context, wrong_protocol

log = logging.getLogger(__name__)

PROBE_BYTES = 256_000
"""The devices' default ``max_message_bytes``: a broker must carry a message this large."""
WAIT = 2.0


@dataclass
class BrokerFeatures:
    protocol: str = "unknown"
    shared_subscriptions: bool | None = None
    retained_exact: bool | None = None
    retained_wildcard: bool | None = None
    max_packet_size: int | None = None
    large_message: bool | None = None
    probe_bytes: int = PROBE_BYTES
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def explain(self) -> list[str]:
        """One line per missing feature, naming what the product does instead."""
        lines = []
        if self.protocol == "3.1.1":
            lines.append("speaks MQTT 3.1.1 only: no reason codes on PUBACK and no message expiry; "
                         "commands carry their reply topic and expiry in the payload")
        if self.shared_subscriptions is False:
            lines.append("delivers nothing on $share/ subscriptions: without --jetstream, every worker "
                         "reads every device's data and the store drops the repeats (availability, "
                         "not throughput)")
        if self.retained_exact is False:
            lines.append("keeps no retained messages: devices learn their ack only from live acks "
                         "and resend after resend_after")
        if self.retained_wildcard is False:
            lines.append("delivers retained messages only to exact topics: a starting worker learns "
                         "each device's status at its next heartbeat, and the console its desired "
                         "configs as they are set again")
        if self.large_message is False:
            lines.append(f"did not carry a {self.probe_bytes}-byte message: set the devices' "
                         "max_message_bytes below the broker's limit")
        return lines + self.notes


async def probe(
    login: BrokerLogin, client_id: str, prefix: str = "edge", protocol_version: str = "auto",
    probe_bytes: int = PROBE_BYTES,
) -> BrokerFeatures:
    """Connect as ``<client_id>-probe``, try each feature, clean up the retained probe message."""
    features = BrokerFeatures(probe_bytes=probe_bytes)
    versions = ["5", "3.1.1"] if protocol_version == "auto" else [protocol_version]
    for version in versions:
        client = make_client(login, f"{client_id}-probe", version, logger=log.getChild("mqtt"),
                             tls=ssl_context(login), clean=True)  # leaves no session behind
        tried = False
        try:
            async with client:
                features.protocol = version
                features.max_packet_size = client.max_packet_size
                tried = True
                await _try_features(client, features, f"{prefix}/_probe_{secrets.token_hex(4)}")
            return features
        except MqttError as exc:
            if tried:
                return features  # the broker hung up on the large message: that was the answer
            if version == "5" and len(versions) > 1 and wrong_protocol(exc):
                continue
            raise
    return features


async def _try_features(client: Client, features: BrokerFeatures, base: str) -> None:
    nonce = secrets.token_bytes(8)
    inbox: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue()

    async def read() -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else b""
            await inbox.put((str(message.topic), payload, bool(message.retain)))

    reader = asyncio.create_task(read(), name="probe:read")
    try:
        await client.subscribe(f"$share/probe/{base}/shared", 1)
        await _publish(client, f"{base}/shared", nonce)
        features.shared_subscriptions = await _arrives(inbox, f"{base}/shared", nonce)

        await _publish(client, f"{base}/retained", nonce, retain=True)
        await client.subscribe(f"{base}/retained", 1)
        features.retained_exact = await _arrives(inbox, f"{base}/retained", nonce)
        await client.subscribe(f"{base}/+", 1)
        features.retained_wildcard = await _arrives(inbox, f"{base}/retained", nonce)
        await client.unsubscribe([f"{base}/retained", f"{base}/+"])
        await _publish(client, f"{base}/retained", b"", retain=True)  # clears it

    except (MqttError, TimeoutError) as exc:
        features.notes.append(f"the probe stopped early: {exc!r}")
        reader.cancel()
        return
    try:
        big = nonce + bytes(max(0, features.probe_bytes - len(nonce)))
        await client.subscribe(f"{base}/large", 1)
        await _publish(client, f"{base}/large", big)
        features.large_message = await _arrives(inbox, f"{base}/large", big)
    except (MqttError, TimeoutError):
        features.large_message = False  # the broker dropped the connection over its size
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, MqttError):
            await reader


async def _publish(client: Client, topic: str, payload: bytes, retain: bool = False) -> None:
    """QoS 1, waiting for the PUBACK at most ``WAIT`` (``send`` fails at once if the broker hangs
    up, where aiomqtt's ``publish`` would wait out its timeout)."""
    async with asyncio.timeout(WAIT):
        await client.send(topic, payload, 1, retain)


async def _arrives(inbox: asyncio.Queue[tuple[str, bytes, bool]], topic: str, payload: bytes) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(WAIT):
            while True:
                got_topic, got, _ = await inbox.get()
                if got_topic == topic and got == payload:
                    return True
    return False
