"""10,000 virtual devices (``edge-sim fleet``) on one Mosquitto, two ingest workers sharing the
subscription into PostgreSQL: every device acknowledged, every record stored once; and the
console's fleet page, asked every second while the fleet sends. About two to three minutes.

The page's budget (300 ms, the median) is a wall-clock figure, which a machine busy with other
work cannot promise: the test prints the page's p50 and p95 (with the time until everything was
acknowledged and the CPU each part spent per record) and holds the page to its budget only with
``EDGE_SCALE_FLEET=1``, on a machine that has the cores for it (docs/scale.md)."""

from __future__ import annotations

import http.client
import json
import os
import resource
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from bench.bench_console import Client, _users
from bench.bench_scale import _cpu, _postgres_cpu
from tests.conftest import Broker, IngestProcess
from tests.scale_helpers import FLEET, start_worker

pytestmark = [pytest.mark.integration, pytest.mark.scale, pytest.mark.timeout(420)]

DEVICES = 10_000
SENDING = 45.0
RAMP = 10.0  # 10,000 connections at 1,000 a second


def test_ten_thousand_devices_two_workers_on_postgresql(
    tmp_path: Path, cloud_broker: Broker, pg_url: str, ingests: list[IngestProcess],
) -> None:
    users = ["--share-group", "ingest", "--users", str(_users(tmp_path))]
    ingests += [start_worker(tmp_path, cloud_broker.url, pg_url, f"w{i}", *users) for i in (1, 2)]
    console = Client(ingests[0].http_port)
    processes = {"workers": [w.process.pid for w in ingests if w.process],
                 "broker": [cloud_broker.process.pid] if cloud_broker.process else []}
    cpu_before = {part: sum(map(_cpu, pids)) for part, pids in processes.items()}
    pg_before, children_before = _postgres_cpu(), _children_cpu()
    started = time.monotonic()
    # Devices resend what has no ack after 20 s; the drain allows for a machine busy with other
    # work, where the simulator itself falls behind its clock.
    fleet = subprocess.Popen(
        [*FLEET, "--broker", cloud_broker.url, "--devices", str(DEVICES), "--interval", "10",
         "--sensors", "3", "--duration", str(SENDING), "--connect-rate", "1000", "--ack-timeout", "20",
         "--drain", "150", "--id-prefix", "big", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    page_ms = []
    while time.monotonic() < started + SENDING:  # asked all along (the connection stays open),
        took = _page_ms(console)                   # counted once the ramp is over and all send
        if time.monotonic() > started + RAMP + 5:
            page_ms.append(took)
        time.sleep(1.0)
    out, err = fleet.communicate(timeout=300)
    assert fleet.returncode == 0, err[-3000:]
    report = json.loads(out)
    assert report["devices"] == DEVICES and report["connects"] >= DEVICES
    assert report["acked"] == report["produced"] and report["devices_behind"] == 0, report
    cpu = {part: sum(map(_cpu, pids)) - cpu_before[part] for part, pids in processes.items()}
    cpu |= {"PostgreSQL": _postgres_cpu() - pg_before, "simulator": _children_cpu() - children_before}

    listed = ingests[1].api("/api/devices")
    assert isinstance(listed, list)
    assert len([d for d in listed if d["device_id"].startswith("big-")]) == DEVICES
    assert sum(d["records"] for d in listed) == report["produced"]
    shares = [ingest.api("/api/stats")["ingest"]["records"] for ingest in ingests]  # type: ignore[index]
    assert all(share > 0 for share in shares), f"a worker stored nothing: {shares}"
    assert page_ms, "the fleet page was never asked for after the ramp"
    p50 = statistics.median(page_ms)
    p95 = statistics.quantiles(page_ms, n=20)[-1] if len(page_ms) > 1 else page_ms[0]
    produced = report["produced"]
    per_record = ", ".join(f"{part} {seconds / produced * 1e6:.0f}" for part, seconds in cpu.items())
    print(f"\n{produced} records from {DEVICES} devices, all acknowledged "
          f"{SENDING + report['drain_s']:.0f} s after the start ({report['drain_s']:.0f} s after the last "
          f"record); fleet page while sending: p50 {p50:.0f} ms, p95 {p95:.0f} ms over {len(page_ms)} "
          f"requests; CPU µs per record: {per_record}; records per worker {shares}; "
          f"resends {report['resends']}")
    if os.environ.get("EDGE_SCALE_FLEET") == "1":
        assert p50 < 300, f"the fleet page took {sorted(page_ms)} ms"


def _page_ms(console: Client) -> float:
    try:
        return console.timed("/fleet")
    except (http.client.RemoteDisconnected, ConnectionError):  # an idle connection timed out
        console.conn.close()
        console.conn = http.client.HTTPConnection("127.0.0.1", console.port, timeout=30)
        return console.timed("/fleet")


def _children_cpu() -> float:
    """CPU of this process's children that have ended (the simulator, once it is waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
