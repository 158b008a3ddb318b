"""Property-based: whatever a device sends, built with the protocol's own encoder around hostile
values (numbers beyond 64 bits or any float, NaN, deep nesting, long strings, overlapping and
enormous ranges), the ingest goes on storing a well-behaved device's records, every hostile
message is stored or quarantined with a reason, and the console's side channel (config reports,
command replies) takes it without raising and can still answer as JSON."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import codec
from agent.config import BrokerLogin
from cloud_sync import protocol
from cloud_sync.protocol import DroppedRange, Encoder
from cloud_sync.server.console.remote import RemoteDesk
from cloud_sync.server.ingest import Ingest
from cloud_sync.server.ledger import Quarantined
from cloud_sync.server.store import Store, open_store

HUGE = st.integers(min_value=-(1 << 80), max_value=1 << 80)
NUMBER = st.one_of(HUGE, st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0, -1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 1 << 64, 1e300, -1e300]))
LEAF = st.one_of(NUMBER, st.text(max_size=50), st.booleans(), st.none(), st.just("x" * 70_000))
JSONISH = st.recursive(LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=30)
SEQ = st.one_of(st.integers(min_value=1, max_value=50), HUGE)
_devices = itertools.count()


def deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


VALUE = st.one_of(JSONISH, st.integers(min_value=10, max_value=1200).map(deep))


def dumps(value: Any) -> str:
    """JSON text of anything, NaN and integers beyond 64 bits included (as a hostile device
    would write it by hand; orjson refuses to)."""
    try:
        return codec.dumps(value)
    except (TypeError, ValueError):
        return json.dumps(value, allow_nan=True)


@st.composite
def data_message(draw: st.DrawFn, device: str) -> bytes:
    count = draw(st.integers(min_value=0, max_value=4))
    rows = [(draw(SEQ), draw(st.text(min_size=0, max_size=200)), 1.0, dumps({"v": draw(VALUE)}))
            for _ in range(count)]
    dropped = [DroppedRange(draw(SEQ), draw(SEQ), draw(st.text(min_size=1, max_size=70)))
               for _ in range(draw(st.integers(min_value=0, max_value=3)))]
    encoder = Encoder(device, draw(st.text(max_size=80)), compression=draw(st.sampled_from(["none", "zlib"])))
    body = encoder.body(rows, draw(st.sampled_from([0, 1, (1 << 63) - 1])), dropped,
                        draw(st.sampled_from([0, 7, (1 << 63) - 1])))
    if draw(st.booleans()):  # a timestamp no float holds, or NaN, written by hand
        body = body.replace(b'"ts":1.0', draw(st.sampled_from([b'"ts":1e999', b'"ts":NaN', b'"ts":1e300'])))
    return encoder.frame(body)


@st.composite
def status_message(draw: st.DrawFn) -> bytes:
    doc = {"online": draw(st.booleans()), "backlog": {"rows": draw(VALUE), "bytes": draw(NUMBER),
                                                      "oldest_unsent_age_s": draw(NUMBER)},
           "dropped": draw(st.dictionaries(st.text(max_size=80), NUMBER, max_size=80)),
           "errors": {"e": draw(NUMBER)}, "send_rate": draw(NUMBER), "clock": {"time": draw(NUMBER)},
           "last_error": draw(st.one_of(st.text(max_size=5000), VALUE)), "extra": draw(VALUE)}
    return dumps({"v": 1, **doc}).encode()


@st.composite
def side_message(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["config/reported", "reply/edge-cloud-ingest", "config/desired"]))
    result = draw(st.sampled_from(["applied", "rejected", "x"]))
    doc = {"version": draw(st.one_of(SEQ, VALUE)), "result": result,
           "errors": draw(st.one_of(st.just([]), st.lists(st.fixed_dictionaries(
               {"path": st.text(max_size=20), "reason": st.text(max_size=20)}), max_size=3), VALUE)),
           "running": draw(VALUE), "at": draw(NUMBER), "detail": draw(VALUE), "digest": draw(VALUE),
           "ok": draw(st.booleans()), "id": draw(VALUE), "result_": draw(VALUE), "config": draw(VALUE)}
    return kind, dumps(doc).encode()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path_factory.mktemp('prop') / 'cloud.db'}")
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def ingest(store: Store) -> Ingest:
    return Ingest(store, BrokerLogin(url="mqtt://127.0.0.1:1"))


_SLOW_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]


@settings(max_examples=80, deadline=None, suppress_health_check=_SLOW_OK)
@given(st.data())
def test_no_message_stops_a_well_behaved_devices_records(
    ingest: Ingest, store: Store, data: st.DataObject
) -> None:
    number = next(_devices)
    hostile, good = f"evil-{number}", f"good-{number}"
    messages = [(protocol.topic("edge", hostile, "data"), data.draw(data_message(hostile)))
                for _ in range(data.draw(st.integers(min_value=0, max_value=3)))]
    messages += [(protocol.topic("edge", hostile, "status"), data.draw(status_message()))
                 for _ in range(data.draw(st.integers(min_value=0, max_value=2)))]
    messages = data.draw(st.permutations(messages))
    rows = [(seq, "win", 1.0, '{"count":1}') for seq in (1, 2, 3)]
    messages.append((protocol.topic("edge", good, "data"), Encoder(good, "ok").encode(rows, 0)))

    flush, _ = ingest._process(messages)

    assert [r["seq"] for r in store.records(good)] == [1, 2, 3]
    assert all(q.reason and q.detail for q in flush.quarantined)
    _each_stored_or_quarantined(store, hostile, messages[:-1], flush.quarantined)


def _each_stored_or_quarantined(
    store: Store, device: str, messages: list[tuple[str, bytes]], quarantined: list[Quarantined]
) -> None:
    """Every message of ``device`` is either quarantined with the reason its decoder gives (or,
    read, as one the store cannot hold), or stored: its records under their seqs (or each bad one
    quarantined by seq) and, the last status read, as the device's status."""
    whole = [(q.topic, q.reason, q.payload) for q in quarantined
             if q.seq is None and q.reason != "epoch_conflict"]
    bad_seqs = {q.seq for q in quarantined if q.seq is not None}
    conflicts = any(q.reason == "epoch_conflict" for q in quarantined)
    stored = {r["seq"]: r for r in store.records(device, limit=100_000)}
    status: dict[str, Any] | None = None
    for topic, payload in messages:
        kind = topic.rsplit("/", 1)[1]
        try:
            item: Any = (protocol.decode_batch(device, payload) if kind == "data"
                         else protocol.decode_status(payload))
        except protocol.ProtocolError as exc:
            assert (topic, exc.reason, payload[:4096]) in whole, (exc.reason, payload[:200])
            whole.remove((topic, exc.reason, payload[:4096]))
            continue
        if (topic, "unstorable", payload[:4096]) in whole:
            whole.remove((topic, "unstorable", payload[:4096]))
            continue
        if kind == "status":
            status = item if item["online"] is not False else {**(status or {}), "online": False}
            continue
        for seq, stream, _ts, data in item.records:
            assert seq in stored or conflicts, (seq, sorted(stored)[:20])
            if seq in stored and sum(r[0] == seq for m in _batches(device, messages) for r in m.records) == 1:
                assert (stored[seq]["stream"], _json(stored[seq]["data"])) == (stream, _json(data))
        assert conflicts or all(bad.seq in bad_seqs for bad in item.bad), (item.bad, bad_seqs)
    assert not whole, whole  # nothing quarantined that was not one of these messages
    if status is not None:
        state = store.device(device)
        assert state is not None and (state.status == status or not status["online"]), (state, status)


def _json(data: Any) -> Any:
    return codec.loads(data) if isinstance(data, str | bytes) else data


def _batches(device: str, messages: list[tuple[str, bytes]]) -> list[Any]:
    found = []
    for topic, payload in messages:
        if topic.endswith("/data"):
            with contextlib.suppress(protocol.ProtocolError):
                found.append(protocol.decode_batch(device, payload))
    return found


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(side_message())
def test_the_consoles_side_channel_takes_anything_and_answers_as_json(
    store: Store, message: tuple[str, bytes]
) -> None:
    desk = RemoteDesk(Ingest(store, BrokerLogin(url="mqtt://127.0.0.1:1")))  # no connection needed
    kind, payload = message
    desk.received(f"edge/gw/{kind}", payload, None)
    codec.dumps(desk.state("gw"))  # what the API and the panel serve
