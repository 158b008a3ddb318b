"""Running under systemd: the unit file, the notify protocol, and the Prometheus endpoint."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import AgentProcess, Broker, agent_config, free_port
from tests.mqtt_helpers import Publisher

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "configs" / "edge-agent.service"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_the_unit_file_verifies(tmp_path):
    # verify wants ExecStart's binary to exist; the installed path does not on a build machine
    unit = tmp_path / "edge-agent.service"
    unit.write_text(UNIT.read_text().replace("/opt/edge-agent/venv/bin/edge-agent", "/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID",
                 "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes",
                 "RestrictAddressFamilies=", "CapabilityBoundingSet=\n", "StateDirectory=edge-agent"):
        assert line in text, line


@pytest.mark.integration
def test_notify_messages_and_metrics_from_a_running_agent(tmp_path, broker: Broker, agents, monkeypatch):
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))
    port = free_port()
    config = agent_config(tmp_path, broker.url)
    config.write_text(config.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    agent = AgentProcess(config).start()
    agents.append(agent)

    publisher = Publisher(broker.port)
    publisher.readings([("t1", 1_700_000_000 + i * 0.1, 20.0) for i in range(100)])
    publisher.publish("sensors/t1", "oops").wait_for_publish(5)
    publisher.close()
    messages = []
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline and not any(m.startswith("WATCHDOG=1") for m in messages):
        with contextlib.suppress(TimeoutError):
            messages.append(listener.recv(4096).decode())
    assert messages[0].startswith("READY=1")
    assert any(m == "WATCHDOG=1" for m in messages)

    # the watchdog can beat before the readings are taken: wait for the counters, not for a time
    expected = ['edge_agent_dropped_total{reason="not_json"} 1',
                'edge_agent_source_accepted_total{source="local"} 100',
                'edge_agent_module_processed_total{module="win"} 100']
    deadline = time.monotonic() + 15
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = response.read().decode()
        if all(line in body for line in expected) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "edge_agent_up 1" in body
    for line in expected:
        assert line in body, line
    assert "edge_agent_backlog_records " in body
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
    assert missing.value.code == 404

    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0
    rest = []
    while True:
        try:
            rest.append(listener.recv(4096).decode())
        except TimeoutError:
            break
    assert "STOPPING=1" in rest
    listener.close()
    os.unlink(notify_path)


CLOUD_UNIT = ROOT / "configs" / "edge-cloud.service"


def test_the_cloud_unit_names_only_options_edge_cloud_serve_has():
    from cloud_sync.server.cli import main as edge_cloud

    serve = edge_cloud.commands["serve"]  # type: ignore[attr-defined]
    known = {opt for param in serve.params for opt in param.opts}
    exec_start = unit_keys(CLOUD_UNIT)["ExecStart"]
    assert exec_start.split()[:2] == ["/opt/edge-cloud/venv/bin/edge-cloud", "serve"]
    used = {word for word in exec_start.split() if word.startswith("--")}
    assert used and used <= known, used - known


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_the_cloud_unit_file_verifies(tmp_path):
    unit = tmp_path / "edge-cloud.service"
    unit.write_text(CLOUD_UNIT.read_text().replace("/opt/edge-cloud/venv/bin/edge-cloud", "/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def unit_keys(path: Path) -> dict[str, str]:
    """The unit's keys, with continued lines joined."""
    joined = path.read_text().replace("\\\n", " ")
    return {key: value.strip() for key, _, value in
            (line.partition("=") for line in joined.splitlines() if "=" in line and not line.startswith("#"))}
