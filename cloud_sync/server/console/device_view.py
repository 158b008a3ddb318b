"""What the device page shows, gathered from the store in one go (on a worker thread).

Streams come in three kinds, told apart by their newest record:

* ``events``: records with a text ``event`` field (the ``threshold`` and ``anomaly`` modules'
  ``raised``/``cleared``/``anomaly``): listed as alerts, newest first;
* ``summaries``: window summaries (``start``, ``end``, ``count``, statistics);
* ``records``: anything else.

A stream's chartable fields are its numeric ones, bar timestamps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cloud_sync.server.console import format as fmt
from cloud_sync.server.store import Store
from cloud_sync.server.store.summary import api_object

LATEST_PER_STREAM = 5
EVENTS = 50
_TIMES = {"start", "end", "since", "raised_at", "last_seen", "ts"}
"""Timestamps in a record: shown as times, never offered as a chart's field."""
_EVENT_KEYS = ("event", "sensor", "severity", "rule", "detector", "value", "score")


@dataclass
class StreamView:
    name: str
    kind: str
    fields: list[str]
    columns: list[str]
    latest: list[dict[str, Any]]


@dataclass
class DeviceView:
    device: dict[str, Any]
    history_points: int
    streams: list[StreamView] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    dropped_ranges: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)


def stream_kind(data: dict[str, Any]) -> str:
    if isinstance(data.get("event"), str):
        return "events"
    if {"start", "end", "count"} <= data.keys():
        return "summaries"
    return "records"


def numeric_fields(data: dict[str, Any]) -> list[str]:
    return [k for k, v in data.items() if type(v) in (int, float) and k not in _TIMES]


def load_device(store: Store, device_id: str, now: float, silent_after: float) -> DeviceView | None:
    row = store.device_summary(device_id)
    if row is None:
        return None
    recent = store.status_history(device_id, now - 86400, 2)
    view = DeviceView(api_object(row, now, silent_after), len(recent))
    events: list[dict[str, Any]] = []
    for stream in store.streams(device_id):
        kind = stream_kind(stream["data"])
        if kind == "events":
            for record in store.latest_records(device_id, stream["stream"], EVENTS):
                events.append(_event(stream["stream"], record))
            view.streams.append(StreamView(stream["stream"], kind, numeric_fields(stream["data"]), [], []))
            continue
        latest = store.latest_records(device_id, stream["stream"], LATEST_PER_STREAM)[::-1]
        columns = _columns([r["data"] for r in latest])
        fields = numeric_fields(stream["data"])
        view.streams.append(StreamView(stream["stream"], kind, fields, columns, latest))
    view.events = sorted(events, key=lambda e: (e["ts"], e["seq"]), reverse=True)[:EVENTS]
    view.dropped_ranges = store.dropped_ranges(device_id, 20)
    view.quarantined = store.quarantined(20, device_id)
    return view


def _event(stream: str, record: dict[str, Any]) -> dict[str, Any]:
    data = record["data"]
    details = {k: v for k, v in data.items() if k not in _EVENT_KEYS}
    return {
        "stream": stream, "seq": record["seq"], "ts": record["ts"],
        **{k: data.get(k) for k in _EVENT_KEYS},
        "details": ", ".join(f"{k}={_short(k, v)}" for k, v in details.items()),
    }


def _columns(rows: list[dict[str, Any]], limit: int = 10) -> list[str]:
    """The fields of a stream's latest records, ``sensor`` first, timestamps last."""
    seen: dict[str, None] = {}
    for data in rows:
        for key in data:
            seen.setdefault(key, None)
    keys = sorted(seen, key=lambda k: (k != "sensor", k in _TIMES))
    return keys[:limit]


def _short(name: str, value: Any) -> str:
    text = fmt.field(name, value)
    return text if len(text) <= 60 else text[:57] + "..."
