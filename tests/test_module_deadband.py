"""deadband: report by exception, with a heartbeat."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.testing import module_harness, reading


@pytest.mark.parametrize(
    ("options", "values", "passed"),
    [
        ({"absolute": 0.5}, [20.0, 20.3, 20.5, 20.6, 20.0, 19.9], [20.0, 20.6, 20.0]),
        ({"absolute": 0.0}, [1.0, 1.0, 1.0, 2.0, 2.0], [1.0, 2.0]),  # a pure change filter
        ({"relative": 0.1}, [100.0, 109.0, 111.0, 100.0, 99.0], [100.0, 111.0, 99.0]),
        ({"relative": 0.1}, [0.0, 0.001, 0.0], [0.0, 0.001, 0.0]),  # relative band is 0 at 0
        ({"relative": 0.1, "absolute": 0.5}, [0.0, 0.4, 0.6, 100.0, 105.0, 111.0],
         [0.0, 0.6, 100.0, 111.0]),  # the larger band wins
    ],
)
def test_only_readings_that_move_beyond_the_band_pass(options, values, passed) -> None:
    harness = module_harness("deadband", **options)
    out = harness.run([reading("t1", i, v) for i, v in enumerate(values)])
    assert [r.data["value"] for r in out] == passed
    assert harness.counters["suppressed"] == len(values) - len(passed)


def test_the_heartbeat_passes_a_reading_after_max_interval_even_without_change() -> None:
    out = module_harness("deadband", absolute=1.0, max_interval="60s").run(
        [reading("t1", ts, 5.0) for ts in (0, 30, 59, 60, 61, 130)]
    )
    assert [r.ts for r in out] == [0.0, 60.0, 130.0]


def test_each_sensor_has_its_own_band_and_output_keeps_the_reading() -> None:
    out = module_harness("deadband", absolute=1.0).run(
        [reading("a", 0, 1.0, "C"), reading("b", 0, 50.0), reading("a", 1, 1.5), reading("b", 1, 52.0)]
    )
    assert [(r.topic, r.ts, r.data) for r in out] == [
        ("deadband", 0.0, {"sensor": "a", "value": 1.0, "unit": "C"}),
        ("deadband", 0.0, {"sensor": "b", "value": 50.0}),
        ("deadband", 1.0, {"sensor": "b", "value": 52.0}),
    ]


def test_the_last_value_passed_survives_a_restart() -> None:
    harness = module_harness("deadband", absolute=1.0)
    harness.feed([reading("t1", 0, 10.0)])
    harness.restart()
    assert harness.feed([reading("t1", 1, 10.5), reading("t1", 2, 12.0)])[0].data["value"] == 12.0


def test_older_readings_than_the_last_passed_are_dropped_as_out_of_order() -> None:
    harness = module_harness("deadband", absolute=1.0)
    out = harness.run([reading("t1", 10, 1.0), reading("t1", 5, 9.0), reading("t1", 10, 9.0)])
    assert [r.data["value"] for r in out] == [1.0, 9.0]  # the same time is not older
    assert harness.counters["out_of_order"] == 1


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({}, "set absolute, relative or both"),
        ({"absolute": -1}, "greater than or equal to 0"),
        ({"relative": 0.1, "max_interval": "0s"}, "greater than 0"),
    ],
)
def test_bad_configs_are_refused(options, error) -> None:
    with pytest.raises(ValidationError, match=error):
        module_harness("deadband", **options)
