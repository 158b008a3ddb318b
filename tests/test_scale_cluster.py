"""Past one machine: a broker node killed (SIGKILL) mid-drain and brought back, with devices
spread over the nodes and two ingest workers on PostgreSQL; afterwards every device's seqs are
in the store exactly once. On a 3-node NATS cluster (workers sharing a JetStream consumer), on
RabbitMQ's MQTT plugin (no ``$share/``: the unshared fallback) and on Mosquitto (``$share/``, with
a worker added and one removed while the devices send). Workers also join and one is killed while
devices send on NATS, where they share a JetStream consumer.

Marked ``scale``: about a minute each (RabbitMQ's start takes 15 s of it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers import RABBITMQ_SERVER, NatsCluster, RabbitNode
from tests.conftest import EDGE_AGENT, AgentProcess, Broker, IngestProcess, agent_config
from tests.scale_helpers import assert_every_seq_once, run_scenario, start_fleet, start_worker
from tests.sync_helpers import Feed, assert_exactly_once, cloud_section, wait_for
from tests.test_sync_e2e import finish, launch

pytestmark = [pytest.mark.integration, pytest.mark.scale, pytest.mark.timeout(300)]

DURATION = 20.0


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    if not shutil.which("nats-server"):
        pytest.fail("nats-server is not installed: apt-get install nats-server (.ci/run does it)")
    cluster = NatsCluster(tmp_path / "nats").start()
    yield cluster
    cluster.stop()


@pytest.fixture
def rabbit(tmp_path: Path) -> Iterator[RabbitNode]:
    if not Path(RABBITMQ_SERVER).exists():
        pytest.fail("rabbitmq-server is not installed: apt-get install rabbitmq-server (.ci/run does it)")
    node = RabbitNode(tmp_path / "rabbit").start()
    yield node
    node.stop()


def stats(worker: IngestProcess) -> dict[str, object]:
    with urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{worker.http_port}/api/stats", headers={"Authorization": f"Bearer {worker.token}"},
    ), timeout=10) as response:
        return dict(json.loads(response.read())["ingest"])


def test_nats_node_killed_mid_drain_two_jetstream_workers(
    tmp_path: Path, nats_cluster: NatsCluster, pg_url: str, ingests: list[IngestProcess],
) -> None:
    nodes = nats_cluster.nodes
    js = ["--share-group", "ingest", "--jetstream", nats_cluster.nats_urls]
    ingests += [start_worker(tmp_path, nodes[0].url, pg_url, "w1", *js),
                start_worker(tmp_path, nodes[1].url, pg_url, "w2", *js)]
    fleets = [start_fleet(node.url, f"nats{i}", devices=15, duration=DURATION)
              for i, node in enumerate(nodes)]
    victim = nodes[1]  # devices and worker 2's MQTT connection on it

    def kill_once_its_devices_are_on() -> None:  # a busy machine may start them late
        wait_for(lambda: len(_listed(ingests[0], "nats1-")) == 15, 60, "the devices on the node to kill")
        victim.kill()

    reports = run_scenario(fleets, [(6.0, kill_once_its_devices_are_on), (12.0, victim.start)], timeout=150)
    assert reports[1]["connects"] > reports[1]["devices"], "the devices on the killed node did not notice"
    assert_every_seq_once(pg_url, fleets, reports)
    for worker in ingests:
        health = stats(worker)
        assert health["sharing"]["mode"] == "jetstream"  # type: ignore[index]
        assert health["broker_features"]["shared_subscriptions"] is False  # type: ignore[index]
    fed = [stats(w)["jetstream"]["messages"] for w in ingests]  # type: ignore[index]
    assert all(count > 0 for count in fed), f"one worker got no data: {fed}"


def _listed(worker: IngestProcess, prefix: str) -> list[str]:
    devices = worker.api("/api/devices")
    assert isinstance(devices, list)
    return [d["device_id"] for d in devices if d["device_id"].startswith(prefix)]


def test_jetstream_workers_join_and_one_is_killed_while_devices_send(
    tmp_path: Path, pg_url: str, ingests: list[IngestProcess],
) -> None:
    """Workers pulling from the JetStream consumer come and go while the devices send: one at
    first, a second joins, the first is killed (SIGKILL: what it had pulled but not committed is
    gone from the stream, so the devices send it again) and comes back under its name."""
    if not shutil.which("nats-server"):
        pytest.fail("nats-server is not installed: apt-get install nats-server (.ci/run does it)")
    cluster = NatsCluster(tmp_path / "nats", size=1).start()
    try:
        node = cluster.nodes[0]
        js = ["--share-group", "ingest", "--jetstream", cluster.nats_urls]
        ingests.append(start_worker(tmp_path, node.url, pg_url, "w1", *js))
        fleets = [start_fleet(node.url, f"jsq{i}", devices=15, duration=DURATION) for i in range(2)]

        def add_second() -> None:
            ingests.append(start_worker(tmp_path, node.url, pg_url, "w2", *js))

        def kill_first() -> None:
            wait_for(lambda: stats(ingests[0])["jetstream"]["messages"] > 0,  # type: ignore[index]
                     60, "data through the first worker")
            ingests[0].kill()

        def bring_back_first() -> None:
            ingests.append(start_worker(tmp_path, node.url, pg_url, "w1", *js))

        reports = run_scenario(fleets, [(3.0, add_second), (8.0, kill_first), (13.0, bring_back_first)],
                               timeout=150)
        assert_every_seq_once(pg_url, fleets, reports)
        for worker in ingests[1:]:
            health = stats(worker)
            assert health["sharing"]["mode"] == "jetstream", health  # type: ignore[index]
            assert health["jetstream"]["messages"] > 0, f"a worker got no data: {health}"  # type: ignore[index]
    finally:
        for worker in ingests:
            worker.kill()
        cluster.stop()


def test_rabbitmq_killed_mid_drain_two_unshared_workers(
    tmp_path: Path, rabbit: RabbitNode, pg_url: str, ingests: list[IngestProcess],
) -> None:
    share = ["--share-group", "ingest"]
    ingests += [start_worker(tmp_path, rabbit.url, pg_url, "w1", *share),
                start_worker(tmp_path, rabbit.url, pg_url, "w2", *share)]
    for worker in ingests:
        health = stats(worker)
        assert health["sharing"]["mode"] == "unshared", health  # type: ignore[index]
        assert health["broker_features"]["retained_wildcard"] is False  # type: ignore[index]
        assert "delivers nothing on $share/" in worker.output()
    fleets = [start_fleet(rabbit.url, f"rmq{i}", devices=15, duration=DURATION) for i in range(2)]

    def restart() -> None:
        rabbit.kill()
        rabbit.start()

    reports = run_scenario(fleets, [(6.0, restart)], timeout=180)
    assert all(r["connects"] > r["devices"] for r in reports), "the devices did not notice the kill"
    assert_every_seq_once(pg_url, fleets, reports)


def test_mosquitto_killed_mid_drain_shared_workers_join_and_leave(
    tmp_path: Path, cloud_broker: Broker, pg_url: str, ingests: list[IngestProcess],
) -> None:
    share = ["--share-group", "ingest"]
    ingests.append(start_worker(tmp_path, cloud_broker.url, pg_url, "w1", *share))
    fleets = [start_fleet(cloud_broker.url, f"mq{i}", devices=15, duration=DURATION) for i in range(2)]

    def add_worker() -> None:
        ingests.append(start_worker(tmp_path, cloud_broker.url, pg_url, "w2", *share))

    def restart() -> None:
        cloud_broker.kill()
        cloud_broker.start()

    def add_third_and_remove_first() -> None:
        ingests.append(start_worker(tmp_path, cloud_broker.url, pg_url, "w3", *share))
        assert ingests[0].stop() == 0

    reports = run_scenario(fleets, [(3.0, add_worker), (8.0, restart), (13.0, add_third_and_remove_first)],
                           timeout=150)
    assert all(r["connects"] > r["devices"] for r in reports), "the devices did not notice the kill"
    assert_every_seq_once(pg_url, fleets, reports)
    assert stats(ingests[1])["sharing"]["mode"] == "mqtt-shared"  # type: ignore[index]
    assert all(stats(w)["records"] > 0 for w in ingests[1:]), "a shared worker got nothing"  # type: ignore[operator]


def test_agent_moves_to_the_next_nats_node_and_keeps_exactly_once(
    tmp_path: Path, broker: Broker, nats_cluster: NatsCluster, agents: list[AgentProcess],
    ingests: list[IngestProcess],
) -> None:
    """``[cloud] url`` lists the three nodes; the agent's node is killed mid-drain and stays down:
    the agent carries on through the next node, and what the dead node had not acknowledged is
    sent again there."""
    nodes = nats_cluster.nodes
    ingest = IngestProcess(tmp_path, nodes[2].url, f"sqlite:///{tmp_path}/cloud.db").start(timeout=40)
    ingests.append(ingest)
    extra = cloud_section(list(nats_cluster.urls), protocol="3.1.1")
    config = agent_config(tmp_path, broker.url, extra=extra)
    agent = launch(config, agents)
    agent.wait_for_log(f"connected to {nodes[0].url}")
    feed = Feed(broker.port, rate=200)
    wait_for(lambda: ingest.api("/api/devices"), 20, "the first summaries at the cloud")
    nodes[0].kill()
    agent.wait_for_log("(MQTT 3.1.1) as test-gw", timeout=40, count=2)  # the cluster re-elects first
    moved = agent.output().split("connected to ")[2].split()[0]
    assert moved in (nodes[1].url, nodes[2].url)
    time.sleep(4)
    sent = feed.stop()
    accepted = finish(agent, config)
    assert accepted == sent
    assert_exactly_once(ingest, accepted)
    status = subprocess.run([*EDGE_AGENT, "status", "-c", str(config), "--json"], capture_output=True,
                            text=True, check=True)
    assert '"failovers"' in status.stdout
