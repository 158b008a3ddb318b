"""exec with a real script that prints, stalls, crashes and is restarted; tail across rotation and
truncation of a real file; both in JSON, text and mapped JSON; bad lines counted by reason."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from agent.source_harness import SourceRun, run_source
from tests.source_helpers import run_agent

T0 = 1_700_000_000.0

SCRIPT = """
import json, sys, time
from pathlib import Path

runs = Path(sys.argv[1])
run = int(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text(str(run))
print(json.dumps({"sensor": "a", "value": run, "ts": T0 + run}), flush=True)
print("not json", flush=True)
print(json.dumps({"value": 1}), flush=True)
print(json.dumps({"sensor": "b", "value": "high"}), flush=True)
print("oops on stderr", file=sys.stderr, flush=True)
time.sleep(0.3)  # stalls
print(json.dumps({"sensor": "b", "value": run * 10, "ts": T0 + run}), end="", flush=True)
sys.exit(3)  # crashes: a last line without its newline still counts
""".replace("T0", repr(T0))


def values(run: SourceRun) -> list[tuple[str, float]]:
    return [(record.data["sensor"], record.data["value"]) for record in run.records]


def test_exec_reads_a_script_that_stalls_and_crashes_and_restarts_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("agent.runtime.source_runner.RESTART_FIRST", 0.05)
    script = tmp_path / "read.py"
    script.write_text(SCRIPT)
    run = run_source("exec", {"command": [sys.executable, str(script), str(tmp_path / "runs")]},
                     until=lambda run: len(run.records) >= 6, timeout=15)
    assert values(run)[:6] == [("a", 1), ("b", 10), ("a", 2), ("b", 20), ("a", 3), ("b", 30)]
    assert [record.ts for record in run.records[:2]] == [T0 + 1, T0 + 1]
    assert run.counters["restarts"] >= 2 and run.counters["exits"] >= 2
    runs = run.dropped["not_json"]  # once a run: the run that is going on may have printed it
    assert runs >= 3 and run.dropped == {"not_json": runs, "no_sensor": runs, "value_not_a_number": runs}


def test_exec_text_lines_and_a_command_that_does_not_exist(tmp_path: Path) -> None:
    script = tmp_path / "t.sh"
    script.write_text(f"#!/bin/sh\necho 't1 21.5 {T0}'\necho 't2 7'\necho 'only-a-name'\nsleep 5\n")
    script.chmod(0o755)
    run = run_source("exec", {"command": [str(script)], "format": "text"},
                     until=lambda run: len(run.records) >= 2, timeout=5)
    assert values(run) == [("t1", 21.5), ("t2", 7.0)] and run.records[0].ts == T0
    assert run.dropped == {"not_sensor_value_ts": 1}
    exited = run_source("exec", {"command": ["sh", "-c", "exit 3"]}, timeout=0.5)
    assert "exited with status 3" in exited.health["last_error"]
    missing = run_source("exec", {"command": [str(tmp_path / "nope")]}, timeout=0.5)
    assert "FileNotFoundError" in missing.health["last_error"] and missing.counters["restarts"] >= 1


def append(path: Path, *lines: str) -> None:
    with path.open("a") as file:
        file.write("".join(line + "\n" for line in lines))


def line(sensor: str, value: float, n: int) -> str:
    return json.dumps({"sensor": sensor, "value": value, "ts": T0 + n})


def test_tail_follows_rotation_and_truncation(tmp_path: Path) -> None:
    log = tmp_path / "sensors.log"
    append(log, line("old", 1, 0))  # before the start: not read (start = "end")
    steps = iter([
        lambda: append(log, line("t", 1, 1), line("t", 2, 2)),
        lambda: (append(log, line("t", 3, 3)), log.rename(tmp_path / "sensors.log.1"),
                 append(log, line("t", 4, 4))),  # rotated: the old file's tail, then the new file
        lambda: append(tmp_path / "sensors.log.1", line("late", 9, 9)),  # to the old file: not followed
        lambda: log.write_text(""),  # truncated in place (seen as a file shorter than read)
        lambda: append(log, line("t", 5, 5)),
        lambda: append(log, "garbage", line("t", 6, 6)),
    ])
    last = [0.0]

    def step(run: SourceRun) -> bool:  # one move every few polls (this runs on the source's loop)
        if time.monotonic() - last[0] < 0.2:
            return False
        last[0] = time.monotonic()
        move = next(steps, None)
        if move is None:
            return len(run.records) >= 6
        move()
        return False

    run = run_source("tail", {"path": str(log), "poll": 0.05}, until=step, timeout=10)
    assert values(run) == [("t", float(n)) for n in range(1, 7)]
    assert run.counters["rotations"] == 1 and run.counters["truncations"] == 1
    assert run.dropped == {"not_json": 1}


def test_tail_waits_for_a_file_and_maps_json_with_a_payload_table(tmp_path: Path) -> None:
    log = tmp_path / "later.log"
    config = {"path": str(log), "poll": 0.05,
              "payload": {"fields": ["temperature", "humidity"], "sensor": "{item.id}/{field}", "ts": "t",
                          "units": {"temperature": "C"}}}

    def step(run: SourceRun) -> bool:
        if not log.exists() and "no such file" in (run.health.get("last_error") or ""):
            append(log, json.dumps({"id": "room", "temperature": 21.5, "humidity": 40, "t": T0}))
        return len(run.records) >= 2

    run = run_source("tail", config, until=step, timeout=5)
    assert [(r.topic, r.data) for r in run.records] == [
        ("sensors/room/temperature", {"sensor": "room/temperature", "value": 21.5, "unit": "C"}),
        ("sensors/room/humidity", {"sensor": "room/humidity", "value": 40}),
    ]


@pytest.mark.integration
def test_exec_and_tail_readings_reach_window_summaries_while_a_broken_source_fails(tmp_path: Path) -> None:
    log = tmp_path / "s.log"
    log.touch()
    script = tmp_path / "emit.py"
    script.write_text(
        "import json, time\n"
        f"for n in range(1000):\n    print(json.dumps({{'sensor': 'cmd', 'value': n, 'ts': {T0} + n}}))\n"
        "print('bad line', flush=True)\ntime.sleep(60)\n"
    )
    sources = f"""
    [[sources]]
    name = "script"
    type = "exec"
    command = ["{sys.executable}", "{script}"]

    [[sources]]
    name = "log"
    type = "tail"
    path = "{log}"
    format = "text"
    poll = "50ms"

    [[sources]]
    name = "broken"
    type = "exec"
    command = ["{tmp_path}/does-not-exist"]
    """

    def during(agent) -> None:
        agent.wait_for_log("following")
        for n in range(500):
            append(log, f"file {n} {T0 + n}")
        os.rename(log, tmp_path / "s.log.1")
        append(log, *[f"file {n} {T0 + n}" for n in range(500, 600)])
        agent.wait_for_log("restarting in", count=2)
        time.sleep(1.0)

    windows, status = run_agent(tmp_path, sources, during)
    assert windows["cmd"]["count"] == 1000 and windows["cmd"]["sum"] == sum(range(1000))
    assert (windows["cmd"]["first"], windows["cmd"]["last"]) == (0, 999)
    assert windows["file"]["count"] == 600 and windows["file"]["sum"] == sum(range(600))
    assert status["sources"]["script"]["dropped"] == {"not_json": 1}
    assert status["sources"]["broken"]["restarts"] >= 2
    assert status["dropped"]["not_json"] == 1
