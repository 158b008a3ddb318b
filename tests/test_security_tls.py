"""TLS, mutual TLS and the per-device ACL against a real Mosquitto with a CA made in the test:
each device is its certificate's CN, may write only under ``edge/<its-id>/`` and read only its own
``ack``, ``config`` and ``cmd``; an expired, untrusted or missing certificate is refused, and
``edge-agent status`` says which."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import EDGE_AGENT, AgentProcess, Broker
from tests.remote_helpers import CloudClient, remote_config, wait_until
from tests.security_helpers import INGEST, TestCA, tls_broker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("pki")
    ca = TestCA(folder / "ca")
    rogue = TestCA(folder / "rogue", "Rogue CA")
    return {"ca": ca, "rogue": rogue, "folder": folder}


@pytest.fixture(scope="module")
def broker(pki: dict[str, Any]) -> Iterator[Broker]:
    workdir = pki["folder"] / "broker"
    workdir.mkdir()
    server = tls_broker(workdir, pki["ca"]).start()
    yield server
    server.stop()


def tls(pki: dict[str, Any], name: str, **kwargs: Any) -> dict[str, Any]:
    cert, key = pki["ca"].issue(name, **kwargs)
    return {"ca": str(pki["ca"].path), "cert": str(cert), "key": str(key)}


def status(config: Path) -> dict[str, Any]:
    out = subprocess.run([*EDGE_AGENT, "status", "-c", str(config), "--json"], capture_output=True, text=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_a_device_cannot_publish_as_another_nor_read_anothers_commands(
    broker: Broker, pki: dict[str, Any]
) -> None:
    cloud = CloudClient(broker.port, tls=tls(pki, INGEST), client_id="cloud")
    cloud.subscribe("edge/+/data")
    cloud.subscribe("edge/+/status")
    device_a = CloudClient(broker.port, tls=tls(pki, "gw-a"), client_id="gw-a")
    device_b = CloudClient(broker.port, tls=tls(pki, "gw-b"), client_id="gw-b")
    try:
        device_b.subscribe("edge/gw-b/cmd/#")
        # Mosquitto 2.0 grants these subscriptions and checks the read ACL on every message
        device_a.subscribe("edge/gw-b/cmd/#")  # another's commands
        device_a.subscribe("edge/+/config/desired")  # everyone's configs
        for topic in ("edge/gw-b/data", "edge/gw-b/status", "edge/gw-a/ack", "edge/gw-b/cmd/ping"):
            device_a.client.publish(topic, b'{"online": true}', qos=1).wait_for_publish(5)
        device_a.client.publish("edge/gw-a/status", b'{"online": true, "me": 1}', qos=1).wait_for_publish(5)
        cloud.client.publish("edge/gw-b/cmd/ping", b'{"id": "1"}', qos=1).wait_for_publish(5)
        cloud.client.publish("edge/gw-b/config/desired", b"{}", qos=1).wait_for_publish(5)

        wait_until(lambda: any(t == "edge/gw-a/status" for t, _, _ in cloud.messages), 5, "a's own status")
        wait_until(lambda: any(t == "edge/gw-b/cmd/ping" for t, _, _ in device_b.messages), 5, "b's command")
        time.sleep(0.5)
        assert [t for t, _, _ in cloud.messages] == ["edge/gw-a/status"]  # nothing as gw-b
        assert device_a.messages == []  # neither gw-b's command nor its config
    finally:
        for client in (cloud, device_a, device_b):
            client.close()


def test_the_agent_syncs_and_answers_over_mutual_tls(
    tmp_path: Path, broker: Broker, pki: dict[str, Any], agents: list[AgentProcess]
) -> None:
    files = tls(pki, "test-gw")
    config = remote_config(tmp_path, f"mqtts://127.0.0.1:{broker.port}", remote="allow_commands = true",
                           cloud={"tls_ca": files["ca"], "tls_cert": files["cert"], "tls_key": files["key"]})
    agent = AgentProcess(config).start()
    agents.append(agent)
    agent.wait_for_log("remote control: subscribed")
    cloud = CloudClient(broker.port, tls=tls(pki, INGEST), client_id="cloud-2")
    try:
        cloud.subscribe("edge/test-gw/#")
        wait_until(lambda: any(t == "edge/test-gw/data" for t, _, _ in cloud.messages), 10, "data over mTLS")
        assert cloud.command("test-gw", "ping")["ok"] is True
    finally:
        cloud.close()
    wait_until(lambda: status(config)["sync"]["connected"], 10, "status: connected")
    assert status(config)["warnings"] == []


@pytest.mark.parametrize(("case", "expected"), [
    ("expired", "TLS: our client certificate is refused: tls_cert: {cert} expired on"),
    ("untrusted", "TLS: the broker refused our client certificate {cert}: it is signed by a CA the broker "
                  "does not trust"),
    ("no certificate", "TLS: the broker requires a client certificate: set tls_cert and tls_key"),
    ("broker not trusted", "TLS: the broker's certificate is not trusted (self-signed certificate in "
                           "certificate chain; checked against tls_ca = {rogue}"),
])
def test_a_refused_certificate_is_reported_clearly_in_status(
    tmp_path: Path, broker: Broker, pki: dict[str, Any], agents: list[AgentProcess], case: str, expected: str
) -> None:
    ca, rogue = pki["ca"], pki["rogue"]
    cert, key = {
        "expired": lambda: ca.issue("gw-old", expired=True),
        "untrusted": lambda: rogue.issue("gw-rogue"),
        "no certificate": lambda: (None, None),
        "broker not trusted": lambda: ca.issue("gw-c"),
    }[case]()
    cloud: dict[str, Any] = {"tls_ca": str(rogue.path if case == "broker not trusted" else ca.path),
                             "keepalive": "5s"}
    if cert is not None:
        cloud |= {"tls_cert": str(cert), "tls_key": str(key)}
    config = remote_config(tmp_path, f"mqtts://127.0.0.1:{broker.port}", remote="allow_commands = true",
                           cloud=cloud)
    agent = AgentProcess(config).start()
    agents.append(agent)
    message = expected.format(cert=cert, rogue=rogue.path)

    def reported() -> bool:
        sync = status(config).get("sync") or {}
        return message in (sync.get("last_error") or "")

    wait_until(reported, 20, f"status naming the problem: {message}", interval=0.5)
    assert not status(config)["sync"]["connected"]
    text = subprocess.run([*EDGE_AGENT, "status", "-c", str(config)], capture_output=True, text=True).stdout
    assert message in text and "not connected" in text
    if case == "expired":
        assert any("expired on" in w for w in status(config)["warnings"])
        assert "Traceback" not in agent.output()


def test_plain_mqtt_to_the_tls_listener_gets_nowhere(broker: Broker) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plain")
    client.connect("127.0.0.1", broker.port, keepalive=5)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and client.loop(timeout=0.2) == mqtt.MQTT_ERR_SUCCESS:
        assert not client.is_connected()
    assert not client.is_connected()
