"""Signing in and out.

``POST /signin`` takes a name and password from the sign-in form. Before it looks at them it
checks that the form came from the console's own page (``Origin``, and a token that the page
set in a cookie and in the form: a double-submit token, since there is no session yet), that the
browser is not sending the password over plain HTTP across a network, and that this address
(with this user name) has not failed too often: the attempt is reserved before the password is
verified (``throttle``). On success the session cookie is set and the browser goes
where it was headed (``next``, a path on this site only).

``POST /signout`` needs the session's own CSRF token.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from cloud_sync.server.console.security import cookie_secure, plain_http_elsewhere, same_origin
from cloud_sync.server.console.sessions import same_token

if TYPE_CHECKING:
    from cloud_sync.server.console.app import Console

log = logging.getLogger(__name__)

MAX_FORM = 8192
_NEXT = re.compile(r"/(?![/\\])[\x21-\x7e]{0,2000}")
_STATE = {"gone": "Your session has ended. Please sign in again.", "out": "You have signed out."}


class SignIn:
    def __init__(self, console: Console) -> None:
        self.console = console

    def routes(self) -> list[Route]:
        return [
            Route("/signin", self.form, methods=["GET"]),
            Route("/signin", self.submit, methods=["POST"]),
            Route("/signout", self.sign_out, methods=["POST"]),
        ]

    async def form(self, request: Request) -> Response:
        target = safe_next(request.query_params.get("next"))
        if self.console.signed_in(request):
            return RedirectResponse(target, 303)
        return self._page(request, target, notice=_STATE.get(request.query_params.get("state", ""), ""))

    async def submit(self, request: Request) -> Response:
        console = self.console
        form = await read_form(request)
        target = safe_next(form.get("next"))
        if plain_http_elsewhere(request):
            return self._page(request, target, 400, error=(
                "Sign-in needs HTTPS here: put the console behind a TLS proxy, or reach it on "
                "127.0.0.1 (an SSH tunnel, for example)."))
        token = request.cookies.get(console.cookie_name(request, "edge_signin"))
        if not same_origin(request) or not token or not same_token(form.get("csrf"), token):
            return self._page(request, target, 403, error="The form has expired. Please try again.")
        if not console.users.configured:
            return self._page(request, target, 503, error=(
                "No users are set up: start edge-cloud serve with --users FILE "
                "(edge-cloud user add NAME --users FILE)."))
        name = form.get("name", "")[:64]
        client = request.client.host if request.client else "?"
        keys = console.throttle.keys(client, name)
        wait = console.throttle.reserve(keys)  # counted as a failure until the password is right
        if wait > 0:
            response = self._page(request, target, 429, error="Too many failed attempts. Try again later.")
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        async with console.throttle.verifying:
            good = await run_in_threadpool(console.users.verify, name, form.get("password", ""))
        fingerprint = console.users.fingerprint(name) if good else None
        if fingerprint is None:
            log.warning("failed sign-in for %r from %s", name, client)
            return self._page(request, target, 401, error="Wrong name or password.", name=name)
        console.throttle.succeeded(keys)
        session_token, _ = console.sessions.create(name, fingerprint)
        log.info("%s signed in from %s", name, client)
        response = RedirectResponse(target, 303)
        self._cookie(request, response, "edge_session", session_token)
        response.delete_cookie(console.cookie_name(request, "edge_signin"), path="/",
                               secure=cookie_secure(request), httponly=True, samesite="strict")
        return response

    async def sign_out(self, request: Request) -> Response:
        console = self.console
        session = console.session(request)
        form = await read_form(request)
        if session is not None:
            if not same_origin(request) or not same_token(form.get("csrf"), session.csrf):
                return Response("The form has expired: reload the page and sign out again.", 403)
            console.sessions.end(session)
            log.info("%s signed out", session.user)
        response = RedirectResponse("/signin?state=out", 303)
        response.delete_cookie(console.cookie_name(request, "edge_session"), path="/",
                               secure=cookie_secure(request), httponly=True, samesite="lax")
        return response

    def _page(
        self, request: Request, target: str, status: int = 200, error: str = "", notice: str = "",
        name: str = "",
    ) -> Response:
        token = request.cookies.get(self.console.cookie_name(request, "edge_signin")) or ""
        if len(token) != 43:
            token = secrets.token_urlsafe(32)
        response = self.console.render(
            request, "signin.html", status, next=target, csrf_signin=token, error=error, notice=notice,
            name=name, https_needed=plain_http_elsewhere(request),
        )
        self._cookie(request, response, "edge_signin", token, samesite="strict", max_age=3600)
        return response

    def _cookie(
        self, request: Request, response: Response, base: str, value: str, samesite: str = "lax",
        max_age: int | None = None,
    ) -> None:
        response.set_cookie(
            self.console.cookie_name(request, base), value, max_age=max_age, path="/",
            secure=cookie_secure(request), httponly=True, samesite=samesite,  # type: ignore[arg-type]
        )


def safe_next(value: str | None) -> str:
    """A path on this site to go to after signing in; anything else (another site, ``//host``,
    ``/\\host``, control characters) becomes the fleet page."""
    return value if value and _NEXT.fullmatch(value) else "/fleet"


def signin_url(request: Request, state: str = "") -> str:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    params = {"next": target} | ({"state": state} if state else {})
    return "/signin?" + urlencode(params)


async def read_form(request: Request, limit: int = MAX_FORM) -> dict[str, str]:
    """A small urlencoded form (at most ``limit`` bytes; the rest is not read): first values."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return {}
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=20)
    except ValueError:  # too many fields
        return {}
    return {key: values[0] for key, values in fields.items()}
