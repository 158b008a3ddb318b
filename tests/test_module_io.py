"""The second edition of the module API in the harness: async steps with ``run_blocking``,
timers on the monotonic clock, producers, named outputs, and what is counted when things go
wrong. The daemon runs the same modules in tests/test_module_io_daemon.py."""

from __future__ import annotations

import time

import pytest

from agent.testing import module_harness, pipeline_harness, reading
from tests.parity.io_modules import BatchLookup, Poller, SlowLookup, Splitter


def test_an_async_module_awaits_blocking_calls_on_its_own_threads() -> None:
    harness = module_harness(SlowLookup, delay=0.05)
    started = time.monotonic()
    out = harness.run([reading("t1", 1, 1.0), reading("t2", 2, 2.0)])
    assert [(r.ts, r.data["site"]) for r in out] == [(1.0, "site-of-t1"), (2.0, "site-of-t2")]
    assert time.monotonic() - started >= 0.1  # the calls really ran, one after the other
    assert harness.totals()["processed"] == 2


def test_an_async_process_batch_gets_the_batch() -> None:
    out = module_harness(BatchLookup).run([reading("b", 1, 1.0), reading("a", 1, 2.0)])
    assert [r.data["known"] for r in out] == [["a", "b"], ["a", "b"]]


def test_a_producer_polls_on_the_monotonic_clock_across_wall_clock_jumps() -> None:
    harness = module_harness(Poller, inputs=(), start_at=1_000.0, follow_readings=False)
    assert [r.data["poll"] for r in harness.advance(2.0, step=0.25)] == [1, 2, 3, 4]
    harness.clock.set(10.0)  # the wall clock is stepped back 990 s: no burst, no stall
    assert harness.advance(0.2) == []
    (poll,) = harness.advance(0.3)
    assert poll.data["poll"] == 5 and poll.ts == 10.5  # stamped with the wall time it has now
    harness.clock.set(1e6)  # ...and forward: not 2 million polls at once
    assert [r.data["poll"] for r in harness.advance(0.5)] == [6]


def test_a_producer_keeps_counting_across_a_restart() -> None:
    harness = module_harness(Poller, inputs=(), follow_readings=False, strict=False)
    harness.advance(1.0, step=0.5)
    harness.restart()
    assert [r.data["poll"] for r in harness.advance(0.5)] == [3]


def test_outputs_go_on_their_own_streams_and_an_undeclared_one_is_an_error(tmp_path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        'device_id = "gw"\ndata_dir = "data"\n'
        f'[[modules]]\nname = "split"\nuse = "{_file()}:Splitter"\ninputs = ["sensors/#"]\n'
        'sync = ["alerts"]\n'
        f'[[modules]]\nname = "count"\nuse = "{_file()}:Counter"\ninputs = ["split.alerts"]\n'
    )
    harness = pipeline_harness(config, strict=False)
    harness.run([reading("t1", 1, 5.0), reading("t1", 2, 12.0), reading("t1", 3, 13.0)])
    assert [r.data["value"] for r in harness.emitted_by("split")] == [5.0, 12.0, 13.0]
    assert [r.data["high"] for r in harness.emitted_by("split.alerts")] == [12.0, 13.0]
    assert [r.data["from"] for r in harness.emitted_by("count")] == ["split.alerts"] * 2
    (bad,) = harness.quarantined
    assert "'alarms' is not one of this module's outputs (declared: alerts)" in str(bad.error)


def test_the_harness_stops_a_module_mid_step_as_the_daemon_does() -> None:
    """A strict harness fails on the first error; a lenient one counts what it quarantined."""
    harness = module_harness(Splitter, strict=False)
    harness.run([reading("t1", 1, 13.0)])
    assert harness.counters["errors"] == 1 and harness.counters["quarantined"] == 1
    with pytest.raises(ValueError, match="alarms"):
        module_harness(Splitter).run([reading("t1", 1, 13.0)])


def _file() -> str:
    from tests.parity import io_modules

    return str(io_modules.__file__)

