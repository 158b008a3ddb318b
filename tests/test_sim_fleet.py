"""``edge-sim fleet`` against a real Mosquitto and a small stand-in for the cloud ingest that
decodes with ``cloud_sync.protocol`` and acks what it stored."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_sync import protocol
from simulators.fleet import Fleet, FleetOptions, FleetReport
from simulators.fleet_device import DeviceOptions
from tests.conftest import Broker

pytestmark = pytest.mark.integration


class Ingest:
    """Keeps every seq each device sent and every status; acks the contiguous prefix."""

    def __init__(self, port: int, ack: bool = True) -> None:
        self.seqs: dict[str, set[int]] = defaultdict(set)
        self.statuses: dict[str, list[bool]] = defaultdict(list)
        self._ack = ack
        self._lock = threading.Lock()
        self.connect(port)

    def connect(self, port: int) -> None:
        """A new connection; what was received so far is kept."""
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ingest-{port}")
        self.client.on_connect = lambda c, *_: c.subscribe(
            [("edge/+/data", 1), ("edge/+/status", 1)])
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(5)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        device, kind = protocol.parse_topic("edge", msg.topic)
        with self._lock:
            if kind == "status":
                self.statuses[device].append(protocol.decode_status(msg.payload)["online"])
                return
            batch = protocol.decode_batch(device, msg.payload)
            seqs = self.seqs[device]
            seqs.update(row[0] for row in batch.records)  # rows are (seq, stream, ts, data)
            top = max(seqs, default=0)
            contiguous = next((n - 1 for n in range(1, top + 2) if n not in seqs), top)
        if self._ack:
            ack = protocol.Ack(contiguous, batch.epoch, top)
            client.publish(protocol.topic("edge", device, "ack"), ack.encode(), qos=1, retain=True)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def ingest(broker: Broker):
    stand_in = Ingest(broker.port)
    yield stand_in
    stand_in.close()


def run_fleet(broker: Broker, devices: int, duration: float, schedule: str = "",
              middle=None) -> tuple[Fleet, FleetReport]:
    options = FleetOptions(
        devices=devices, duration=duration, schedule=schedule, connect_rate=200,
        device=DeviceOptions(port=broker.port, interval=0.3, status_interval=0.5, sensors=2,
                             keepalive=5, compression="zlib"),
    )
    fleet = Fleet(options)

    async def main() -> FleetReport:
        if middle is not None:
            asyncio.get_running_loop().call_later(*middle)
        return await fleet.run()

    return fleet, asyncio.run(main())


def test_devices_send_growing_seqs_that_the_ingest_acks(broker: Broker, ingest: Ingest):
    fleet, report = run_fleet(broker, devices=15, duration=2.0)
    assert report.connects == 15 and report.outages == 0
    assert report.produced == sum(d.next_seq - 1 for d in fleet.devices) > 15 * 2 * 4
    assert report.acked == report.produced and report.backlog == 0
    for device in fleet.devices:
        assert ingest.seqs[device.id] == set(range(1, device.next_seq))
        # Online while running, then a polite retained ``online: false`` at the end.
        assert ingest.statuses[device.id][0] is True
        assert ingest.statuses[device.id][-1] is False


def test_a_scheduled_outage_fires_the_will_and_the_backlog_catches_up(broker: Broker,
                                                                      ingest: Ingest):
    fleet, report = run_fleet(broker, devices=12, duration=3.5,
                              schedule="1:offline=0.25,2.2:online")
    assert report.outages == 3 and report.connects == 15
    cut = [d for d in fleet.devices if d.counts.outages]
    for device in cut:
        # online, then the broker's Last Will, then online again, then goodbye.
        states = ingest.statuses[device.id]
        first_false = states.index(False)
        assert True in states[first_false:-1], states
    for device in fleet.devices:
        assert ingest.seqs[device.id] == set(range(1, device.next_seq))
    assert report.acked == report.produced


def test_a_broker_restart_loses_nothing(broker: Broker, ingest: Ingest):
    def restart() -> None:
        ingest.close()
        broker.stop()
        broker.start()
        ingest.connect(broker.port)

    fleet, report = run_fleet(broker, devices=6, duration=6.0, middle=(1.0, restart))
    assert report.connects >= 12
    for device in fleet.devices:
        # Records made while the broker was down were resent after the reconnect.
        assert ingest.seqs[device.id] >= set(range(1, device.acked + 1))
        assert device.acked == device.next_seq - 1


def test_schedule_commands_are_checked_up_front():
    for bad in ("5:offline=2", "5:reboot", "5:online=3"):
        with pytest.raises(ValueError, match="offline"):
            FleetOptions(schedule=bad)
