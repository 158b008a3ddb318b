"""The agent's own hardening, as a process: the files it creates are its user's alone, and a
config's expressions cannot exhaust the parser's stack."""

from __future__ import annotations

import os
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.conftest import EDGE_AGENT, AgentProcess
from tests.sync_helpers import wait_for

pytestmark = pytest.mark.integration


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_daemon_creates_its_directory_700_and_its_files_600(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    os.umask(0o022)  # the usual umask outside systemd; the agent inherits it
    data = tmp_path / "data"
    data.mkdir(mode=0o755)  # an existing folder others may read: closed at start
    config = tmp_path / "agent.toml"
    config.write_text(textwrap.dedent(f"""
        device_id = "gw"
        data_dir = "{data}"
        [[sources]]
        name = "sim"
        type = "simulator"
        rate = 20
        [[modules]]
        name = "win"
        use = "window"
        inputs = ["sensors/#"]
        sync = true
        [modules.with]
        every = "200ms"
        """))
    agents.append(AgentProcess(config).start())
    wait_for(lambda: (data / "outbox.db-wal").exists(), 10, "the outbox's journal")
    assert _mode(data) == 0o700
    created = [path for path in data.rglob("*") if path.is_file()]
    assert created, "the agent wrote nothing"
    assert {path.name: _mode(path) for path in created} == {path.name: 0o600 for path in created}


def test_an_expression_nested_thousands_deep_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    where = "(" * 3000 + "value > 1" + ")" * 3000
    config.write_text(textwrap.dedent(f"""
        device_id = "gw"
        data_dir = "{tmp_path / 'data'}"
        [[modules]]
        name = "t"
        use = "transform"
        inputs = ["sensors/#"]
        [modules.with]
        where = "{where}"
        [[modules]]
        name = "u"
        use = "transform"
        inputs = ["sensors/#"]
        [modules.with]
        where = "{'not ' * 3000}true"
        """))
    out = subprocess.run([*EDGE_AGENT, "check", "-c", str(config)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "RecursionError" not in out.stderr
    assert "modules[0](t).with.where" in out.stderr and "modules[1](u).with.where" in out.stderr, out.stderr


class HostileBroker:
    """A TCP server speaking just enough MQTT to be subscribed to, then misbehaving: it declares
    a 256 MB SUBACK, or dribbles a PUBLISH one byte a second."""

    def __init__(self, mode: str) -> None:
        import socket
        import threading

        self.mode = mode
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import time

        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                try:
                    conn.recv(4096)  # CONNECT
                    conn.sendall(b"\x20\x02\x00\x00")
                    conn.recv(4096)  # SUBSCRIBE
                    if self.mode == "huge":
                        conn.sendall(b"\x90\xff\xff\xff\x7f" + b"\x00" * 65536)
                        conn.recv(1)
                        continue
                    conn.sendall(b"\x90\x03\x00\x01\x01")
                    conn.sendall(b"\x30\xe8\x07")  # a PUBLISH of 1,000 bytes, then a byte a second
                    for _ in range(60):
                        conn.sendall(b"x")
                        time.sleep(1)
                except OSError:
                    continue

    def close(self) -> None:
        self.server.close()


@pytest.mark.parametrize(("mode", "expected"), [
    ("huge", "a control packet (0x90) of 268435455 bytes"),
    ("dribble", "a packet from the broker took over"),
])
def test_the_local_source_drops_a_broker_that_declares_giants_or_dribbles(
    tmp_path: Path, agents: list[AgentProcess], mode: str, expected: str
) -> None:
    hostile = HostileBroker(mode)
    config = tmp_path / "agent.toml"
    config.write_text(textwrap.dedent(f"""
        device_id = "gw"
        data_dir = "{tmp_path / 'data'}"
        [[sources]]
        name = "local"
        type = "mqtt"
        url = "mqtt://127.0.0.1:{hostile.port}"
        keepalive = "2s"
        [[modules]]
        name = "win"
        use = "window"
        inputs = ["sensors/#"]
        """))
    agent = AgentProcess(config)
    agents.append(agent)
    try:
        with agent.log.open("ab") as log:
            agent.process = subprocess.Popen([*EDGE_AGENT, "run", "-c", str(config)], stdout=log, stderr=log,
                                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
        agent.wait_for_log(expected, timeout=20)
        assert agent.process.poll() is None
        peak = Path(f"/proc/{agent.process.pid}/status").read_text().split("VmHWM:")[1].split()[0]
        assert int(peak) < 150_000, f"the agent's peak memory: {int(peak) // 1024} MiB"
    finally:
        hostile.close()
