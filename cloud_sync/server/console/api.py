"""The JSON routes the pages' charts read, and the live event stream; beside DESIGN.md's API,
behind the same check (a console session or a bearer token).

* ``GET /api/fleet`` — the fleet's totals (devices online, offline, silent, behind; backlog;
  the worst lag and its device).
* ``GET /api/devices/<id>/history?since=T&limit=N`` — the device's status over time, oldest first.
* ``GET /api/devices/<id>/streams`` — each stream with its kind, chartable fields, newest record.
* ``GET /api/devices/<id>/latest?stream=S&limit=N`` — a stream's newest records, in seq order.
* ``GET /api/devices/<id>/dropped?limit=N`` — ranges the device announced as dropped, newest first.
* ``GET /api/events[?device=<id>]`` — server-sent events: ``changed`` with the device ids that
  changed (or ``"all": true``), as they are stored.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agent import codec
from cloud_sync.protocol import DEVICE_ID
from cloud_sync.server.console.device_view import numeric_fields, stream_kind
from cloud_sync.server.store.fleet_query import FleetQuery
from cloud_sync.server.store.summary import lag

if TYPE_CHECKING:
    from cloud_sync.server.auth import Guard
    from cloud_sync.server.console.app import Console

Handler = Callable[[Request], Awaitable[Response]]


class ConsoleApi:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.store = console.store

    def routes(self, guards: Guard) -> list[Route]:
        guard = guards.api
        return [
            Route("/api/fleet", guard(self.fleet)),
            Route("/api/events", guard(self.events)),
            Route("/api/devices/{device_id}/history", guard(self.device_route(self.history))),
            Route("/api/devices/{device_id}/streams", guard(self.device_route(self.streams))),
            Route("/api/devices/{device_id}/latest", guard(self.device_route(self.latest))),
            Route("/api/devices/{device_id}/dropped", guard(self.device_route(self.dropped))),
        ]

    def device_route(self, handler: Callable[[Request, str], Awaitable[Response]]) -> Handler:
        async def checked(request: Request) -> Response:
            device_id = request.path_params["device_id"]
            if not DEVICE_ID.fullmatch(device_id):
                return _error(400, "device_id: 1 to 64 of A-Z a-z 0-9 _ -")
            try:
                return await handler(request, device_id)
            except ValueError as exc:
                return _error(400, str(exc))

        return checked

    async def fleet(self, request: Request) -> Response:
        settings = self.console.settings
        query = FleetQuery(
            silent_after=settings.silent_after, behind_after=settings.behind_after, now=time.time()
        )
        totals = await run_in_threadpool(self.store.fleet_totals, query)
        worst = totals.pop("worst")
        totals["worst_lag"] = None if worst is None else {
            "device_id": worst["device_id"], "oldest_unsent_age_s": lag(worst, query.now)
        }
        return _json(totals)

    async def history(self, request: Request, device_id: str) -> Response:
        since = _number(request.query_params.get("since"), "since", 0.0)
        limit = int(_number(request.query_params.get("limit"), "limit", 5000, 1, 20_000))
        return _json(await run_in_threadpool(self.store.status_history, device_id, since, limit))

    async def streams(self, request: Request, device_id: str) -> Response:
        rows = await run_in_threadpool(self.store.streams, device_id)
        return _json([
            {**row, "kind": stream_kind(row["data"]), "fields": numeric_fields(row["data"])} for row in rows
        ])

    async def latest(self, request: Request, device_id: str) -> Response:
        stream = request.query_params.get("stream") or ""
        if not 0 < len(stream) <= 128:
            raise ValueError("stream: the name of one of the device's streams")
        limit = int(_number(request.query_params.get("limit"), "limit", 500, 1, 10_000))
        return _json(await run_in_threadpool(self.store.latest_records, device_id, stream, limit))

    async def dropped(self, request: Request, device_id: str) -> Response:
        limit = int(_number(request.query_params.get("limit"), "limit", 50, 1, 1000))
        return _json(await run_in_threadpool(self.store.dropped_ranges, device_id, limit))

    async def events(self, request: Request) -> Response:
        device_id = request.query_params.get("device") or None
        if device_id is not None and not DEVICE_ID.fullmatch(device_id):
            return _error(400, "device: 1 to 64 of A-Z a-z 0-9 _ -")
        console = self.console
        by_session = console.session(request) is not None

        def still_allowed() -> bool:
            return not by_session or console.session(request, fresh=True) is not None

        async def stream() -> AsyncIterator[bytes]:
            async with console.hub.listen(device_id) as listener:
                async for chunk in console.hub.events(listener, still_allowed):
                    yield chunk

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"}
        )


def _number(
    value: str | None, name: str, default: float, low: float = 0.0, high: float | None = None
) -> float:
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name}: {value[:40]!r} is not a number") from None
    if not low <= number <= (high if high is not None else float("inf")):
        limits = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
        raise ValueError(f"{name}: must be {limits}")
    return number


def _json(data: Any) -> Response:
    return Response(codec.dumps_bytes(data), media_type="application/json")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
