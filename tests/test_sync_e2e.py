"""Exactly once, end to end, through real parts: a "local" and a "cloud" Mosquitto, the agent and
the ingest as processes, the cloud store on SQLite. Every test ends with the same check: the
window summaries' counts at the cloud sum to the readings the agent accepted, and seqs 1..N are
stored once each."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import EDGE_AGENT, AgentProcess, Broker, IngestProcess, agent_config
from tests.sync_helpers import (
    Feed,
    HalfOpenProxy,
    agent_accepted,
    assert_exactly_once,
    cloud_section,
    sync_once,
    wait_for,
)

pytestmark = pytest.mark.integration

OUTAGE = 30.0
"""How long the cloud broker stays down (the issue's figure)."""


def start_ingest(tmp_path: Path, cloud: Broker, ingests: list[IngestProcess]) -> IngestProcess:
    ingest = IngestProcess(tmp_path, cloud.url, f"sqlite:///{tmp_path}/cloud.db").start()
    ingests.append(ingest)
    return ingest


def launch(config: Path, agents: list[AgentProcess]) -> AgentProcess:
    """Start the agent with a log file of its own (so "ready" is this run's)."""
    agent = AgentProcess(config)
    agent.log = config.with_name(f"agent-{len(agents)}.log")
    agents.append(agent.start())
    return agent


def finish(agent: AgentProcess, config: Path) -> int:
    """SIGTERM the agent (it flushes its open windows into the outbox), then drain what is left
    with ``edge-agent sync --once``; return what the agent accepted."""
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0
    result = sync_once(config)
    assert result.returncode == 0, result.stderr
    return agent_accepted(config)


def test_cloud_broker_killed_for_30_s_loses_and_repeats_nothing(
    tmp_path, broker: Broker, cloud_broker: Broker, agents, ingests
) -> None:
    ingest = start_ingest(tmp_path, cloud_broker, ingests)
    config = agent_config(tmp_path, broker.url, extra=cloud_section(cloud_broker.url))
    agent = launch(config, agents)
    feed = Feed(broker.port, rate=200)
    wait_for(lambda: ingest.api("/api/devices"), 15, "the first summaries at the cloud")
    cloud_broker.kill()  # no persistence: whatever it held is gone
    time.sleep(OUTAGE)
    cloud_broker.start()
    time.sleep(5)
    sent = feed.stop()
    accepted = finish(agent, config)
    assert accepted == sent
    assert_exactly_once(ingest, accepted)


def test_agent_killed_mid_drain_and_restarted(
    tmp_path, broker: Broker, cloud_broker: Broker, agents, ingests
) -> None:
    # A backlog first: the agent runs while no ingest is there, then stops cleanly.
    slow = cloud_section(cloud_broker.url, batch_records=20, backlog_rate_messages=10)
    config = agent_config(tmp_path, broker.url, extra=slow)
    agent = launch(config, agents)
    feed = Feed(broker.port, rate=400, sensors=40)
    time.sleep(6)
    sent = feed.stop()
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0
    accepted = agent_accepted(config)
    assert accepted == sent
    # The ingest comes; the agent drains slowly (10 messages of 20 records a second)...
    ingest = start_ingest(tmp_path, cloud_broker, ingests)
    agent = launch(config, agents)
    wait_for(
        lambda: ingest.api("/api/devices") and ingest.api("/api/devices")[0]["acked_seq"] > 40, 20, "draining"
    )
    agent.signal(signal.SIGKILL)  # ...and dies in the middle of it
    agent.wait(10)
    agent = launch(config, agents)
    assert finish(agent, config) == accepted
    rows = assert_exactly_once(ingest, accepted)
    assert len(rows) > 100  # it really was a drain of many messages


def test_ingest_killed_and_restarted(tmp_path, broker: Broker, cloud_broker: Broker, agents, ingests) -> None:
    ingest = start_ingest(tmp_path, cloud_broker, ingests)
    config = agent_config(tmp_path, broker.url, extra=cloud_section(cloud_broker.url))
    agent = launch(config, agents)
    feed = Feed(broker.port, rate=200)
    wait_for(lambda: ingest.api("/api/devices"), 15, "the first summaries at the cloud")
    ingest.kill()
    time.sleep(5)
    ingest = start_ingest(tmp_path, cloud_broker, ingests)
    time.sleep(3)
    status = subprocess.run([*EDGE_AGENT, "status", "-c", str(config)], capture_output=True, text=True)
    assert "sync        connected to " + cloud_broker.url in status.stdout, status.stdout
    sent = feed.stop()
    accepted = finish(agent, config)
    assert accepted == sent
    rows = assert_exactly_once(ingest, accepted)
    sync = json.loads(
        subprocess.run(
            [*EDGE_AGENT, "status", "-c", str(config), "--json"], capture_output=True, text=True, check=True
        ).stdout
    )["sync"]
    assert sync["connected"] is False and sync["counters"]["sent"] >= len(rows)


def test_half_open_link_is_detected_within_two_keepalives_and_sync_resumes(
    tmp_path, broker: Broker, cloud_broker: Broker, agents, ingests
) -> None:
    keepalive = 2.0
    ingest = start_ingest(tmp_path, cloud_broker, ingests)
    proxy = HalfOpenProxy(cloud_broker.port)
    try:
        extra = cloud_section(f"mqtt://127.0.0.1:{proxy.port}", keepalive=f"{keepalive}s")
        config = agent_config(tmp_path, broker.url, extra=extra)
        agent = launch(config, agents)
        feed = Feed(broker.port, rate=100)
        wait_for(lambda: ingest.api("/api/devices"), 15, "the first summaries at the cloud")
        time.sleep(1)
        reconnects = agent.output().count("reconnecting to")
        proxy.freeze()
        frozen_at = time.monotonic()
        agent.wait_for_log("reconnecting to", timeout=4 * keepalive, count=reconnects + 1)
        detected = time.monotonic() - frozen_at
        assert detected <= 2 * keepalive, f"the dead link was noticed after {detected:.1f} s"
        time.sleep(3)
        proxy.heal()
        sent = feed.stop()
        accepted = finish(agent, config)
        assert accepted == sent
        assert_exactly_once(ingest, accepted)
    finally:
        proxy.close()


BLOAT = f"""
[[modules]]
name = "win"
use = "window"
inputs = ["sensors/#"]
sync = true
[modules.with]
every = "1s"
stats = ["count", "mean"]

[[modules]]
name = "bloat"
use = "{Path(__file__).with_name("sync_bloat.py")}:Bloat"
inputs = ["sensors/#"]
sync = true
[modules.with]
every = 250
"""


@pytest.mark.parametrize("mqtt", ["5", "3.1.1"])
def test_small_message_size_limit_and_two_in_flight_lose_nothing_and_stick_nowhere(
    tmp_path, broker: Broker, agents, ingests, mqtt: str
) -> None:
    """The broker takes at most 4 kB a message and 2 in flight; the agent is not told (its
    max_message_bytes stays at the default), and a few records are 12 kB of random hex. MQTT 5:
    Mosquitto 2.0 hangs up on the oversized publish; 3.1.1: it drops it silently."""
    workdir = tmp_path / "cloud-broker"
    workdir.mkdir()
    cloud = Broker(workdir, "message_size_limit 4000\nmax_inflight_messages 2\n").start()
    try:
        ingest = start_ingest(tmp_path, cloud, ingests)
        extra = cloud_section(cloud.url, protocol=mqtt, resend_after="1s", batch_records=200)
        config = agent_config(tmp_path, broker.url, modules=BLOAT, extra=extra)
        agent = launch(config, agents)
        feed = Feed(broker.port, rate=250)
        time.sleep(4)
        sent = feed.stop()  # 1000 readings: 4 records of 12 kB among the summaries
        agent.signal(signal.SIGTERM)
        assert agent.wait(10) == 0
        result = sync_once(config, timeout=90)
        assert result.returncode == 0, result.stderr
        accepted = agent_accepted(config)
        assert accepted == sent
        rows = [r for r in _all_records(ingest)]
        assert sum(r["data"]["count"] for r in rows if r["stream"] == "win") == accepted
        assert not [r for r in rows if r["stream"] == "bloat"]
        [device] = ingest.api("/api/devices")
        assert device["dropped_announced"] == {"undeliverable": sent // 250}
        assert device["acked_seq"] == device["max_seq"] and device["gaps"] == 0
        assert len(rows) + sent // 250 == device["max_seq"]
        assert len({r["seq"] for r in rows}) == len(rows)
    finally:
        cloud.stop()


def _all_records(ingest: IngestProcess) -> list[dict]:
    from tests.sync_helpers import cloud_records

    return cloud_records(ingest)
