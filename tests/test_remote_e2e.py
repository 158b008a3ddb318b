"""Remote configuration end to end: a real Mosquitto standing for the cloud's broker, the agent
as a process, and the cloud's side as a plain MQTT client publishing documents and reading the
device's reports."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cloud_sync import protocol, signing
from cloud_sync.protocol import DesiredConfig
from tests.conftest import EDGE_AGENT, AgentProcess, Broker, free_port
from tests.remote_helpers import CloudClient, body, remote_config, wait_until

pytestmark = pytest.mark.integration
DEVICE = "test-gw"


def status(config: Path) -> dict[str, Any]:
    out = subprocess.run([*EDGE_AGENT, "status", "-c", str(config), "--json"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def modules(config: Path) -> dict[str, Any]:
    return status(config)["modules"]  # type: ignore[no-any-return]


def start(config: Path, agents: list[AgentProcess], name: str) -> AgentProcess:
    agent = AgentProcess(config)
    agent.log = config.with_name(f"{name}.log")
    agents.append(agent.start())
    agent.wait_for_log("remote control: subscribed")
    return agent


@pytest.fixture
def cloud(cloud_broker: Broker) -> Any:
    client = CloudClient(cloud_broker.port)
    client.subscribe(f"edge/{DEVICE}/#")
    yield client
    client.close()


def test_apply_reject_roll_back_persist_and_the_file_wins_after_it_changes(
    tmp_path: Path, cloud_broker: Broker, cloud: CloudClient, agents: list[AgentProcess]
) -> None:
    config = remote_config(tmp_path, cloud_broker.url)
    agent = start(config, agents, "first")
    base = body(config)

    # v1: a new module and a changed window, applied in place within the grace period
    v1 = base.replace('every = "1s"', 'every = "2s"') + (
        '\n[[modules]]\nname = "hot"\nuse = "deadband"\ninputs = ["sensors/#"]\n'
        '[modules.with]\nabsolute = 0.5\n'
    )
    cloud.desired(DEVICE, DesiredConfig(1, v1))
    cloud.wait_report(DEVICE, 1, "applying", timeout=10)
    report = cloud.wait_report(DEVICE, 1, "applied", timeout=10)
    assert report["running"] == {"source": "remote", "version": 1}
    assert "started hot" in report["detail"] and "restarted win" in report["detail"]
    wait_until(lambda: "hot" in modules(config), 10, "the new module in status")
    wait_until(lambda: status(config)["remote"]["config"]["version"] == 1, 10, "status: v1 runs")
    text = subprocess.run([*EDGE_AGENT, "status", "-c", str(config)], capture_output=True, text=True).stdout
    assert "config      running remote v1; last remote v1: applied" in text, text
    assert (tmp_path / "data" / "remote-config.json").stat().st_mode & 0o777 == 0o600

    # v2: every problem named, nothing changed
    v2 = base.replace('every = "1s"', 'every = "soon"').replace('name = "win"', 'name = "win"\ncolour = 1')
    cloud.desired(DEVICE, DesiredConfig(2, v2.replace(f'"{DEVICE}"', '"someone-else"')))
    report = cloud.wait_report(DEVICE, 2, "rejected")
    paths = sorted(e["path"] for e in report["errors"])
    assert paths == ["device_id", "modules[0].colour", "modules[0].with.every"], report
    # an older version, a malformed document, a document for another device: refused, counted
    cloud.desired(DEVICE, DesiredConfig(1, v1 + "\n# again"))
    assert "not newer than version 1" in cloud.wait_report(DEVICE, 1, "rejected")["detail"]
    cloud.desired(DEVICE, b'{"version": "three"}')
    assert cloud.wait_report(DEVICE, None, "rejected")["errors"] == [
        {"path": "", "reason": "version: not a positive integer"}]
    cloud.desired(DEVICE, DesiredConfig(9, v1, device="gw-other"))
    assert cloud.wait_report(DEVICE, 9, "rejected")["detail"] == "device: the document is for gw-other"

    # v3: crashy crashes on every reading once running: rolled back within the grace period
    crashing = v1.replace('use = "crashy.py:Crashy"', 'use = "crashy.py:Crashy"\nwith = { crash = true }')
    cloud.desired(DEVICE, DesiredConfig(3, crashing))
    report = cloud.wait_report(DEVICE, 3, "rolled_back", timeout=15)
    assert "module crashy crashed within the grace period: process: RuntimeError: crashy crashed" in (
        report["errors"][0]["reason"]), report
    assert report["running"] == {"source": "remote", "version": 1}
    # v4: a module that cannot start: rolled back at once
    failing = v1.replace('use = "crashy.py:Crashy"', 'use = "crashy.py:Crashy"\nwith = { fail_start = true }')
    cloud.desired(DEVICE, DesiredConfig(4, failing))
    report = cloud.wait_report(DEVICE, 4, "rolled_back")
    assert report["errors"] == [{"path": "modules.crashy",
                                 "reason": "failed to start: start: RuntimeError: crashy cannot start"}]
    counters = status(config)["remote"]
    assert counters["config"]["version"] == 1
    agent.wait_for_log("remote config v4 rolled back")
    assert agent.process is not None and agent.process.poll() is None  # never a crash

    # a restart runs the persisted v1 (and does not take the retained v4 again)
    agent.signal(15)
    assert agent.wait(10) == 0
    agent = start(config, agents, "second")
    agent.wait_for_log("running remote config v1")
    wait_until(lambda: modules(config).get("hot", {}).get("status") == "running", 10, "hot runs")
    assert "remote config v4" not in agent.output().split("ready")[-1]

    # the operator edits the file: it wins at the next start, v1 is superseded
    agent.signal(15)
    assert agent.wait(10) == 0
    config.write_text(config.read_text().replace('every = "1s"', 'every = "5s"'))
    agent = start(config, agents, "third")
    cloud.wait_report(DEVICE, 1, "superseded")
    assert "1 sources, 2 modules" in agent.output()  # the file's: no "hot"
    wait_until(lambda: status(config)["remote"]["config"]["source"] == "file", 10, "status: the file runs")
    # ...until the cloud sends a newer version
    cloud.desired(DEVICE, DesiredConfig(10, v1))
    cloud.wait_report(DEVICE, 10, "applied", timeout=10)


def test_signed_only_unsigned_forged_older_refused(
    tmp_path: Path, cloud_broker: Broker, cloud: CloudClient, agents: list[AgentProcess]
) -> None:
    private_pem, public_pem = signing.generate()
    (tmp_path / "signer.pem").write_bytes(private_pem)
    (tmp_path / "config-signing.pub").write_bytes(public_pem)
    key = signing.load_private_key(tmp_path / "signer.pem")
    key_file = tmp_path / "config-signing.pub"
    remote = f'allow_config = true\ngrace_period = "500ms"\npublic_key_file = "{key_file}"'
    config = remote_config(tmp_path, cloud_broker.url, remote=remote)
    agent = start(config, agents, "signed")
    v5 = body(config).replace('every = "1s"', 'every = "3s"')

    cloud.desired(DEVICE, DesiredConfig(5, v5))
    assert cloud.wait_report(DEVICE, 5, "rejected")["detail"].startswith("unsigned")
    forged = signing.sign(DesiredConfig(5, v5, DEVICE), key)
    forged = DesiredConfig(5, v5.replace('"3s"', '"4s"'), DEVICE, signature=forged.signature)
    seen = len(cloud.reports(DEVICE))
    cloud.desired(DEVICE, forged)
    assert cloud.wait_report(DEVICE, 5, "rejected", since=seen)["detail"].startswith("bad signature")
    other = signing.sign(DesiredConfig(5, v5, DEVICE), signing.load_private_key(_other_key(tmp_path)))
    cloud.desired(DEVICE, other)
    wait_until(lambda: sum(r["detail"].startswith("bad signature") for r in cloud.reports(DEVICE)) >= 2,
               10, "the other key's signature refused")
    assert "win" in modules(config) and modules(config)["win"]["status"] == "running"

    cloud.desired(DEVICE, signing.sign(DesiredConfig(5, v5, DEVICE), key))
    cloud.wait_report(DEVICE, 5, "applied", timeout=10)
    older = signing.sign(DesiredConfig(4, v5.replace('"3s"', '"9s"'), DEVICE), key)
    cloud.desired(DEVICE, older)
    assert "not newer than version 5" in cloud.wait_report(DEVICE, 4, "rejected")["detail"]
    wait_until(lambda: status(config)["remote"]["config"]["version"] == 5, 10, "status: v5 runs")
    assert status(config)["remote"]["signed_only"] is True
    assert agent.process is not None and agent.process.poll() is None
    assert protocol.config_topic("edge", DEVICE, "desired") in {t for t, _, _ in cloud.messages}


def _other_key(tmp_path: Path) -> Path:
    path = tmp_path / "other.pem"
    path.write_bytes(signing.generate()[0])
    return path


def test_a_cloud_section_that_cannot_connect_is_rolled_back(
    tmp_path: Path, cloud_broker: Broker, cloud: CloudClient, agents: list[AgentProcess]
) -> None:
    config = remote_config(tmp_path, cloud_broker.url)
    agent = start(config, agents, "cloud-change")
    nowhere = f"mqtt://127.0.0.1:{free_port()}"
    cloud.desired(DEVICE, DesiredConfig(1, body(config).replace(cloud_broker.url, nowhere)))
    # "applying" goes nowhere (the new link never comes up); the verdict goes out on the old one
    report = cloud.wait_report(DEVICE, 1, "rolled_back", timeout=20)
    assert report["errors"][0]["reason"].startswith("[cloud] did not connect within the grace period")
    assert report["running"] == {"source": "file", "version": None}
    agent.wait_for_log(f"connected to {cloud_broker.url}", count=2)
    # the link works again: data flows
    start_at = len(cloud.messages)
    wait_until(lambda: any(t.endswith("/data") for t, _, _ in cloud.messages[start_at:]), 10, "data again")
