"""Readings/s through the payload mapping, broker → window → outbox on one core: a 6-field
Zigbee2MQTT object and a Tasmota object nested by sensor (six readings a message), beside
today's ``{"value"}`` path (one reading a message) in the same run, and that path as it was
before the mapping existed (the code of the commit before it, run from a ``git archive`` of
it), so that what the mapping costs today's path is measured, not guessed.

Method as bench_ingest: each contender has a Mosquitto of its own pinned to core 0, prefilled
with its backlog for a persistent session; the agent (pinned to core 1) drains it; the rate is
readings processed by ``window`` per second from the first reading accepted. Contenders are
interleaved round by round; medians of the rounds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from bench.common import Result
from bench.loadgen import BenchBroker
from bench.mapping_payloads import KINDS
from simulators.publisher import WindowedPublisher

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEFORE = "before"
"""The contender that runs today's path on the code before the mapping."""


def baseline_ref() -> str | None:
    """The commit before the mapping landed (``BENCH_MAPPING_BEFORE`` overrides), if git knows."""
    if ref := os.environ.get("BENCH_MAPPING_BEFORE"):
        return ref
    found = subprocess.run(
        ["git", "log", "-1", "--format=%H", "--grep=^Payload mapping for MQTT sources"],
        cwd=ROOT, capture_output=True, text=True,
    )
    sha = found.stdout.strip()
    return f"{sha}^" if found.returncode == 0 and sha else None


def _export(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=ROOT, capture_output=True,
                             check=True).stdout
    tree = into / "code-before"
    tree.mkdir()
    tar = into / "code-before.tar"
    tar.write_bytes(archive)
    with tarfile.open(tar) as file:
        file.extractall(tree, filter="data")
    return tree


def _broker(root: Path) -> BenchBroker:
    """A started broker; a second try when the first does not listen in time (a port taken
    meanwhile, or a machine too busy to start it within the wait)."""
    for attempt in range(3):
        broker = BenchBroker(root, cpu=0)
        # as configs/mosquitto-local.conf ships it: mosquitto's default of 20 unacknowledged
        # messages holds back an agent that acknowledges at its checkpoints (design note 004)
        broker.config.write_text(broker.config.read_text() + "max_inflight_messages 0\n")
        try:
            broker.__enter__()
        except TimeoutError:
            broker.__exit__(None, None, None)
            if attempt == 2:
                raise
            continue
        return broker
    raise AssertionError("unreachable")


def _prefill(port: int, kind: str, messages: int) -> None:
    publisher = WindowedPublisher("127.0.0.1", port, 1, 1000, client_id=f"bench-prefill-{port}")
    publisher.connect()
    message = KINDS[kind].message
    for i in range(messages):
        topic, payload = message(i)
        publisher.publish(topic, payload, None)
    if not publisher.flush(timeout=180):
        raise TimeoutError(f"the broker did not acknowledge {publisher.inflight} messages")
    publisher.close()


def _contender(name: str, port: int, readings: int, workdir: Path, before: Path | None,
               subscribe: bool = False) -> dict[str, float]:
    if name == BEFORE:
        assert before is not None
        cmd = [sys.executable, str(HERE / "mapping_before.py"), "--port", str(port),
               "--count", str(readings), "--workdir", str(workdir), "--cpu", "1"]
        cwd, env = before, {**os.environ, "PYTHONPATH": str(before)}
    else:
        cmd = [sys.executable, "-m", "bench.mapping_contender", name, "--port", str(port),
               "--readings", str(readings), "--workdir", str(workdir), "--cpu", "1"]
        cwd, env = ROOT, dict(os.environ)
    if subscribe:
        cmd.append("--subscribe-only")
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed: {out.stderr[-2000:]}")
    return {key: float(value) for key, value in json.loads(out.stdout or "{}").items()}


