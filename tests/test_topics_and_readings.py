"""Topic filters and reading payloads: the rules every source relies on."""

from __future__ import annotations

import math

import pytest

from agent.sources.readings import Rejected, decode_reading
from agent.topics import fixed_prefix, matches, validate_filter


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("sensors/#", "sensors/t1", True),
        ("sensors/#", "sensors/room/t1", True),
        ("sensors/#", "sensors", True),  # '#' also matches the parent level
        ("sensors/+", "sensors/t1", True),
        ("sensors/+", "sensors/room/t1", False),
        ("sensors/+/temp", "sensors/r1/temp", True),
        ("sensors/+/temp", "sensors/r1/hum", False),
        ("#", "anything/at/all", True),
        ("climate_1m", "climate_1m", True),
        ("climate_1m", "climate_5m", False),
        ("sensors/t1", "sensors/t1/x", False),
    ],
)
def test_matching(topic_filter, topic, expected):
    assert matches(topic_filter, topic) is expected


@pytest.mark.parametrize("bad", ["", "a/#/b", "a/b#", "a+/b", "#/x"])
def test_invalid_filters(bad):
    with pytest.raises(ValueError):
        validate_filter(bad)


@pytest.mark.parametrize(
    ("topic_filter", "prefix"),
    [("sensors/#", "sensors/"), ("site/+/sensors/#", "site/"), ("sensors/t1", "sensors/"), ("#", "")],
)
def test_fixed_prefix(topic_filter, prefix):
    assert fixed_prefix(topic_filter) == prefix


@pytest.mark.parametrize(
    ("payload", "value", "ts", "unit"),
    [
        (b'{"value": 21.5, "ts": 90, "unit": "C"}', 21.5, 90.0, "C"),
        (b'{"value": 21.5, "ts": "1970-01-01T00:01:30Z"}', 21.5, 90.0, None),
        (b'{"value": 3}', 3, 99.0, None),
        (b"42.25", 42.25, 99.0, None),
        (b"-7", -7, 99.0, None),
        (b'{"value": 1, "unit": 5}', 1, 99.0, None),  # a unit that is not a string is left out
    ],
)
def test_good_readings(payload, value, ts, unit):
    record = decode_reading("sensors/t1", "t1", payload, now=99.0)
    assert record.topic == "sensors/t1"
    assert record.ts == ts
    assert record.data["sensor"] == "t1" and record.data["value"] == value
    assert record.data.get("unit") == unit


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not_json"),
        (b"", "not_json"),
        (b"\xff\xfe", "not_json"),
        (b"NaN", "not_json"),
        (b"1e999", "not_json"),
        (b'"hot"', "not_an_object"),
        (b"[1, 2]", "not_an_object"),
        (b"null", "not_an_object"),
        (b"true", "not_an_object"),
        (b'{"unit": "C"}', "no_value"),
        (b'{"value": null}', "no_value"),
        (b'{"value": "21.5"}', "value_not_a_number"),
        (b'{"value": true}', "value_not_a_number"),
        (b'{"value": [1]}', "value_not_a_number"),
        (b'{"value": 1, "ts": "now"}', "bad_ts"),
        (b'{"value": 1, "ts": -5}', "bad_ts"),
        (b"\x00" * 1000, "not_json"),
    ],
)
def test_bad_readings_name_their_reason(payload, reason):
    with pytest.raises(Rejected) as caught:
        decode_reading("sensors/t1", "t1", payload, now=1.0)
    assert caught.value.reason == reason


def test_non_finite_values_from_a_lenient_parser_are_refused():
    from agent.sources.readings import reading_from

    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(Rejected, match="value_not_finite"):
            reading_from("sensors/t1", "t1", {"value": value}, now=1.0)
