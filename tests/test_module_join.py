"""``join`` against brute force: for every reading, the pairs it should make are computed again
from all the readings so far, with no state kept between readings."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from agent.api import Record
from agent.testing import module_harness

INPUTS = {"temp": "sensors/+/temp", "hum": "sensors/+/hum"}


def readings(count: int, seed: int) -> list[Record]:
    rng = random.Random(seed)
    out, ts = [], 1_700_000_000.0
    for _ in range(count):
        ts += rng.choice([0.0, 5.0, 20.0, 45.0, 90.0])  # some pairs within the skew, some not
        room, kind = rng.choice(["kitchen", "hall", "cellar"]), rng.choice(["temp", "hum"])
        late = rng.random() < 0.05
        out.append(Record(f"sensors/{room}/{kind}", ts - (100.0 if late else 0.0),
                          {"sensor": f"{room}-{kind}", "value": round(rng.uniform(0, 100), 1)}))
    return out


def brute_force(records: list[Record], max_skew: float) -> list[tuple[float, dict]]:
    expected = []
    for index, record in enumerate(records):
        room, kind = record.topic.split("/")[1], record.topic.split("/")[2]
        seen = [r for r in records[: index + 1]
                if r.topic.split("/")[1] == room]
        latest: dict[str, Record] = {}
        for r in seen:  # the latest accepted reading of each input, in arrival order
            name = r.topic.split("/")[2]
            if name in latest and r.ts < latest[name].ts:
                continue  # out of order: left out
            latest[name] = r
        if latest.get(kind) is not record or set(latest) != {"temp", "hum"}:
            continue
        times = [latest["temp"].ts, latest["hum"].ts]
        if max(times) - min(times) <= max_skew:
            expected.append((max(times), {"sensor": room, "temp": latest["temp"].data["value"],
                                          "hum": latest["hum"].data["value"]}))
    return expected


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_join_pairs_exactly_what_brute_force_pairs(seed: int) -> None:
    records = readings(400, seed)
    harness = module_harness("join", inputs=INPUTS, by_level=1, max_skew="60s",
                             follow_readings=False)
    out = harness.run(records)
    expected = brute_force(records, 60.0)
    assert len(expected) > 20  # the run pairs a good many, and leaves some unpaired
    assert [(r.ts, r.data) for r in out] == expected
    assert harness.counters["out_of_order"] > 0


def test_pairs_by_a_field_and_counts_what_it_cannot_use() -> None:
    harness = module_harness("join", inputs={"a": "x/a", "b": "x/b"}, by="room", field="v")
    out = harness.run([
        Record("x/a", 1.0, {"room": "r1", "v": 1}),
        Record("x/b", 2.0, {"room": "r1", "v": 2}),
        Record("x/b", 3.0, {"v": 3}),
        Record("x/a", 4.0, {"room": "r1"}),
    ])
    assert [(r.ts, r.data) for r in out] == [(2.0, {"room": "r1", "a": 1, "b": 2})]
    assert harness.counters["no_key"] == 1 and harness.counters["no_field"] == 1


def test_a_module_with_a_list_of_inputs_sees_no_input_name() -> None:
    harness = module_harness("join", inputs=["x/#"])
    harness.run([Record("x/a", 1.0, {"sensor": "s", "value": 1})])
    assert harness.counters["unnamed_input"] == 1


def test_a_field_and_a_level_at_once_are_refused() -> None:
    with pytest.raises(ValidationError, match="not both"):
        module_harness("join", inputs=INPUTS, by="room", by_level=1)
