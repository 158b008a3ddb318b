"""QoS 1 acknowledgements owed to the local broker outlive a restart of the MQTT source after an
error (a new instance, not a reconnect): the broker's resends of what the failed instance took
are skipped, not taken twice. A real Mosquitto, the real source under its runner."""

from __future__ import annotations

import asyncio
import json

import pytest

from agent.api import Record
from agent.bus import Bus, RecordQueue
from agent.config.sources import MqttSourceConfig
from agent.counters import CounterSet
from agent.runtime.source_runner import SourceRunner
from agent.sources.acks import RECENT, AckLedger
from agent.sources.mqtt import MqttSource
from tests.conftest import Broker
from tests.mqtt_helpers import Publisher

pytestmark = pytest.mark.integration

READINGS = 10


async def _until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)


def _drain(queue: RecordQueue, into: list[Record]) -> int:
    while (batch := queue.get_nowait()) is not None:
        into.extend(batch)
    return len(into)


async def _restart_while_acknowledgements_are_owed(broker: Broker) -> tuple[list[Record], dict[str, int]]:
    config = MqttSourceConfig(type="mqtt", name="local", url=broker.url, topics=["sensors/#"], qos=1,
                              keepalive=5)
    bus, counters = Bus(), CounterSet()
    queue = RecordQueue(10_000)
    bus.subscribe(["sensors/#"], queue)
    runner = SourceRunner(MqttSource, config, "gw", bus, counters)
    task = asyncio.create_task(runner.run())
    taken: list[Record] = []
    try:
        await _until(lambda: runner.context.connected, 10, "the source connected")
        publisher = Publisher(broker.port)
        await asyncio.to_thread(
            publisher.readings, [(f"t{i}", 1_700_000_000.0 + i, float(i)) for i in range(READINGS)]
        )
        publisher.close()
        await _until(lambda: _drain(queue, taken) == READINGS, 10, "the readings taken")

        first = runner._current
        assert isinstance(first, MqttSource) and first._protocol is not None
        # No checkpoint yet: all ten PUBACKs are owed. The source fails with an error its own
        # loop does not handle, so the runner replaces it with a new instance.
        first._protocol.closed.set_exception(RuntimeError("a fault in the source"))
        first._protocol.abort()
        await _until(lambda: runner._current is not first and runner.context.connected, 10,
                     "a new instance connected")
        resent = ("source:local", "redelivered_taken")
        await _until(lambda: counters.totals.get(resent, 0) >= READINGS, 10, "the broker's resends seen")
        await asyncio.sleep(0.5)  # anything taken twice would be on the bus by now
        _drain(queue, taken)

        release = runner.cut()  # the checkpoint that covers them has committed
        assert release is not None
        release()
        second = runner._current
        assert isinstance(second, MqttSource) and second.acks is not None
        await _until(lambda: second.acks.owed == 0, 5, "every PUBACK sent")
        return taken, {name: n for (scope, name), n in counters.totals.items() if scope == "source:local"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_source_restarted_after_an_error_does_not_take_the_brokers_resends_again(
    broker: Broker, monkeypatch
) -> None:
    monkeypatch.setattr("agent.runtime.source_runner.RESTART_FIRST", 0.05)
    taken, counted = asyncio.run(_restart_while_acknowledgements_are_owed(broker))
    assert sorted(json.dumps(record.data, sort_keys=True) for record in taken) == sorted(
        json.dumps({"sensor": f"t{i}", "value": float(i)}, sort_keys=True) for i in range(READINGS)
    )
    assert counted["restarts"] == 1
    assert counted["redelivered_taken"] == READINGS


class Sent:
    """The PUBACKs a ledger sends, and the counters it keeps."""

    def __init__(self) -> None:
        self.acks: list[int] = []
        self.counts: dict[str, int] = {}

    def send_acks(self, packet_ids: list[int]) -> bool:
        self.acks += packet_ids
        return True

    def incr(self, name: str, by: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + by


@pytest.mark.parametrize(
    ("taken_since", "taken_again"),
    [(0, False), (RECENT - 2, False), (RECENT + 10, True)],
)
def test_a_resend_of_what_was_acknowledged_lately_is_skipped_and_acknowledged_again(
    taken_since: int, taken_again: bool
) -> None:
    """A broker killed outright comes back from a save older than our PUBACK and sends the
    message again (DUP): skipped. Once ids have moved on by half their range, the same id may be
    a new message: taken."""
    sent = Sent()
    ledger = AckLedger(sent, "source:local")
    ledger.connected(sent, session_present=False)
    ledger.taken([7, 8])
    release = ledger.cut()
    assert release is not None
    release()
    assert sent.acks == [7, 8] and ledger.owed == 0
    other = list(range(100, 1100))  # further messages, by ids other than 7
    for _ in range(taken_since // len(other)):
        ledger.taken(other)
    ledger.taken(other[: taken_since % len(other)])
    assert ledger.redelivered(7) is taken_again
    assert sent.counts.get("redelivered_acked", 0) == (0 if taken_again else 1)
    assert sent.acks[-1] == (8 if taken_again else 7)  # acknowledged again, so the broker forgets it


class Unplugged(Sent):
    """A sender whose connection is gone: nothing goes out."""

    def send_acks(self, packet_ids: list[int]) -> bool:
        return False


def test_a_cut_released_while_disconnected_is_acknowledged_on_the_resumed_session() -> None:
    """The commit came while the link was down: the PUBACKs go out, in the order taken, once the
    broker has the session back; a resend meanwhile is skipped, not taken again."""
    ledger = AckLedger(Sent(), "source:local")
    ledger.connected(Unplugged(), session_present=False)
    ledger.taken([5, 3, 9])
    release = ledger.cut()
    assert release is not None
    release()
    assert ledger.owed == 3
    ledger.connecting()
    resumed = Sent()
    assert ledger.redelivered(3) is False  # covered, but no connection to acknowledge it on
    ledger.connected(resumed, session_present=True)
    assert resumed.acks == [5, 3, 9] and ledger.owed == 0


def test_a_new_session_forgets_what_the_broker_forgot() -> None:
    """Without its session the broker will not resend the earlier ids, and may give them to
    new messages: those are not acknowledged for the old ones."""
    sent = Sent()
    ledger = AckLedger(sent, "source:local")
    ledger.connected(sent, session_present=False)
    ledger.taken([1, 2])
    ledger.connecting()
    ledger.connected(sent, session_present=False)
    ledger.taken([3])
    release = ledger.cut()
    assert release is not None
    release()
    assert sent.acks == [3] and ledger.owed == 0


def test_ids_restored_after_a_crash_are_acknowledged_once_and_a_new_message_may_reuse_one() -> None:
    sent = Sent()
    ledger = AckLedger(sent, "source:local")
    ledger.restore([40, 41])
    ledger.taken([41])  # not a resend: a new message given id 41
    assert ledger.owed == 2
    ledger.connecting()
    ledger.connected(sent, session_present=True)
    assert sent.acks == [40] and ledger.owed == 1
    assert ledger.redelivered(41) is False  # owed, its checkpoint not committed
    release = ledger.cut()
    assert release is not None
    release()
    assert sent.acks == [40, 41] and ledger.owed == 0
    assert sent.counts == {"redelivered_taken": 1}
