"""Running the agent on a real broker with one MQTT source and a window per sensor, and reading
what reached the outbox: the real path of device payloads, for the payload-mapping tests."""

from __future__ import annotations

import signal
import textwrap
import time
from pathlib import Path
from typing import Any

from agent.health.status import read_status
from agent.outbox.store import Outbox
from tests.conftest import AgentProcess, Broker
from tests.mqtt_helpers import Publisher

Message = tuple[str, bytes | str, bool]
"""(topic, payload, retained)."""


def source_config(tmp_path: Path, broker: Broker, source: str, inputs: list[str]) -> Path:
    """A config: the ``[[sources]]`` table given (name "dev") and a 1 s window over ``inputs``."""
    path = tmp_path / "agent.toml"
    path.write_text(textwrap.dedent(f"""
        device_id = "test-gw"
        data_dir = "{tmp_path / 'data'}"

        [[sources]]
        name = "dev"
        type = "mqtt"
        url = "{broker.url}"
        keepalive = "5s"
    """) + textwrap.dedent(source) + textwrap.dedent(f"""
        [[modules]]
        name = "win"
        use = "window"
        inputs = {inputs!r}
        sync = true
        [modules.with]
        every = "1s"
        stats = ["count", "min", "max"]
    """).replace("'", '"'))
    return path


def publish(broker: Broker, messages: list[Message]) -> None:
    publisher = Publisher(broker.port, client_id=f"device-{time.monotonic_ns()}")
    try:
        infos = [publisher.client.publish(topic, payload, qos=1, retain=retain)
                 for topic, payload, retain in messages]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        publisher.close()


def wait_received(data_dir: Path, count: int, timeout: float = 15.0) -> dict[str, Any]:
    """The source's counters once it has received ``count`` messages (as committed)."""
    deadline = time.monotonic() + timeout
    source: dict[str, Any] = {}
    while time.monotonic() < deadline:
        source = read_status(data_dir)["sources"].get("dev", {})
        if source.get("received", 0) >= count:
            return source
        time.sleep(0.1)
    raise AssertionError(f"the source received {source.get('received', 0)} of {count}: {source}")


def run_once(config: Path, broker: Broker, agents: list[AgentProcess], messages: list[Message],
             expect_received: int | None = None) -> dict[str, Any]:
    """Start the agent, publish ``messages``, let it take them, stop it cleanly; its status."""
    agent = AgentProcess(config).start()
    agents.append(agent)
    data_dir = config.parent / "data"
    before = read_status(data_dir)["sources"].get("dev", {}).get("received", 0)
    publish(broker, messages)
    wait_received(data_dir, before + (len(messages) if expect_received is None else expect_received))
    agent.signal(signal.SIGTERM)
    assert agent.wait(15) == 0, agent.output()
    return read_status(data_dir)


def summaries(data_dir: Path) -> dict[str, dict[str, float]]:
    """Per sensor, the window summaries in the outbox added up: count, min, max."""
    box = Outbox.open_readonly(data_dir)
    try:
        rows = [row.data for row in box.unsent() if row.stream == "win"]
    finally:
        box.close()
    out: dict[str, dict[str, float]] = {}
    for data in rows:
        seen = out.setdefault(data["sensor"], {"count": 0, "min": data["min"], "max": data["max"]})
        seen["count"] += data["count"]
        seen["min"] = min(seen["min"], data["min"])
        seen["max"] = max(seen["max"], data["max"])
    return out


def values(data_dir: Path) -> dict[str, float]:
    """Per sensor, its one value (each sensor got one reading)."""
    found = summaries(data_dir)
    assert all(s["count"] == 1 for s in found.values()), found
    return {sensor: s["min"] for sensor, s in found.items()}
