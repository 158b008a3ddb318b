"""Readings/s from the local broker through ``window`` into the outbox, beside the raw paho
receive rate (the ceiling) and a naive paho agent (one SQLite commit per reading); the agent's
idle RSS and its time from start to ready.

Method: the broker (pinned to core 0) is pre-filled with the same readings for each receiver,
which then drains them pinned to core 1, so the publisher never limits what is measured.
Receivers are interleaved round by round so a noisy moment hurts them alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Result
from bench.loadgen import BenchBroker, prefill

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _contender(name: str, broker: BenchBroker, count: int, qos: int, workdir: Path, *flags: str) -> dict:
    cmd = [
        sys.executable, "-m", "bench.ingest_contenders", name, "--port", str(broker.port),
        "--count", str(count), "--qos", str(qos), "--workdir", str(workdir), "--cpu", "1", *flags,
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout or "{}")


def _drain_rates(qos: int, count: int, rounds: int) -> dict[str, list[float]]:
    """Each receiver has a broker of its own, so its persistent session queues only its backlog."""
    names = ("agent", "paho", "naive")
    rates: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        brokers = {name: stack.enter_context(BenchBroker(workdir, cpu=0)) for name in names}
        for name in names:
            _contender(name, brokers[name], count, qos, workdir, "--subscribe-only")
        for _ in range(rounds):
            for name in names:
                shutil.rmtree(workdir / "agent-data", ignore_errors=True)
                (workdir / "naive.db").unlink(missing_ok=True)
                # The naive agent is ~20x slower; a quarter of the readings gives a steady rate
                # in a quarter of the time.
                n = max(count // 4, 5_000) if name == "naive" else count
                prefill(brokers[name].port, n)
                rates[name].append(_contender(name, brokers[name], n, qos, workdir)["rate"])
    return rates


def _start_and_idle(runs: int) -> tuple[list[float], list[float]]:
    """Seconds from exec to the "ready" log line, and RSS (MB) two seconds after, per run."""
    ready_times, rss = [], []
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        workdir = Path(tmp)
        with BenchBroker(workdir, cpu=0) as broker:
            from bench.ingest_contenders import agent_config

            config = agent_config(workdir, broker.port, 1)
            text = config.read_text().replace('log_level = "WARNING"', 'log_level = "INFO"')
            config.write_text(text)
            for _ in range(runs):
                started = time.perf_counter()
                process = subprocess.Popen(
                    [sys.executable, "-m", "agent", "run", "-c", str(config)],
                    cwd=ROOT, stderr=subprocess.PIPE, text=True,
                )
                assert process.stderr is not None
                for line in process.stderr:
                    if " ready: " in line:
                        ready_times.append(time.perf_counter() - started)
                        break
                time.sleep(2.0)
                rss.append(_rss_mb(process.pid))
                process.send_signal(signal.SIGTERM)
                process.wait(15)
    return ready_times, rss


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def run(quick: bool) -> list[Result]:
    count = 20_000 if quick else 200_000
    rounds = 1 if quick else 3
    results: list[Result] = []
    for qos in (0, 1):
        rates = _drain_rates(qos, count, rounds)
        agent, paho, naive = (statistics.median(rates[k]) for k in ("agent", "paho", "naive"))
        results.append(Result(
            benchmark="ingest", metric=f"readings/s, QoS {qos}, broker → window → outbox",
            value=agent, unit="/s", baseline_name="raw paho receive", baseline=paho,
            target="≥ 0.8× paho", met=agent >= 0.8 * paho, runs=rates["agent"],
            baseline_runs=rates["paho"], note=f"{count:,} readings, one core",
        ))
        results.append(Result(
            benchmark="ingest", metric=f"readings/s, QoS {qos}, vs naive agent",
            value=agent, unit="/s", baseline_name="paho + commit per reading", baseline=naive,
            runs=rates["agent"], baseline_runs=rates["naive"],
        ))
    ready, rss = _start_and_idle(3 if quick else 5)
    results.append(Result(
        benchmark="agent", metric="start to ready", value=statistics.median(ready), unit="s",
        target="≤ 0.5 s", met=statistics.median(ready) <= 0.5, runs=ready,
        note="exec to the ready log line (outbox open, subscribed)",
    ))
    results.append(Result(
        benchmark="agent", metric="idle RSS", value=statistics.median(rss), unit="MB",
        target="≤ 40 MB", met=statistics.median(rss) <= 40, runs=rss,
        note="MQTT source + window, 2 s after ready",
    ))
    return results


if __name__ == "__main__":
    for result in run(quick="--quick" in sys.argv):
        print(result)
    os._exit(0)
