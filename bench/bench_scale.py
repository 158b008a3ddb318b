"""Ingest workers past one process: records/s into PostgreSQL with 1, 2 and 3 ``edge-cloud serve``
workers sharing a Mosquitto subscription (``$share/``), in the same run; and per broker at one
worker: Mosquitto, NATS (data through the JetStream consumer, ``--jetstream``) and RabbitMQ
(its MQTT plugin).

Method: the workers start and subscribe; then one publisher sends ready-made data messages
(100 devices, 100 window summaries each, zlib, as the uploader encodes them) at QoS 1 as fast
as the broker takes them; the clock runs from the first publish until PostgreSQL holds every
record. CPU seconds of each process (workers, broker, PostgreSQL backends, the publisher) are
read from /proc before and after, so each figure comes with CPU per record and where the time
went. Everything shares one machine: on 2 cores a second worker can only take CPU that the
broker, PostgreSQL and the publisher leave.

    python -m bench scale [--quick]
"""

from __future__ import annotations

import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from bench.common import Result
from cloud_sync import protocol
from tests.brokers import NatsCluster, RabbitNode
from tests.conftest import Broker, IngestProcess

DEVICES = 100
PER_MESSAGE = 100
PG_ADMIN = os.environ.get("EDGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TICKS = os.sysconf("SC_CLK_TCK")


def _messages(records: int, run: str) -> list[tuple[str, bytes]]:
    """Data messages for ``records`` records over DEVICES devices, interleaved by device."""
    per_device = records // DEVICES
    out: list[list[tuple[str, bytes]]] = []
    for d in range(DEVICES):
        device = f"bench-{run}-{d:03d}"
        encoder = protocol.Encoder(device, secrets.token_hex(8), "zlib")
        topic = protocol.topic("edge", device, "data")
        mine = []
        for first in range(1, per_device + 1, PER_MESSAGE):
            rows = [(seq, "win", 1_700_000_000.0 + seq,
                     f'{{"sensor":"s{seq % 3}","start":{seq},"end":{seq + 1},"count":10,'
                     f'"mean":{20 + seq % 7}.5,"min":20.1,"max":23.9}}')
                    for seq in range(first, min(per_device, first + PER_MESSAGE - 1) + 1)]
            mine.append((topic, encoder.encode(rows, 0)))
        out.append(mine)
    return [m for group in zip(*out, strict=True) for m in group]


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def _postgres_cpu() -> float:
    """CPU of every PostgreSQL process (the server is shared, so only differences count)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += _cpu(int(entry.name))
            except OSError:
                continue
    return total


@contextmanager
def _database() -> Iterator[str]:
    import psycopg

    name = f"edge_bench_scale_{os.getpid()}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _stored(workers: list[IngestProcess]) -> int:
    """Records the workers have committed, from their own counters (asking PostgreSQL for a
    count would put the poll's own CPU into PostgreSQL's figure)."""
    total = 0
    for worker in workers:
        stats = worker.api("/api/stats")
        assert isinstance(stats, dict)
        total += int(stats["ingest"]["records"])
    return total


def _publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{port}",
                         protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(120)
    client.loop_stop()
    client.disconnect()


def _one_run(workdir: Path, broker_url: str, broker_pid: int, workers: int, records: int,
             extra: list[str], run: str) -> dict[str, float]:
    """Start the workers on a fresh database, publish, time until all is stored."""
    port = int(broker_url.rsplit(":", 1)[1])
    messages = _messages(records, run)
    total = DEVICES * (records // DEVICES)
    with _database() as db:
        procs = [IngestProcess(workdir, broker_url, db, "--client-id", f"bench-{run}-w{i}",
                               "--share-group", "bench" if extra else f"bench-{run}", *extra)
                 for i in range(workers)]
        try:
            for proc in procs:
                proc.start(timeout=60)
                while extra and "from JetStream stream" not in proc.output():
                    time.sleep(0.1)  # the stream must exist before the first publish
            before = [_cpu(p.process.pid) for p in procs if p.process]
            broker_before, pg_before, pub_before = _cpu(broker_pid), _postgres_cpu(), time.process_time()
            started = time.monotonic()
            _publish(port, messages)
            publish_cpu = time.process_time() - pub_before
            deadline = started + 300
            while _stored(procs) < total:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{run}: not all {total} records stored in 300 s")
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            worker_cpu = sum(_cpu(p.process.pid) - b for p, b in zip(procs, before, strict=True)
                             if p.process)
            return {
                "rate": total / elapsed,
                "worker_us": worker_cpu / total * 1e6,
                "broker_us": (_cpu(broker_pid) - broker_before) / total * 1e6,
                "pg_us": (_postgres_cpu() - pg_before) / total * 1e6,
                "publisher_us": publish_cpu / total * 1e6,
                "elapsed": elapsed,
            }
        finally:
            for proc in procs:
                proc.stop()


def _series(workdir: Path, url: str, pid: int, workers: int, records: int, rounds: int,
            extra: list[str], name: str) -> list[dict[str, float]]:
    return [_one_run(workdir, url, pid, workers, records, extra, f"{name}{r}") for r in range(rounds)]


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _note(runs: list[dict[str, float]], workers: int) -> str:
    worker = _median(runs, "worker_us")
    return (f"CPU per record: workers {worker:.1f} µs in all ({worker / workers:.1f} per worker), "
            f"broker {_median(runs, 'broker_us'):.1f}, PostgreSQL {_median(runs, 'pg_us'):.1f}, "
            f"publisher {_median(runs, 'publisher_us'):.1f}")


def run(quick: bool) -> Iterator[Result]:
    """Yields each figure as soon as it is measured."""
    records, rounds = (20_000, 1) if quick else (200_000, 3)
    with tempfile.TemporaryDirectory(prefix="edge-bench-scale-") as tmp:
        workdir = Path(tmp)
        broker = Broker(workdir).start()
        try:
            assert broker.process is not None
            pid = broker.process.pid
            by_workers = {n: _series(workdir, broker.url, pid, n, records, rounds, [], f"m{n}w")
                          for n in (1, 2, 3)}
        finally:
            broker.stop()
        one = _median(by_workers[1], "rate")
        for n, runs in by_workers.items():
            yield Result(
                "scale", f"ingest records/s, {n} worker(s) ($share/, Mosquitto, PostgreSQL)",
                _median(runs, "rate"), "records/s", "1 worker, same run", one,
                runs=[r["rate"] for r in runs], baseline_runs=[r["rate"] for r in by_workers[1]],
                note=_note(runs, n))
        yield from _per_broker(workdir, records, rounds, by_workers[1])


def _per_broker(workdir: Path, records: int, rounds: int,
                mosquitto: list[dict[str, Any]]) -> Iterator[Result]:
    cluster = NatsCluster(workdir / "nats", size=1).start()
    try:
        node = cluster.nodes[0]
        assert node.process is not None
        nats = _series(workdir, node.url, node.process.pid, 1, records, rounds,
                       ["--jetstream", cluster.nats_urls], "nats")
    finally:
        cluster.stop()
    yield _against_mosquitto("NATS 2.9, JetStream consumer", nats, mosquitto)
    rabbit = RabbitNode(workdir / "rabbit").start()
    try:
        assert rabbit.process is not None
        beam = _beam_pid(rabbit.process.pid)
        rmq = _series(workdir, rabbit.url, beam, 1, records, rounds, [], "rmq")
    finally:
        rabbit.stop()
    yield _against_mosquitto("RabbitMQ 3.10, MQTT plugin", rmq, mosquitto)


def _against_mosquitto(name: str, runs: list[dict[str, Any]], mosquitto: list[dict[str, Any]]) -> Result:
    return Result(
        "scale", f"ingest records/s, 1 worker, {name} (PostgreSQL)", _median(runs, "rate"), "records/s",
        "Mosquitto, 1 worker, same run", _median(mosquitto, "rate"), runs=[r["rate"] for r in runs],
        baseline_runs=[r["rate"] for r in mosquitto], note=_note(runs, 1))


def _beam_pid(script_pid: int) -> int:
    """The Erlang VM under the rabbitmq-server script (its CPU is the broker's)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if "beam.smp" in status.split("\n", 1)[0] and f"PPid:\t{script_pid}\n" in status:
                return int(entry.name)
    return script_pid
