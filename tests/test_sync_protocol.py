"""The wire protocol: framing, every encoding, and what the ingest refuses (and why)."""

from __future__ import annotations

import json
import zlib

import pytest

from cloud_sync import protocol
from cloud_sync.protocol import DroppedRange, Encoder, ProtocolError, framing

ROWS = [(1, "win", 1700000000.5, '{"sensor":"t1","count":3}'), (2, "win", 1700000001.0, '{"count":4}')]


@pytest.mark.parametrize("compression", ["none", "zlib", "zstd", "auto"])
def test_every_encoding_round_trips(compression: str) -> None:
    encoder = Encoder("gw-1", "e1", compression, min_bytes=0)
    payload = encoder.encode(ROWS, released=0, dropped=[DroppedRange(3, 5, "buffer_full")])
    assert payload[:2] == bytes((protocol.MAGIC, protocol.VERSION))
    batch = protocol.decode_batch("gw-1", payload)
    assert batch.records == ROWS  # data as compact JSON text, ready for the store
    assert batch.dropped == [DroppedRange(3, 5, "buffer_full")]
    assert (batch.epoch, batch.released, batch.bad) == ("e1", 0, [])


def test_small_payloads_stay_uncompressed_and_bare_json_is_accepted() -> None:
    payload = Encoder("gw-1", "e1", "zlib", min_bytes=512).encode(ROWS[:1], released=0)
    assert payload[2:3] == protocol.JSON
    bare = payload[3:]  # what someone would type into mosquitto_pub
    assert protocol.decode_batch("gw-1", bare).records[0][0] == 1


def test_a_record_with_a_non_finite_ts_is_sent_and_comes_back_as_a_bad_record() -> None:
    payload = Encoder("gw-1", "e1", "none").encode([(7, "win", float("nan"), "{}")], released=0)
    batch = protocol.decode_batch("gw-1", payload)
    assert batch.records == [] and [(b.seq, "ts" in b.reason) for b in batch.bad] == [(7, True)]


def zstd_bomb(sized: bool = True) -> bytes:
    import zstandard

    data = b"{" + b" " * (protocol.MAX_DECODED + 10) + b"}"
    if sized:
        return zstandard.ZstdCompressor().compress(data)
    streaming = zstandard.ZstdCompressor().compressobj()  # a frame that does not say its size
    return streaming.compress(data) + streaming.flush()


def _framed(body: bytes, kind: bytes = protocol.JSON) -> bytes:
    return bytes((protocol.MAGIC, protocol.VERSION)) + kind + body


