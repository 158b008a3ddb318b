"""What the local broker says about itself: Mosquitto's count of publishes it dropped.

Mosquitto queues QoS 1 readings for a client's persistent session while the client is away, up
to ``max_queued_messages``; beyond that it drops them without telling the publisher. It only
counts them, under ``$SYS/broker/publish/messages/dropped`` (retained, refreshed every
``sys_interval``, 10 s by default). The agent never sees a reading the broker dropped, so its
own counters cannot show the loss: ``edge-agent status`` asks the broker instead.
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttSourceConfig

DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
ADVICE = "raise max_queued_messages (configs/mosquitto-local.conf, docs/install.md)"


def read_dropped(source: MqttSourceConfig, timeout: float = 3.0) -> int | None:
    """The broker's count of dropped publishes since it started, for all its clients; ``None``
    when it cannot be read within ``timeout`` (not reachable, not Mosquitto, ``$SYS`` denied)."""
    got: list[int] = []
    done = threading.Event()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.payload.isdigit():
            got.append(int(message.payload))
        done.set()

    client_id = f"{source.client_id or 'edge-agent'}-status-{os.getpid()}"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    if source.username:
        secret = source.password()
        client.username_pw_set(source.username, secret.get_secret_value() if secret else None)
    if source.tls:
        context = ssl.create_default_context(cafile=source.tls_ca)
        if source.tls_cert and source.tls_key:
            context.load_cert_chain(source.tls_cert, source.tls_key)
        client.tls_set_context(context)
    client.on_connect = lambda c, *_: c.subscribe(DROPPED_TOPIC, 0)
    client.on_message = on_message
    try:
        client.connect(source.host, source.port, keepalive=max(5, round(timeout) + 5))
    except (OSError, ValueError):
        return None
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0] if got else None


def broker_report(sources: list[Any], timeout: float = 3.0) -> tuple[dict[str, Any], list[str]]:
    """For each MQTT source, ``{name: {"url", "dropped"}}``, and a warning per broker that
    dropped publishes."""
    report: dict[str, Any] = {}
    warnings: list[str] = []
    for source in sources:
        if not isinstance(source, MqttSourceConfig):
            continue
        dropped = read_dropped(source, timeout)
        report[source.name] = {"url": source.url, "dropped": dropped}
        if dropped:
            warnings.append(
                f"the broker of source {source.name} ({source.url}) dropped {dropped} publishes since it"
                f" started (a client's queue was full, readings may be lost): {ADVICE}"
            )
    return report, warnings
