"""The messages of the payload-mapping benchmark: today's ``{"value"}`` shape (one reading a
message), a 6-field Zigbee2MQTT state object and a Tasmota telemetry object nested by sensor
(six readings a message each). 100 devices, messages 10 ms apart per device, reading times in
the past (as a backlog is)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

START = 1_700_000_000.0
DEVICES = 100


@dataclass(frozen=True)
class Kind:
    format: str
    topics: str
    per_message: int
    message: Callable[[int], tuple[str, bytes]]


def _reading(i: int) -> tuple[str, bytes]:
    ts = START + (i // DEVICES) * 0.01
    body = {"value": round(20 + (i % 37) * 0.1, 2), "ts": round(ts, 3), "unit": "C"}
    return f"sensors/s{i % DEVICES}", json.dumps(body).encode()


def _zigbee(i: int) -> tuple[str, bytes]:
    ts_ms = int((START + (i // DEVICES) * 0.01) * 1000)
    body = {"battery": "97.00", "humidity": round(40 + (i % 23) * 0.5, 2), "linkquality": 100 + i % 50,
            "pressure": round(1000 + (i % 31) * 0.3, 1), "temperature": round(20 + (i % 37) * 0.1, 2),
            "voltage": 2900 + i % 100, "last_seen": ts_ms}
    return f"zigbee2mqtt/sensor_{i % DEVICES}", json.dumps(body).encode()


def _tasmota(i: int) -> tuple[str, bytes]:
    local = datetime.fromtimestamp(START + (i // DEVICES) * 0.01).isoformat(timespec="seconds")
    am2301 = {"Temperature": round(20 + (i % 37) * 0.1, 1), "Humidity": round(40 + (i % 23) * 0.5, 1)}
    body = {"Time": local, "AM2301": am2301,
            "BME280": {"Temperature": round(21 + (i % 29) * 0.1, 1), "Humidity": 41.2,
                       "Pressure": round(1000 + (i % 31) * 0.3, 1)},
            "ESP32": {"Temperature": 45.6}, "PressureUnit": "hPa", "TempUnit": "C"}
    return f"tele/tasmota_{i % DEVICES}/SENSOR", json.dumps(body).encode()


KINDS = {
    "reading": Kind("reading", "sensors/#", 1, _reading),
    "zigbee2mqtt": Kind("zigbee2mqtt", "zigbee2mqtt/#", 6, _zigbee),
    "tasmota": Kind("tasmota", "tele/+/SENSOR", 6, _tasmota),
}
