"""The HTTP app of ``edge-cloud serve``: the JSON API (``api.py``) and, with a console, its pages.

Routes are declared in ``routes.py``, each behind its guard (``auth.py``). Every ``/api`` route
needs ``Authorization: Bearer TOKEN``, with tokens from ``EDGE_CLOUD_TOKEN``
(comma-separated) or a tokens file (one a line, ``#`` comments), or a console session (when a
``console`` is given). With no token configured the API answers 401 to everyone but signed-in
users: there is no default credential. ``/healthz`` is open (it says only whether the ingest is
connected).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette

from cloud_sync.server.auth import Guard
from cloud_sync.server.ingest import Ingest
from cloud_sync.server.ledger import DeviceState
from cloud_sync.server.routes import build_routes
from cloud_sync.server.store import Store
from cloud_sync.server.store.summary import api_object, summarize

if TYPE_CHECKING:
    from cloud_sync.server.console import Console


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
    """The HTTP app: the JSON API, and the console's pages and routes when ``console`` is given."""
    guard = Guard(tokens, console)
    routes = build_routes(store, guard, ingest, console)
    return Starlette(routes=routes, middleware=console.middleware() if console is not None else [])
