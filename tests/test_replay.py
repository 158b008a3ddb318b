"""edge-agent replay: recordings through a config's modules, and the same summaries as live."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli.main import main
from agent.config import load_config
from agent.runtime.replay import ReplayReport, read_recording, replay
from agent.testing import reading
from tests.conftest import EDGE_AGENT, AgentProcess, Broker, agent_config
from tests.mqtt_helpers import Publisher

MODULES = """
    [[modules]]
    name = "win"
    use = "window"
    inputs = ["sensors/#"]
    sync = true
    [modules.with]
    every = "1s"
    stats = ["count", "mean", "min", "max", "stddev", "first", "last", "p50", "p99"]

    [[modules]]
    name = "hop"
    use = "window"
    inputs = ["sensors/#"]
    sync = true
    [modules.with]
    every = "4s"
    hop = "2s"
    stats = ["count", "sum"]

    [[modules]]
    name = "alerts"
    use = "threshold"
    inputs = ["sensors/#"]
    sync = true
    [[modules.with.rules]]
    name = "high"
    above = 27.0
    hysteresis = 1.0
    """


def write_config(tmp_path: Path, modules: str = MODULES, broker_url: str | None = None) -> Path:
    return agent_config(tmp_path, broker_url, modules=modules)


def run_replay(*args: str, input: str | None = None) -> tuple[int, list[dict], str]:
    result = CliRunner().invoke(main, ["replay", *args], input=input)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result.exit_code, lines, result.stderr


def test_jsonl_and_csv_recordings_give_the_same_records(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    rows = [(f"t{i % 3}", 1_700_000_000 + i * 0.25, 20 + (i % 11)) for i in range(200)]
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("".join(json.dumps({"sensor": s, "ts": t, "value": v}) + "\n"
                             for s, t, v in rows))
    csv = tmp_path / "r.csv"
    csv.write_text("sensor,ts,value\n" + "".join(f"{s},{t},{v}\n" for s, t, v in rows))
    code, from_jsonl, err = run_replay("-c", str(config), "--input", str(jsonl))
    assert code == 0, err
    assert run_replay("-c", str(config), "--input", str(csv))[1] == from_jsonl
    assert {line["stream"] for line in from_jsonl} == {"win", "hop", "alerts"}
    assert all(set(line) == {"stream", "ts", "data"} for line in from_jsonl)
    assert sum(line["data"]["count"] for line in from_jsonl if line["stream"] == "win") == 200
    assert "replayed 200 readings; emitted" in err


def test_bad_lines_are_refused_by_reason_and_line_and_the_rest_goes_on(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    lines = [
        '{"sensor": "t1", "ts": 100, "value": 1.0}',
        "not json",
        '{"sensor": "t1", "ts": 101, "value": "hot"}',
        '{"sensor": "t1", "value": 2.0}',
        '{"ts": 102, "value": 2.0}',
        '{"sensor": "t1", "ts": "yesterday", "value": 2.0}',
        '{"sensor": "t1", "ts": "1970-01-01T00:01:43Z", "value": 3.0, "unit": "C"}',
        "",
        '{"sensor": "t1", "ts": 104, "value": NaN}',
        "[1, 2]",
    ]
    code, out, err = run_replay("-c", str(config), "--input", "-", input="\n".join(lines) + "\n")
    assert code == 0
    (summary,) = [line["data"] for line in out if line["stream"] == "win" and
                  line["data"]["start"] == 100.0]
    assert summary["count"] == 1
    assert sum(line["data"]["count"] for line in out if line["stream"] == "win") == 2
    assert ("refused 7 lines: bad_ts 1 (first at line 6), no_sensor 1 (first at line 5), "
            "no_ts 1 (first at line 4), not_an_object 1 (first at line 10), not_json 2 (first "
            "at line 2), value_not_a_number 1 (first at line 3)") in err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--input", "missing.jsonl"], 1, "missing.jsonl: cannot read"),
        (["--input", "bad.csv"], 1, "the CSV header must name sensor, ts and value; value missing"),
        (["--input", "r.jsonl", "--speed", "fast"], 2, "use a number"),
        (["--input", "r.jsonl", "--speed", "0"], 2, "positive number"),
    ],
)
def test_unusable_inputs_are_named(tmp_path: Path, monkeypatch, args, code, message) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.csv").write_text("sensor,ts,val\nt1,1,2\n")
    (tmp_path / "r.jsonl").write_text("")
    result = CliRunner().invoke(main, ["replay", "-c", str(write_config(tmp_path)), *args])
    assert result.exit_code == code
    assert message in result.stderr


def test_an_invalid_config_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, modules="""
        [[modules]]
        name = "w"
        use = "window"
        inputs = ["sensors/#"]
        [modules.with]
        every = "soon"
        """)
    result = CliRunner().invoke(main, ["replay", "-c", str(config), "--input", "-"], input="")
    assert result.exit_code == 2
    assert f"{config}: modules[0](w).with.every: " in result.stderr


def test_a_module_that_cannot_start_fails_the_replay(tmp_path: Path) -> None:
    plugin = tmp_path / "broken.py"
    plugin.write_text(
        "from agent import Module\n"
        "class Broken(Module):\n"
        "    async def start(self):\n"
        "        raise RuntimeError('no licence file')\n"
        "    def process(self, record):\n"
        "        pass\n"
    )
    config = write_config(tmp_path, modules=f"""
        [[modules]]
        name = "broken"
        use = "{plugin}:Broken"
        inputs = ["sensors/#"]
        """)
    result = CliRunner().invoke(main, ["replay", "-c", str(config), "--input", "-"],
                                input='{"sensor": "t1", "ts": 1, "value": 1}\n')
    assert result.exit_code == 1
    assert "broken: start: no licence file" in result.stderr


def test_sort_replays_in_time_order(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    lines = "".join(json.dumps({"sensor": "t1", "ts": ts, "value": 1.0}) + "\n"
                    for ts in (5.5, 1.5, 3.5))
    unsorted = run_replay("-c", str(config), "--input", "-", input=lines)[1]
    ordered = run_replay("-c", str(config), "--input", "-", "--sort", input=lines)[1]
    count = {name: sum(line["data"]["count"] for line in out if line["stream"] == "win")
             for name, out in (("unsorted", unsorted), ("sorted", ordered))}
    assert count == {"unsorted": 1, "sorted": 3}  # in file order, 1.5 and 3.5 came too late


def test_speed_paces_the_recording_and_ticks_modules_while_waiting(tmp_path: Path) -> None:
    config = write_config(tmp_path, modules="""
        [[modules]]
        name = "gaps"
        use = "anomaly"
        inputs = ["sensors/#"]
        [[modules.with.detectors]]
        type = "gap"
        max_silence = "30s"
        """)
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    emitted: list[tuple[float, float, str]] = []  # (wall, ts, event)
    report = ReplayReport()
    records = [reading("t1", 1000 + t, 1.0) for t in (0, 10, 20, 100)]
    replay(load_config(config), records,
           lambda r: emitted.append((now[0], r.ts, r.data["event"])), report,
           speed=10.0, sleep=sleep, monotonic=lambda: now[0])
    assert sum(slept) == pytest.approx(10.0, abs=0.11)  # 100 s of recording at 10x
    assert max(slept) <= 0.1 + 1e-9
    raised = [e for e in emitted if e[2] == "raised"]
    assert raised and 5.0 <= raised[0][0] <= 5.3  # raised live, 30 s of silence after ts 20
    assert [e[2] for e in emitted] == ["raised", "cleared"]


def test_reading_a_recording_uses_the_configs_topic_prefix(tmp_path: Path) -> None:
    config = write_config(tmp_path, modules="""
        [[modules]]
        name = "w"
        use = "window"
        inputs = ["plant/#"]
        """, broker_url="mqtt://127.0.0.1:1")
    text = config.read_text().replace('topics = ["sensors/#"]', 'topics = ["plant/line1/#"]')
    config.write_text(text)
    (tmp_path / "r.jsonl").write_text('{"sensor": "t1", "ts": 1, "value": 2}\n')
    loaded = load_config(config)
    from agent.runtime.replay import topic_prefix

    records = list(read_recording(tmp_path / "r.jsonl", topic_prefix(loaded), ReplayReport()))
    assert records[0].topic == "plant/line1/t1"


def test_a_recorded_topic_is_used_as_is(tmp_path: Path) -> None:
    """Sources with several prefixes (a Shelly Gen2's ``+/status/#`` beside ``sensors/#``): a line
    that names its topic keeps it, in JSON lines and in CSV."""
    (tmp_path / "r.jsonl").write_text(
        '{"sensor": "t1", "ts": 1, "value": 2, "topic": "shelly-1/t1"}\n'
        '{"sensor": "t2", "ts": 2, "value": 3}\n'
    )
    (tmp_path / "r.csv").write_text("sensor,ts,value,topic\nt1,1,2,shelly-1/t1\nt2,2,3,\n")
    for name in ("r.jsonl", "r.csv"):
        records = list(read_recording(tmp_path / name, "sensors/", ReplayReport()))
        assert [r.topic for r in records] == ["shelly-1/t1", "sensors/t2"], name


@pytest.mark.integration
def test_replay_gives_the_same_summaries_as_the_live_path(tmp_path: Path, broker: Broker, agents):
    rng = random.Random(11)
    start = 1_700_000_000.0
    rows = [(f"t{i % 5}", start + i * 0.01, round(20 + rng.gauss(3, 3), 3)) for i in range(3000)]
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    agent = AgentProcess(write_config(live_dir, broker_url=broker.url)).start()
    agents.append(agent)
    publisher = Publisher(broker.port)
    publisher.readings(rows)
    publisher.publish("sensors/t1", '{"value": "broken"}').wait_for_publish(5)  # refused by both
    publisher.close()
    time.sleep(0.5)
    agent.signal(signal.SIGTERM)
    assert agent.wait(10) == 0

    from agent.outbox import Outbox

    box = Outbox.open_readonly(live_dir / "data")
    try:
        live = sorted(json.dumps([r.stream, r.ts, r.data], sort_keys=True) for r in box.unsent())
    finally:
        box.close()

    recording = tmp_path / "recording.jsonl"
    recording.write_text("".join(json.dumps({"sensor": s, "ts": t, "value": v}) + "\n"
                                 for s, t, v in rows) + '{"sensor": "t1", "value": "broken"}\n')
    result = subprocess.run(
        [*EDGE_AGENT, "replay", "-c", str(write_config(tmp_path)), "--input", str(recording)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    replayed = sorted(
        json.dumps([line["stream"], line["ts"], line["data"]], sort_keys=True)
        for line in map(json.loads, result.stdout.splitlines())
    )
    assert sum(json.loads(item)[2]["count"] for item in live if '"win"' in item) == len(rows)
    assert len(live) > 100
    assert replayed == live


def test_the_cli_help_names_the_contract() -> None:
    result = CliRunner().invoke(main, ["replay", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for words in ("--input", "--speed", "max", "(stream, ts, data)"):
        assert words in text


def test_a_historical_series_before_1970_replays_exactly(tmp_path: Path) -> None:
    """A climate record that starts in the 1950s: every reading counted, none refused, the
    monthly windows where they belong (times before 1970 are negative Unix seconds)."""
    config = write_config(tmp_path, modules="""
        [[modules]]
        name = "monthly"
        use = "window"
        inputs = ["sensors/#"]
        sync = true
        [modules.with]
        every = "30d"
        stats = ["count", "mean"]
        """)
    day = 86400.0
    start = -631_152_000.0  # 1950-01-01T00:00:00Z
    rows = [{"sensor": "station", "ts": start + i * day, "value": float(i % 30)} for i in range(365)]
    rows.append({"sensor": "station", "ts": "1969-12-31T23:00:00Z", "value": 1.0})
    code, out, err = run_replay("-c", str(config), "--input", "-",
                                input="".join(json.dumps(row) + "\n" for row in rows))
    assert code == 0, err
    assert "replayed 366 readings" in err and "refused" not in err
    summaries = [line["data"] for line in out if line["stream"] == "monthly"]
    assert sum(s["count"] for s in summaries) == 366
    assert min(s["start"] for s in summaries) <= start < min(s["start"] for s in summaries) + 30 * day
