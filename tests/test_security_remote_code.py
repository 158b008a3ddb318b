"""A remote config never runs code the operator did not install: the agent as a process, a real
Mosquitto for the cloud's broker, documents naming module files every way an attacker might."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from agent.remote.rules import MODULE_FILE_REASON
from cloud_sync.protocol import DesiredConfig
from tests.conftest import AgentProcess, Broker
from tests.remote_helpers import CloudClient, body, remote_config, wait_until

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


GOOD = '''
from pathlib import Path
from agent import Module
Path({marker!r}).write_text("imported")
class Good(Module):
    def process(self, record):
        pass
'''
STOPS = '''
from agent import Module
class Stops(Module):
    async def start(self):
        raise SystemExit("{where}")
    def process(self, record):
        raise SystemExit("process")
'''


def test_signed_documents_name_module_files_only_as_the_operator_allows_and_none_stops_the_agent(
    tmp_path: Path, cloud_broker: Broker, cloud: CloudClient, agents: list[AgentProcess]
) -> None:
    """``[remote] allow_module_files``: a signed document may name an absolute module file, which
    the device imports; one whose import or start raises ``SystemExit`` is refused or rolled
    back, the agent alive; unsigned or relative, nothing is imported."""
    from cloud_sync import signing

    private_pem, public_pem = signing.generate()
    (tmp_path / "signer.pem").write_bytes(private_pem)
    (tmp_path / "config-signing.pub").write_bytes(public_pem)
    key = signing.load_private_key(tmp_path / "signer.pem")
    marker = tmp_path / "good-imported"
    (tmp_path / "good.py").write_text(GOOD.format(marker=str(marker)))
    (tmp_path / "exits.py").write_text(EXITS)
    (tmp_path / "stops.py").write_text(STOPS.format(where="start"))
    remote = (f'allow_config = true\ngrace_period = "1500ms"\nallow_module_files = true\n'
              f'public_key_file = "{tmp_path / "config-signing.pub"}"')
    config = remote_config(tmp_path, cloud_broker.url, remote=remote)
    agent = _start(config, agents, "agent")
    base = body(config)

    def signed(version: int, use: str) -> DesiredConfig:
        return signing.sign(DesiredConfig(version, _with_module(base, use), DEVICE), key)

    def ends(version: int) -> list[str]:
        return [r["result"] for r in cloud.reports(DEVICE)
                if r["version"] == version and r["result"] in ("applied", "rejected", "rolled_back")]

    def alive() -> None:
        assert agent.process is not None and agent.process.poll() is None, agent.output()[-3000:]

    cloud.desired(DEVICE, DesiredConfig(1, _with_module(base, f"{tmp_path}/good.py:Good")))  # unsigned
    assert cloud.wait_report(DEVICE, 1, "rejected", timeout=10)["detail"].startswith("unsigned")
    cloud.desired(DEVICE, signed(2, "good.py:Good"))  # signed, but relative: refused as named
    report = cloud.wait_report(DEVICE, 2, "rejected", timeout=10)
    assert report["errors"] == [{"path": "modules[2].use", "reason": MODULE_FILE_REASON}], report
    assert not marker.exists()

    cloud.desired(DEVICE, signed(3, f"{tmp_path}/exits.py:Exits"))  # SystemExit at import
    report = cloud.wait_report(DEVICE, 3, "rejected", timeout=10)
    assert "stopped while importing" in json.dumps(report), report
    alive()

    cloud.desired(DEVICE, signed(4, f"{tmp_path}/stops.py:Stops"))  # SystemExit when started
    wait_until(lambda: ends(4), 20, "v4 to end")
    assert ends(4) in (["rejected"], ["rolled_back"]), cloud.reports(DEVICE)
    alive()

    cloud.desired(DEVICE, signed(5, f"{tmp_path}/good.py:Good"))  # signed and absolute: the operator allows
    cloud.wait_report(DEVICE, 5, "applied", timeout=15)
    assert marker.exists()
    time.sleep(0.5)
    for version in range(1, 6):
        assert len(ends(version)) == 1, (version, cloud.reports(DEVICE))
    alive()
