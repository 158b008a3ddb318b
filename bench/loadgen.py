"""Load a broker faster than any system under test can drain it, and time that system from
outside. Shared by the benchmarks that compare receivers (ours, Node-RED, a naive agent).

The method, so that the publisher is never what is measured:

1. ``BenchBroker`` (bench/prefill.py): a Mosquitto of the benchmark's own, no queue limit.
2. The consumer connects once with a persistent session (clean session off, a fixed client
   id) and subscribes, then goes away. A consumer that is a process of its own can do this
   itself on a first start; ``create_session`` does it for one that cannot.
3. ``prefill(port, n)``: publish ``n`` readings at QoS 1; the broker queues them all for the
   session. The readings are bench/prefill.py's (100 sensors, readings 10 ms apart, so
   ~10,000 per second of reading time); this ``prefill`` sends them several times faster than
   ``bench.prefill.prefill`` (see its docstring), which matters for ``--quick``.
4. Start the consumer: it drains the backlog as fast as it can.

Timing from outside, for a consumer that cannot report its own rate:

* ``OutputWatcher`` subscribes to what the consumer emits (window summaries carrying
  ``count``) and keeps a curve of readings accounted for over time; ``rate()`` is the slope
  between 10 % and 90 % of the total, which leaves out start-up and the last windows' flush.
* ``time_to_ready`` pings a topic the consumer echoes until the first echo: ready means
  connected, subscribed and able to publish, not just started.

    with BenchBroker(workdir, cpu=0) as broker:
        create_session(broker.port, "sut", ["sensors/#"])
        prefill(broker.port, 200_000)
        with OutputWatcher(broker.port, "out/#") as watcher:
            start_the_consumer()                 # client id "sut", clean session off
            watcher.wait_total(200_000, timeout=120)
            print(watcher.rate())
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.prefill import BenchBroker, readings
from simulators.publisher import WindowedPublisher

__all__ = ["BenchBroker", "OutputWatcher", "create_session", "prefill", "readings",
           "time_to_ready"]


def prefill(port: int, count: int, qos: int = 1, window: int = 1000) -> float:
    """Publish ``readings(count)`` at ``qos`` and return once the broker acknowledged them all;
    the seconds it took.

    No network thread and no paho in-flight cap (``simulators/publisher.py``): with a cap, paho
    rescans every unacknowledged message on each PUBACK, which made a 1000-message window
    about four times slower here.
    """
    publisher = WindowedPublisher("127.0.0.1", port, qos, window,
                                  client_id=f"bench-prefill-{port}")
    started = time.perf_counter()
    publisher.connect()
    for topic, payload in readings(count):
        publisher.publish(topic, payload, None)
    if not publisher.flush(timeout=120):
        raise TimeoutError(f"the broker did not acknowledge {publisher.inflight} readings")
    elapsed = time.perf_counter() - started
    publisher.close()
    return elapsed


def create_session(port: int, client_id: str, topics: Sequence[str] = ("sensors/#",),
                   qos: int = 1) -> None:
    """Leave a persistent session for ``client_id`` subscribed to ``topics`` on the broker."""
    client = _client(client_id, clean_session=False)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.subscribe([(topic, qos) for topic in topics])
        if not subscribed.wait(10):
            raise TimeoutError(f"no SUBACK for {client_id} on port {port}")
    finally:
        client.disconnect()
        client.loop_stop()


class OutputWatcher:
    """Sums the ``count`` field of every JSON message on ``topic``, with arrival times."""

    def __init__(self, port: int, topic: str, field: str = "count") -> None:
        self.points: list[tuple[float, int]] = []  # (arrival, running total)
        self.total = 0
        self.messages = 0
        self.last: dict[str, Any] | None = None  # the last message, decoded
        self._field = field
        self._changed = threading.Condition()
        # An id of its own: two watchers with one id would keep kicking each other off.
        self._client = _client(f"bench-watcher-{port}-{id(self):x}", clean_session=True)
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        self._client.subscribe(topic, qos=1)
        if not subscribed.wait(10):
            raise TimeoutError(f"no SUBACK for the watcher on port {port}")

    def wait_total(self, total: int, timeout: float) -> bool:
        """Wait until ``total`` is accounted for; whether it was in time."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.total < total:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))
        return True

    def rate(self, low: float = 0.1, high: float = 0.9) -> float:
        """Readings per second between ``low`` and ``high`` shares of the total seen."""
        with self._changed:
            points = list(self.points)
        if len(points) < 2:
            return 0.0
        total = points[-1][1]
        first = next(p for p in points if p[1] >= low * total)
        last = next(p for p in points if p[1] >= high * total)
        if last[0] <= first[0]:
            return 0.0
        return (last[1] - first[1]) / (last[0] - first[0])

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> OutputWatcher:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(message.payload)
            count = int(body[self._field])
        except (ValueError, KeyError, TypeError):
            return
        now = time.monotonic()
        with self._changed:
            self.last = body
            self.total += count
            self.messages += 1
            self.points.append((now, self.total))
            self._changed.notify_all()


def time_to_ready(port: int, ping: str, pong: str, started: float, timeout: float = 30.0,
                  every: float = 0.01) -> float:
    """Seconds from ``started`` (a ``time.monotonic()`` taken when the consumer was launched)
    to the first message on ``pong``, while ``ping`` is published every ``every`` seconds."""
    client = _client(f"bench-pinger-{port}", clean_session=True)
    answered = threading.Event()
    arrival: list[float] = []

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if not arrival:
            arrival.append(time.monotonic())
        answered.set()

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(pong, qos=0)
    try:
        deadline = started + timeout
        while not answered.wait(every):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer on {pong} within {timeout} s")
            client.publish(ping, b"ping", qos=0)
        return arrival[0] - started
    finally:
        client.disconnect()
        client.loop_stop()


def _client(client_id: str, clean_session: bool) -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                       clean_session=clean_session, protocol=mqtt.MQTTv311)
