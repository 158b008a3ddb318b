"""What the local broker says about itself: Mosquitto's count of publishes it dropped.

Mosquitto queues QoS 1 readings for a client's persistent session while the client is away, up
to ``max_queued_messages``; beyond that it drops them without telling the publisher. It only
counts them, in ``$SYS``: the total since it started (``publish/messages/dropped``) and a
15-minute load average (``load/publish/dropped/15min``, drops a minute). Both are retained and
published when they change, every ``sys_interval``, and Mosquitto 2.0 lets each expire 60 s
after it was published: the total is readable for a minute after the last drop, the average (it
changes while it decays) for hours. The agent never sees a reading the broker dropped, so its own
counters cannot show the loss: ``edge-agent status`` asks the broker instead.
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttSourceConfig

DROPPED = "$SYS/broker/publish/messages/dropped"
DROP_RATE = "$SYS/broker/load/publish/dropped/15min"
UPTIME = "$SYS/broker/uptime"  # always there: sent last, it says the other two were sent if retained
ADVICE = "raise max_queued_messages (configs/mosquitto-local.conf, docs/install.md)"


def read_drops(source: MqttSourceConfig, timeout: float = 3.0) -> dict[str, Any] | None:
    """``{"dropped": total or None, "dropped_per_min_15": average or None}`` from the broker's
    ``$SYS``; ``None`` when it cannot be reached or does not answer within ``timeout``."""
    got: dict[str, bytes] = {}
    done = threading.Event()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        got[message.topic] = bytes(message.payload)
        if message.topic == UPTIME:
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
    # one SUBSCRIBE, in this order: the broker sends the retained messages filter by filter
    client.on_connect = lambda c, *_: c.subscribe([(DROPPED, 0), (DROP_RATE, 0), (UPTIME, 0)])
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
    if not got:
        return None
    return {
        "dropped": _number(got.get(DROPPED), int),
        "dropped_per_min_15": _number(got.get(DROP_RATE), float),
    }


def _number(payload: bytes | None, kind: type[int] | type[float]) -> Any:
    try:
        return None if payload is None else kind(payload)
    except ValueError:
        return None


def broker_report(sources: list[Any], timeout: float = 3.0) -> tuple[dict[str, Any], list[str]]:
    """For each MQTT source, ``{name: {"url", "dropped", "dropped_per_min_15"}}`` (figures
    ``None`` where the broker did not say), and a warning per broker that dropped publishes."""
    report: dict[str, Any] = {}
    warnings: list[str] = []
    for source in sources:
        if not isinstance(source, MqttSourceConfig):
            continue
        drops = read_drops(source, timeout) or {"dropped": None, "dropped_per_min_15": None}
        report[source.name] = {"url": source.url, **drops}
        total, rate = drops["dropped"], drops["dropped_per_min_15"]
        said = f"the broker of source {source.name} ({source.url})"
        if total:
            warnings.append(f"{said} dropped {total} publishes since it started (a client's queue was"
                            f" full, readings may be lost): {ADVICE}")
        elif rate:
            warnings.append(f"{said} has been dropping publishes (about {rate:.0f} a minute, 15-minute"
                            f" average; a client's queue was full, readings may be lost): {ADVICE}")
    return report, warnings
