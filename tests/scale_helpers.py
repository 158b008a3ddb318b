"""The scale scenarios: fleets of virtual devices spread over broker nodes, ingest workers on
PostgreSQL, faults at set times, and the exactly-once check on the store."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import IngestProcess

FLEET = [sys.executable, "-m", "simulators", "fleet"]


@dataclass
class FleetRun:
    """One ``edge-sim fleet`` process on one broker node."""

    id_prefix: str
    process: subprocess.Popen[str]

    def report(self, timeout: float) -> dict[str, Any]:
        out, err = self.process.communicate(timeout=timeout)
        assert self.process.returncode == 0, f"edge-sim fleet {self.id_prefix} failed:\n{err[-3000:]}"
        return dict(json.loads(out))


def start_fleet(url: str, id_prefix: str, devices: int, duration: float, drain: float = 60.0,
                interval: float = 1.0, sensors: int = 2) -> FleetRun:
    """Devices that send one summary per sensor and ``interval`` (``count`` = 1 reading each with
    the default interval), resend after 3 s without an ack and wait up to ``drain`` at the end."""
    args = [*FLEET, "--broker", url, "--devices", str(devices), "--duration", str(duration),
            "--interval", str(interval), "--sensors", str(sensors), "--status-interval", "5",
            "--id-prefix", id_prefix, "--seed", "1", "--ack-timeout", "3", "--drain", str(drain),
            "--reconnect-max", "4", "--connect-rate", "200", "--json"]
    return FleetRun(id_prefix, subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                text=True))


def run_scenario(fleets: list[FleetRun], events: list[tuple[float, Callable[[], None]]],
                 timeout: float) -> list[dict[str, Any]]:
    """Fire ``events`` at their second since the start, then collect every fleet's report."""
    started = time.monotonic()
    for at, action in sorted(events, key=lambda event: event[0]):
        time.sleep(max(0.0, started + at - time.monotonic()))
        action()
    reports = [fleet.report(timeout) for fleet in fleets]
    print("fleet reports:", reports)
    return reports


def start_worker(tmp_path: Path, broker_url: str, db_url: str, name: str, *extra: str) -> IngestProcess:
    return IngestProcess(tmp_path, broker_url, db_url, "--client-id", name, *extra).start(timeout=40)


def assert_every_seq_once(db_url: str, fleets: list[FleetRun], reports: list[dict[str, Any]]) -> int:
    """Every device acknowledged everything it produced; the store holds each device's seqs
    1..N exactly once (N the device's last seq), the window counts sum to the readings the
    devices produced, and the store's own per-device tally agrees. Returns the records checked."""
    import psycopg

    produced = sum(r["produced"] for r in reports)
    for fleet, report in zip(fleets, reports, strict=True):
        assert report["acked"] == report["produced"] and report["backlog"] == 0, (fleet.id_prefix, report)
    like = [f"{fleet.id_prefix}-%" for fleet in fleets]
    with psycopg.connect(db_url) as db:
        rows = db.execute(
            "SELECT device_id, count(*), min(seq), max(seq), sum((data->>'count')::bigint) FROM records "
            "WHERE device_id LIKE ANY(%s) GROUP BY device_id", (like,)).fetchall()
        devices = {row[0]: row for row in db.execute(
            "SELECT device_id, acked_seq, max_seq, records FROM devices WHERE device_id LIKE ANY(%s)",
            (like,)).fetchall()}
    expected_devices = sum(r["devices"] for r in reports)
    assert len(rows) == expected_devices, f"{len(rows)} devices stored, {expected_devices} sent"
    for device_id, count, first, last, readings in rows:
        assert (first, last) == (1, count), f"{device_id}: seqs {first}..{last} in {count} rows"
        assert readings == count, f"{device_id}: counts sum to {readings}, {count} summaries"
        _, acked, max_seq, records = devices[device_id]
        assert (acked, max_seq, records) == (count, count, count), (device_id, devices[device_id])
    stored = sum(row[1] for row in rows)
    assert stored == produced, f"the store holds {stored} records, the devices produced {produced}"
    return stored
