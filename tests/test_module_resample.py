"""resample: regular intervals, an aggregation, and an explicit gap policy."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.testing import module_harness, reading

# readings at 1 and 5 (values 1, 3), nothing for 30 s, then 41 (value 10)
ROWS = [("t1", 1, 1.0), ("t1", 5, 3.0), ("t1", 41, 10.0)]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"gap": "leave"}, [(0, 2.0, 2), (40, 10.0, 1)]),
        ({"gap": "hold"}, [(0, 2.0, 2), (10, 2.0, 0), (20, 2.0, 0), (30, 2.0, 0), (40, 10.0, 1)]),
        ({"gap": "interpolate"},
         [(0, 2.0, 2), (10, 4.0, 0), (20, 6.0, 0), (30, 8.0, 0), (40, 10.0, 1)]),
        ({"gap": "hold", "gap_limit": "20s"}, [(0, 2.0, 2), (40, 10.0, 1)]),  # 30 s gap: left
        ({"gap": "hold", "gap_limit": "30s"},
         [(0, 2.0, 2), (10, 2.0, 0), (20, 2.0, 0), (30, 2.0, 0), (40, 10.0, 1)]),
        ({"agg": "last"}, [(0, 3.0, 2), (40, 10.0, 1)]),
        ({"agg": "max"}, [(0, 3.0, 2), (40, 10.0, 1)]),
        ({"agg": "count"}, [(0, 2.0, 2), (40, 1.0, 1)]),
        ({"agg": "median"}, [(0, 2.0, 2), (40, 10.0, 1)]),
    ],
)
def test_intervals_aggregations_and_gap_policies(options, expected) -> None:
    out = module_harness("resample", every="10s", **options).run([reading(*r) for r in ROWS])
    assert [(r.ts, r.data["value"], r.data["count"]) for r in out] == expected
    for record in out:
        assert ("filled" in record.data) == (record.data["count"] == 0)


def test_output_is_reading_shaped_so_that_other_modules_can_take_it() -> None:
    out = module_harness("resample", every="1m").run([reading("t1", 5, 20.0, "C")])
    assert out[0].data == {"sensor": "t1", "value": 20.0, "unit": "C", "count": 1}
    window = module_harness("window", every="1h", stats=["count", "mean"])
    assert window.run(out)[0].data["mean"] == 20.0


def test_out_of_order_and_duplicate_times_within_the_open_interval_count() -> None:
    harness = module_harness("resample", every="10s", agg="mean")
    out = harness.run([reading("t1", t, v) for t, v in [(5, 1.0), (2, 3.0), (5, 5.0), (12, 0.0),
                                                         (3, 9.0)]])
    assert [(r.ts, r.data["value"]) for r in out] == [(0.0, 3.0), (10.0, 0.0)]
    assert harness.counters["late"] == 1


def test_a_huge_gap_is_never_filled() -> None:
    harness = module_harness("resample", every="1s", gap="hold")
    out = harness.run([reading("t1", 0, 1.0), reading("t1", 1e6, 1.0)])
    assert len(out) == 2 and harness.counters["gap_too_long"] == 1


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"gap_limit": "1m"}, "set gap to hold or interpolate"),
        ({"gap": "interpolate", "agg": "count"}, "interpolating counts"),
        ({"gap": "zero"}, "'interpolate'"),
        ({"every": 0}, "greater than 0"),
    ],
)
def test_bad_configs_are_refused(options, error) -> None:
    with pytest.raises(ValidationError, match=error):
        module_harness("resample", **options)
