"""The link proxy between MQTT clients and a real Mosquitto: pass, delay, throttle, drop,
half-open, and healing."""

from __future__ import annotations

import queue
import socket
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from simulators.link_state import LinkMode
from simulators.link_thread import ThreadedLink
from tests.conftest import Broker

pytestmark = pytest.mark.integration


class Client:
    """A paho client on its own network thread that queues what it receives."""

    def __init__(self, port: int, name: str, subscribe: str | None = None,
                 keepalive: int = 60) -> None:
        self.received: queue.Queue[tuple[float, bytes]] = queue.Queue()
        self.disconnected = queue.Queue[object]()
        self.ready = queue.Queue[object]()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name)
        self.client.on_message = lambda c, u, m: self.received.put((time.monotonic(), m.payload))
        self.client.on_disconnect = lambda c, u, f, reason, p: self.disconnected.put(reason)
        self.client.on_subscribe = lambda *_: self.ready.put(True)
        self.client.on_connect = lambda c, *_: (
            c.subscribe(subscribe, qos=1) if subscribe else self.ready.put(True))
        self.client.connect("127.0.0.1", port, keepalive=keepalive)
        self.client.loop_start()
        self.ready.get(timeout=5)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos=qos).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def link(broker: Broker):
    with ThreadedLink(broker.port) as proxy:
        yield proxy


@pytest.fixture
def clients():
    opened: list[Client] = []
    yield opened
    for client in opened:
        client.close()


def pair(broker: Broker, link: ThreadedLink, clients: list[Client]) -> tuple[Client, Client]:
    """A subscriber behind the link and a publisher straight on the broker."""
    subscriber = Client(link.port, "behind-link", subscribe="t/#")
    publisher = Client(broker.port, "direct")
    clients.extend([subscriber, publisher])
    return subscriber, publisher


def test_pass_forwards_both_ways(broker: Broker, link: ThreadedLink, clients):
    subscriber, publisher = pair(broker, link, clients)
    publisher.publish("t/a", b"down")
    assert subscriber.received.get(timeout=5)[1] == b"down"
    subscriber.publish("t/b", b"up")  # through the link to the broker and back
    assert subscriber.received.get(timeout=5)[1] == b"up"
    status = link.status()
    assert status["mode"] == "pass" and status["open"] == 1
    assert status["bytes_up"] > 0 and status["bytes_down"] > 0


def test_delay_holds_each_chunk_back_and_keeps_order(broker: Broker, link: ThreadedLink,
                                                    clients):
    subscriber, publisher = pair(broker, link, clients)
    link.set_mode(LinkMode.DELAY, 300)
    sent = time.monotonic()
    for n in range(5):
        publisher.publish("t/a", b"%d" % n)
    got = [subscriber.received.get(timeout=5) for _ in range(5)]
    assert [payload for _, payload in got] == [b"0", b"1", b"2", b"3", b"4"]
    assert got[0][0] - sent >= 0.28
    link.set_mode("pass")
    sent = time.monotonic()
    publisher.publish("t/a", b"fast")
    assert subscriber.received.get(timeout=5)[0] - sent < 0.2


def test_throttle_limits_bytes_per_second(broker: Broker, link: ThreadedLink, clients):
    subscriber, publisher = pair(broker, link, clients)
    link.set_mode("throttle 100000")
    sent = time.monotonic()
    publisher.publish("t/big", b"x" * 200_000)
    arrived, payload = subscriber.received.get(timeout=10)
    assert len(payload) == 200_000
    assert 1.5 < arrived - sent < 4.0  # 2 s at 100 kB/s (a 5 kB burst allowance)


def test_drop_closes_connections_and_refuses_new_ones_until_healed(broker: Broker,
                                                                   link: ThreadedLink, clients):
    subscriber, _ = pair(broker, link, clients)
    subscriber.client.reconnect_delay_set(30, 30)  # stay down, so the test reconnects itself
    link.set_mode("drop")
    assert subscriber.disconnected.get(timeout=3) is not None
    with socket.create_connection(("127.0.0.1", link.port), timeout=2) as sock:
        sock.sendall(b"\x10\x00")  # anything: the proxy resets instead of forwarding
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            if sock.recv(10) == b"":  # a reset can also read as an orderly close
                raise ConnectionResetError
    assert link.status()["refused"] >= 1
    link.set_mode("pass")
    healed = Client(link.port, "after-drop", subscribe="t/#")
    clients.append(healed)
    Client(broker.port, "pub2").publish("t/x", b"again")
    assert healed.received.get(timeout=5)[1] == b"again"


def test_halfopen_stalls_reads_but_keeps_the_socket_open_then_heals(broker: Broker,
                                                                    link: ThreadedLink, clients):
    subscriber, publisher = pair(broker, link, clients)
    link.set_mode("halfopen")
    publisher.publish("t/a", b"held")
    with pytest.raises(queue.Empty):
        subscriber.received.get(timeout=1.0)
    assert subscriber.client.is_connected()  # nothing told the client the link is gone
    assert subscriber.disconnected.empty()
    assert link.status()["open"] == 1

    # A raw socket through the link: its reads time out rather than seeing a close.
    with socket.create_connection(("127.0.0.1", link.port), timeout=2) as sock:
        sock.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")  # CONNECT, no CONNACK
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(4)

    link.set_mode("pass")
    assert subscriber.received.get(timeout=5)[1] == b"held"
    publisher.publish("t/a", b"after")
    assert subscriber.received.get(timeout=5)[1] == b"after"
    assert subscriber.disconnected.empty()


def test_halfopen_long_enough_trips_the_clients_keepalive(broker: Broker, link: ThreadedLink,
                                                         clients):
    subscriber = Client(link.port, "short-keepalive", subscribe="t/#", keepalive=1)
    clients.append(subscriber)
    link.set_mode("halfopen")
    # paho gives up on a PINGRESP after about 1.5 keepalives.
    assert subscriber.disconnected.get(timeout=5) is not None
