"""Live updates over HTTP from a real ``edge-cloud serve``: a status through a real Mosquitto
becomes a server-sent event naming the device, and SIGTERM ends open streams and the server."""

from __future__ import annotations

import http.client
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from cloud_sync import protocol
from tests.conftest import Broker, IngestProcess

pytestmark = pytest.mark.integration


def publish_status(port: int, device_id: str, **doc: object) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-{device_id}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    payload = protocol.encode_status({"online": True, **doc})
    topic = protocol.topic("edge", device_id, "status")
    client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def read_event(response: http.client.HTTPResponse, timeout: float) -> bytes:
    """The next event (up to its blank line), skipping comments (pings)."""
    deadline = time.monotonic() + timeout
    lines: list[bytes] = []
    while time.monotonic() < deadline:
        line = response.readline()
        if line.startswith(b":"):
            continue
        if line in (b"\n", b""):
            if lines or line == b"":
                return b"".join(lines)
            continue
        lines.append(line)
    raise TimeoutError("no event")


def test_a_status_becomes_an_event_and_sigterm_ends_the_stream(
    tmp_path: Path, cloud_broker: Broker, ingests: list[IngestProcess]
) -> None:
    ingest = IngestProcess(tmp_path, cloud_broker.url, f"sqlite:///{tmp_path}/cloud.db")
    ingests.append(ingest.start())
    conn = http.client.HTTPConnection("127.0.0.1", ingest.http_port, timeout=10)
    conn.request("GET", "/api/events", headers={"Authorization": f"Bearer {ingest.token}"})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    assert read_event(response, 5) == b"retry: 2000\n"

    started = time.monotonic()
    publish_status(cloud_broker.port, "gw-live", backlog={"rows": 3})
    event = read_event(response, 5)
    assert event.startswith(b"event: changed\ndata: ") and b'"gw-live"' in event
    assert time.monotonic() - started < 2.0

    started = time.monotonic()
    assert ingest.stop() == 0
    assert time.monotonic() - started < 8.0
    assert response.read() == b""  # the stream ended with the server
