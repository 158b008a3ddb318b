"""JSON lines as readings: the inlined hot path of ``tail`` and ``exec`` takes exactly what the
careful path takes, and every line that is not blank is counted once, as a reading or a drop."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import codec
from agent.source_harness import run_source
from agent.sources import lines, tail

T0 = 1_700_000_000.0
LINES = [
    (b'{"sensor": "a", "value": 1.5, "ts": 1700000000}', {"sensor": "a", "value": 1.5}),
    (b'{"value": 2, "sensor": "a", "unit": "C", "ts": 1700000001.5}',
     {"sensor": "a", "value": 2, "unit": "C"}),
    (b'{"sensor": "b", "value": 3, "ts": 1700000002, "unit": null, "extra": [1]}',
     {"sensor": "b", "value": 3}),
    (b'{"sensor": "b", "value": 4, "ts": 1700000003, "unit": 7}', {"sensor": "b", "value": 4}),
    (b'{"sensor": "c", "value": 5, "ts": "2023-11-14T22:13:24Z"}\r', {"sensor": "c", "value": 5}),
    (b"", None),
    (b"   ", None),
    (b'{"sensor": "c", "value": true, "ts": 1700000005}', "value_not_a_number"),
    (b'{"sensor": "c", "value": 1' + b"0" * 400 + b', "ts": 1700000005}', "value_not_finite"),
    (b'{"sensor": "c", "value": 6, "ts": null}', "bad_ts"),
    (b'{"sensor": "c", "value": 6, "ts": 99999999999999}', "bad_ts"),
    (b'{"sensor": "", "value": 6}', "no_sensor"),
    (b'[{"sensor": "d", "value": 7, "ts": 1700000006}]', {"sensor": "d", "value": 7}),
    (b"42", "no_sensor"),
    (b'{"sensor": "c"}', "no_value"),
    (b"{not json", "not_json"),
]


@pytest.mark.parametrize("json_library", ["orjson", "stdlib"])
def test_every_line_is_a_reading_or_a_drop_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, json_library: str
) -> None:
    if json_library == "stdlib":
        monkeypatch.setattr(codec, "loads", codec._std_loads)
    elif not codec.HAVE_ORJSON:
        pytest.skip("orjson is not installed")
    path = tmp_path / "lines.jsonl"
    path.write_bytes(b"\n".join(line for line, _ in LINES) + b"\n")
    expected = [outcome for _, outcome in LINES if isinstance(outcome, dict)]
    run = run_source("tail", {"path": str(path), "start": "beginning", "poll": "50ms"},
                     until=lambda run: len(run.records) >= len(expected), timeout=10)
    assert [record.data for record in run.records] == expected
    assert [record.topic for record in run.records] == [f"sensors/{data['sensor']}" for data in expected]
    assert run.records[1].ts == T0 + 1.5 and run.records[4].ts == T0 + 4
    drops: dict[str, int] = {}
    for line, outcome in LINES:
        if isinstance(outcome, str):
            # orjson refuses an integer beyond 64 bits as JSON; the standard library parses it
            reason = "not_json" if line.count(b"0") > 100 and json_library == "orjson" else outcome
            drops[reason] = drops.get(reason, 0) + 1
    assert run.dropped == drops
    blank = sum(1 for line, outcome in LINES if outcome is None)
    assert run.counters["received"] == len(LINES) - blank == run.counters["accepted"] + sum(drops.values())


def test_a_line_that_never_ends_is_held_only_to_max_line_and_dropped_once(tmp_path: Path) -> None:
    path = tmp_path / "lines.jsonl"
    path.write_bytes(b"x" * 3_000_000)  # three reads of a megabyte, and still no newline
    held: list[int] = []

    def step(run) -> bool:
        if not held and run.counters.get("received", 0) == 0 and run.health.get("connected"):
            held.append(1)
            with path.open("ab") as file:
                file.write(b'\n{"sensor": "a", "value": 1}\n')
        return bool(run.records)

    split = lines.split_lines
    sizes: list[int] = []

    def measured(buffer: bytearray, chunk: bytes, limit: int | None = None) -> list[bytes]:
        out = split(buffer, chunk, limit)
        sizes.append(len(buffer))
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tail, "split_lines", measured)
        run = run_source("tail", {"path": str(path), "start": "beginning", "poll": "50ms",
                                  "max_line": "1kB"}, until=step, timeout=10)
    assert [record.data for record in run.records] == [{"sensor": "a", "value": 1}]
    assert run.dropped == {"line_too_long": 1} and max(sizes) <= 1001