def _doc(**changes: object) -> bytes:
    doc = {"v": 1, "device": "gw-1", "epoch": "e", "released": 0, "records": [], "dropped": []}
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty"),
        (b"\x00\x01j{}", "bad_header"),
        (b"hello", "bad_header"),
        (bytes((protocol.MAGIC, 9)) + b"j{}", "bad_version"),
        (_framed(b"{}", b"q"), "unsupported_encoding"),
        (_framed(b"not zlib", protocol.ZLIB), "bad_compression"),
        (_framed(b"not zstd", protocol.ZSTD), "bad_compression"),
        (
            _framed(zlib.compress(b"{" + b" " * (protocol.MAX_DECODED + 10) + b"}"), protocol.ZLIB),
            "too_large",
        ),
        (_framed(zstd_bomb(), protocol.ZSTD), "too_large"),
        (_framed(zstd_bomb(sized=False), protocol.ZSTD), "too_large"),
        (_framed(b"{not json"), "bad_json"),
        (_framed(b"[1, 2]"), "bad_body"),
        (_framed(_doc(v=2)), "bad_version"),
        (_framed(_doc(device="gw-2")), "device_mismatch"),
        (_framed(_doc(epoch=5)), "bad_body"),
        (_framed(_doc(released=-1)), "bad_body"),
        (_framed(_doc(records={"seq": 1})), "bad_body"),
        (_framed(_doc(records=[5])), "bad_record"),
        (_framed(_doc(records=[{"seq": "1", "stream": "s", "ts": 1, "data": {}}])), "bad_record"),
        (_framed(_doc(records=[{"seq": 0, "stream": "s", "ts": 1, "data": {}}])), "bad_record"),
        (_framed(_doc(records=[{"seq": True, "stream": "s", "ts": 1, "data": {}}])), "bad_record"),
        (_framed(_doc(records=[{"seq": 2**63, "stream": "s", "ts": 1, "data": {}}])), "bad_record"),
        (_framed(_doc(dropped=[{"first": 5, "last": 4, "reason": "x"}])), "bad_body"),
        (_framed(_doc(dropped=[{"first": 1, "last": 4, "reason": ""}])), "bad_body"),
    ],
)
def test_unreadable_messages_are_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.decode_batch("gw-1", payload)
    assert caught.value.reason == reason
    assert caught.value.detail


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"seq": 4, "stream": "", "ts": 1, "data": {}}, "stream"),
        ({"seq": 4, "stream": "s" * 129, "ts": 1, "data": {}}, "stream"),
        ({"seq": 4, "stream": "s", "ts": "x", "data": {}}, "ts"),
        ({"seq": 4, "stream": "s", "ts": None, "data": {}}, "ts"),
        ({"seq": 4, "stream": "s", "ts": 1, "data": [1]}, "data"),
    ],
)
def test_a_record_with_a_readable_seq_but_bad_fields_is_kept_aside_alone(record: dict, field: str) -> None:
    good = {"seq": 5, "stream": "s", "ts": 1.0, "data": {"count": 1}}
    batch = protocol.decode_batch("gw-1", _framed(_doc(records=[record, good])))
    assert [r[0] for r in batch.records] == [5]
    assert [b.seq for b in batch.bad] == [4] and f"records[0].{field}" in batch.bad[0].reason


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("edge/gw-1/data", ("gw-1", "data")),
        ("edge/GW_2-b/status", ("GW_2-b", "status")),
        ("edge/" + "a" * 64 + "/data", ("a" * 64, "data")),
    ],
)
def test_topics_name_the_device_and_the_kind(topic: str, expected: tuple[str, str]) -> None:
    assert protocol.parse_topic("edge", topic) == expected


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("other/gw-1/data", "bad_topic"),
        ("edge/gw-1/data/extra", "bad_topic"),
        ("edge/gw-1/config", "bad_topic"),
        ("edge//data", "bad_device_id"),
        ("edge/" + "a" * 65 + "/data", "bad_device_id"),
        ("edge/gw 1/data", "bad_device_id"),
        ("edge/gw\x001/data", "bad_device_id"),
        ("edge/gw+1/data", "bad_device_id"),
        ("edge/gw#/data", "bad_device_id"),
        ("edge/gé/data", "bad_device_id"),
    ],
)
def test_bad_topics_and_device_ids_are_refused(topic: str, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.parse_topic("edge", topic)
    assert caught.value.reason == reason


def test_topics_follow_the_prefix_and_the_share_group() -> None:
    assert protocol.topic("fleet/eu", "gw-1", "ack") == "fleet/eu/gw-1/ack"
    assert protocol.parse_topic("fleet/eu", "fleet/eu/gw-1/data") == ("gw-1", "data")
    assert protocol.subscription("edge", "data", "workers") == "$share/workers/edge/+/data"
    assert protocol.subscription("edge", "status") == "edge/+/status"


def test_acks_and_statuses_round_trip_and_bad_ones_are_refused() -> None:
    ack = protocol.Ack(41, "e1", 50, 123.0)
    assert protocol.decode_ack(ack.encode()) == ack
    assert protocol.decode_status(protocol.encode_status({"online": True, "x": 1}))["x"] == 1
    for bad in (b"", b"[]", b'{"seq": -1}', b'{"seq": 1.5}', b"nope"):
        with pytest.raises(ProtocolError):
            protocol.decode_ack(bad)
    for bad in (b"", b"{}", b'{"online": "yes"}', b"x" * (protocol.MAX_STATUS + 1)):
        with pytest.raises(ProtocolError):
            protocol.decode_status(bad)


def test_zstd_is_refused_by_name_when_asked_for_but_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(framing, "zstandard", None)
    assert protocol.resolve_encoding("auto") == "zlib"
    with pytest.raises(ValueError, match="zstandard"):
        protocol.resolve_encoding("zstd")
    with pytest.raises(ProtocolError) as caught:
        protocol.unframe(_framed(b"x", protocol.ZSTD))
    assert caught.value.reason == "unsupported_encoding"


def test_an_integer_ts_beyond_any_float_is_a_bad_record_not_an_error(monkeypatch):
    """orjson refuses such a number as bad JSON; the standard library's parser (used where
    orjson is not installed) reads it as an int that no float can hold."""
    import json

    from agent import codec
    from cloud_sync import protocol

    monkeypatch.setattr(codec, "loads", json.loads)
    body = {"v": protocol.VERSION, "device": "gw-1", "epoch": "e1", "released": 0,
            "records": [{"seq": 1, "stream": "s", "ts": 10**400, "data": {}},
                        {"seq": 2, "stream": "s", "ts": 1.0, "data": {"ok": 1}}]}
    batch = protocol.decode_batch("gw-1", json.dumps(body).encode())
    assert [row[0] for row in batch.records] == [2]
    assert [bad.seq for bad in batch.bad] == [1]
    assert "ts" in batch.bad[0].reason
