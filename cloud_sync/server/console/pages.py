"""The HTML pages: the fleet at a glance, and one device's sync in detail.

Both are rendered on the server from the same store queries as the JSON API and work without
JavaScript (sorting, filtering and paging are plain links and a GET form). With it, htmx swaps
the fleet table in place, and ``console.js`` refreshes the live parts of a page when the server
says a device changed. Without a session a page redirects to the sign-in page (an htmx request
gets 401 with ``HX-Redirect``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from cloud_sync.protocol import DEVICE_ID
from cloud_sync.server.console import outage
from cloud_sync.server.console.device_view import load_device
from cloud_sync.server.store.fleet_query import FILTERS, MAX_PAGE, SORTS, FleetQuery, QueryError
from cloud_sync.server.store.summary import api_object, lag

if TYPE_CHECKING:
    from cloud_sync.server.auth import Guard
    from cloud_sync.server.console.app import Console
    from cloud_sync.server.store import Store

Handler = Callable[[Request], Awaitable[Response]]

FILTER_LABELS = {
    "all": "All devices", "problems": "Problems", "offline": "Offline", "silent": "Silent",
    "behind": "Behind", "errors": "With errors", "online": "Online",
}
COLUMNS = [
    ("device", "Device"), ("state", "State"), ("last_seen", "Last seen"), ("backlog", "Backlog"),
    ("backlog_bytes", "Bytes"), ("lag", "Oldest unsent"), ("last_sync", "Last sync"),
    ("send_rate", "Send rate"), ("dropped", "Dropped"), ("quarantined", "Quarantined"),
    ("errors", "Errors"), ("version", "Version"),
]
PHONE_SORTS = [("problems", "Problems"), ("lag", "Oldest unsent"), ("backlog", "Backlog"),
               ("last_seen", "Last seen"), ("device", "Device")]
"""The table's heads are hidden on a phone; these links sort there."""
assert {key for key, _ in COLUMNS + PHONE_SORTS} <= {*SORTS, "problems"}


class Pages:
    def __init__(self, console: Console) -> None:
        self.console = console

    def routes(self, guard: Guard) -> list[Route]:
        return [
            Route("/", guard.page(self.home)),
            Route("/fleet", guard.page(self.fleet)),
            Route("/devices/{device_id}", guard.page(self.device)),
        ]

    async def home(self, request: Request) -> Response:
        return RedirectResponse("/fleet", 303)

    async def fleet(self, request: Request) -> Response:
        settings = self.console.settings
        try:
            query = FleetQuery.parse(request.query_params, default_limit=settings.page_size)
        except QueryError as exc:
            return self.console.render(request, "error.html", 400, title="Bad request", message=str(exc))
        query = replace(query, silent_after=settings.silent_after, behind_after=settings.behind_after)
        query, rows, total, totals, hours = await run_in_threadpool(_read_fleet, self.console.store, query)
        now = query.now
        devices = [api_object(row, now, settings.silent_after) for row in rows]
        return self.console.render(
            request, "fleet.html",
            devices=devices, sparklines={k: outage.sparkline(v, now) for k, v in hours.items()},
            backlog_estimate=outage.backlog_estimate, is_stale=outage.is_stale,
            total=total, totals=totals, query=query, now=now, columns=COLUMNS, phone_sorts=PHONE_SORTS,
            filters=FILTERS, filter_labels=FILTER_LABELS, page_sizes=(25, 50, 100, MAX_PAGE),
            worst_lag=_worst_lag(totals, now), live_url="/api/events",
        )

    async def device(self, request: Request) -> Response:
        device_id = request.path_params["device_id"]
        if not DEVICE_ID.fullmatch(device_id):
            return self.console.render(request, "error.html", 404, title="No such device",
                                       message="A device id is 1 to 64 of A-Z a-z 0-9 _ -.")
        now = time.time()
        view = await run_in_threadpool(
            load_device, self.console.store, device_id, now, self.console.settings.silent_after
        )
        if view is None:
            return self.console.render(request, "error.html", 404, title="No such device",
                                       message=f"No device {device_id} has reached the cloud.")
        return self.console.render(
            request, "device.html", view=view, d=view.device, now=now,
            live_url=f"/api/events?device={device_id}",
        )


def _read_fleet(store: Store, query: FleetQuery) -> tuple[
        FleetQuery, list[dict[str, Any]], int, dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """What the fleet page shows, read on one thread in one go: the page (or the last one, when
    devices went away past it), the totals, and the last hour of the page's devices."""
    totals = store.fleet_totals(query)
    unfiltered = not query.where()[0]
    rows, total = store.fleet_page(query, total=totals["devices"] if unfiltered else None)
    if rows == [] and query.offset and total:  # past the end (devices went away): last page
        query = query.page((total - 1) // (query.limit or 1) * (query.limit or 1))
        rows, total = store.fleet_page(query)
    hours = store.status_histories([row["device_id"] for row in rows], query.now - outage.HOUR, 400)
    return query, rows, total, totals, hours


def _worst_lag(totals: dict[str, Any], now: float) -> tuple[str, float] | None:
    """The device whose oldest unsent record is oldest, and that record's age now."""
    worst = totals.get("worst")
    if worst is None:
        return None
    age = lag(worst, now)
    return (worst["device_id"], age) if age is not None else None
