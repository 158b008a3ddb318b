"""Two attacks one device could make on another, through a real Mosquitto: pre-filling its seqs
at the cloud, and a forged retained ack that would delete its unsent data. Under the ACL of
docs/security.md (mutual TLS, the CA made in the test) neither reaches anyone; and without any
ACL the device itself refuses an ack that is not for its outbox or covers seqs it never sent."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cloud_sync import protocol
from cloud_sync.protocol import Encoder
from tests.conftest import EDGE_AGENT, AgentProcess, Broker, IngestProcess
from tests.remote_helpers import CloudClient, remote_config, wait_until
from tests.security_helpers import INGEST, TestCA, tls_broker
from tests.sync_helpers import cloud_records

pytestmark = pytest.mark.integration
VICTIM = "test-gw"


def _status(config: Path) -> dict[str, Any]:
    out = subprocess.run([*EDGE_AGENT, "status", "-c", str(config), "--json"], capture_output=True, text=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _forged_data() -> bytes:
    rows = [(seq, "win", 1.0, '{"forged":true,"count":1000}') for seq in range(1, 201)]
    return Encoder(VICTIM, "forged-epoch", compression="none").encode(rows, 0)


def _forged_ack(epoch: str) -> bytes:
    return protocol.Ack(10**12, epoch, 10**12, 0.0, 0).encode()


def test_under_the_acl_no_device_prefills_anothers_seqs_or_forges_its_ack(
    tmp_path: Path, agents: list[AgentProcess], ingests: list[IngestProcess]
) -> None:
    ca = TestCA(tmp_path / "ca")
    (tmp_path / "broker").mkdir()
    broker = tls_broker(tmp_path / "broker", ca).start()
    try:
        cert, key = ca.issue(INGEST)
        tls_args = ("--tls-ca", str(ca.path), "--tls-cert", str(cert), "--tls-key", str(key))
        ingest = IngestProcess(tmp_path, f"mqtts://127.0.0.1:{broker.port}", f"sqlite:///{tmp_path}/cloud.db",
                               *tls_args).start()
        ingests.append(ingest)
        a_cert, a_key = ca.issue("gw-a")
        attacker = CloudClient(broker.port, tls={"ca": str(ca.path), "cert": str(a_cert), "key": str(a_key)},
                               client_id="gw-a")
        # before the victim ever syncs: its seqs 1..200 as someone else's data, and an ack of
        # everything it will ever have, retained for it to find when it connects
        attacker.client.publish(f"edge/{VICTIM}/data", _forged_data(), 1).wait_for_publish(5)
        attacker.client.publish(f"edge/{VICTIM}/ack", _forged_ack(""), 1, True).wait_for_publish(5)

        v_cert, v_key = ca.issue(VICTIM)
        config = remote_config(tmp_path, f"mqtts://127.0.0.1:{broker.port}", remote="allow_commands = true",
                               cloud={"tls_ca": str(ca.path), "tls_cert": str(v_cert), "tls_key": str(v_key)})
        agent = AgentProcess(config).start()
        agents.append(agent)
        wait_until(lambda: len(cloud_records(ingest, VICTIM)) >= 3, 20, "the victim's records at the cloud")
        rows = cloud_records(ingest, VICTIM)
        assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
        assert not any("forged" in r["data"] for r in rows), rows[:3]
        assert _status(config)["sync"]["counters"].get("acks_refused", 0) == 0  # no forged ack arrived
        attacker.close()
    finally:
        broker.stop()


def test_without_an_acl_the_device_refuses_acks_for_another_outbox_or_beyond_what_it_sent(
    tmp_path: Path, cloud_broker: Broker, agents: list[AgentProcess]
) -> None:
    """No ingest runs: nothing may leave the outbox, whatever arrives on the ack topic."""
    config = remote_config(tmp_path, cloud_broker.url)
    spy = CloudClient(cloud_broker.port)
    spy.subscribe(f"edge/{VICTIM}/data")
    agents.append(AgentProcess(config).start())
    wait_until(lambda: spy.messages, 15, "a data message to learn the outbox's epoch from")
    epoch = protocol.decode_batch(VICTIM, spy.messages[0][1]).epoch
    wait_until(lambda: (_status(config)["backlog"]["rows"] or 0) >= 3, 15, "a backlog")
    exhausting = protocol.Ack(1, "another-outbox", (1 << 63) - 1, 0.0, 0).encode()  # renumber past 2^63?
    for forged in (_forged_ack(epoch), _forged_ack(""), exhausting):
        spy.client.publish(f"edge/{VICTIM}/ack", forged, 1, True).wait_for_publish(5)
    wait_until(lambda: _status(config)["sync"]["counters"].get("acks_refused", 0) >= 3, 10, "acks refused")
    status = _status(config)
    assert status["backlog"]["rows"] >= 3, status["backlog"]  # nothing was released
    assert not status["sync"].get("last_ack_at"), status["sync"]
    spy.close()
