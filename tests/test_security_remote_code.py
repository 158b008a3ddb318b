"""A remote config never runs code the operator did not install: the agent as a process, a real
Mosquitto for the cloud's broker, documents naming module files every way an attacker might."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.remote.rules import MODULE_FILE_REASON
from cloud_sync.protocol import DesiredConfig
from tests.conftest import AgentProcess, Broker
from tests.remote_helpers import CloudClient, body, remote_config

pytestmark = pytest.mark.integration
DEVICE = "test-gw"

EVIL = '''
from pathlib import Path
Path({marker!r}).write_text("ran")
from agent import Module
class Evil(Module):
    def process(self, record):
        pass
'''
EXITS = "raise SystemExit(3)\n"


@pytest.fixture
def cloud(cloud_broker: Broker) -> Any:
    client = CloudClient(cloud_broker.port)
    client.subscribe(f"edge/{DEVICE}/#")
    yield client
    client.close()


def _with_module(base: str, use: str) -> str:
    return base + f'\n[[modules]]\nname = "extra"\nuse = {json.dumps(use)}\ninputs = ["sensors/#"]\n'


def _start(config: Path, agents: list[AgentProcess], name: str) -> AgentProcess:
    agent = AgentProcess(config)
    agent.log = config.with_name(f"{name}.log")
    agents.append(agent.start())
    agent.wait_for_log("remote control: subscribed")
    return agent


def test_module_files_in_an_unsigned_config_are_refused_before_anything_is_imported(
    tmp_path: Path, cloud_broker: Broker, cloud: CloudClient, agents: list[AgentProcess]
) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "evil.py").write_text(EVIL.format(marker=str(marker)))
    (tmp_path / "exits.py").write_text(EXITS)
    (tmp_path / "payload.pyc").write_bytes(b"")
    config = remote_config(tmp_path, cloud_broker.url)
    agent = _start(config, agents, "agent")
    base = body(config)
    uses = [
        f"{tmp_path}/evil.py:Evil",                   # absolute
        "evil.py:Evil",                               # relative to the operator's file
        f"{tmp_path}/exits.py:Exits",                 # SystemExit on import
        f"{tmp_path}/evil.py:/../payload.pyc:Evil",   # a .pyc behind a ".py:" prefix
        "/nonexistent/nothing.py:Evil",               # same answer as a file that exists
        "../evil.py:Evil",
        str(Path(__file__).resolve().parent.parent / "agent" / "__main__.py") + ":X",
    ]
    for version, use in enumerate(uses, start=1):
        cloud.desired(DEVICE, DesiredConfig(version, _with_module(base, use)))
        report = cloud.wait_report(DEVICE, version, "rejected", timeout=10)
        assert not marker.exists(), use
        assert report["errors"] == [{"path": "modules[2].use", "reason": MODULE_FILE_REASON}], (use, report)
        assert agent.process is not None and agent.process.poll() is None, agent.output()
    # the file the operator's own config loads may be named again (its class is reused)
    cloud.desired(DEVICE, DesiredConfig(20, base.replace('every = "1s"', 'every = "2s"')))
    cloud.wait_report(DEVICE, 20, "applied", timeout=15)


def test_a_document_that_stopped_the_agent_while_checked_is_refused_after_the_restart(
    tmp_path: Path, cloud_broker: Broker, cloud: CloudClient, agents: list[AgentProcess]
) -> None:
    """Whatever killed the agent mid-check (an OOM, a signal), the retained document does not
    kill it again on every restart."""
    config = remote_config(tmp_path, cloud_broker.url)
    doc = DesiredConfig(7, body(config).replace('every = "1s"', 'every = "4s"'))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "remote-config.json").write_text(json.dumps(
        {"checking": {"version": 7, "digest": doc.digest()}}))
    cloud.desired(DEVICE, doc)  # retained: the agent gets it again as soon as it subscribes
    agent = _start(config, agents, "restarted")
    report = cloud.wait_report(DEVICE, 7, "rejected", timeout=10)
    assert "stopped" in json.dumps(report), report  # at start-up, or when the document comes again
    agent.wait_for_log("refused remote config v7: this document stopped the agent")
    assert agent.process is not None and agent.process.poll() is None
    # a newer document is taken as usual
    cloud.desired(DEVICE, DesiredConfig(8, doc.config))
    cloud.wait_report(DEVICE, 8, "applied", timeout=15)


def test_no_tls_downgrade_and_no_client_id_taken_from_the_uploader(
    tmp_path: Path, cloud_broker: Broker, cloud: CloudClient, agents: list[AgentProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca = tmp_path / "local-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")  # never used: the source only has to be named
    monkeypatch.setenv("LOCAL_PASS", "secret")
    source = ('\n[[sources]]\nname = "local"\ntype = "mqtt"\nurl = "mqtt://127.0.0.1:1"\n'
              f'username = "gw"\npassword_env = "LOCAL_PASS"\ntls_ca = "{ca}"\n')
    config = remote_config(tmp_path, cloud_broker.url, modules=source)
    _start(config, agents, "agent")
    base = body(config)
    # with tls_ca the link is TLS; without it, the same URL is plain TCP: the password stays home
    cloud.desired(DEVICE, DesiredConfig(1, base.replace(f'tls_ca = "{ca}"\n', "")))
    report = cloud.wait_report(DEVICE, 1, "rejected", timeout=10)
    assert [e["path"] for e in report["errors"]] == ["sources[1].password_env"], report
    taken = base.replace('name = "local"', f'name = "local"\nclient_id = "{DEVICE}"')
    cloud.desired(DEVICE, DesiredConfig(2, taken))
    report = cloud.wait_report(DEVICE, 2, "rejected", timeout=10)
    assert "client id 'test-gw' is the [cloud] uploader's too" in json.dumps(report), report


def test_a_giant_retained_desired_config_never_reaches_the_agents_memory(
    tmp_path: Path, cloud_broker: Broker, cloud: CloudClient, agents: list[AgentProcess]
) -> None:
    """MQTT 5: the agent's Maximum Packet Size makes the broker withhold it."""
    cloud.desired(DEVICE, b"{" + b" " * (64 << 20) + b"}")
    config = remote_config(tmp_path, cloud_broker.url)
    agent = _start(config, agents, "giant")
    agent.wait_for_log("(MQTT 5)")
    cloud.desired(DEVICE, DesiredConfig(1, body(config).replace('every = "1s"', 'every = "2s"')))
    cloud.wait_report(DEVICE, 1, "applied", timeout=15)  # what comes after it still arrives
    assert agent.process is not None
    peak = Path(f"/proc/{agent.process.pid}/status").read_text().split("VmHWM:")[1].split()[0]
    assert int(peak) < 150_000, f"the agent's peak memory: {int(peak) // 1024} MiB"
    assert "too_large" not in agent.output() and "refused a desired config" not in agent.output()
