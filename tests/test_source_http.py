"""The http source against a local HTTP server that answers, answers slowly, fails and sends
what is not JSON: exact readings, faults counted by reason, the next poll as usual."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agent.source_harness import run_source
from tests.source_helpers import run_agent, wait_for_sources

T0 = 1_700_000_000.0


class Endpoint(BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, list[tuple[int, bytes, float]]]] = {}

    def do_GET(self) -> None:  # the name http.server calls
        queue = self.answers.get(self.path, [])
        status, body, delay = queue.pop(0) if len(queue) > 1 else queue[0]
        time.sleep(delay)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def reading(sensor: str, value: float, n: int) -> dict[str, object]:
    return {"sensor": sensor, "value": value, "ts": T0 + n, "unit": "C"}


def test_readings_then_slow_failing_and_garbage_replies_are_counted(endpoint: str) -> None:
    Endpoint.answers = {"/r": [
        (200, json.dumps([reading("a", 1.5, 1), reading("b", 2.5, 1)]).encode(), 0),
        (200, b"[]", 0.6),  # too slow: a timeout
        (503, b"busy", 0),
        (200, b"<html>", 0),
        (200, json.dumps(reading("a", 3.5, 2)).encode(), 0),
    ]}
    run = run_source("http", {"url": f"{endpoint}/r", "interval": 0.1, "timeout": 0.3},
                     until=lambda run: len(run.records) >= 4, timeout=10)
    assert [(r.data["sensor"], r.data["value"], r.ts) for r in run.records[:3]] == [
        ("a", 1.5, T0 + 1), ("b", 2.5, T0 + 1), ("a", 3.5, T0 + 2)]
    assert run.records[0].data["unit"] == "C" and run.records[0].topic == "sensors/a"
    assert run.counters["errors.timeout"] == 1 and run.counters["errors.status_503"] == 1
    assert run.dropped == {"not_json": 1}
    assert run.health["connected"] is True


def test_a_reply_mapped_by_a_payload_table_and_a_server_that_is_not_there(endpoint: str) -> None:
    Endpoint.answers = {"/m": [(200, json.dumps(
        {"station": "roof", "readings": {"temp": 21.25, "rh": 40}, "time": "2023-11-14T22:13:20Z"}
    ).encode(), 0)]}
    config = {"url": f"{endpoint}/m", "interval": 0.1, "payload": {
        "fields": ["readings.*"], "sensor": "{item.station}/{name}", "ts": "time"}}
    run = run_source("http", config, until=lambda run: len(run.records) >= 2, timeout=5)
    assert [(r.topic, r.data, r.ts) for r in run.records[:2]] == [
        ("sensors/roof/temp", {"sensor": "roof/temp", "value": 21.25}, T0),
        ("sensors/roof/rh", {"sensor": "roof/rh", "value": 40}, T0),
    ]
    gone = run_source("http", {"url": "http://127.0.0.1:9/x", "interval": 0.05, "timeout": 0.2}, timeout=0.5)
    assert gone.counters["errors.connect"] >= 2 and gone.health["connected"] is False


@pytest.mark.integration
def test_http_readings_reach_window_summaries_while_another_endpoint_fails(
    endpoint: str, tmp_path: Path
) -> None:
    Endpoint.answers = {
        "/r": [*[(200, json.dumps([reading("h", n, n), reading("h", n + 0.5, n)]).encode(), 0)
                 for n in range(5)], (200, b"[]", 0)],
        "/bad": [(200, b"[]", 2.0), (500, b"oops", 0), (200, b"{not json", 0), (500, b"oops", 0)],
    }
    sources = f"""
    [[sources]]
    name = "api"
    type = "http"
    url = "{endpoint}/r"
    interval = "200ms"

    [[sources]]
    name = "bad"
    type = "http"
    url = "{endpoint}/bad"
    interval = "200ms"
    timeout = "500ms"
    """
    data = tmp_path / "data"

    def during(agent) -> None:
        wait_for_sources(data, lambda s: s["bad"].get("errors", {}).get("status_500", 0) >= 2
                         and s["bad"].get("connected") is False, "the failing endpoint counted")
        wait_for_sources(data, lambda s: s["api"].get("accepted") == 10
                         and s["api"].get("connected") is True, "the other endpoint's readings")

    windows, status = run_agent(tmp_path, sources, during)
    assert windows["h"]["count"] == 10 and windows["h"]["sum"] == sum(n + n + 0.5 for n in range(5))
    assert status["sources"]["api"]["errors"] == {} and status["sources"]["api"]["dropped"] == {}
    assert status["sources"]["bad"]["errors"]["timeout"] == 1
    assert status["sources"]["bad"]["dropped"] == {"not_json": 1}
    assert status["dropped"] == {"not_json": 1}


class Hostile:
    """A server that answers every request one way: a reply sent a byte every 0.2 s, or 300 MiB of
    JSON whitespace gzipped to 300 KB."""

    def __init__(self, mode: str) -> None:
        import socket
        import zlib

        if mode == "bomb":
            packer = zlib.compressobj(9, zlib.DEFLATED, 31)
            self.bomb = b"".join(packer.compress(b" " * (1 << 20)) for _ in range(300)) + packer.flush()
        self.mode = mode
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: Any) -> None:
        with conn:
            try:
                conn.recv(65536)
                head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                if self.mode == "bomb":
                    conn.sendall(f"{head}Content-Encoding: gzip\r\nContent-Length: {len(self.bomb)}\r\n\r\n"
                                 .encode() + self.bomb)
                    return
                conn.sendall(f"{head}Content-Length: 1000\r\n\r\n".encode())
                for _ in range(100):
                    conn.sendall(b" ")
                    time.sleep(0.2)
            except OSError:
                pass

    def close(self) -> None:
        self.server.close()


@pytest.mark.integration
def test_a_reply_dribbled_or_inflating_a_thousandfold_costs_a_timeout_or_a_drop_not_memory(
    endpoint: str, tmp_path: Path
) -> None:
    """Before, a reply sent a byte at a time held its poll for as long as the server liked (the
    timeout was per read), and 300 KB gzipped took the agent past 600 MB while it inflated."""
    Endpoint.answers = {"/r": [*[(200, json.dumps([reading("h", n, n)]).encode(), 0) for n in range(3)],
                               (200, b"[]", 0)]}
    dribble, bomb = Hostile("dribble"), Hostile("bomb")
    sources = f"""
    [[sources]]
    name = "api"
    type = "http"
    url = "{endpoint}/r"
    interval = "200ms"

    [[sources]]
    name = "dribble"
    type = "http"
    url = "{dribble.url}"
    interval = "200ms"
    timeout = "1s"

    [[sources]]
    name = "bomb"
    type = "http"
    url = "{bomb.url}"
    interval = "500ms"
    timeout = "5s"
    """
    data = tmp_path / "data"
    peak: list[int] = []

    def during(agent: Any) -> None:
        wait_for_sources(data, lambda s: s["dribble"].get("errors", {}).get("timeout", 0) >= 2
                         and s["bomb"].get("dropped", {}).get("line_too_long", 0) >= 2
                         and s["api"].get("accepted") == 3, "timeouts, drops and the good readings")
        status = Path(f"/proc/{agent.process.pid}/status").read_text()
        peak.append(int(status.split("VmHWM:")[1].split()[0]))

    try:
        windows, status = run_agent(tmp_path, sources, during)
    finally:
        dribble.close()
        bomb.close()
    assert windows["h"]["count"] == 3
    assert peak[0] < 150_000, f"the agent's peak memory: {peak[0] // 1024} MiB"
    assert set(status["sources"]["bomb"]["dropped"]) == {"line_too_long"}
