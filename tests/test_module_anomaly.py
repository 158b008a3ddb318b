"""anomaly: EWMA z-score, median/MAD spikes, stuck sensors and silent sensors."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from agent.testing import module_harness, reading


def noisy(n: int, seed: int = 1, level: float = 20.0, start: float = 0.0) -> list:
    rng = random.Random(seed)
    return [reading("t1", start + i, level + rng.gauss(0, 0.1)) for i in range(n)]


@pytest.mark.parametrize("detector", [{"type": "zscore"}, {"type": "spike"}])
def test_a_spike_is_found_with_its_score_and_noise_is_not(detector) -> None:
    harness = module_harness("anomaly", detectors=[detector])
    out = harness.run([*noisy(200), reading("t1", 200, 25.0), *noisy(50, 2, start=201)])
    assert [(r.ts, r.data["type"]) for r in out] == [(200.0, detector["type"])]
    event = out[0].data
    assert event["event"] == "anomaly" and event["detector"] == detector["type"]
    assert event["value"] == 25.0 and event["score"] > 20 and abs(event["expected"] - 20) < 0.2


@pytest.mark.parametrize(("detector", "warm"), [({"type": "zscore", "warm_up": 30}, 30),
                                                 ({"type": "spike", "window": 11}, 11)])
def test_nothing_is_scored_during_warm_up(detector, warm) -> None:
    values = [reading("t1", i, 20.0 + (i % 2)) for i in range(warm - 1)] + [reading("t1", 99, 1e6)]
    assert module_harness("anomaly", detectors=[detector]).run(values) == []


def test_the_robust_detector_is_not_fooled_by_earlier_spikes() -> None:
    rng = random.Random(3)
    rows = [reading("t1", i, 20 + rng.gauss(0, 0.1) + (50 if i % 10 == 5 else 0))
            for i in range(100)]
    out = module_harness("anomaly", detectors=[{"type": "spike", "window": 21}]).run(rows)
    assert sorted({int(r.ts) for r in out}) == [i for i in range(25, 100, 10)]


def test_a_flat_history_gives_no_score_unless_min_spread_is_set() -> None:
    flat = [reading("t1", i, 20.0) for i in range(40)] + [reading("t1", 40, 21.0)]
    assert module_harness("anomaly", detectors=[{"type": "spike"}]).run(flat) == []
    out = module_harness("anomaly", detectors=[{"type": "spike", "min_spread": 0.1}]).run(flat)
    assert [r.data["score"] for r in out] == [10.0]


def test_a_stuck_sensor_is_raised_then_cleared() -> None:
    harness = module_harness("anomaly", detectors=[{"type": "flatline", "duration": "5m"}])
    out = harness.run(
        noisy(10) + [reading("t1", 10 + i * 30, 20.0) for i in range(20)] + noisy(5, start=700)
    )
    assert [(r.data["event"], r.ts, r.data["score"]) for r in out] == [
        ("raised", 310.0, 300.0), ("cleared", 700.0, 690.0)
    ]


def test_a_silent_sensor_is_raised_by_the_clock_and_cleared_when_it_is_back() -> None:
    harness = module_harness("anomaly", detectors=[{"type": "gap", "max_silence": "60s"}],
                             follow_readings=False)
    harness.feed([reading("t1", 0, 1.0), reading("t2", 0, 1.0)])
    out = harness.advance(59, step=1)
    harness.feed([reading("t2", 59, 1.0)])
    out += harness.advance(30, step=1) + harness.feed([reading("t1", 95, 1.0)])
    assert [(r.data["event"], r.data["sensor"], r.ts) for r in out] == [
        ("raised", "t1", 61.0), ("cleared", "t1", 95.0)
    ]


def test_gaps_in_a_recording_are_found_from_reading_times() -> None:
    out = module_harness("anomaly", detectors=[{"type": "gap", "max_silence": "60s"}]).run(
        [reading("t1", 0, 1.0), reading("t1", 30, 1.0), reading("t1", 500, 1.0)]
    )
    assert [(r.data["event"], r.ts, r.data["score"]) for r in out] == [
        ("raised", 90.0, 470.0), ("cleared", 500.0, 470.0)
    ]


def test_a_clock_jump_raises_no_false_gap() -> None:
    harness = module_harness("anomaly", detectors=[{"type": "gap", "max_silence": "60s"}],
                             follow_readings=False, start_at=0)
    harness.feed([reading("t1", 0, 1.0)])
    harness.advance(10, step=1)
    harness.clock.set(1.7e9)  # NTP sets the clock of a board that booted in 1970
    assert harness.tick() == []
    assert harness.advance(50, step=1) == []
    assert [r.data["event"] for r in harness.advance(15, step=1)] == ["raised"]


def test_known_sensors_survive_a_restart_for_the_gap_detector() -> None:
    harness = module_harness("anomaly", detectors=[{"type": "gap", "max_silence": "60s"}],
                             follow_readings=False)
    harness.feed([reading("t1", 0, 1.0)])
    harness.advance(5, step=1)
    harness.restart()
    assert [r.data["sensor"] for r in harness.advance(70, step=1)] == ["t1"]


@pytest.mark.parametrize(
    ("detectors", "error"),
    [
        ([], "at least 1"),
        ([{"type": "magic"}], "does not match any of the expected tags"),
        ([{"type": "zscore"}, {"type": "zscore"}], "used twice"),
        ([{"type": "gap"}], "max_silence"),
        ([{"type": "gap", "max_silence": "1m"}, {"type": "gap", "name": "g2", "max_silence": "1m"}],
         "one gap detector"),
        ([{"type": "spike", "window": 3}], "greater than or equal to 5"),
        ([{"type": "zscore", "alpha": 1.5}], "less than 1"),
    ],
)
def test_bad_detectors_are_refused(detectors, error) -> None:
    with pytest.raises(ValidationError, match=error):
        module_harness("anomaly", detectors=detectors)


def test_two_detectors_of_a_type_keep_separate_state() -> None:
    harness = module_harness("anomaly", detectors=[
        {"type": "zscore", "name": "fast", "alpha": 0.5, "warm_up": 5},
        {"type": "zscore", "name": "slow", "alpha": 0.01, "warm_up": 5, "threshold": 3},
    ])
    out = harness.run(noisy(50) + [reading("t1", 50 + i, 21.0) for i in range(10)])
    by = {name: [r.ts for r in out if r.data["detector"] == name] for name in ("fast", "slow")}
    assert [ts for ts in by["fast"] if ts >= 50] == [50.0]  # adapts to the new level at once
    assert len(by["slow"]) >= 5  # keeps seeing it as unusual
