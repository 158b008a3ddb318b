"""Every HTTP route of ``edge-cloud serve``, declared in one place with its guard."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from cloud_sync.server.api import DeviceApi
from cloud_sync.server.auth import Guard
from cloud_sync.server.console.api import ConsoleApi
from cloud_sync.server.console.pages import Pages
from cloud_sync.server.console.signin import SignIn
from cloud_sync.server.ingest import Ingest
from cloud_sync.server.store import Store

if TYPE_CHECKING:
    from cloud_sync.server.console import Console


def build_routes(
    store: Store, guard: Guard, ingest: Ingest | None, console: Console | None
) -> list[BaseRoute]:
    routes: list[BaseRoute] = [*DeviceApi(store, ingest).routes(guard)]
    if console is None:
        return routes
    routes += [*SignIn(console).routes(), *Pages(console).routes(guard)]
    if console.remote is not None:
        from cloud_sync.server.console.remote_pages import RemotePanel  # pushes configs: needs the ingest

        routes += RemotePanel(console, console.remote).routes(guard)
    static = StaticFiles(packages=[("cloud_sync.server.console", "static")])
    return [*routes, *ConsoleApi(console).routes(guard), Mount("/static", app=static, name="static")]
