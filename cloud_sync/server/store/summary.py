"""One device's figures, flat: the row the fleet view sorts and filters on, and the API object.

``summarize`` reads a ``DeviceState`` (the ledger's figures and the device's last status) into
one flat row; the store keeps that row in ``device_summary`` in the same transaction as the
state, so the fleet page and ``GET /api/devices`` sort, filter and page 10,000 devices with
indexed SQL instead of decoding every state. ``api_object`` turns a row into what the JSON API
shows: its ``static_api`` part is also kept in the row as JSON (``doc``), and only the
``live_api`` part (ages, the connection state, the quarantine count) is worked out per request.

This is the one place that knows where a status keeps each figure.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

from agent import codec
from cloud_sync.server.ledger import DeviceState

SILENT_AFTER = 120.0
"""An online device heard from longer ago than this is *silent*: no Will came (yet), but no
status either (the agent's heartbeat is 30 s by default)."""
BEHIND_AFTER = 300.0
"""A device whose oldest unsent record is older than this is *behind*."""

FIGURE_MAX = 10**12
"""A figure from a device's status (rows, bytes, a count) is bounded to ``0..FIGURE_MAX``: a
device cannot make its row unstorable or the fleet's sums overflow (200,000 devices at the bound
still sum below 2^63). Seconds and rates are bounded to ``±FIGURE_MAX`` and must be finite."""
COUNTS_KEPT = 64
"""Reasons kept from a status's ``dropped`` or ``errors`` object."""

STATES = ("offline", "silent", "unknown", "online")
"""Connection states, worst first: ``unknown`` has never sent a status."""

SUMMARY_COLUMNS = (
    "device_id", "online", "first_seen", "last_seen", "last_sync", "status_at",
    "backlog", "backlog_bytes", "oldest_unsent_age_s", "oldest_unsent_at", "send_rate",
    "records", "duplicates", "gaps", "lost", "bad_records", "acked_seq", "max_seq",
    "dropped_total", "dropped", "dropped_announced", "errors_total", "errors", "last_error",
    "version", "config_version", "clock_synced", "clock_time", "updated_at", "doc",
)
"""Columns of ``device_summary`` that ``summarize`` fills; ``quarantined`` is counted by the
store as messages are kept aside."""


def summarize(state: DeviceState, now: float) -> dict[str, Any]:
    """The flat row of ``state`` (time-independent, apart from ``updated_at = now``)."""
    status = state.status
    backlog = _dict(status.get("backlog"))
    clock = _dict(status.get("clock"))
    reported_dropped = status.get("dropped")
    dropped = _counts(reported_dropped if isinstance(reported_dropped, dict) else state.dropped)
    errors = _counts(status.get("errors"))
    rows = _int(backlog.get("rows"))
    age = _number(backlog.get("oldest_unsent_age_s"))
    aging = rows and age is not None and state.status_at is not None
    row: dict[str, Any] = {
        "device_id": state.device_id,
        "online": None if state.online is None else int(state.online),
        "first_seen": state.first_seen,
        "last_seen": state.last_seen,
        "last_sync": state.last_sync,
        "status_at": state.status_at,
        "backlog": rows,
        "backlog_bytes": _int(backlog.get("bytes")),
        "oldest_unsent_age_s": age,
        "oldest_unsent_at": state.status_at - age if aging else None,  # type: ignore[operator]
        "send_rate": _number(status.get("send_rate")),
        "records": state.records,
        "duplicates": state.duplicates,
        "gaps": state.missing,
        "lost": state.lost,
        "bad_records": state.bad_records,
        "acked_seq": state.acked,
        "max_seq": state.max_seq,
        "dropped_total": sum(dropped.values()),
        "dropped": codec.dumps(dropped),
        "dropped_announced": codec.dumps(state.dropped),
        "errors_total": sum(errors.values()),
        "errors": codec.dumps(errors) if isinstance(status.get("errors"), dict) else None,
        "last_error": _text(status.get("last_error"), 2000),
        "version": _text(status.get("version"), 200),
        "config_version": _text(_config_version(status), 200),
        "clock_synced": None if not isinstance(clock.get("synced"), bool) else int(clock["synced"]),
        "clock_time": _number(clock.get("time")),
        "updated_at": now,
    }
    row["doc"] = codec.dumps(static_api(row))
    return row


def connection_state(row: Mapping[str, Any], now: float, silent_after: float = SILENT_AFTER) -> str:
    """``online``, ``offline`` (the device or its Will said so), ``silent`` or ``unknown``."""
    if row["online"] is None:
        return "unknown"
    if not row["online"]:
        return "offline"
    last_seen = row["last_seen"]
    return "silent" if last_seen is None or last_seen < now - silent_after else "online"


def lag(row: Mapping[str, Any], now: float) -> float | None:
    """The oldest unsent record's age now: its age at the last status, plus the time since."""
    age = row["oldest_unsent_age_s"]
    if age is None or not row["backlog"] or row["status_at"] is None:
        return age  # type: ignore[no-any-return]
    return round(age + max(0.0, now - row["status_at"]), 1)  # type: ignore[no-any-return]


def api_object(row: Mapping[str, Any], now: float, silent_after: float = SILENT_AFTER) -> dict[str, Any]:
    """One device as ``GET /api/devices`` shows it."""
    return static_api(row) | live_api(row, now, silent_after)


def static_api(row: Mapping[str, Any]) -> dict[str, Any]:
    """The figures that stay as they are until the device's next write (kept, as JSON, in the
    row's ``doc``)."""
    clock_time, status_at = row["clock_time"], row["status_at"]
    return {
        "device_id": row["device_id"],
        "online": bool(row["online"]),
        "last_seen": row["last_seen"],
        "last_sync": row["last_sync"],
        "acked_seq": row["acked_seq"],
        "max_seq": row["max_seq"],
        "backlog": row["backlog"],
        "backlog_bytes": row["backlog_bytes"],
        "records": row["records"],
        "duplicates": row["duplicates"],
        "dropped": codec.loads(row["dropped"] or "{}"),
        "dropped_announced": codec.loads(row["dropped_announced"] or "{}"),
        "dropped_total": row["dropped_total"],
        "gaps": row["gaps"],
        "lost": row["lost"],
        "bad_records": row["bad_records"],
        "version": row["version"],
        "config_version": row["config_version"],
        "send_rate": row["send_rate"],
        "errors": None if row["errors"] is None else codec.loads(row["errors"]),
        "errors_total": row["errors_total"],
        "last_error": row["last_error"],
        "clock_synced": None if row["clock_synced"] is None else bool(row["clock_synced"]),
        "clock_skew_s": round(clock_time - status_at, 3) if clock_time is not None and status_at else None,
        "status_at": status_at,
        "first_seen": row["first_seen"],
    }


LIVE_COLUMNS = ("online", "last_seen", "backlog", "oldest_unsent_age_s", "status_at", "quarantined")
"""What ``live_api`` reads (beside ``doc``, all that the device list needs from a row)."""


def live_api(row: Mapping[str, Any], now: float, silent_after: float = SILENT_AFTER) -> dict[str, Any]:
    """The figures that move with time (or that the store counts itself)."""
    return {
        "state": connection_state(row, now, silent_after),
        "oldest_unsent_age_s": lag(row, now),
        "quarantined": row.get("quarantined") or 0,
    }


def api_list_json(rows: list[dict[str, Any]], now: float, silent_after: float = SILENT_AFTER) -> bytes:
    """``[api_object(row), ...]`` as JSON, from each row's stored ``doc`` and its live figures,
    without decoding any ``doc``: 10,000 devices in tens of milliseconds."""
    parts = [
        row["doc"][:-1] + "," + codec.dumps(live_api(row, now, silent_after))[1:] for row in rows
    ]
    return ("[" + ",".join(parts) + "]").encode()


def _config_version(status: Mapping[str, Any]) -> Any:
    if "config_version" in status:
        return status["config_version"]
    config = status.get("config")
    return config.get("version") if isinstance(config, dict) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    if type(value) not in (int, float) or not math.isfinite(value):
        return None
    return float(min(max(value, -FIGURE_MAX), FIGURE_MAX))


def _int(value: Any) -> int | None:
    if type(value) not in (int, float) or not math.isfinite(value):
        return None
    return int(min(max(value, 0), FIGURE_MAX))


def _text(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    return (value if isinstance(value, str) else codec.dumps(value))[:limit]


def _counts(value: Any) -> dict[str, int]:
    """A ``{name: count}`` object from a status, keeping only numeric counts."""
    if not isinstance(value, dict):
        return {}
    counts = ((str(k)[:64], _int(v)) for k, v in value.items())
    return dict(itertools.islice(((k, v) for k, v in counts if v is not None), COUNTS_KEPT))
