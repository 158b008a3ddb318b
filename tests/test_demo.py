"""The one-command demo starts everything, syncs all three gateways, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.demo import Children, _bin, _broker_command, _console_answers
from simulators.listeners import free_port, owns_listener

pytestmark = pytest.mark.integration


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_the_demo_syncs_every_gateway_and_ctrl_c_stops_everything(tmp_path):
    keep = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "simulators", "demo", "--keep", str(keep), "--cut-after", "4",
         "--cut-for", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 120  # a first window closes after 10 s; a busy machine is slower
        synced: dict[str, int] = {}
        while time.monotonic() < deadline and len(synced) < 3:
            time.sleep(1)
            assert demo.poll() is None, demo.stdout.read() if demo.stdout else ""
            if (keep / "cloud.db").exists():
                with sqlite3.connect(keep / "cloud.db") as db, contextlib.suppress(sqlite3.OperationalError):
                    synced = dict(db.execute("SELECT device_id, count(*) FROM records GROUP BY device_id"))
        assert set(synced) == {"gw-a", "gw-b", "gw-c"}
        children = children_of(demo.pid)
        assert len(children) >= 8  # two brokers, the cloud, three agents, three sensor feeds
    finally:
        demo.send_signal(signal.SIGINT)
        output, _ = demo.communicate(timeout=30)
    assert demo.returncode == 0, output
    assert "sign in as  demo / " in output and "link of gw-c cut" in output
    assert "nothing left running" in output
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in Path(f"/proc/{pid}/status").read_text()


# -- the console's port: its own listener, or a clear error naming the port -----------------------


class _Impostor(http.server.BaseHTTPRequestHandler):
    """Answers every GET as a console's /healthz would: content alone proves nothing."""

    def do_GET(self) -> None:
        body = json.dumps({"ok": True, "ingest_connected": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def held_port(kind: str) -> Iterator[int]:
    """A port another program listens on: a bare TCP listener, or an HTTP server."""
    if kind == "tcp":
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            yield sock.getsockname()[1]
        return
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Impostor)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("kind", ["tcp", "http"])
def test_a_console_port_held_by_another_program_stops_the_demo_naming_the_port(tmp_path, kind):
    keep = tmp_path / "demo"
    with held_port(kind) as port:
        demo = subprocess.run(
            [sys.executable, "-m", "simulators", "demo", "--keep", str(keep), "--http-port", str(port)],
            capture_output=True, text=True, timeout=120,
        )
    assert demo.returncode == 1, demo.stdout + demo.stderr
    assert "Console:" not in demo.stdout  # the other program is never offered as the console
    assert demo.stderr.strip().splitlines()[-1] == (
        f"demo failed: edge-cloud cannot listen on 127.0.0.1:{port}: another program holds the address"
    )
    for name in ("local", "cloud"):  # the brokers it had started are stopped
        broker_port = int((keep / f"{name}-mosquitto.conf").read_text().split()[1])
        assert not _answers(broker_port), f"the {name} broker still listens on {broker_port}"


@pytest.mark.parametrize("name", ["local-broker", "edge-cloud"])
def test_a_chosen_port_taken_before_the_child_binds_it_is_given_up_for_another(tmp_path, capsys, name):
    def console(port: int) -> list[str]:  # no broker: the console serves all the same
        return [_bin("edge-cloud"), "serve", "--broker", "mqtt://127.0.0.1:1",
                "--db", f"sqlite:///{tmp_path / 'cloud.db'}", "--http", f"127.0.0.1:{port}"]

    if name == "local-broker":
        command, ready = _broker_command(tmp_path, "local"), None
    else:
        command, ready = console, _console_answers
    children = Children(tmp_path)
    with held_port("tcp") as taken:
        offered = iter([taken])
        try:
            port = asyncio.run(children.start_listening(
                name, command, timeout=60, ready=ready, choose=lambda: next(offered, None) or free_port(),
            ))
            assert port != taken
            [(_, process)] = children.processes  # the failed start is gone; one child runs
            assert process.poll() is None and owns_listener(process.pid, port)
        finally:
            children.stop_all()
    assert f"{name}: port {taken} was taken by another program; trying another" in capsys.readouterr().out


def test_a_listener_is_known_by_its_owner():
    with socket.socket() as listening, socket.socket() as bound:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        bound.bind(("127.0.0.1", 0))  # bound, not listening
        port, idle = listening.getsockname()[1], bound.getsockname()[1]
        assert owns_listener(os.getpid(), port)
        assert not owns_listener(os.getpid(), idle)
        assert not owns_listener(os.getppid(), port)
