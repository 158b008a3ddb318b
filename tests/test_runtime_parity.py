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
from agent.testing import Harness, ManualClock, pipeline_harness, reading
from tests.conftest import AgentProcess, Broker, agent_config
from tests.mqtt_helpers import Publisher

pytestmark = pytest.mark.integration

MODULES = Path(__file__).parent / "parity" / "modules.py"
T0 = float(int(time.time()) + 3600)  # ahead of the wall clock: windows close by reading time


def pipeline(tmp_path: Path, broker_url: str, isolation: str = "in-process") -> Path:
    """``isolation`` of ``double`` and ``tally`` (the daemon only: the harness runs a module in
    the test's process either way)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    return agent_config(tmp_path, broker_url, modules=f"""
        [[modules]]
        name = "double"
        use = "{MODULES}:Doubler"
        inputs = ["sensors/#"]
        sync = true
        isolation = "{isolation}"

        [[modules]]
        name = "tally"
        use = "{MODULES}:Tally"
        inputs = ["sensors/#"]
        sync = true
        isolation = "{isolation}"

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


def through_daemon(
    tmp_path: Path, broker: Broker, agents: list[AgentProcess], isolation: str = "in-process"
) -> dict[str, Any]:
    config = pipeline(tmp_path, broker.url, isolation)
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
    for name in ("double", "tally"):  # where the daemon ran them
        assert status["modules"][name].get("isolation", "in-process") == isolation, status
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


@pytest.mark.parametrize("isolation", ["in-process", "process"])
def test_daemon_and_harness_emit_the_same(tmp_path: Path, broker: Broker, agents, isolation: str) -> None:
    """In-process, and with ``double`` and ``tally`` each in a process of its own in the daemon:
    their state (``tally``'s counts) saved from the child and handed to the next one across the
    restart, what ``stop`` emits, and what they quarantine, as in process."""
    daemon = through_daemon(tmp_path / "daemon", broker, agents, isolation)
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


IO_MODULES = Path(__file__).parent / "parity" / "io_modules.py"
EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "modules" / "examples"
SECOND_EDITION = f"""
    [[modules]]
    name = "lookup"
    use = "{IO_MODULES}:SlowLookup"
    inputs = ["sensors/+"]
    sync = true
    [modules.with]
    delay = 0.01

    [[modules]]
    name = "split"
    use = "{IO_MODULES}:Splitter"
    inputs = ["sensors/+"]
    sync = ["alerts"]
    isolation = "process"

    [[modules]]
    name = "count"
    use = "{IO_MODULES}:Counter"
    inputs = ["split.alerts"]
    sync = true

    [[modules]]
    name = "climate"
    use = "join"
    inputs = {{ temp = "sensors/+/temp", hum = "sensors/+/hum" }}
    sync = true
    [modules.with]
    by_level = 1
    max_skew = "1m"

    [[modules]]
    name = "dew_point"
    use = "{EXAMPLES}/dewpoint.py:DewPoint"
    inputs = ["climate"]
    sync = true
    """
SECOND_READINGS = [
    ("t0", T0, 5.0), ("kitchen/temp", T0 + 1, 20.0), ("t1", T0 + 2, 12.0),
    ("hall/hum", T0 + 3, 40.0), ("t0", T0 + 4, 13.0), ("kitchen/hum", T0 + 5, 50.0),
    ("t1", T0 + 6, 3.0), ("hall/temp", T0 + 200, 18.0), ("t0", T0 + 201, 20.0),
    ("hall/hum", T0 + 230, 45.0), ("kitchen/temp", T0 + 225, 21.0),
    ("kitchen/hum", T0 + 231, 120.0), ("t1", T0 + 232, 7.0),
]
"""Plain readings for the async lookup and the isolated splitter (12, 13 and 20 are alerts, 13
makes it raise after that), and temperatures and humidities of two rooms for ``join`` (the
hall's first pair is too far apart, a humidity of 120 % is counted by the dew point)."""


def test_the_second_edition_runs_the_same_in_the_daemon_and_the_harness(
    tmp_path: Path, broker: Broker, agents
) -> None:
    """An ``async def process`` awaiting ``run_blocking``, an isolated module with two outputs
    (one synced, one routed to another module), named inputs through ``join`` and the dew-point
    tutorial: the same synced records, quarantined records and counters either way."""
    config = agent_config(tmp_path, broker.url, modules=SECOND_EDITION)
    synced = ("lookup", "split.alerts", "count", "climate", "dew_point")

    harness = pipeline_harness(config, start_at=T0, strict=False)
    harness.run([reading(*item) for item in SECOND_READINGS])
    expected = {
        "records": _by_stream([(r.topic, r.ts, r.data) for r in harness.emitted if r.topic in synced]),
        "quarantined": [(q.module, q.record.topic, q.record.ts, q.record.data, describe(q.error))
                        for q in harness.quarantined if q.record is not None],
        "counters": {name: harness.totals(name) for name in ("lookup", "split", "count", "climate",
                                                             "dew_point")},
    }
    harness.close()
    wanted = sum(len(stream) for stream in expected["records"].values())

    agent = AgentProcess(config).start()
    agents.append(agent)
    publisher = Publisher(broker.port)
    publisher.readings(SECOND_READINGS)
    publisher.close()
    deadline = time.monotonic() + 20
    while _rows(tmp_path) < wanted and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # nothing more comes
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0, agent.output()
    box = Outbox.open_readonly(tmp_path / "data")
    try:
        records = [(r.stream, r.ts, r.data) for r in box.unsent()]
        quarantined = [(q["module"], q["topic"], q["ts"], q["data"], q["error"])
                       for q in reversed(box.quarantined(limit=1000))]
    finally:
        box.close()
    status = read_status(tmp_path / "data")
    daemon = {
        "records": _by_stream(records),
        "quarantined": quarantined,
        "counters": {name: status["modules"][name]["counters"] for name in expected["counters"]},
    }

    assert daemon["records"] == expected["records"]
    assert daemon["quarantined"] == expected["quarantined"]
    assert daemon["counters"] == expected["counters"]
    # what the comparison covers, so that it cannot pass on two empty runs
    assert [data["site"] for _, data in daemon["records"]["lookup"]] == [
        f"site-of-t{i % 2}" for i in range(6)]
    # what a step emitted before it raised goes on, as in process (the 13 is quarantined too)
    assert [data["high"] for _, data in daemon["records"]["split.alerts"]] == [12.0, 13.0, 20.0]
    assert len(daemon["records"]["count"]) == 3
    assert [data["sensor"] for _, data in daemon["records"]["climate"]] == ["kitchen", "hall",
                                                                            "kitchen"]
    assert daemon["records"]["dew_point"] == [(T0 + 5, {"sensor": "kitchen", "value": 9.26,
                                                        "unit": "C"}),
                                              (T0 + 230, {"sensor": "hall", "value": 5.88,
                                                          "unit": "C"})]
    assert [q[0] for q in daemon["quarantined"]] == ["split"]
    assert daemon["counters"]["dew_point"]["humidity_out_of_range"] == 1


def _rows(tmp_path: Path) -> int:
    try:
        box = Outbox.open_readonly(tmp_path / "data")
    except Exception:
        return 0
    try:
        return sum(1 for _ in box.unsent())
    finally:
        box.close()
