"""The JSON API over the cloud store: devices, their records, the quarantine, the ingest's figures.

Store reads run in Starlette's thread pool, each thread with its own connection, so a slow query
never holds up the ingest or the event loop.
"""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cloud_sync.protocol import DEVICE_ID
from cloud_sync.server.auth import Guard
from cloud_sync.server.ingest import Ingest
from cloud_sync.server.store import Store
from cloud_sync.server.store.fleet_query import FleetQuery, QueryError, int_param
from cloud_sync.server.store.summary import api_list_json, api_object

MAX_LIMIT = 10_000


class DeviceApi:
    def __init__(self, store: Store, ingest: Ingest | None = None) -> None:
        self._store = store
        self._ingest = ingest

    def routes(self, guard: Guard) -> list[Route]:
        return [
            Route("/healthz", self.healthz),
            Route("/api/devices", guard.api(self.devices)),
            Route("/api/devices/{device_id}", guard.api(self.device)),
            Route("/api/devices/{device_id}/records", guard.api(self.records)),
            Route("/api/quarantine", guard.api(self.quarantine)),
            Route("/api/stats", guard.api(self.stats)),
        ]

    async def devices(self, request: Request) -> Response:
        """Every device by id; ``?sort= order= show= q= limit= offset=`` as on the fleet page."""
        try:
            query = FleetQuery.parse(request.query_params, default_sort="device", default_limit=None)
        except QueryError as exc:
            return _error(400, str(exc))
        rows, total = await run_in_threadpool(self._store.fleet_docs, query)
        body = await run_in_threadpool(api_list_json, rows, query.now)
        return Response(body, media_type="application/json", headers={"X-Total-Count": str(total)})

    async def device(self, request: Request) -> Response:
        device_id = request.path_params["device_id"]
        if not DEVICE_ID.fullmatch(device_id):
            return _error(400, "device_id: 1 to 64 of A-Z a-z 0-9 _ -")
        row = await run_in_threadpool(self._store.device_summary, device_id)
        if row is None:
            return _error(404, f"no device {device_id!r}")
        return JSONResponse(api_object(row, time.time()))

    async def records(self, request: Request) -> Response:
        device_id = request.path_params["device_id"]
        if not DEVICE_ID.fullmatch(device_id):
            return _error(400, "device_id: 1 to 64 of A-Z a-z 0-9 _ -")
        query = request.query_params
        try:
            after_seq = int_param(query, "after_seq", 0, 0)
            limit = int_param(query, "limit", 1000, 1, MAX_LIMIT)
        except ValueError as exc:
            return _error(400, str(exc))
        stream = query.get("stream") or None
        rows = await run_in_threadpool(self._store.records, device_id, stream, after_seq, limit)
        return JSONResponse(rows)

    async def quarantine(self, request: Request) -> Response:
        try:
            limit = int_param(request.query_params, "limit", 100, 1, MAX_LIMIT)
        except ValueError as exc:
            return _error(400, str(exc))
        device_id = request.query_params.get("device_id") or None
        return JSONResponse(await run_in_threadpool(self._store.quarantined, limit, device_id))

    async def stats(self, request: Request) -> Response:
        counters = await run_in_threadpool(self._store.counters)
        return JSONResponse({"store": counters, "ingest": self._ingest.health() if self._ingest else None})

    async def healthz(self, request: Request) -> Response:
        connected = self._ingest.stats.connected if self._ingest else None
        return JSONResponse({"ok": connected is not False, "ingest_connected": connected})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
