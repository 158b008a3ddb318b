"""The module writer's harness keeps the runtime's promises, with a clock the test controls."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent import Module, ModuleConfig, Record
from agent.testing import Harness, ManualClock, module_harness, pipeline_harness, reading


class Echo(Module[ModuleConfig]):
    """Emits every record's value, and what time it is on each tick."""

    tick_interval = 10.0

    def process(self, record: Record) -> None:
        self.context.emit({"value": record.data.get("value"), "clock": self.context.clock()})

    def tick(self, now: float) -> None:
        self.context.emit({"tick": now})


class Fragile(Module[ModuleConfig]):
    def process(self, record: Record) -> None:
        if record.data["value"] < 0:
            raise ValueError("negative")
        self.context.emit({"ok": record.data["value"]}, ts=record.ts)


class Counter(Module[ModuleConfig]):
    async def start(self) -> None:
        self.context.state.setdefault("n", 0)

    def process(self, record: Record) -> None:
        self.context.state["n"] += 1
        self.context.emit({"n": self.context.state["n"]}, ts=record.ts)


def test_the_clock_follows_readings_and_ticks_come_as_it_passes_them() -> None:
    harness = module_harness(Echo, start_at=100.0)
    out = harness.feed([reading("t1", 101, 1.0), reading("t1", 105, 2.0), reading("t1", 112, 3.0)])
    assert [r.data for r in out] == [
        {"value": 1.0, "clock": 105.0},  # one batch: the clock is at its newest reading
        {"value": 2.0, "clock": 105.0},
        {"tick": 112.0},  # 110 was due: the tick comes before the reading that passed it
        {"value": 3.0, "clock": 112.0},
    ]
    assert harness.clock() == 112.0


def test_advance_ticks_at_every_step_and_a_clock_jump_back_is_possible() -> None:
    harness = module_harness(Echo, follow_readings=False, start_at=0.0)
    assert [r.data["tick"] for r in harness.advance(30, step=10)] == [10.0, 20.0, 30.0]
    harness.clock.set(5.0)  # NTP pulled the clock back
    assert [r.data["tick"] for r in harness.tick()] == [5.0]
    out = harness.feed([reading("t1", 50, 1.0)])
    assert out[0].data["clock"] == 5.0  # the clock does not follow readings when told not to


def test_strict_harness_raises_the_modules_error() -> None:
    harness = module_harness(Fragile)
    with pytest.raises(ValueError, match="negative"):
        harness.feed([reading("t1", 0, -1.0)])


def test_a_lenient_harness_quarantines_and_counts_like_the_daemon() -> None:
    harness = module_harness(Fragile, strict=False)
    out = harness.run([reading("t1", i, -1.0 if i % 3 == 0 else 1.0) for i in range(9)])
    assert len(out) == 6
    assert harness.counters["errors"] == 3 and harness.counters["quarantined"] == 3
    assert [q.record.ts for q in harness.quarantined if q.record] == [0.0, 3.0, 6.0]


def test_restart_keeps_state_through_json() -> None:
    harness = module_harness(Counter)
    harness.feed([reading("t1", 0, 1.0), reading("t1", 1, 1.0)])
    harness.restart()
    assert harness.feed([reading("t1", 2, 1.0)])[0].data == {"n": 3}


class Unserialisable(Module[ModuleConfig]):
    async def start(self) -> None:
        self.context.state["when"] = object()

    def process(self, record: Record) -> None:
        pass


def test_state_that_is_not_json_fails_on_restart_as_it_would_on_a_commit() -> None:
    harness = module_harness(Unserialisable)
    with pytest.raises(TypeError):
        harness.restart()


def test_config_is_validated_like_the_daemon_does() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="every"):
        module_harness("window", every="-1s")
    with pytest.raises(ValidationError, match="Extra inputs"):
        module_harness("window", evry="10s")


def test_a_pipeline_routes_by_topic_and_a_module_never_gets_its_own_output(tmp_path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        'device_id = "gw"\ndata_dir = "data"\n'
        '[[modules]]\nname = "cal"\nuse = "transform"\ninputs = ["#"]\n'
        '[modules.with.sensors.t1]\nscale = 10.0\n'
        '[[modules]]\nname = "win"\nuse = "window"\ninputs = ["cal"]\n'
        '[modules.with]\nevery = "10s"\nstats = ["count", "sum"]\n'
    )
    harness = pipeline_harness(config)
    out = harness.run([reading("t1", i, 1.0) for i in range(5)])
    assert [r.data["value"] for r in harness.emitted_by("cal")] == [10.0] * 5
    (summary,) = harness.emitted_by("win")
    assert summary.data == {"sensor": "t1", "start": 0.0, "end": 10.0, "count": 5, "sum": 50.0}
    assert len(out) == 6  # "cal" (inputs "#") saw the window's output, but not its own


def test_an_isolated_module_runs_in_the_harness_as_in_process(tmp_path) -> None:
    """``isolation`` changes where the daemon runs a module, not what it does: the harness runs
    the module in the test's process either way, with the same output."""
    outputs = []
    for isolation in ("in-process", "process"):
        config = tmp_path / f"{isolation}.toml"
        config.write_text(
            'device_id = "gw"\ndata_dir = "data"\n'
            f'[[modules]]\nname = "win"\nuse = "window"\ninputs = ["#"]\nisolation = "{isolation}"\n'
            '[modules.with]\nevery = "10s"\nstats = ["count", "sum"]\n'
        )
        harness = pipeline_harness(config)
        outputs.append(harness.run([reading("t1", i, 1.0) for i in range(25)]))
    assert outputs[0] == outputs[1] and len(outputs[0]) == 3


def test_the_fixture_is_one_line(harness: Any) -> None:
    out = harness("deadband", absolute=1.0).run([reading("t1", 0, 1.0), reading("t1", 1, 1.5)])
    assert len(out) == 1


def test_inside_an_event_loop_the_async_methods_are_the_way() -> None:
    async def main() -> None:
        harness = Harness([], clock=ManualClock())
        with pytest.raises(RuntimeError, match="astart"):
            harness.start()
        await harness.astart()
        await harness.astop()

    asyncio.run(main())
