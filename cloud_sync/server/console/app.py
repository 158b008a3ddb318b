"""The console: sign-in, the fleet and device pages, live updates, beside the JSON API.

``Console`` holds what lives as long as the server (users, sessions, the live hub, the
templates) and hands ``cloud_sync.server.web.create_app`` its routes and middleware. The pages read
the store through the same queries as the JSON API (``store/views.py``).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse

from cloud_sync.server.console import format as fmt
from cloud_sync.server.console.security import SecurityMiddleware, cookie_secure
from cloud_sync.server.console.sessions import Session, Sessions
from cloud_sync.server.console.throttle import SignInThrottle
from cloud_sync.server.console.users import Users
from cloud_sync.server.ingest import Ingest
from cloud_sync.server.ledger import DeviceState, Flush
from cloud_sync.server.store import Store
from cloud_sync.server.store.summary import BEHIND_AFTER, SILENT_AFTER

log = logging.getLogger(__name__)

SESSION_COOKIE = "edge_session"
SIGNIN_COOKIE = "edge_signin"


@dataclass(frozen=True)
class ConsoleSettings:
    users_file: Path | None = None
    """``name:argon2-hash`` lines (``edge-cloud user add``); without it nobody can sign in."""
    allowed_hosts: tuple[str, ...] | None = None
    """Host names the console answers to (None: any)."""
    silent_after: float = SILENT_AFTER
    behind_after: float = BEHIND_AFTER
    session_idle: float = 12 * 3600.0
    session_lifetime: float = 7 * 86400.0
    page_size: int = 50


class Console:
    def __init__(
        self, store: Store, settings: ConsoleSettings | None = None, ingest: Ingest | None = None
    ) -> None:
        from cloud_sync.server.console.live import ChangeHub  # needs a running loop only when used

        self.store = store
        self.settings = settings or ConsoleSettings()
        self.users = Users(self.settings.users_file)
        self.sessions = Sessions(self.settings.session_idle, self.settings.session_lifetime)
        self.throttle = SignInThrottle()
        self.hub = ChangeHub(store)
        self.templates = _environment()
        self._static = _static_versions()
        self.remote = None
        if ingest is not None:
            from cloud_sync.server.console.remote import RemoteDesk

            ingest.subscribe(self._on_flush)
            self.remote = RemoteDesk(ingest)  # desired configs and commands (remote_pages.py)

    # -- wiring ---------------------------------------------------------------------------------

    def middleware(self) -> list[Middleware]:
        return [Middleware(SecurityMiddleware, allowed_hosts=self.settings.allowed_hosts)]

    def close(self) -> None:
        """End the live streams, so that the server can stop."""
        self.hub.close()

    def _on_flush(self, flush: Flush, states: dict[str, DeviceState]) -> None:
        self.hub.publish(states)

    # -- sessions -------------------------------------------------------------------------------

    def cookie_name(self, request: Request, base: str) -> str:
        """``__Host-`` names (Secure, whole site, this host only) wherever cookies are Secure."""
        return f"__Host-{base}" if cookie_secure(request) else base

    def session(self, request: Request, fresh: bool = False) -> Session | None:
        """The request's live session (looked up once per request unless ``fresh``)."""
        if not fresh and "session" in request.scope.get("state", {}):
            return request.state.session  # type: ignore[no-any-return]
        token = request.cookies.get(self.cookie_name(request, SESSION_COOKIE))
        session = self.sessions.get(token, self.users.fingerprint)
        request.state.session = session
        return session

    def signed_in(self, request: Request) -> bool:
        return self.session(request) is not None

    # -- rendering ------------------------------------------------------------------------------

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        session = self.session(request)
        html = self.templates.get_template(template).render(
            request=request,
            user=session.user if session else None,
            csrf=session.csrf if session else "",
            static=self.static_url,
            field=fmt.field,
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def static_url(self, name: str) -> str:
        """``/static/NAME?v=HASH``: cached for a year, fetched again when the file changes."""
        version = self._static.get(name)
        if version is None:
            raise KeyError(f"no static file {name!r}")
        return f"/static/{name}?v={version}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cloud_sync.server.console", "templates"),
        autoescape=True,  # every device-supplied string is escaped, in every template
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(fmt.FILTERS)
    return env


def _static_versions() -> dict[str, str]:
    root = resources.files("cloud_sync.server.console") / "static"
    versions: dict[str, str] = {}

    def walk(folder: Any, prefix: str) -> None:
        for item in folder.iterdir():
            if item.is_dir():
                walk(item, f"{prefix}{item.name}/")
            elif item.is_file():
                versions[prefix + item.name] = hashlib.sha256(item.read_bytes()).hexdigest()[:10]

    walk(root, "")
    return versions