def drain_rates(
    messages: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], str | None]:
    """Per contender, the wall-clock rates and the rates per CPU-second of its rounds."""
    ref = baseline_ref()
    names = ["reading", *([BEFORE] if ref else []), "zigbee2mqtt", "tasmota"]
    rates: dict[str, list[float]] = {name: [] for name in names}
    cpu_rates: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="edge-bench-map-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        before = _export(ref, root) if ref else None
        brokers = {name: _broker(root) for name in names}
        for broker in brokers.values():
            stack.callback(broker.__exit__, None, None, None)
        for name in names:
            (root / name).mkdir()
            _contender(name, brokers[name].port, 0, root / name, before, subscribe=True)
        for _ in range(rounds):
            for name in names:
                kind = "reading" if name == BEFORE else name
                workdir = root / name
                for data in workdir.glob("*data*"):
                    shutil.rmtree(data, ignore_errors=True)
                per = KINDS[kind].per_message
                count = messages // per if per > 1 else messages  # the same readings for each
                _prefill(brokers[name].port, kind, count)
                got = _contender(name, brokers[name].port, count * per, workdir, before)
                rates[name].append(got["rate"])
                if "cpu_rate" in got:
                    cpu_rates[name].append(got["cpu_rate"])
    return rates, cpu_rates, ref


def run(quick: bool) -> list[Result]:
    # BENCH_MAPPING_READINGS: a smaller full run when the machine is busy (prefilling the
    # brokers is most of the time then)
    readings = int(os.environ.get("BENCH_MAPPING_READINGS", 30_000 if quick else 300_000))
    rounds = 1 if quick else int(os.environ.get("BENCH_MAPPING_ROUNDS", 3))  # more: a noisy machine
    rates, cpu_rates, ref = drain_rates(readings, rounds)
    today = statistics.median(rates["reading"])
    results: list[Result] = []
    kinds = (("zigbee2mqtt", "6-field Zigbee2MQTT object"), ("tasmota", "Tasmota object, 3 sensors"))
    for kind, what in kinds:
        value = statistics.median(rates[kind])
        results.append(Result(
            benchmark="mapping", metric=f"readings/s, {what} → window → outbox", value=value,
            unit="/s", baseline_name="today's {\"value\"} path", baseline=today,
            target="≥ 150,000 readings/s", met=value >= 150_000, runs=rates[kind],
            baseline_runs=rates["reading"],
            note=f"{readings:,} readings, 6 a message, QoS 1, one core",
        ))
    for kind in ("zigbee2mqtt", "tasmota"):
        results.append(Result(
            benchmark="mapping", metric=f"readings per CPU-second, {kind} → window → outbox",
            value=statistics.median(cpu_rates[kind]), unit="/s",
            baseline_name="today's {\"value\"} path", baseline=statistics.median(cpu_rates["reading"]),
            runs=cpu_rates[kind], baseline_runs=cpu_rates["reading"],
            note="the agent process's CPU time (all threads), not wall time",
        ))
    if BEFORE in rates:
        results.append(Result(
            benchmark="mapping", metric="readings per CPU-second, today's {\"value\"} path",
            value=statistics.median(cpu_rates["reading"]), unit="/s",
            baseline_name="the same before the mapping", baseline=statistics.median(cpu_rates[BEFORE]),
            target="≥ 0.95× before", met=statistics.median(cpu_rates["reading"])
            >= 0.95 * statistics.median(cpu_rates[BEFORE]),
            runs=cpu_rates["reading"], baseline_runs=cpu_rates[BEFORE],
            note="the agent process's CPU time (all threads), not wall time",
        ))
        before = statistics.median(rates[BEFORE])
        results.append(Result(
            benchmark="mapping", metric="readings/s, today's {\"value\"} path, QoS 1", value=today,
            unit="/s", baseline_name="the same before the mapping", baseline=before,
            target="≥ 0.95× before", met=today >= 0.95 * before, runs=rates["reading"],
            baseline_runs=rates[BEFORE], note=f"{readings:,} readings; before = {ref}",
        ))
    return results


if __name__ == "__main__":
    for result in run(quick="--quick" in sys.argv):
        print(result)
    os._exit(0)
