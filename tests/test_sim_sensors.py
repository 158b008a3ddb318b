"""``edge-sim sensors`` through a real Mosquitto: what it reports is what arrived."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulators.sensor_set import SensorOptions
from simulators.sensors import run_sensors
from tests.conftest import Broker

pytestmark = pytest.mark.integration

TS = re.compile(rb"\d{9,}\.\d+")  # a send time inside a payload


class Collector:
    """Subscribes to ``sensors/#`` at QoS 1 and keeps every message with its arrival time."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[float, str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"collector-{port}")
        self.client.on_connect = lambda c, *_: c.subscribe("sensors/#", qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(5)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((time.monotonic(), msg.topic, msg.payload))

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # anything beyond ``count`` would show up now

    def per_topic(self) -> Counter[str]:
        return Counter(topic for _, topic, _ in self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def collector(broker: Broker):
    sink = Collector(broker.port)
    yield sink
    sink.close()


def test_cli_report_matches_what_a_subscriber_received(broker: Broker, collector: Collector):
    out = subprocess.run(
        [sys.executable, "-m", "simulators", "sensors", "--broker", broker.url, "--sensors", "12",
         "--rate", "40", "--duration", "2", "--seed", "11", "--malformed", "0.1", "--json"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    report = json.loads(out.stdout)
    collector.wait_for(report["sent"])
    received = collector.per_topic()
    assert report["scheduled"] == 12 * 80
    assert report["sent"] == report["scheduled"] - report["skipped_dropout"] > 0
    assert report["not_sent"] == 0
    assert {f"sensors/{s}": n for s, n in report["per_sensor"].items() if n} == dict(received)
    assert report["valid"] + report["malformed"] == report["sent"]
    assert sum(report["malformed_by_reason"].values()) == report["malformed"]
    assert sum(report["malformed_per_sensor"].values()) == report["malformed"]


def test_the_same_seed_sends_the_same_readings(broker: Broker, collector: Collector):
    options = SensorOptions(port=broker.port, sensors=5, rate=50, duration=1.0, seed=3,
                            malformed=0.2)
    first = run_sensors(options)
    collector.wait_for(first.sent)
    first_payloads = _without_ts(collector)
    collector.messages.clear()
    second = run_sensors(options)
    collector.wait_for(second.sent)
    assert (first.per_sensor, first.malformed_by_reason) == (
        second.per_sensor, second.malformed_by_reason)
    assert _without_ts(collector) == first_payloads
    collector.messages.clear()
    other = run_sensors(SensorOptions(port=broker.port, sensors=5, rate=50, duration=1.0, seed=4,
                                      malformed=0.2))
    collector.wait_for(other.sent)
    assert _without_ts(collector) != first_payloads


def test_the_requested_rate_is_kept_and_spread_over_the_run(broker: Broker,
                                                            collector: Collector):
    options = SensorOptions(port=broker.port, sensors=20, rate=100, duration=2.0, seed=1,
                            faults=False)
    report = run_sensors(options)
    collector.wait_for(report.sent)
    assert report.sent == report.scheduled == 4000
    assert report.rate_achieved == pytest.approx(2000, rel=0.05)
    arrivals = sorted(at for at, _, _ in collector.messages)
    span = arrivals[-1] - arrivals[0]
    assert 1.8 < span < 3.0
    # Spread over the run, not sent in a burst: each quarter holds about a quarter (the bounds
    # are loose because a busy machine delays some arrivals into the next quarter).
    quarters = Counter(min(3, int(4 * (at - arrivals[0]) / span)) for at in arrivals)
    assert all(600 <= quarters[q] <= 1400 for q in range(4)), quarters


def test_several_processes_share_the_sensors_and_the_report(broker: Broker,
                                                            collector: Collector):
    options = SensorOptions(port=broker.port, sensors=8, rate=50, duration=1.0, seed=9,
                            malformed=0.1, processes=2)
    report = run_sensors(options)
    collector.wait_for(report.sent)
    single = SensorOptions(port=broker.port, sensors=8, rate=50, duration=1.0, seed=9,
                           malformed=0.1)
    assert {f"sensors/{s}": n for s, n in report.per_sensor.items() if n} == dict(
        collector.per_topic())
    first = _without_ts(collector)
    collector.messages.clear()
    again = run_sensors(single)
    collector.wait_for(again.sent)
    assert _without_ts(collector) == first
    assert again.per_sensor == report.per_sensor and again.malformed == report.malformed


def test_an_unreachable_broker_is_a_clear_error():
    from tests.conftest import free_port

    out = subprocess.run(
        [sys.executable, "-m", "simulators", "sensors", "--broker",
         f"mqtt://127.0.0.1:{free_port()}", "--duration", "1"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 1
    assert "cannot reach the broker" in out.stderr


def _without_ts(collector: Collector) -> dict[str, list[bytes]]:
    """Each topic's payloads in order, with the send times blanked."""
    by_topic: dict[str, list[bytes]] = defaultdict(list)
    for _, topic, payload in collector.messages:
        by_topic[topic].append(TS.sub(b"T", payload))
    return dict(by_topic)
