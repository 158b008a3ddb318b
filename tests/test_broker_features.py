"""The broker probe on real brokers, and the sharing mode each answer leads to."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import BrokerLogin
from cloud_sync.server import sharing
from cloud_sync.server.broker_probe import BrokerFeatures, probe
from tests.brokers import NatsCluster
from tests.conftest import Broker


@pytest.fixture
def nats_node(tmp_path: Path) -> Iterator[NatsCluster]:
    node = NatsCluster(tmp_path / "nats", size=1).start()
    yield node
    node.stop()


@pytest.mark.integration
def test_mosquitto_has_every_feature(broker: Broker) -> None:
    features = asyncio.run(probe(BrokerLogin(url=broker.url), "probe-test"))
    assert features.protocol == "5"
    assert (features.shared_subscriptions, features.retained_exact, features.retained_wildcard,
            features.large_message) == (True, True, True, True)
    assert features.explain() == []


@pytest.mark.integration
def test_nats_speaks_3_1_1_and_grants_share_without_delivering(nats_node: NatsCluster) -> None:
    features = asyncio.run(probe(BrokerLogin(url=nats_node.urls[0]), "probe-test"))
    assert features.protocol == "3.1.1"
    assert features.shared_subscriptions is False
    assert (features.retained_exact, features.retained_wildcard, features.large_message) == (True, True, True)
    assert any("$share/" in line for line in features.explain())


@pytest.mark.integration
def test_a_message_over_the_broker_limit_is_reported(tmp_path: Path) -> None:
    broker = Broker(tmp_path, "message_size_limit 100000\n").start()
    try:
        features = asyncio.run(probe(BrokerLogin(url=broker.url), "probe-test", probe_bytes=200_000))
    finally:
        broker.stop()
    assert features.large_message is False
    assert any("200000-byte message" in line for line in features.explain())


FULL = BrokerFeatures(protocol="5", shared_subscriptions=True, retained_exact=True, retained_wildcard=True)
NO_SHARE = BrokerFeatures(protocol="3.1.1", shared_subscriptions=False, retained_exact=True)


@pytest.mark.parametrize(("features", "group", "jetstream", "mode", "subscribed_group", "kinds"), [
    (FULL, None, False, "single", None, ("data", "status")),
    (FULL, "ingest", False, "mqtt-shared", "ingest", ("data", "status")),
    (NO_SHARE, "ingest", False, "unshared", None, ("data", "status")),
    (NO_SHARE, "ingest", True, "jetstream", None, ("status",)),
    (BrokerFeatures(), "ingest", False, "mqtt-shared", "ingest", ("data", "status")),  # --no-probe
])
def test_sharing_plan(features: BrokerFeatures, group: str | None, jetstream: bool, mode: str,
                      subscribed_group: str | None, kinds: tuple[str, ...]) -> None:
    plan = sharing.plan(features, group, jetstream)
    assert (plan.mode, plan.share_group, plan.mqtt_kinds) == (mode, subscribed_group, kinds)
    assert (plan.warning is not None) == (mode == "unshared")
