"""Sync over a poor link: bytes on the wire per synced record, ours beside one record per message.

The link is tests/poor_link.py's: the gateway and the cloud in two network namespaces joined by
a veth pair, each direction 256 kbit/s, 150 ms of delay (300 ms round trip) and 2 % loss. Bytes
are the veth ends' transmit counters, both directions, so TCP/IP headers, retransmissions, MQTT
acknowledgements and the cloud's acks are all in.

The backlog is the poor-link test's: an hour offline at 100 readings/s (100 sensors, 360,000
readings) through configs/pi.toml's 60 s window, made once by the real agent with the cloud
away. Each round, same run:

* ours: ``edge-agent sync --once`` on a copy of that outbox, with the shipped sync settings, into
  a fresh cloud Mosquitto and ``edge-cloud serve``; the clock stops when the cloud's ack covers
  the last record.
* baseline: the same records, each its own QoS 1 MQTT message (the record as JSON), 20 in flight
  as paho allows by default, to a fresh cloud Mosquitto, until the last PUBACK; the first
  ``BASELINE_RECORDS`` of the backlog (the cost per record does not depend on how many).

Needs root (network namespaces) and iproute2; ``--quick`` skips it (a full run takes about three
minutes, most of it making the backlog).

    sudo .venv/bin/python -m bench link
"""

from __future__ import annotations

import functools
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.outbox import Outbox
from bench.common import Result
from simulators.publisher import WindowedPublisher
from tests.conftest import EDGE_AGENT, AgentProcess, IngestProcess
from tests.poor_link import READINGS, LinkUnavailable, PoorLink, cloud_broker, held, hour_config, write_hour

Row = tuple[int, str, float, str, int]
ROUNDS = 3
BASELINE_RECORDS = 1000
METRIC = "bytes on the wire per synced record, 256 kbit/s, 300 ms RTT, 2 % loss"


def run(quick: bool) -> list[Result]:
    if quick:
        return [_skipped("skipped in --quick: needs root and network namespaces, about 3 minutes")]
    with tempfile.TemporaryDirectory(prefix="bench-link-") as tmp:
        try:
            with PoorLink() as link:
                return _measure(link, Path(tmp))
        except LinkUnavailable as why:
            return [_skipped(f"skipped: {why}")]


def _skipped(why: str) -> Result:
    return Result(benchmark="link", metric=METRIC, value=0.0, unit="B/record", note=why)


def _measure(link: PoorLink, work: Path) -> list[Result]:
    seed = _backlog(link, work)
    box = Outbox.open_readonly(seed / "data")
    records = box.read_rows(0, 1 << 30, 1 << 40)
    box.close()
    ours_bytes, ours_secs, base_bytes, base_rates = [], [], [], []
    for index in range(ROUNDS):
        nbytes, secs = _ours(link, seed, work / f"ours{index}")
        ours_bytes.append(nbytes / len(records))
        ours_secs.append(secs)
        nbytes, secs = _baseline(link, work / f"base{index}", records[:BASELINE_RECORDS])
        base_bytes.append(nbytes / BASELINE_RECORDS)
        base_rates.append(BASELINE_RECORDS / secs)
    ours, base = statistics.median(ours_bytes), statistics.median(base_bytes)
    drain = statistics.median(ours_secs)
    return [
        Result(
            benchmark="link",
            metric=METRIC,
            value=ours,
            unit="B/record",
            baseline_name="1 record/message, QoS 1",
            baseline=base,
            runs=ours_bytes,
            baseline_runs=base_bytes,
            note=f"{len(records):,} window summaries (an hour at 100 readings/s); {link.method}",
        ),
        Result(
            benchmark="link",
            metric="an hour's backlog at 100 readings/s drained over that link",
            value=drain,
            unit="s",
            runs=ours_secs,
            note=(f"{len(records):,} records, `edge-agent sync --once`, shipped settings, includes "
                  f"connecting; the baseline sends {statistics.median(base_rates):.0f} records/s"),
        ),
    ]


def _backlog(link: PoorLink, work: Path) -> Path:
    """The agent's outbox after an hour offline (the cloud's address answers nothing)."""
    seed = work / "seed"
    seed.mkdir()
    readings = work / "hour.log"
    write_hour(readings, time.time() - 3700)
    config = hour_config(seed, readings, f"mqtt://{link.address['cloud']}:1")
    agent = AgentProcess(config)
    link.call("device", agent.start, 60.0)
    try:
        deadline = time.monotonic() + 600
        while held(seed / "data")[1] < READINGS:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the agent did not take the hour's readings:\n{agent.output()}")
            time.sleep(1)
        agent.signal(signal.SIGTERM)
        agent.wait(30)
    finally:
        agent.stop()
    return seed


def _ours(link: PoorLink, seed: Path, workdir: Path) -> tuple[int, float]:
    """Bytes on the wire and seconds for ``edge-agent sync --once`` to drain a copy of ``seed``."""
    workdir.mkdir()
    shutil.copytree(seed / "data", workdir / "data")
    cloud = cloud_broker(workdir / "cloud")
    config = hour_config(workdir, workdir / "unused.log", f"mqtt://{link.address['cloud']}:{cloud.port}")
    link.call("cloud", cloud.start)
    ingest = IngestProcess(workdir, f"mqtt://127.0.0.1:{cloud.port}", f"sqlite:///{workdir}/cloud.db")
    try:
        link.call("cloud", ingest.start, 60.0)
        before = link.wire_bytes()
        started = time.perf_counter()
        command = [*EDGE_AGENT, "sync", "-c", str(config), "--once", "--timeout", "600"]
        done = link.call("device", functools.partial(subprocess.run, command, capture_output=True))
        elapsed = time.perf_counter() - started
        if done.returncode:
            raise RuntimeError(f"edge-agent sync --once exited {done.returncode}: {done.stderr.decode()}")
        return link.wire_bytes() - before, elapsed
    finally:
        ingest.stop()
        cloud.stop()


def _baseline(link: PoorLink, workdir: Path, records: list[Row]) -> tuple[int, float]:
    """Bytes on the wire and seconds to publish each record as its own QoS 1 message."""
    cloud = cloud_broker(workdir)
    link.call("cloud", cloud.start)
    try:
        before = link.wire_bytes()
        started = time.perf_counter()
        link.call("device", _one_per_message, link.address["cloud"], cloud.port, records)
        return link.wire_bytes() - before, time.perf_counter() - started
    finally:
        cloud.stop()


def _one_per_message(host: str, port: int, records: list[Row]) -> None:
    publisher = WindowedPublisher(host, port, qos=1, window=20, client_id="bench-one-per-message")
    publisher.connect(timeout=30)
    for seq, stream, ts, data, _ in records:
        payload = f'{{"seq":{seq},"stream":"{stream}","ts":{ts},"data":{data}}}'.encode()
        publisher.publish("edge/bench-gw/records", payload, seq)
    if not publisher.flush(timeout=600):
        raise TimeoutError(f"the cloud broker did not acknowledge {publisher.inflight} records")
    publisher.close()


if __name__ == "__main__":
    for result in run(quick="--quick" in sys.argv):
        print(result)
