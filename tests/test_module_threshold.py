"""threshold: alert rules with hysteresis and minimum durations; no flapping."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from agent.testing import module_harness, reading


def events(rule: dict, values: list[float], step: float = 1.0) -> list[tuple[str, float]]:
    out = module_harness("threshold", rules=[{"name": "r", **rule}]).run(
        [reading("t1", i * step, v) for i, v in enumerate(values)]
    )
    return [(r.data["event"], r.ts) for r in out]


@pytest.mark.parametrize(
    ("rule", "values", "expected"),
    [
        ({"above": 30, "hysteresis": 1}, [29, 31, 30.5, 29.5, 28.9, 31],
         [("raised", 1), ("cleared", 4), ("raised", 5)]),
        ({"below": 5, "hysteresis": 0.5}, [6, 4, 5.2, 5.6, 4.9],
         [("raised", 1), ("cleared", 3), ("raised", 4)]),
        ({"above": 30, "below": 10, "hysteresis": 1}, [20, 31, 20, 9, 20],
         [("raised", 1), ("cleared", 2), ("raised", 3), ("cleared", 4)]),  # outside a band
        ({"above": 30, "hysteresis": 0, "for": "3s"}, [31, 31, 29, 31, 31, 31, 31, 29],
         [("raised", 6), ("cleared", 7)]),  # the breach must last 3 s
        ({"above": 30, "hysteresis": 0, "clear_for": "2s"}, [31, 29, 31, 29, 29, 29],
         [("raised", 0), ("cleared", 5)]),
        ({"rate_above": 2, "hysteresis": 0.5}, [0, 1, 4, 5.6, 7.0],
         [("raised", 2), ("cleared", 4)]),  # units per second: 3, then 1.6, then 1.4
        ({"rate_below": -1, "hysteresis": 0}, [10, 9.5, 7, 7], [("raised", 2), ("cleared", 3)]),
    ],
)
def test_rules_raise_and_clear_where_they_should(rule, values, expected) -> None:
    assert events(rule, values) == expected


def test_noise_around_the_limit_never_flaps() -> None:
    rng = random.Random(5)
    noise = [30 + rng.uniform(-0.4, 0.4) for _ in range(500)]
    out = events({"above": 30, "hysteresis": 0.5}, [25, 31, *noise, 25])
    assert out == [("raised", 1), ("cleared", 502)]
    assert len(events({"above": 30, "hysteresis": 0, "for": "10s"}, noise)) <= 2


def test_events_carry_rule_sensor_value_severity_and_limit() -> None:
    harness = module_harness("threshold", rules=[
        {"name": "hot", "above": 30, "hysteresis": 1, "severity": "critical", "sensors": ["t*"]},
    ])
    out = harness.run([reading("t1", 1, 35.0), reading("x9", 1, 99.0), reading("t1", 4, 20.0)])
    assert [r.data for r in out] == [
        {"event": "raised", "rule": "hot", "sensor": "t1", "severity": "critical", "value": 35.0,
         "condition": "above", "limit": 30.0, "since": 1.0},
        {"event": "cleared", "rule": "hot", "sensor": "t1", "severity": "critical", "value": 20.0,
         "condition": "above", "limit": 30.0, "raised_at": 1.0, "duration": 3.0},
    ]


def test_a_raised_alert_survives_a_restart_and_is_not_raised_twice() -> None:
    harness = module_harness("threshold", rules=[{"name": "hot", "above": 30, "hysteresis": 1}])
    assert len(harness.feed([reading("t1", 0, 35.0)])) == 1
    harness.restart()
    assert harness.feed([reading("t1", 1, 36.0)]) == []
    assert [r.data["event"] for r in harness.feed([reading("t1", 2, 20.0)])] == ["cleared"]


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        ({"name": "r", "hysteresis": 1}, "set a limit"),
        ({"name": "r", "above": 1}, "hysteresis"),
        ({"name": "r", "above": 1, "rate_above": 1, "hysteresis": 0}, "not both kinds"),
        ({"name": "r", "above": 10, "below": 9, "hysteresis": 1}, "could never clear"),
        ({"name": "r", "above": 1, "hysteresis": 0, "severity": "urgent"}, "'critical'"),
        ({"name": "has space", "above": 1, "hysteresis": 0}, "should match pattern"),
    ],
)
def test_bad_rules_are_refused(rule, error) -> None:
    with pytest.raises(ValidationError, match=error):
        module_harness("threshold", rules=[rule])


def test_rule_names_are_unique() -> None:
    rule = {"name": "r", "above": 1, "hysteresis": 0}
    with pytest.raises(ValidationError, match="used twice"):
        module_harness("threshold", rules=[rule, rule])


def test_the_readings_that_raised_alerts_go_on_their_own_output() -> None:
    harness = module_harness(
        "threshold", name="alarm", triggers=True,
        rules=[{"name": "hot", "above": 30.0, "hysteresis": 1.0}],
    )
    harness.run([reading("t1", 1, 25.0), reading("t1", 2, 31.5), reading("t1", 3, 32.0),
                 reading("t1", 4, 20.0), reading("t1", 5, 33.0)])
    assert [r.data["event"] for r in harness.emitted_by("alarm")] == ["raised", "cleared", "raised"]
    assert [(r.ts, r.data) for r in harness.emitted_by("alarm.triggers")] == [
        (2.0, {"sensor": "t1", "value": 31.5, "rule": "hot"}),
        (5.0, {"sensor": "t1", "value": 33.0, "rule": "hot"}),
    ]
