"""Publishing test readings through a real broker with paho."""

from __future__ import annotations

import json
from collections.abc import Iterable

import paho.mqtt.client as mqtt


class Publisher:
    def __init__(self, port: int, client_id: str = "test-publisher") -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos)

    def readings(self, items: Iterable[tuple[str, float, float]], qos: int = 1) -> int:
        """Publish ``(sensor, ts, value)`` readings to ``sensors/<sensor>``; wait until all are
        acknowledged by the broker; return how many were sent."""
        infos = [
            self.client.publish(f"sensors/{sensor}", json.dumps({"value": value, "ts": ts}), qos=qos)
            for sensor, ts, value in items
        ]
        for info in infos:
            info.wait_for_publish(30)
        return len(infos)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
