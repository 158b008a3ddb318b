"""The console's JSON API (the HTML pages come with the console issue).

Every ``/api`` route needs ``Authorization: Bearer TOKEN``, with tokens from ``EDGE_CLOUD_TOKEN``
(comma-separated) or a tokens file (one a line, ``#`` comments). With no token configured the API
answers 401 to everyone: there is no default credential. ``/healthz`` is open (it says only
whether the ingest is connected).

Store reads run in Starlette's thread pool, each thread with its own connection, so a slow query
never holds up the ingest or the event loop.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cloud_sync.ingest import Ingest
from cloud_sync.ledger import DeviceState
from cloud_sync.protocol import DEVICE_ID
from cloud_sync.store import Store

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
    its last status (aged by the time since, for the oldest unsent record)."""
    now = time.time() if now is None else now
    status = state.status
    backlog = status.get("backlog") if isinstance(status.get("backlog"), dict) else {}
    age = backlog.get("oldest_unsent_age_s")
    if isinstance(age, int | float) and state.status_at is not None and backlog.get("rows"):
        age = round(age + max(0.0, now - state.status_at), 1)
    clock = status.get("clock") if isinstance(status.get("clock"), dict) else {}
    device_time = clock.get("time")
    device_dropped = status.get("dropped") if isinstance(status.get("dropped"), dict) else None
    return {
        "device_id": state.device_id,
        "online": bool(state.online),
        "last_seen": state.last_seen,
        "last_sync": state.last_sync,
        "acked_seq": state.acked,
        "max_seq": state.max_seq,
        "backlog": backlog.get("rows"),
        "backlog_bytes": backlog.get("bytes"),
        "oldest_unsent_age_s": age,
        "records": state.records,
        "duplicates": state.duplicates,
        "dropped": device_dropped if device_dropped is not None else dict(state.dropped),
        "dropped_announced": dict(state.dropped),
        "gaps": state.missing,
        "lost": state.lost,
        "bad_records": state.bad_records,
        "version": status.get("version"),
        "send_rate": status.get("send_rate"),
        "errors": status.get("errors"),
        "last_error": status.get("last_error"),
        "clock_synced": clock.get("synced"),
        "clock_skew_s": (
            round(device_time - state.status_at, 3)
            if isinstance(device_time, int | float) and state.status_at else None
        ),
        "status_at": state.status_at,
        "first_seen": state.first_seen,
    }


def create_app(store: Store, tokens: Iterable[str], ingest: Ingest | None = None) -> Starlette:
    tokens = [t.encode() for t in tokens]

    def authorised(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given or not tokens:
            return False
        candidate = given.strip().encode()
        return any(hmac.compare_digest(candidate, token) for token in tokens)

    def api(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            if not authorised(request):
                return JSONResponse(
                    {"error": "unauthorised: send Authorization: Bearer <token>"},
                    status_code=401, headers={"WWW-Authenticate": "Bearer"},
                )
            return await handler(request)
        return guarded

    async def devices(request: Request) -> Response:
        states = await run_in_threadpool(store.devices)
        now = time.time()
        return JSONResponse([device_json(state, now) for state in states])

    async def device(request: Request) -> Response:
        device_id = request.path_params["device_id"]
        if not DEVICE_ID.fullmatch(device_id):
            return _error(400, "device_id: 1 to 64 of A-Z a-z 0-9 _ -")
        state = await run_in_threadpool(store.device, device_id)
        if state is None:
            return _error(404, f"no device {device_id!r}")
        return JSONResponse(device_json(state))

    async def records(request: Request) -> Response:
        device_id = request.path_params["device_id"]
        if not DEVICE_ID.fullmatch(device_id):
            return _error(400, "device_id: 1 to 64 of A-Z a-z 0-9 _ -")
        query = request.query_params
        try:
            after_seq = _int(query.get("after_seq"), "after_seq", 0, 0)
            limit = _int(query.get("limit"), "limit", 1000, 1, MAX_LIMIT)
        except ValueError as exc:
            return _error(400, str(exc))
        stream = query.get("stream") or None
        rows = await run_in_threadpool(store.records, device_id, stream, after_seq, limit)
        return JSONResponse(rows)

    async def quarantine(request: Request) -> Response:
        try:
            limit = _int(request.query_params.get("limit"), "limit", 100, 1, MAX_LIMIT)
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

    return Starlette(routes=[
        Route("/healthz", healthz),
        Route("/api/devices", api(devices)),
        Route("/api/devices/{device_id}", api(device)),
        Route("/api/devices/{device_id}/records", api(records)),
        Route("/api/quarantine", api(quarantine)),
        Route("/api/stats", api(stats)),
    ])


def _int(value: str | None, name: str, default: int, low: int, high: int | None = None) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name}: {value[:40]!r} is not an integer") from None
    if number < low or (high is not None and number > high):
        raise ValueError(f"{name}: must be between {low} and {high}" if high else f"{name}: must be >= {low}")
    return number


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)
