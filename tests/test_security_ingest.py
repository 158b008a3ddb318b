"""No device can stop the fleet's ingest: ``edge-cloud serve`` as a process on a real Mosquitto,
hostile devices publishing what the protocol's own encoder makes with numbers no store can hold,
and a well-behaved device whose records must keep arriving."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from cloud_sync import protocol
from cloud_sync.protocol import DroppedRange, Encoder
from tests.conftest import Broker, IngestProcess
from tests.sync_helpers import cloud_records, wait_for

pytestmark = pytest.mark.integration
BIG = (1 << 63) - 1


class Device:
    """A device's side of the wire, written by hand (a hostile one, or a plain one)."""

    def __init__(self, port: int, device_id: str) -> None:
        self.device_id = device_id
        self.encoder = Encoder(device_id, "epoch-1", compression="none")
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.seq = 0

    def publish(self, kind: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(protocol.topic("edge", self.device_id, kind), payload, 1, retain)  # type: ignore[arg-type]
        info.wait_for_publish(5)

    def status(self, doc: dict[str, Any]) -> None:
        self.publish("status", protocol.encode_status({"online": True, **doc}), retain=True)

    def records(self, count: int, data: str = '{"value":1}', ts: float = 1_700_000_000.0,
                dropped: list[DroppedRange] | None = None) -> None:
        rows = [(self.seq + i + 1, "win", ts, data) for i in range(count)]
        self.seq += count
        self.publish("data", self.encoder.encode(rows, 0, dropped or []))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def ingest(cloud_broker: Broker, tmp_path: Path, ingests: list[IngestProcess]) -> IngestProcess:
    process = IngestProcess(tmp_path, cloud_broker.url, f"sqlite:///{tmp_path}/cloud.db").start()
    ingests.append(process)
    return process


@pytest.fixture
def devices(cloud_broker: Broker) -> Iterator[dict[str, Device]]:
    made = {name: Device(cloud_broker.port, name) for name in ("good-gw", "evil-gw", "evil-2")}
    yield made
    for device in made.values():
        device.close()


def _stored(ingest: IngestProcess, count: int) -> bool:
    return len(cloud_records(ingest, "good-gw")) >= count


def test_one_devices_numbers_never_stop_another_devices_records(
    ingest: IngestProcess, devices: dict[str, Device], cloud_broker: Broker, tmp_path: Path,
    ingests: list[IngestProcess],
) -> None:
    good, evil, evil2 = devices["good-gw"], devices["evil-gw"], devices["evil-2"]
    good.records(5)
    wait_for(lambda: _stored(ingest, 5), 10, "the good device's first records")

    evil.status({"backlog": {"rows": 1, "bytes": (1 << 64) - 1}})  # beyond 64 bits: quarantined
    evil.status({"backlog": {"rows": 1e300, "bytes": BIG, "oldest_unsent_age_s": 1e308},
                 "dropped": {"x": 1e19}, "errors": {"mqtt": BIG, "other": BIG}, "send_rate": -1e300})
    evil2.status({"backlog": {"rows": BIG, "bytes": BIG}, "dropped": {"y": BIG, "z": BIG}})
    nested: Any = 1
    for _ in range(400):  # JSON that reads (orjson: 1,024 levels) but does not write (255)
        nested = [nested]
    evil.publish("status", json.dumps({"online": True, "deep": nested}).encode())
    evil.records(2, ts=1e300)
    evil.records(1, dropped=[DroppedRange(10, BIG, "a"), DroppedRange(10, BIG, "b"),
                             DroppedRange(5, BIG - 1, "c")])
    evil.records(1, data='{"n":18446744073709551615}')
    good.records(5)
    started = time.monotonic()
    wait_for(lambda: _stored(ingest, 10), 10, "the good device's records behind the hostile ones")
    assert time.monotonic() - started < 5

    fleet = ingest.api("/api/fleet")
    assert isinstance(fleet, dict) and fleet["devices"] == 3
    assert fleet["backlog"] <= 3 * 10**12 and fleet["dropped"] >= 0
    listed = {d["device_id"]: d for d in ingest.api("/api/devices")}  # type: ignore[union-attr]
    assert listed["evil-gw"]["backlog"] == 10**12 and listed["evil-2"]["dropped_total"] <= 2 * 10**12
    announced = listed["evil-gw"]["dropped_announced"]
    assert sum(announced.values()) <= BIG, announced  # overlapping ranges counted once
    quarantined = ingest.api("/api/quarantine")
    assert isinstance(quarantined, list)
    reasons = {q["reason"] for q in quarantined}
    assert {"bad_number", "too_deep"} <= reasons, quarantined

    # the retained statuses come back to a restarted ingest: still no harm
    ingest.stop()
    again = IngestProcess(tmp_path, cloud_broker.url, f"sqlite:///{tmp_path}/cloud.db").start()
    ingests.append(again)
    good.records(5)
    wait_for(lambda: _stored(again, 15), 10, "the good device's records after a restart")
    assert isinstance(again.api("/api/fleet"), dict)


def test_compressed_giants_are_refused_and_cost_the_ingest_little(
    ingest: IngestProcess, devices: dict[str, Device], tmp_path: Path
) -> None:
    import zlib

    from cloud_sync.protocol import MAGIC, VERSION, ZLIB

    good, evil = devices["good-gw"], devices["evil-gw"]
    giant = "x" * (60 << 20)
    for seq in range(1, 5):  # four messages of ~60 KB, each inflating to a 60 MiB record
        body = Encoder("evil-gw", "e", compression="none").body([(seq, "win", 1.0, f'{{"s":"{giant}"}}')], 0)
        evil.publish("data", bytes((MAGIC, VERSION)) + ZLIB + zlib.compress(body, 9))
    evil.seq = 4
    evil.records(1, data=f'{{"s":"{"y" * (2 << 20)}"}}')  # one 2 MiB record, uncompressed: bad record
    good.records(5)
    wait_for(lambda: _stored(ingest, 5), 15, "the good device's records")
    quarantined = ingest.api("/api/quarantine?limit=100")
    assert isinstance(quarantined, list)
    reasons = sorted(q["reason"] for q in quarantined if q["device_id"] == "evil-gw")
    assert reasons == ["bad_record"] + ["too_large"] * 4, reasons
    assert (tmp_path / "cloud.db").stat().st_size < 16 << 20
    assert ingest.process is not None
    peak = Path(f"/proc/{ingest.process.pid}/status").read_text().split("VmHWM:")[1].split()[0]
    assert int(peak) < 250_000, f"the ingest's peak memory: {int(peak) // 1024} MiB"


def test_a_bad_record_json_cannot_hold_costs_its_message_nothing_else(
    ingest: IngestProcess, devices: dict[str, Device]
) -> None:
    """A record refused for its stream whose data nests deeper than JSON text is written: the
    record is kept aside, its message's other records are stored and acknowledged (before, the
    whole message was unstorable, never acknowledged, and sent again for ever)."""
    evil = devices["evil-gw"]
    deep: Any = 1
    for _ in range(300):  # read by orjson (1,024 levels), not written (255)
        deep = {"a": deep}
    acks: list[bytes] = []
    evil.client.on_message = lambda client, userdata, message: acks.append(bytes(message.payload))
    evil.client.subscribe(protocol.topic("edge", "evil-gw", "ack"), 1)  # type: ignore[arg-type]
    evil.records(1)
    rows = [(2, "", 1.0, json.dumps({"v": deep})), (3, "win", 1.0, '{"value":3}')]
    evil.publish("data", evil.encoder.encode(rows, 0))
    wait_for(lambda: len(cloud_records(ingest, "evil-gw")) >= 2, 10, "the message's good record")
    assert [r["seq"] for r in cloud_records(ingest, "evil-gw")] == [1, 3]
    quarantined = ingest.api("/api/quarantine")
    assert isinstance(quarantined, list)
    kept = [(q["reason"], q["seq"]) for q in quarantined if q["device_id"] == "evil-gw"]
    assert kept == [("bad_record", 2)], quarantined
    wait_for(lambda: any(protocol.decode_ack(a).seq == 3 for a in acks), 10, "an ack of seq 3")
