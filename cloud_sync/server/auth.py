"""Who may call a route: one check for the JSON API, the console's JSON routes and its pages.

- ``api``: a signed-in console session or ``Authorization: Bearer TOKEN``; else 401 JSON.
- ``bearer``: a token alone, for JSON routes that change something (a browser's cookie is not
  enough there: no CSRF token travels with a script's request).
- ``page``: a signed-in session; else a redirect to the sign-in page (401 for htmx requests).

With no token configured, bearer checks fail for everyone: there is no default credential.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

if TYPE_CHECKING:
    from cloud_sync.server.console import Console

Handler = Callable[[Request], Awaitable[Response]]


class Guard:
    def __init__(self, tokens: Iterable[str], console: Console | None = None) -> None:
        self._secrets = [t.encode() for t in tokens]
        self._console = console

    def api(self, handler: Handler) -> Handler:
        return self._guarded(handler, session_ok=True)

    def bearer(self, handler: Handler) -> Handler:
        return self._guarded(handler, session_ok=False)

    def page(self, handler: Handler) -> Handler:
        console = self._console
        assert console is not None, "pages need a console"

        async def page(request: Request) -> Response:
            if console.signed_in(request):
                return await handler(request)
            from cloud_sync.server.console.signin import signin_url

            gone = request.cookies.get(console.cookie_name(request, "edge_session"))
            target = signin_url(request, "gone" if gone else "")
            if request.headers.get("hx-request"):
                return Response("sign in first", 401, headers={"HX-Redirect": target})
            return RedirectResponse(target, 303)

        return page

    def allows(self, request: Request, session_ok: bool = True) -> bool:
        if session_ok and self._console is not None and self._console.signed_in(request):
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given or not self._secrets:
            return False
        candidate = given.strip().encode()
        return any(hmac.compare_digest(candidate, secret) for secret in self._secrets)

    def _guarded(self, handler: Handler, session_ok: bool) -> Handler:
        async def guarded(request: Request) -> Response:
            if not self.allows(request, session_ok):
                return JSONResponse(
                    {"error": "unauthorised: send Authorization: Bearer <token>"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            return await handler(request)

        return guarded
