"""The daemon and the harness run modules through one runtime: the same readings through
``edge-agent run`` (real Mosquitto, real outbox) and through ``agent.testing`` give the same
records, the same quarantined records and errors, the same counters, and the same state across a
restart, including where a module gets ``emit`` wrong or raises."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.health.status import read_status
from agent.outbox import Outbox
from agent.runtime.instance import describe
from agent.testing import Harness, ManualClock
from tests.conftest import AgentProcess, Broker, agent_config
from tests.mqtt_helpers import Publisher

pytestmark = pytest.mark.integration

MODULES = Path(__file__).parent / "parity" / "modules.py"
T0 = float(int(time.time()) + 3600)  # ahead of the wall clock: windows close by reading time


def pipeline(tmp_path: Path, broker_url: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return agent_config(tmp_path, broker_url, modules=f"""
        [[modules]]
        name = "double"
        use = "{MODULES}:Doubler"
        inputs = ["sensors/#"]
        sync = true

        [[modules]]
        name = "tally"
        use = "{MODULES}:Tally"
        inputs = ["sensors/#"]
        sync = true

        [[modules]]
        name = "win"
        use = "window"
        inputs = ["double"]
        sync = true
        [modules.with]
        every = "10s"
        timeout = "1h"
        stats = ["count", "mean", "max"]
        """)


def phase(start: int, n: int) -> list[tuple[str, float, float]]:
    """Readings of two sensors a second apart, with a negative value, a 7 and an 8 among them."""
    values = [-1.0, 7.0, 8.0, 1.5, 2.0, 3.0, 4.5, 5.0, 6.0, 9.0]
    return [(f"t{i % 2}", T0 + start + i, values[i % len(values)]) for i in range(n)]


PHASES = [phase(0, 40), phase(40, 35)]
"""Readings before and after a restart of the whole agent."""


def through_daemon(tmp_path: Path, broker: Broker, agents: list[AgentProcess]) -> dict[str, Any]:
    config = pipeline(tmp_path, broker.url)
    for number, readings in enumerate(PHASES, start=1):
        agent = AgentProcess(config).start()
        agents.append(agent)
        publisher = Publisher(broker.port)
        publisher.readings(readings)
        publisher.close()
        deadline = time.monotonic() + 10
        while _processed(tmp_path) < sum(len(p) for p in PHASES[:number]):
            assert time.monotonic() < deadline, agent.output()
            time.sleep(0.2)
        agent.signal(signal.SIGTERM)
        assert agent.wait(10) == 0, agent.output()
    box = Outbox.open_readonly(tmp_path / "data")
    try:
        records = [(r.stream, r.ts, r.data) for r in box.unsent()]
        quarantined = [
            (q["module"], q["topic"], q["ts"], q["data"], q["error"])
            for q in reversed(box.quarantined(limit=1000))
        ]
    finally:
        box.close()
    status = read_status(tmp_path / "data")
    return {
        "records": _by_stream(records),
        "quarantined": quarantined,
        "counters": {name: module["counters"] for name, module in status["modules"].items()},
        "state": {name: _state(tmp_path, name) for name in ("tally",)},
    }


def _processed(tmp_path: Path) -> int:
    """Readings the first module has processed, as the daemon last committed its counters."""
    try:
        status = read_status(tmp_path / "data")
    except Exception:
        return 0
    return int(status["modules"].get("double", {}).get("processed", 0))


def _state(tmp_path: Path, name: str) -> Any:
    box = Outbox.open_readonly(tmp_path / "data")
    try:
        return box.module_states().get(name)
    finally:
        box.close()


def through_harness(tmp_path: Path, broker: Broker) -> dict[str, Any]:
    loaded = load_config(pipeline(tmp_path, broker.url))
    states: dict[str, Any] = {}
    records: list[tuple[str, float, dict[str, Any]]] = []
    quarantined = []
    counters: dict[str, dict[str, int]] = {}
    for readings in PHASES:
        harness = Harness(
            loaded.modules, clock=ManualClock(T0), strict=False,
            states=json.loads(json.dumps(states)),  # as the outbox keeps it
        ).start()
        harness.run([_reading(*item) for item in readings])
        records += [(r.topic, r.ts, r.data) for r in harness.emitted]
        quarantined += [
            (q.module, q.record.topic, q.record.ts, q.record.data, describe(q.error))
            for q in harness.quarantined if q.record is not None
        ]
        for stage in harness.stepper.stages:
            states[stage.name] = dict(stage.context.state)
            totals = counters.setdefault(stage.name, {})
            for key, value in harness.totals(stage.name).items():
                totals[key] = totals.get(key, 0) + value
        harness.close()
    return {
        "records": _by_stream(records),
        "quarantined": quarantined,
        "counters": counters,
        "state": {name: states[name] for name in ("tally",)},
    }


def _reading(sensor: str, ts: float, value: float) -> Any:
    from agent.testing import reading

    return reading(sensor, ts, value)


def _by_stream(records: list[tuple[str, float, dict[str, Any]]]) -> dict[str, list[Any]]:
    """Records per stream in the order the module emitted them (streams interleave differently:
    the daemon's modules run side by side)."""
    streams: dict[str, list[Any]] = {}
    for stream, ts, data in records:
        streams.setdefault(stream, []).append((ts, data))
    return streams


def test_daemon_and_harness_emit_the_same(tmp_path: Path, broker: Broker, agents) -> None:
    daemon = through_daemon(tmp_path / "daemon", broker, agents)
    harness = through_harness(tmp_path / "harness", broker)

    assert daemon["records"] == harness["records"]
    assert daemon["quarantined"] == harness["quarantined"]
    assert daemon["counters"] == harness["counters"]
    assert daemon["state"] == harness["state"]
    # what the comparison covers, so that it cannot pass on two empty runs
    errors = {q[4] for q in daemon["quarantined"]}
    assert errors == {
        "ValueError: negative reading",
        "TypeError: emit takes a dict of data, not list",
        "TypeError: emit's ts must be Unix seconds (a number), not str",
    }
    assert daemon["state"]["tally"]["counts"] == {"t0": 38, "t1": 37}
    assert [data for _, data in daemon["records"]["tally"] if "totals" in data] == [
        {"totals": {"t0": 20, "t1": 20}}, {"totals": {"t0": 38, "t1": 37}},
    ]
    assert sum(data["count"] for _, data in daemon["records"]["win"]) == len(
        daemon["records"]["double"]
    )
