"""Helpers for the end-to-end sync tests: a steady reading feed, a TCP proxy that can go
half-open, and the checks on the cloud store."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from tests.conftest import EDGE_AGENT, IngestProcess


class Feed:
    """Publishes readings (QoS 1, timestamped now) to ``sensors/t<n>`` at ``rate`` per second
    from a thread, until ``stop``; ``sent`` counts those the broker acknowledged."""

    def __init__(self, port: int, rate: float = 200.0, sensors: int = 5) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"feed-{port}")
        self.client.max_inflight_messages_set(100)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.rate, self.sensors = rate, sensors
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        pending = []
        n = 0
        while not self._stop.is_set():
            due = int((time.monotonic() - started) * self.rate)
            while n < due:
                payload = json.dumps({"value": 20.0 + n % 13, "ts": time.time()})
                pending.append(self.client.publish(f"sensors/t{n % self.sensors}", payload, qos=1))
                n += 1
            time.sleep(0.01)
        for info in pending:
            info.wait_for_publish(30)
        self.sent = n

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(60)
        self.client.loop_stop()
        self.client.disconnect()
        return self.sent


class HalfOpenProxy:
    """A TCP proxy to ``127.0.0.1:upstream`` that can stop forwarding without closing anything:
    ``freeze`` leaves every open connection silent (and new ones accepted but never forwarded),
    like a NAT that lost its mapping; ``heal`` forwards new connections again."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._generation = 0
        self._frozen = False
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self._frozen = True
        self._generation += 1  # connections made so far stay silent for good

    def heal(self) -> None:
        self._frozen = False

    def close(self) -> None:
        self._closed = True
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            if self._frozen:
                continue  # accepted, never answered
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            self._sockets.append(server)
            generation = self._generation
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst, generation), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, generation: int) -> None:
        while not self._closed:
            if generation != self._generation:
                time.sleep(0.05)  # frozen: read nothing, send nothing, close nothing
                continue
            try:
                src.settimeout(0.05)
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if generation != self._generation:
                continue  # what arrived after the freeze goes nowhere
            if not data:
                for sock in (src, dst):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                return
            try:
                dst.sendall(data)
            except OSError:
                return


def cloud_section(url: str, **overrides: Any) -> str:
    """A ``[cloud]`` table for tests: short timers so faults show within seconds."""
    values: dict[str, Any] = {
        "url": url,
        "keepalive": "2s",
        "resend_after": "2s",
        "heartbeat": "2s",
        "reconnect_min": "200ms",
        "reconnect_max": "2s",
        "batch_delay": "200ms",
    }
    values.update(overrides)
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
    return f"\n[cloud]\n{lines}\n"


def sync_once(config: Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGE_AGENT, "sync", "-c", str(config), "--once", "--timeout", str(timeout)],
        capture_output=True,
        text=True,
        timeout=timeout + 30,
    )


def agent_accepted(config: Path) -> int:
    """Readings the agent accepted, from its own committed counters."""
    out = subprocess.run(
        [*EDGE_AGENT, "status", "-c", str(config), "--json"], capture_output=True, text=True, check=True
    )
    status = json.loads(out.stdout)
    return sum(int(source.get("accepted", 0)) for source in status["sources"].values())


def cloud_records(ingest: IngestProcess, device: str = "test-gw") -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    while True:
        after = rows[-1]["seq"] if rows else 0
        page = ingest.api(f"/api/devices/{device}/records?after_seq={after}&limit=10000")
        assert isinstance(page, list)
        if not page:
            return rows
        rows += page


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s")


def assert_exactly_once(ingest: IngestProcess, accepted: int, stream: str = "win") -> list[dict[str, Any]]:
    """Every summary stored once: counts sum to ``accepted``, seqs are 1..N without a hole or a
    repeat, and the ingest's own tally agrees."""
    rows = cloud_records(ingest)
    seqs = [r["seq"] for r in rows]
    assert seqs == list(range(1, len(seqs) + 1)), "a seq is missing or stored twice"
    total = sum(r["data"]["count"] for r in rows if r["stream"] == stream)
    assert total == accepted, f"the cloud's counts sum to {total}, the agent accepted {accepted}"
    [device] = [d for d in ingest.api("/api/devices") if d["device_id"] == "test-gw"]  # type: ignore[union-attr]
    assert device["records"] == len(rows) and device["acked_seq"] == len(rows) and device["gaps"] == 0
    return rows
