"""The console's JSON API; the HTML pages, sign-in and live updates are ``cloud_sync.server.console``.

Every ``/api`` route needs ``Authorization: Bearer TOKEN``, with tokens from ``EDGE_CLOUD_TOKEN``
(comma-separated) or a tokens file (one a line, ``#`` comments), or a console session (when a
``console`` is given). With no token configured the API answers 401 to everyone but signed-in
users: there is no default credential. ``/healthz`` is open (it says only whether the ingest is
connected).

Store reads run in Starlette's thread pool, each thread with its own connection, so a slow query
never holds up the ingest or the event loop.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cloud_sync.protocol import DEVICE_ID
from cloud_sync.server.ingest import Ingest
from cloud_sync.server.ledger import DeviceState
from cloud_sync.server.store import Store
from cloud_sync.server.store.fleet_query import FleetQuery, QueryError, int_param
from cloud_sync.server.store.summary import api_list_json, api_object, summarize

if TYPE_CHECKING:
    from cloud_sync.server.console import Console

MAX_LIMIT = 10_000


def load_tokens(tokens_file: Path | None = None, environ: dict[str, str] | None = None) -> list[str]:
    """Tokens from ``EDGE_CLOUD_TOKEN`` and ``tokens_file``; ``ValueError`` if the file is unreadable."""
    env = os.environ if environ is None else environ
    tokens = [t.strip() for t in env.get("EDGE_CLOUD_TOKEN", "").split(",") if t.strip()]
    if tokens_file is not None:
        try:
            lines = tokens_file.read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"{tokens_file}: cannot read the tokens file: {exc.strerror}") from None
        tokens += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return tokens


def device_json(state: DeviceState, now: float | None = None) -> dict[str, Any]:
    """One device as ``GET /api/devices`` shows it: cloud-side figures, and the device's own from
    its last status (aged by the time since, for the oldest unsent record); see ``store.summary``."""
    now = time.time() if now is None else now
    return api_object(summarize(state, now), now)


def create_app(
    store: Store, tokens: Iterable[str], ingest: Ingest | None = None, console: Console | None = None
) -> Starlette:
    secrets = [t.encode() for t in tokens]

    def authorised(request: Request, session_ok: bool = True) -> bool:
        if session_ok and console is not None and console.signed_in(request):
            return True
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given or not secrets:
            return False
        candidate = given.strip().encode()
        return any(hmac.compare_digest(candidate, secret) for secret in secrets)

    def api(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            if not authorised(request):
                return JSONResponse(
                    {"error": "unauthorised: send Authorization: Bearer <token>"},
                    status_code=401, headers={"WWW-Authenticate": "Bearer"},
                )
            return await handler(request)
        return guarded

    def bearer(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """For routes that change something: a token, never a browser's session cookie alone."""
        async def guarded(request: Request) -> Response:
            if not authorised(request, session_ok=False):
                return JSONResponse({"error": "unauthorised: send Authorization: Bearer <token>"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
            return await handler(request)
        return guarded

    async def devices(request: Request) -> Response:
        """Every device by id; ``?sort= order= show= q= limit= offset=`` as on the fleet page."""
        try:
            query = FleetQuery.parse(request.query_params, default_sort="device", default_limit=None)
        except QueryError as exc:
            return _error(400, str(exc))
        rows, total = await run_in_threadpool(store.fleet_docs, query)
        body = await run_in_threadpool(api_list_json, rows, query.now)
        return Response(body, media_type="application/json", headers={"X-Total-Count": str(total)})

    async def device(request: Request) -> Response:
        device_id = request.path_params["device_id"]
        if not DEVICE_ID.fullmatch(device_id):
            return _error(400, "device_id: 1 to 64 of A-Z a-z 0-9 _ -")
        row = await run_in_threadpool(store.device_summary, device_id)
        if row is None:
            return _error(404, f"no device {device_id!r}")
        return JSONResponse(api_object(row, time.time()))

    async def records(request: Request) -> Response:
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
        rows = await run_in_threadpool(store.records, device_id, stream, after_seq, limit)
        return JSONResponse(rows)

    async def quarantine(request: Request) -> Response:
        try:
            limit = int_param(request.query_params, "limit", 100, 1, MAX_LIMIT)
        except ValueError as exc:
            return _error(400, str(exc))
        device_id = request.query_params.get("device_id") or None
        return JSONResponse(await run_in_threadpool(store.quarantined, limit, device_id))

    async def stats(request: Request) -> Response:
        counters = await run_in_threadpool(store.counters)
        return JSONResponse({"store": counters, "ingest": ingest.health() if ingest else None})

    async def healthz(request: Request) -> Response:
        connected = ingest.stats.connected if ingest else None
        return JSONResponse({"ok": connected is not False, "ingest_connected": connected})

    routes = [
        Route("/healthz", healthz),
        Route("/api/devices", api(devices)),
        Route("/api/devices/{device_id}", api(device)),
        Route("/api/devices/{device_id}/records", api(records)),
        Route("/api/quarantine", api(quarantine)),
        Route("/api/stats", api(stats)),
    ]
    if console is None:
        return Starlette(routes=routes)
    return Starlette(routes=routes + console.routes(api, bearer), middleware=console.middleware())


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
