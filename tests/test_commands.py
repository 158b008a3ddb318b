"""Commands end to end: the agent as a process on a real Mosquitto, requests from a plain MQTT
client, over MQTT 5 (response topic, correlation data, message expiry) and 3.1.1 (reply topic
and expiry in the payload)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.conftest import AgentProcess, Broker
from tests.remote_helpers import CloudClient, remote_config
from tests.sync_helpers import HalfOpenProxy

pytestmark = pytest.mark.integration
DEVICE = "test-gw"


@pytest.fixture
def agent(tmp_path: Path, cloud_broker: Broker, agents: list[AgentProcess]) -> AgentProcess:
    config = remote_config(tmp_path, cloud_broker.url, remote="allow_commands = true")
    process = AgentProcess(config).start()
    agents.append(process)
    process.wait_for_log("remote control: subscribed")
    return process


@pytest.fixture(params=[mqtt.MQTTv5, mqtt.MQTTv311], ids=["mqtt5", "mqtt311"])
def cloud(request: pytest.FixtureRequest, cloud_broker: Broker, agent: AgentProcess) -> Iterator[CloudClient]:
    client = CloudClient(cloud_broker.port, request.param)
    client.subscribe(f"edge/{DEVICE}/reply/#")
    yield client
    client.close()


def ok(reply: dict[str, Any]) -> Any:
    assert reply["ok"] is True, reply
    return reply["result"]


def error(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False, reply
    return f"{reply['error']['code']}: {reply['error']['message']}"


def test_the_five_commands(cloud: CloudClient, agent: AgentProcess) -> None:
    reply = cloud.command(DEVICE, "ping")
    assert ok(reply)["pong"] is True and reply["_topic"] == f"edge/{DEVICE}/reply/test-console"
    if cloud.v5:
        assert reply["_correlation"] == reply["id"].encode()

    status = ok(cloud.command(DEVICE, "status"))
    assert status["device_id"] == DEVICE and set(status["modules"]) >= {"win", "crashy"}

    assert ok(cloud.command(DEVICE, "sync-now"))["connected"] is True

    restarted = ok(cloud.command(DEVICE, "restart-module", {"name": "win"}))
    assert restarted == {"module": "win", "status": "running"}
    agent.wait_for_log("command restart-module")

    result = ok(cloud.command(DEVICE, "set-log-level", {"level": "DEBUG", "logger": "agent.modules",
                                                         "duration": 60}))
    assert result["level"] == "DEBUG" and result["logger"] == "agent.modules"
    # a logger name from before the code moved (agent/pipeline.py) sets the module's new logger too
    moved = ok(cloud.command(DEVICE, "set-log-level", {"level": "DEBUG", "logger": "agent.pipeline"}))
    assert moved["logger"] == "agent.pipeline" and moved["previous"] != "DEBUG"
    now = ok(cloud.command(DEVICE, "set-log-level", {"level": "INFO", "logger": "agent.runtime.pipeline"}))
    assert now["previous"] == "DEBUG"
    assert agent.process is not None and agent.process.poll() is None


SLOW_STOP = '''
import asyncio
from pathlib import Path

from agent import Module, ModuleConfig


class SlowStop(Module):
    """Stops only once the test lets it: a restart-module that outlasts the link."""

    class Config(ModuleConfig):
        flag: str

    def process(self, record):
        pass

    async def stop(self):
        self.context.log.warning("stopping, slowly")
        while not Path(self.config.flag).exists():
            await asyncio.sleep(0.05)
'''


def test_a_reply_that_finds_the_link_down_goes_out_once_it_is_back(
    tmp_path: Path, cloud_broker: Broker, agents: list[AgentProcess]
) -> None:
    """A reconnect while a command runs (here the link goes silent, as under a machine so busy
    that a PUBACK is late, or a NAT that forgets the connection): the reply waits for the next
    connection instead of being dropped, and the cloud gets it."""
    (tmp_path / "slow.py").write_text(SLOW_STOP)
    flag = tmp_path / "let-it-stop"
    proxy = HalfOpenProxy(cloud_broker.port)
    config = remote_config(tmp_path, f"mqtt://127.0.0.1:{proxy.port}", remote="allow_commands = true",
                           modules=f'''
        [[modules]]
        name = "slow"
        use = "slow.py:SlowStop"
        inputs = ["sensors/#"]
        [modules.with]
        flag = "{flag}"
        ''')
    # the module's stop may wait this long (the command's own limit is 15 s): room for a loaded
    # machine to notice the silent link
    agent = AgentProcess(config).start(env={"EDGE_AGENT__SUPERVISOR__STOP_TIMEOUT": '"13s"'})
    agents.append(agent)
    agent.wait_for_log("remote control: subscribed")
    cloud = CloudClient(cloud_broker.port)
    cloud.subscribe(f"edge/{DEVICE}/reply/#")
    replies: list[dict[str, Any]] = []
    asking = threading.Thread(target=lambda: replies.append(
        cloud.command(DEVICE, "restart-module", {"name": "slow"}, command_id="across-a-cut", timeout=60)))
    try:
        asking.start()
        agent.wait_for_log("stopping, slowly")  # the command runs...
        proxy.freeze()  # ...and the link goes silent under it
        agent.wait_for_log("cloud link:", timeout=20)
        flag.touch()
        agent.wait_for_log("command restart-module (across-a-cut) done")  # its reply finds no link
        assert not replies
        proxy.heal()
        asking.join(60)
        assert replies and ok(replies[0]) == {"module": "slow", "status": "running"}
        assert agent.output().count("connected to") >= 2
    finally:
        flag.touch()
        proxy.close()
        cloud.close()


def test_bad_requests_get_an_error_reply_and_the_agent_carries_on(
    cloud: CloudClient, agent: AgentProcess
) -> None:
    assert error(cloud.command(DEVICE, "reboot")).startswith("unknown_command: reboot: not a command")
    assert error(cloud.command(DEVICE, "set-log-level", {"level": "LOUD"})).startswith(
        "bad_args: args.level: Input should be 'DEBUG'")
    assert error(cloud.command(DEVICE, "ping", {"colour": 1})) == "bad_args: args.colour: unknown argument"
    assert error(cloud.command(DEVICE, "set-log-level", {"level": "DEBUG", "logger": "no.such.logger"})) == (
        "unknown_logger: args.logger: no logger 'no.such.logger' in the agent")
    assert error(cloud.command(DEVICE, "restart-module", {"name": "nope"})) == (
        "unknown_module: args.name: no module 'nope' (running: win, crashy)")
    if cloud.v5:  # unreadable, so without an id: only the correlation data ties the reply to it
        reply = cloud.command(DEVICE, "ping", command_id="broken", raw=b'{"id": "broken", "args": [')
        assert reply["id"] is None and error(reply).startswith("bad_json: the command is not JSON")
    # stale: expired by the device's clock
    assert error(cloud.command(DEVICE, "ping", expiry=None, expires_at=time.time() - 5)).startswith(
        "expired: expired 5.")
    if not cloud.v5:  # with neither a broker expiry nor expires_at, nothing says when it goes stale
        assert error(cloud.command(DEVICE, "ping", expiry=None)).startswith("no_expiry: ")
    # a reply topic outside the device's own is not used: the reply goes to <prefix>/<id>/reply
    cloud.subscribe("edge/other/#")
    reply = cloud.command(DEVICE, "ping", reply_to="edge/other/cmd/restart-module")
    assert ok(reply)["pong"] and reply["_topic"] == f"edge/{DEVICE}/reply"
    assert not [t for t, _, _ in cloud.messages if t.startswith("edge/other/")]
    # a repeated id is answered again, not run again
    first = cloud.command(DEVICE, "ping", command_id="same-id")
    again = cloud.command(DEVICE, "ping", command_id="same-id")
    assert ok(first)["time"] == ok(again)["time"]

    assert ok(cloud.command(DEVICE, "ping"))["pong"] is True
    assert agent.process is not None and agent.process.poll() is None
    assert "Traceback" not in agent.output()


def test_without_allow_commands_nothing_is_subscribed(tmp_path: Path, cloud_broker: Broker,
                                                        agents: list[AgentProcess]) -> None:
    config = remote_config(tmp_path, cloud_broker.url, remote="allow_commands = false")
    process = AgentProcess(config).start()
    agents.append(process)
    process.wait_for_log("connected to")
    time.sleep(0.5)
    client = CloudClient(cloud_broker.port)
    client.subscribe(f"edge/{DEVICE}/reply/#")
    with pytest.raises(AssertionError, match="a reply to"):
        client.command(DEVICE, "ping", timeout=2)
    client.close()


def test_a_retained_command_is_not_run_again_at_the_next_subscribe(
    cloud_broker: Broker, agent: AgentProcess
) -> None:
    client = CloudClient(cloud_broker.port)
    client.subscribe(f"edge/{DEVICE}/reply/#")
    # delivered live, it is a fresh command; the broker keeps it, though...
    ok(client.command(DEVICE, "restart-module", {"name": "win"}, command_id="kept", retain=True))
    agent.signal(15)
    assert agent.wait(10) == 0
    start = len(client.messages)
    agent.start()  # ...and hands it over again, flagged retained, when the agent subscribes anew
    reply = client.wait_reply("kept", start)
    assert error(reply).startswith("retained: a retained command is never executed")
    assert agent.output().count("command restart-module (kept) done") == 1
    client.client.publish(f"edge/{DEVICE}/cmd/restart-module", b"", 1, True).wait_for_publish(5)
    client.close()


def test_a_command_runs_once_however_late_it_comes_again_and_expires_within_the_hour(
    cloud_broker: Broker, agent: AgentProcess
) -> None:
    client = CloudClient(cloud_broker.port, mqtt.MQTTv311)
    client.subscribe(f"edge/{DEVICE}/reply/#")
    far = time.time() + 10 * 365 * 86400
    assert error(client.command(DEVICE, "ping", expiry=None, expires_at=far)).startswith("expiry_too_far: ")
    ok(client.command(DEVICE, "restart-module", {"name": "win"}, command_id="once"))
    for number in range(300):  # more than the replies remembered
        client.command(DEVICE, "ping", command_id=f"filler-{number}")
    assert error(client.command(DEVICE, "restart-module", {"name": "win"}, command_id="once")).startswith(
        "already_done: ")
    agent.signal(15)
    assert agent.wait(10) == 0
    agent.start()
    agent.wait_for_log("remote control: subscribed", count=2)
    assert error(client.command(DEVICE, "restart-module", {"name": "win"}, command_id="once")).startswith(
        "already_done: ")
    assert agent.output().count("command restart-module (once) done") == 1
    seen = Path(agent.config).parent / "data" / "commands-seen.json"
    assert seen.stat().st_mode & 0o777 == 0o600
    client.close()


def test_a_device_that_runs_only_signed_configs_answers_only_read_only_commands(
    tmp_path: Path, cloud_broker: Broker, agents: list[AgentProcess]
) -> None:
    from cloud_sync import signing

    (tmp_path / "key.pub").write_bytes(signing.generate()[1])
    config = remote_config(tmp_path, cloud_broker.url,
                           remote=f'allow_commands = true\npublic_key_file = "{tmp_path / "key.pub"}"')
    process = AgentProcess(config).start()
    agents.append(process)
    process.wait_for_log("remote control: subscribed")
    client = CloudClient(cloud_broker.port)
    client.subscribe(f"edge/{DEVICE}/reply/#")
    assert ok(client.command(DEVICE, "ping"))["pong"] is True
    assert error(client.command(DEVICE, "restart-module", {"name": "win"})).startswith("signed_only: ")
    assert error(client.command(DEVICE, "set-log-level", {"level": "DEBUG"})).startswith("signed_only: ")
    client.close()
