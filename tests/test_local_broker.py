"""The local broker with the shipped settings (configs/mosquitto-local.conf) takes a burst of
50,000 QoS 1 readings published while the agent is stopped, and the agent counts every one;
with Mosquitto's defaults the same burst loses readings, and ``edge-agent status`` says so."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from agent.outbox.store import Outbox
from tests.conftest import EDGE_AGENT, MOSQUITTO, AgentProcess, Broker, agent_config
from tests.mqtt_helpers import Publisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

ROOT = Path(__file__).resolve().parent.parent
BURST = 50_000
HOUR_WINDOWS = """
[[modules]]
name = "win"
use = "window"
inputs = ["sensors/#"]
sync = true
[modules.with]
every = "1h"
stats = ["count"]
"""


def local_broker(tmp_path: Path, shipped: bool) -> Broker:
    """Mosquitto as Debian runs it: its own settings, then conf.d/ (with the shipped drop-in or
    nothing)."""
    broker = Broker(tmp_path)
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    if shipped:
        shutil.copy(ROOT / "configs/mosquitto-local.conf", conf_d / "edge-agent.conf")
    store = tmp_path / "mosquitto-store"
    store.mkdir(mode=0o777)
    store.chmod(0o777)  # Mosquitto started as root runs as the mosquitto user
    broker.config.write_text(
        f"listener {broker.port} 127.0.0.1\nallow_anonymous true\n"
        f"persistence_location {store}/\ninclude_dir {conf_d}\n"
    )
    return broker.start()


def status(config: Path) -> tuple[dict[str, Any], str]:
    as_json = subprocess.run([*EDGE_AGENT, "status", "-c", str(config), "--json"],
                             capture_output=True, text=True, timeout=60, check=True)
    text = subprocess.run([*EDGE_AGENT, "status", "-c", str(config)],
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(as_json.stdout), text.stdout


def status_once_the_broker_counted(config: Path) -> tuple[dict[str, Any], str]:
    """``status`` once the broker's $SYS (updated every 10 s) covers the whole burst."""
    time.sleep(11)  # an update during the burst would show part of the drops
    deadline = time.monotonic() + 15
    while True:
        state, text = status(config)
        if state["local_brokers"]["local"]["dropped"] or time.monotonic() > deadline:
            return state, text
        time.sleep(1)


def burst_while_stopped(
    tmp_path: Path, broker: Broker, agents: list[AgentProcess]
) -> tuple[Path, tuple[dict[str, Any], str]]:
    """Start the agent (its persistent session subscribes), stop it, publish the burst, take
    ``status`` while it is stopped, start it again and stop it once the burst is read."""
    config = agent_config(tmp_path, broker.url, modules=HOUR_WINDOWS)
    agent = AgentProcess(config).start()
    agents.append(agent)
    agent.wait_for_log("session new")
    agent.signal(signal.SIGTERM)
    assert agent.wait(15) == 0

    publisher = Publisher(broker.port)
    sent = publisher.readings(
        (f"t{i % 20}", 1_700_000_000.0 + i * 0.001, float(i % 100)) for i in range(BURST)
    )
    publisher.close()
    assert sent == BURST
    while_stopped = status_once_the_broker_counted(config)

    again = AgentProcess(config).start()
    agents.append(again)
    again.wait_for_log("session resumed")
    deadline, last = time.monotonic() + 120, -1
    while time.monotonic() < deadline:  # until the queue is drained: no change for 3 s
        time.sleep(3)
        accepted = status(config)[0]["sources"]["local"].get("accepted", 0)
        if accepted == last:
            break
        last = accepted
    again.signal(signal.SIGTERM)
    assert again.wait(15) == 0
    return config, while_stopped


def counted(tmp_path: Path) -> int:
    box = Outbox.open_readonly(tmp_path / "data")
    try:
        return sum(record.data["count"] for record in box.unsent())
    finally:
        box.close()


@pytest.fixture
def mosquitto() -> None:
    if not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto is not installed: scripts/ensure-deps.sh installs it")


def test_the_shipped_settings_keep_every_reading_of_a_burst(tmp_path, mosquitto, agents):
    broker = local_broker(tmp_path, shipped=True)
    try:
        config, (stopped, _) = burst_while_stopped(tmp_path, broker, agents)
        assert counted(tmp_path) == BURST
        state, text = status(config)
        for report in (stopped, state):
            assert not report["local_brokers"]["local"]["dropped"]
            assert not report["local_brokers"]["local"]["dropped_per_min_15"]
            assert not report["warnings"]
        assert "warning" not in text
    finally:
        broker.stop()


def test_mosquitto_defaults_lose_part_of_the_burst_and_status_says_so(tmp_path, mosquitto, agents):
    broker = local_broker(tmp_path, shipped=False)
    try:
        config, (stopped, stopped_text) = burst_while_stopped(tmp_path, broker, agents)
        kept = counted(tmp_path)
        dropped = stopped["local_brokers"]["local"]["dropped"]
        print(f"with Mosquitto's defaults: {kept} counted, {dropped} dropped")
        assert 0 < kept < BURST
        assert kept + dropped == BURST  # every reading is either counted or counted as dropped
        assert (
            f"warning     the broker of source local ({broker.url}) dropped {dropped} publishes since"
            " it started" in stopped_text
        )
        assert "max_queued_messages" in stopped_text
        # later, once the total has expired from $SYS, the 15-minute average still says it
        state, text = status(config)
        assert state["local_brokers"]["local"]["dropped_per_min_15"] > 0
        assert f"warning     the broker of source local ({broker.url})" in text
    finally:
        broker.stop()
