"""The window module: tumbling and hopping windows, every statistic, lateness and closing."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from pydantic import ValidationError

from agent.testing import module_harness, reading
from modules._quantiles import QuantileSketch, SketchShape

ALL = ["count", "sum", "mean", "min", "max", "stddev", "first", "last", "p50", "p90", "p95", "p99"]
Q = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}


def expected(values: list[tuple[float, float]], stat: str) -> float:
    """The statistic computed the slow, obvious way from (ts, value) pairs."""
    ordered = [v for _, v in sorted(values, key=lambda pair: pair[0])]
    plain = [v for _, v in values]
    if stat == "count":
        return len(plain)
    if stat == "sum":
        return math.fsum(plain)
    if stat == "mean":
        return statistics.fmean(plain)
    if stat == "min":
        return min(plain)
    if stat == "max":
        return max(plain)
    if stat == "stddev":
        return statistics.pstdev(plain)
    if stat == "first":
        return ordered[0]
    if stat == "last":
        return ordered[-1]
    data = sorted(plain)  # linear interpolation between closest ranks, as numpy.percentile
    position = Q[stat] * (len(data) - 1)
    low = math.floor(position)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (position - low)


@pytest.mark.parametrize(("every", "hop"), [(10, None), (10, 5), (60, 20), (6, 4), (1.5, 0.5)])
def test_every_statistic_of_every_window_matches_a_brute_force_computation(every, hop) -> None:
    rng = random.Random(every * 100 + (hop or 0))
    rows = [(f"s{rng.randrange(3)}", 1000 + rng.uniform(0, 120), rng.gauss(1013, 5))
            for _ in range(2000)]
    rows.sort(key=lambda row: row[1])
    options = {"every": every, "stats": ALL} | ({"hop": hop} if hop else {})
    out = module_harness("window", **options).run([reading(*row) for row in rows])
    step = hop or every
    seen = set()
    for record in out:
        data = record.data
        assert list(data)[:4] == ["sensor", "start", "end", "count"]
        assert data["end"] - data["start"] == pytest.approx(every)
        assert record.ts == data["end"]
        assert round(data["start"] / step, 6) == round(data["start"] / step)  # aligned on hop
        inside = [(ts, v) for s, ts, v in rows if s == data["sensor"]
                  and data["start"] <= ts < data["end"]]
        span = max(v for _, v in inside) - min(v for _, v in inside)
        for stat in ALL:
            want = expected(inside, stat)
            if stat in Q and len(inside) > 256:  # past 256 readings, the sketch's guarantee
                ranked = sorted(v for _, v in inside)[math.floor(Q[stat] * (len(inside) - 1))]
                assert abs(data[stat] - ranked) <= 0.01 * span, stat
            else:
                assert data[stat] == pytest.approx(want, rel=1e-9, abs=1e-9), stat
        seen.add((data["sensor"], data["start"]))
    assert len(seen) == len(out)  # no window twice
    windows_per_reading = [
        sum(1 for k in range(math.floor((ts - every) / step), math.floor(ts / step) + 2)
            if k * step <= ts < k * step + every)
        for _, ts, _ in rows
    ]
    assert sum(r.data["count"] for r in out) == sum(windows_per_reading)  # none lost, none twice


def test_windows_with_no_readings_emit_nothing() -> None:
    out = module_harness("window", every="10s").run(
        [reading("t1", 1, 1.0), reading("t1", 95, 2.0)]
    )
    assert [(r.data["start"], r.data["count"]) for r in out] == [(0.0, 1), (90.0, 1)]


def test_a_summary_carries_its_readings_unit_but_a_count_alone_does_not() -> None:
    rows = [reading("t1", 1, 20.0, "C"), reading("t1", 2, 21.0, "C"), reading("h1", 1, 50.0),
            reading("h1", 2, 51.0, 7), reading("t1", 11, 22.0, "C")]  # 7: not a unit
    out = module_harness("window", every="10s").run(rows)
    assert [r.data for r in out] == [
        {"sensor": "t1", "start": 0.0, "end": 10.0, "count": 2, "mean": 20.5, "min": 20.0, "max": 21.0,
         "unit": "C"},
        {"sensor": "t1", "start": 10.0, "end": 20.0, "count": 1, "mean": 22.0, "min": 22.0, "max": 22.0,
         "unit": "C"},
        {"sensor": "h1", "start": 0.0, "end": 10.0, "count": 2, "mean": 50.5, "min": 50.0, "max": 51.0},
    ]
    hopping = module_harness("window", every="10s", hop="5s", stats=["max"]).run(rows)
    assert {r.data.get("unit") for r in hopping if r.data["sensor"] == "t1"} == {"C"}
    counts = module_harness("window", every="10s", stats=["count"]).run(rows)
    assert [r.data["count"] for r in counts] == [2, 1, 2] and all("unit" not in r.data for r in counts)


def test_a_restored_window_keeps_its_unit_and_a_checkpoint_without_one_still_restores() -> None:
    harness = module_harness("window", every="10s")
    harness.feed([reading("t1", 1, 1.0, "C")])
    saved = dict(harness.module().checkpoint() or {})
    older = saved | {"t1": saved["t1"][:2]}  # marks and panes: a checkpoint before units
    for checkpoint, unit in ((saved, {"unit": "C"}), (older, {})):
        again = module_harness("window", every="10s")
        again.module().restore(checkpoint)
        assert [r.data for r in again.stop()] == [{"sensor": "t1", "start": 0.0, "end": 10.0, "count": 1,
                                                   "mean": 1.0, "min": 1.0, "max": 1.0} | unit]


def test_first_and_last_go_by_reading_time_not_arrival() -> None:
    out = module_harness("window", every="10s", stats=["first", "last"], lateness="5s").run(
        [reading("t1", 5, 5.0), reading("t1", 2, 2.0), reading("t1", 8, 8.0), reading("t1", 8, 9.0)]
    )
    assert out[0].data | {} == {"sensor": "t1", "start": 0.0, "end": 10.0, "count": 4,
                                "first": 2.0, "last": 9.0}  # a tie goes to the later arrival


@pytest.mark.parametrize(
    ("lateness", "times", "counted_late"),
    [
        (0, [1, 5, 11, 9.5], 1),  # 11 closed [0, 10): 9.5 comes too late
        (0, [1, 5, 9.5, 11], 0),
        (0, [1, 5, 11, 10.5], 0),  # out of order, but its window is still open
        ("2s", [1, 5, 11, 9.5], 0),  # 11 - 2 < 10: [0, 10) still takes readings
        ("2s", [1, 5, 11, 12.5, 9.5], 1),  # 12.5 - 2 >= 10: closed
        ("1s", [1, 5, 11, 9.5], 1),
    ],
)
def test_lateness_folds_late_readings_in_or_counts_them(lateness, times, counted_late) -> None:
    harness = module_harness("window", every="10s", lateness=lateness)
    out = harness.run([reading("t1", ts, 1.0) for ts in times])
    assert harness.counters["late"] == counted_late
    assert sum(r.data["count"] for r in out) == len(times) - counted_late


def test_a_backlog_of_old_readings_is_not_closed_early_by_the_clock() -> None:
    """Readings from last year arriving now (a buffer flushed after an outage) close their
    windows by their own times, not because the wall clock is far ahead of them."""
    harness = module_harness("window", every="10s", follow_readings=False, start_at=2e9)
    harness.feed([reading("t1", 1000 + i * 0.5, 1.0) for i in range(10)])
    assert harness.advance(1, step=0.25) == []  # the clock is 30 years ahead: still open
    harness.feed([reading("t1", 1005 + i * 0.5, 1.0) for i in range(10)])
    out = harness.advance(30, step=1)  # the sensor went quiet: timeout closes what is due
    assert [(r.data["start"], r.data["count"]) for r in out] == [(1000.0, 20)]
    assert harness.counters["late"] == 0


def test_timeout_closes_a_quiet_sensors_window_after_its_end() -> None:
    harness = module_harness("window", every="10s", timeout="5s", follow_readings=False)
    harness.feed([reading("t1", 2, 1.0)])
    assert harness.advance(12, step=1) == []  # 14: end (10) + timeout (5) not yet passed
    out = harness.advance(1)
    assert [r.data["end"] for r in out] == [10.0]


def test_a_clock_jump_closes_nothing_early_and_loses_nothing() -> None:
    harness = module_harness("window", every="10s", follow_readings=False, start_at=100)
    harness.feed([reading("t1", 100 + i, 1.0) for i in range(5)])
    harness.clock.set(-5e8)  # back to 1954
    assert harness.tick() == []
    harness.clock.set(2e9)  # and forward again
    out = harness.tick() + harness.feed([reading("t1", 106, 1.0)]) + harness.stop()
    assert sum(r.data["count"] for r in out) == 6


DAY = 86400.0
T0 = 1_700_000_000.0


def test_a_sensor_clock_reset_closes_its_windows_and_starts_again() -> None:
    """A sensor that reboots with its clock two days back is not late for two days."""
    harness = module_harness("window", every="10s", follow_readings=False, start_at=T0)
    out = harness.feed([reading("t1", T0 + i, 1.0) for i in range(5)])
    out += harness.feed([reading("t1", T0 - 2 * DAY + i, 1.0) for i in range(15)])
    out += harness.stop()
    assert harness.counters["late"] == 0
    assert harness.counters["clock_reset"] == 1
    assert sum(r.data["count"] for r in out) == 20
    assert out[0].data["start"] == T0  # the old time line's window, closed at the reset


@pytest.mark.parametrize("step", [-3600.0, -DAY])
def test_readings_after_the_gateway_clock_steps_back_are_processed_not_late(step) -> None:
    """Readings stamped by the gateway (no ts of their own) after NTP sets its clock back."""
    harness = module_harness("window", every="10s", follow_readings=False, start_at=T0)
    out = harness.feed([reading("t1", T0 + i, 1.0) for i in range(5)])
    harness.clock.set(T0 + 5 + step)
    out += harness.tick()
    out += harness.feed([reading("t1", T0 + 5 + step + i, 1.0) for i in range(5)])
    out += harness.stop()
    assert harness.counters["late"] == 0
    assert sum(r.data["count"] for r in out) == 10


def test_a_reading_from_the_future_moves_the_watermark_no_further_than_the_clock_allows() -> None:
    harness = module_harness("window", every="10s", follow_readings=False, start_at=T0)
    out = harness.feed([reading("t1", T0 + 3 * DAY, 1.0)])  # a millisecond stamp gone wrong, say
    out += harness.feed([reading("t1", T0 + i, 1.0) for i in range(5)])
    out += harness.stop()
    assert harness.counters["late"] == 0
    assert sum(r.data["count"] for r in out) == 6


@pytest.mark.parametrize(("every", "hop"), [(10, None), (10, 5)])
def test_a_window_restored_from_its_checkpoint_emits_what_an_uninterrupted_one_does(every, hop) -> None:
    """Crash after each chunk: checkpoint (what changed), a new instance restored from every
    checkpoint so far, the next chunk. Same summaries, every statistic and unit, as one run."""
    rng = random.Random(7)
    rows = sorted(((f"s{k}", 1000 + rng.uniform(0, 100), rng.gauss(20, 3), "C" if k < 3 else None)
                   for k in (rng.randrange(5) for _ in range(3000))), key=lambda row: row[1])
    options = {"every": every, "stats": ALL, "timeout": "1h"} | ({"hop": hop} if hop else {})
    whole = module_harness("window", **options).run([reading(*row) for row in rows])

    saved: dict[str, object] = {}
    out = []
    for chunk in range(0, len(rows), 700):
        harness = module_harness("window", follow_readings=False, start_at=1000, **options)
        if saved:
            harness.module().restore(saved)
        out += harness.feed([reading(*row) for row in rows[chunk:chunk + 700]])
        checkpoint = harness.module().checkpoint()
        assert checkpoint is not None
        saved.update(checkpoint)
        saved = {key: value for key, value in saved.items() if value is not None}
    out += harness.stop()
    def key(record):
        return record.data["sensor"], record.data["start"]

    assert [r.data for r in sorted(out, key=key)] == [r.data for r in sorted(whole, key=key)]


def test_a_checkpoint_holds_only_the_sensors_touched_since_the_last() -> None:
    harness = module_harness("window", every="10s")
    harness.feed([reading(f"s{i}", 1000 + i * 0.001, 1.0) for i in range(100)])
    assert len(harness.module().checkpoint() or {}) == 101  # 100 sensors and the config
    harness.feed([reading("s7", 1001, 1.0)])
    assert list(harness.module().checkpoint() or {}) == ["s7"]


def test_memory_is_bounded_in_sensors() -> None:
    harness = module_harness("window", every="10s", max_sensors=2)
    out = harness.run([reading(f"s{i}", 1, 1.0) for i in range(5)])
    assert len(out) == 2 and harness.counters["too_many_sensors"] == 3


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"every": "0s"}, "greater than 0"),
        ({"stats": []}, "at least 1"),
        ({"stats": ["mean", "median"]}, "'p99'"),
        ({"stats": ["mean", "mean"]}, "more than once"),
        ({"every": "10s", "hop": "20s"}, "must not be longer"),
        ({"every": "1h", "hop": "7ms"}, "common step"),
        ({"quantile_accuracy": 0.5}, "less than or equal"),
        ({"lateness": "soon"}, "not a duration"),
    ],
)
def test_bad_configs_are_refused_with_a_reason(options, error) -> None:
    with pytest.raises(ValidationError, match=error):
        module_harness("window", **options)


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: rng.gauss(1013.25, 4.0),  # far from zero, small spread: pressure in hPa
        lambda rng: rng.lognormvariate(0, 2),  # heavy tail
        lambda rng: rng.uniform(-40, 40),  # crosses zero
        lambda rng: rng.choice([0.0, 0.5, 1.0]) + rng.gauss(0, 1e-3),  # clusters
        lambda rng: 21.5,  # constant
    ],
)
def test_sketch_quantiles_stay_within_the_documented_error(make) -> None:
    rng = random.Random(7)
    values = [make(rng) for _ in range(50_000)]
    shape = SketchShape(accuracy=0.01)
    sketch = QuantileSketch(shape)
    for value in values:
        sketch.add(value)
    assert sketch.bins() <= 2 * shape.max_bins + 1
    ordered = sorted(values)
    span = ordered[-1] - ordered[0]
    qs = [0.01, 0.25, 0.5, 0.9, 0.95, 0.99]
    for q, estimate in zip(qs, sketch.quantiles(qs, ordered[0], ordered[-1]), strict=True):
        true = ordered[math.floor(q * (len(ordered) - 1))]
        assert abs(estimate - true) <= 0.01 * abs(true - sketch.ref) + 1e-9 * span, (q, true)


def test_the_sketch_stays_bounded_when_its_bins_must_fold() -> None:
    shape = SketchShape(accuracy=0.01, max_bins=64)
    sketch = QuantileSketch(shape)
    rng = random.Random(1)
    values = [rng.lognormvariate(0, 3) for _ in range(20_000)]
    for value in values:
        sketch.add(value)
    assert sketch.bins() <= 2 * 64 + 1
    ordered = sorted(values)
    assert sketch.ref is not None
    far = max(ordered[-1] - sketch.ref, sketch.ref - ordered[0])
    fold_bound = far * shape.gamma ** -(shape.max_bins - 2)  # what folding may cost, documented
    qs = [0.5, 0.99, 0.9999]
    for q, estimate in zip(qs, sketch.quantiles(qs), strict=True):
        true = ordered[math.floor(q * (len(ordered) - 1))]
        assert abs(estimate - true) <= max(0.01 * abs(true - sketch.ref), fold_bound), q


def test_hopping_panes_merge_without_losing_the_guarantee() -> None:
    rng = random.Random(3)
    rows = [("t1", i * 0.01, rng.gauss(50, 10)) for i in range(30_000)]  # 300 s, 100 a second
    out = module_harness("window", every="60s", hop="20s", stats=["count", "p50", "p99"]).run(
        [reading(*row) for row in rows]
    )
    for record in out:
        data = record.data
        inside = sorted(v for _, ts, v in rows if data["start"] <= ts < data["end"])
        span = inside[-1] - inside[0]
        for stat in ("p50", "p99"):
            true = inside[math.floor(Q[stat] * (len(inside) - 1))]
            assert abs(data[stat] - true) <= 0.02 * span, (data, stat, true)
