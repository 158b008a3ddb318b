"""A Prometheus endpoint (``GET /metrics``) with the figures of ``edge-agent status``.

Off unless ``[metrics] listen`` is set; listens on 127.0.0.1 by default. It reads the data
directory exactly as ``edge-agent status`` does (in a thread, read-only), so the two always
agree, and freshness is given as Unix timestamps (``*_timestamp_seconds``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.health.status import MODULE_FIGURES, SOURCE_NOISE, read_status

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST = 8192


def render(status: dict[str, Any]) -> str:
    """The Prometheus text exposition of a ``read_status`` result."""
    return "".join(f"{line}\n" for line in _lines(status))


def _lines(status: dict[str, Any]) -> Iterator[str]:
    backlog, daemon, sync = status["backlog"], status["daemon"], status["last_sync"] or {}
    yield from _metric("edge_agent_up", "gauge", "1 while the daemon runs", [({}, daemon["running"])])
    yield from _metric("edge_agent_start_time_seconds", "gauge", "when the daemon started",
                       [({}, daemon["started_at"])])
    yield from _metric("edge_agent_last_report_timestamp_seconds", "gauge",
                       "when the daemon last wrote its health", [({}, daemon["last_report_at"])])
    yield from _metric("edge_agent_backlog_records", "gauge", "unsent records in the outbox",
                       [({}, backlog["rows"])])
    yield from _metric("edge_agent_backlog_bytes", "gauge", "bytes of unsent records",
                       [({}, backlog["bytes"])])
    yield from _metric("edge_agent_oldest_unsent_age_seconds", "gauge",
                       "age of the oldest unsent record", [({}, backlog["oldest_unsent_age_s"] or 0)])
    yield from _metric("edge_agent_last_seq", "gauge", "highest seq handed out", [({}, backlog["last_seq"])])
    yield from _metric("edge_agent_acked_seq", "gauge", "highest seq the cloud acknowledged",
                       [({}, sync.get("acked_seq"))])
    yield from _metric("edge_agent_last_sync_timestamp_seconds", "gauge",
                       "when the cloud last acknowledged", [({}, sync.get("at"))])
    yield from _metric("edge_agent_dropped_total", "counter", "records dropped, by reason",
                       [({"reason": reason}, n) for reason, n in sorted(status["dropped"].items())])
    yield from _metric("edge_agent_quarantined_records", "gauge", "inputs kept aside after a module failed",
                       [({}, status["quarantined"])])
    yield from _metric("edge_agent_outbox_commit_errors_total", "counter", "failed outbox commits",
                       [({}, status["outbox"]["commit_errors"])])
    sources = status["sources"]
    for figure, what in (("received", "messages received"), ("accepted", "readings accepted")):
        yield from _metric(f"edge_agent_source_{figure}_total", "counter", f"{what}, by source",
                           [({"source": name}, s.get(figure, 0)) for name, s in sorted(sources.items())])
    yield from _metric(
        "edge_agent_source_not_readings_total", "counter",
        "messages and fields that are not readings (excluded topics, retained repeats, ignored "
        "fields), by source and kind",
        [({"source": name, "kind": kind}, s.get(kind, 0))
         for name, s in sorted(sources.items()) for kind in SOURCE_NOISE],
    )
    yield from _metric("edge_agent_source_connected", "gauge", "1 while the source is connected",
                       [({"source": name}, s.get("connected")) for name, s in sorted(sources.items())])
    for figure in ("restarts", "skipped_polls"):
        yield from _metric(f"edge_agent_source_{figure}_total", "counter", f"{figure}, by source",
                           [({"source": name}, s.get(figure, 0)) for name, s in sorted(sources.items())])
    for table, what in (("dropped", "inputs dropped"), ("errors", "device and link faults")):
        yield from _metric(f"edge_agent_source_{table}_total", "counter", f"{what}, by source and reason",
                           [({"source": name, "reason": reason}, n) for name, s in sorted(sources.items())
                            for reason, n in sorted(s.get(table, {}).items())])
    modules = sorted(status["modules"].items())
    yield from _metric("edge_agent_module_running", "gauge", "1 while the module runs normally",
                       [({"module": name}, m.get("status") == "running") for name, m in modules])
    yield from _metric("edge_agent_module_queue_records", "gauge", "records waiting for the module",
                       [({"module": name}, m.get("queue", 0)) for name, m in modules])
    for figure in MODULE_FIGURES:
        yield from _metric(f"edge_agent_module_{figure}_total", "counter", f"module {figure}, by module",
                           [({"module": name}, m.get(figure, 0)) for name, m in modules])


def _metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], Any]]) -> Iterator[str]:
    values = [(labels, _number(value)) for labels, value in samples]
    values = [(labels, value) for labels, value in values if value is not None]
    if not values:
        return
    yield f"# HELP {name} {help_text}"
    yield f"# TYPE {name} {kind}"
    for labels, value in values:
        label_text = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
        yield f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}"


def _number(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    return None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsServer:
    """A minimal HTTP/1.1 server for one route; anything else gets 404 or 405."""

    def __init__(self, data_dir: Path, host: str, port: int) -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            method, target, *_ = head[:MAX_REQUEST].decode("latin-1").split(" ", 2)
            if target.split("?", 1)[0] != "/metrics":
                await _respond(writer, 404, "not found: try /metrics\n")
            elif method not in ("GET", "HEAD"):
                await _respond(writer, 405, "use GET\n")
            else:
                body = render(await asyncio.to_thread(read_status, self.data_dir))
                await _respond(writer, 200, body if method == "GET" else "", CONTENT_TYPE)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError,
                ConnectionError):
            pass  # a client that went away or sent garbage gets nothing
        except Exception:
            log.exception("metrics request failed")
            await _respond(writer, 500, "internal error\n")
        finally:
            writer.close()


async def _respond(
    writer: asyncio.StreamWriter, code: int, body: str, content_type: str = "text/plain"
) -> None:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}[code]
    data = body.encode()
    writer.write(
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
        "Connection: close\r\n\r\n".encode() + data
    )
    await writer.drain()
