"""transform and its expression language: calibration, units, renaming, safe filtering."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.testing import module_harness, reading
from modules._expr import BOOL, NUM, EvalError, ExpressionError, compile_expression
from modules.transform import convert

ENV = {"value": 21.5, "sensor": "t1", "unit": "C", "ts": 100.0, "raw": 21.0, "flag": True}


@pytest.mark.parametrize(
    ("source", "result"),
    [
        ("1 + 2 * 3", 7.0),
        ("(1 + 2) * 3", 9.0),
        ("-value + 1.5e1", -6.5),
        ("10 % 4 - 7 / 2", -1.5),
        ("value > 20 and value < 25", True),
        ("not value > 20 or sensor == 't1'", True),
        ("not (value > 20 or sensor == 't1')", False),
        ("sensor != \"t2\" and unit == 'C'", True),
        ("abs(-2) + min(3, 1, 2) + max(1, 5) + round(2.344, 2)", 10.34),
        ("clamp(value, 0, 20) == 20 and between(raw, 20, 22)", True),
        ("floor(2.7) + ceil(2.1) + sqrt(16) + pow(2, 10) + log10(1000)", 1036.0),
        ("startswith(sensor, 't') and not endswith(sensor, 'x')", True),
        ("flag == true", True),
        ("ts - 100", 0.0),
        ("'a' < 'b'", True),
    ],
)
def test_expressions_evaluate(source, result) -> None:
    assert compile_expression(source)(ENV) == pytest.approx(result)


@pytest.mark.parametrize(
    ("source", "column", "message"),
    [
        ("value >", 8, "expected a value, found the end"),
        ("value > 3)", 10, "unexpected ')'"),
        ("(value > 3", 11, "expected ')'"),
        ("value > 3 && value < 5", 11, "use and"),
        ("value = 3", 7, "use =="),
        ("value ** 2", 7, "pow(x, y)"),
        ("1 < value < 3", 11, "comparisons do not chain"),
        ("value > true", 7, "true/false can only be compared with == or !="),
        ("3 > 'hot'", 3, "cannot compare a number with a text"),
        ("not 3", 1, "'not' needs true/false"),
        ("1 and value", 3, "'and' needs true/false on both sides"),
        ("'a' + 1", 5, "'+' needs numbers"),
        ("foo(1)", 1, "no function 'foo'"),
        ("sqrt(1, 2)", 9, "takes at most 1"),
        ("clamp(1, 2)", 1, "needs 3 arguments"),
        ("startswith(sensor, 1)", 20, "needs a text here"),
        ("value > 3 'x'", 11, "an operator is missing"),
        ("sensor == 'open", 11, "an unclosed text"),
        ("value.x", 6, "'.' is not part of the language"),
        ("", 1, "empty"),
        ("__import__('os')", 1, "no function '__import__'"),
    ],
)
def test_errors_point_at_the_column(source, column, message) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(source)
    assert caught.value.column == column
    assert message in caught.value.message
    lines = str(caught.value).splitlines()
    assert lines[0].startswith(f"column {column}:")
    assert lines[2].index("^") - 4 == column - 1  # the caret sits under the column


@pytest.mark.parametrize(
    ("source", "env", "message"),
    [
        ("tmp > 3", {}, "no field 'tmp'"),
        ("value / 0", {"value": 1.0}, "division by zero"),
        ("value + 1", {"value": "hot"}, "needs a number, got text 'hot'"),
        ("value > 1", {"value": "hot"}, "cannot compare text 'hot' with float"),
        ("sqrt(value)", {"value": -1.0}, "no finite result"),
        ("flag and true", {"flag": 1.0}, "needs true/false"),
    ],
)
def test_runtime_errors_say_what_and_where(source, env, message) -> None:
    with pytest.raises(EvalError, match=message):
        compile_expression(source)(env)


def test_the_wanted_type_is_checked_when_compiling() -> None:
    with pytest.raises(ExpressionError, match="a true/false is needed"):
        compile_expression("value * 2", BOOL)
    with pytest.raises(ExpressionError, match="a number is needed"):
        compile_expression("value > 2", NUM)


@pytest.mark.parametrize(
    ("value", "source", "target", "expected"),
    [(100.0, "C", "F", 212.0), (32.0, "F", "C", 0.0), (0.0, "C", "K", 273.15),
     (1013.25, "hPa", "psi", 14.6959), (36.0, "km/h", "m/s", 10.0), (1.0, "°C", "C", 1.0)],
)
def test_unit_conversions(value, source, target, expected) -> None:
    assert convert(value, source, target) == pytest.approx(expected, rel=1e-5)


def test_calibrate_convert_filter_and_rename_in_that_order() -> None:
    harness = module_harness("transform", sensors={
        "t1": {"scale": 2.0, "offset": 1.0, "unit": "F", "rename": "boiler",
               "where": "value < 100 and raw >= 0"},
        "p*": {"value": "raw / 10", "where": "value > 0"},
    }, where="sensor != 'ignored'")
    out = harness.run([
        reading("t1", 1, 10.0, "C"),  # 21 C -> 69.8 F
        reading("t1", 2, 30.0, "C"),  # 61 C -> 141.8 F: filtered out
        reading("p7", 3, 50.0),  # 5.0
        reading("p7", 4, -50.0),  # filtered out
        reading("ignored", 5, 1.0),  # no rule; the global where drops it
        reading("other", 6, 1.0, "V"),  # no rule: passes unchanged
    ])
    assert [(r.ts, r.data) for r in out] == [
        (1.0, {"sensor": "boiler", "value": pytest.approx(69.8), "unit": "F"}),
        (3.0, {"sensor": "p7", "value": 5.0}),
        (6.0, {"sensor": "other", "value": 1.0, "unit": "V"}),
    ]
    assert harness.counters["filtered"] == 3


def test_records_that_cannot_be_transformed_are_counted_by_reason() -> None:
    harness = module_harness("transform", sensors={
        "t*": {"unit": "F"}, "d": {"value": "raw / missing"},
    })
    harness.run([
        reading("t1", 1, 20.0),  # no unit and no from_unit
        reading("t2", 1, 20.0, "hPa"),  # not a temperature
        reading("t3", 1, "warm", "C"),
        reading("t4", 1, float("inf"), "C"),
        reading("d", 1, 1.0),  # the expression names a field the record lacks
    ])
    assert harness.counters.values == {
        "unit_errors": 2, "not_a_number": 1, "not_finite": 1, "expression_errors": 1
    }


def test_summaries_can_be_filtered_on_their_own_fields() -> None:
    out = module_harness("transform", where="count >= 10 and max - min < 5").run([
        reading("t1", 1, None)._replace(data={"sensor": "t1", "count": 12, "min": 1, "max": 2}),
        reading("t1", 2, None)._replace(data={"sensor": "t1", "count": 3, "min": 1, "max": 2}),
    ])
    assert [r.ts for r in out] == [1.0]


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({}, "nothing to do"),
        ({"where": "value >"}, "column 8: expected a value"),
        ({"sensors": {"t1": {"where": "value * 2"}}}, "a true/false is needed"),
        ({"sensors": {"t1": {"unit": "furlong"}}}, "unknown unit 'furlong'"),
        ({"sensors": {"t1": {"from_unit": "C", "unit": "bar"}}}, "cannot convert C"),
        ({"sensors": {"t1": {"from_unit": "C"}}}, "set unit"),
        ({"sensors": {"t1": {"value": "raw * 2", "scale": 3}}}, "not both"),
        ({"sensors": {"t1": {"rename": "has space"}}}, "should match pattern"),
    ],
)
def test_bad_configs_are_refused_naming_the_problem(options, error) -> None:
    with pytest.raises(ValidationError, match=error):
        module_harness("transform", **options)


def test_a_config_error_in_an_expression_names_file_key_and_column(tmp_path) -> None:
    from agent.config import load_config
    from agent.errors import ConfigError

    config = tmp_path / "agent.toml"
    config.write_text(
        'device_id = "gw"\ndata_dir = "data"\n[[modules]]\nname = "f"\nuse = "transform"\n'
        'inputs = ["sensors/#"]\n[modules.with.sensors.t1]\nwhere = "value > 3 &&"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert str(caught.value).startswith(
        f"{config}: modules[0](f).with.sensors.t1.where: column 11: '&&' is not part of the language"
    )
