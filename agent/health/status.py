"""The device's state as ``edge-agent status`` shows it, read from the data directory alone, so
it works whether the daemon runs or not."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from agent.health.livefile import read_live
from agent.outbox import Outbox

# The daemon writes its health every 2 s; older than this, it is not running (or is stuck).
STALE_AFTER = 10.0
# Cumulative since the data directory was made; a module's own counters are listed beside them.
MODULE_FIGURES = ("processed", "emitted", "errors", "quarantined", "hangs", "restarts")
# A source's messages and fields that are not readings, by design rather than by fault; kept
# apart from ``dropped`` so that the drop counters stay about faults.
SOURCE_NOISE = ("excluded", "retained_repeat", "retained_skipped", "fields_ignored", "no_fields")


def read_status(data_dir: Path, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    outbox = Outbox.open_readonly(data_dir)
    try:
        backlog = outbox.backlog()
        counters = outbox.counters()
        health = outbox.health()
        last_ack_seq = outbox.meta("last_ack_seq")
        last_ack_at = outbox.meta("last_ack_at")
        quarantined = outbox.quarantine_count()
        last_seq = outbox.last_seq()
    finally:
        outbox.close()
    agent, agent_at = health.get("agent", ({}, None))
    live = read_live(data_dir)  # written in place even while commits fail (a full disk)
    if live is not None and isinstance(live.get("at"), int | float) and live["at"] > (agent_at or 0):
        agent, agent_at = live, float(live["at"])
    modules = {}
    for name, (data, at) in sorted(health.items()):
        if name.startswith("module:"):
            module = name.removeprefix("module:")
            totals = counters.get(name, {})
            modules[module] = {
                **data,
                **{figure: totals.get(figure, 0) for figure in MODULE_FIGURES},
                "counters": totals,
                "reported_at": at,
            }
    return {
        "device_id": agent.get("device_id"),
        "daemon": _daemon_state(agent, agent_at, now),
        "backlog": {
            "rows": backlog["rows"],
            "bytes": backlog["bytes"],
            "oldest_unsent_age_s": (
                None if backlog["oldest_ts"] is None else max(0.0, now - backlog["oldest_ts"])
            ),
            "first_seq": backlog["first_seq"],
            "last_seq": last_seq,
        },
        "last_sync": None if last_ack_seq is None else {"acked_seq": last_ack_seq, "at": last_ack_at},
        "sync": _sync_state(health.get("sync"), counters.get("sync", {}), bool(agent.get("running"))),
        "dropped": counters.get("dropped", {}),
        "quarantined": quarantined,
        "sources": {
            name.removeprefix("source:"): _source_figures(values)
            for name, values in counters.items() if name.startswith("source:")
        } | {
            name: {**_source_figures(counters.get(f"source:{name}", {})), **state}
            for name, state in agent.get("sources", {}).items()
        },
        "outbox": {"commit_errors": counters.get("outbox", {}).get("commit_errors", 0),
                   "last_error": agent.get("outbox_error"),
                   "failing_since": agent.get("commit_failing_since"),
                   "disk_full": bool(agent.get("disk_full")),
                   "held_in_memory": agent.get("pending_commit", 0),
                   "disk_low_since": agent.get("disk_low_since"),
                   "disk_free": agent.get("disk_free"),
                   "refused": counters.get("dropped", {}).get("disk_low", 0)},
        "modules": modules,
        "remote": agent.get("remote"),
        "warnings": agent.get("warnings", []),
        "clock": {**(agent.get("clock") or {}), "steps": counters.get("clock", {}).get("steps", 0)},
    }


def _source_figures(counters: dict[str, int]) -> dict[str, Any]:
    """A source's counters, with ``dropped.<reason>`` and ``errors.<reason>`` as two tables."""
    figures: dict[str, Any] = {"dropped": {}, "errors": {}}
    for key, value in counters.items():
        group, dot, reason = key.partition(".")
        if dot and group in figures:
            figures[group][reason] = value
        else:
            figures[key] = value
    return figures


def _sync_state(
    health: tuple[dict[str, Any], float] | None, counters: dict[str, int], daemon_running: bool
) -> dict[str, Any] | None:
    """The uploader's figures as it last reported them (``None`` when ``[cloud]`` never ran)."""
    if health is None and not counters:
        return None
    data, at = health if health is not None else ({}, None)
    return {
        "connected": bool(data.get("connected")) and daemon_running,
        "broker": data.get("broker"),
        "protocol": data.get("protocol"),
        "acked_seq": data.get("acked_seq"),
        "send_rate": data.get("send_rate", 0.0),
        "unacked_records": data.get("unacked_records", 0),
        "last_error": data.get("last_error"),
        "counters": counters,
        "reported_at": at,
    }


def _daemon_state(agent: dict[str, Any], at: float | None, now: float) -> dict[str, Any]:
    pid = agent.get("pid")
    alive = isinstance(pid, int) and _pid_alive(pid) and at is not None and now - at < STALE_AFTER
    return {
        "running": alive and bool(agent.get("running")),
        "pid": pid if alive else None,
        "version": agent.get("version"),
        "started_at": agent.get("started_at"),
        "last_report_at": at,
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
