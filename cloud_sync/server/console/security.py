"""What every response of the console carries, and the checks every request passes.

* **Headers** on every response: a Content-Security-Policy that allows scripts, styles and
  connections from the console's own origin only (no ``unsafe-inline``, no ``eval``), no
  framing, no MIME sniffing, no referrer to other sites; ``no-store`` on everything but the
  static files (device data stays out of disk caches), which are cached for a year when their
  URL carries their content's hash; HSTS when the request came over HTTPS.
* **Host check**: with ``allowed_hosts`` set (the default when listening on loopback), a
  request naming another host gets 400, so a DNS-rebinding page cannot reach the console
  through a victim's browser.
* **Cookies** are ``Secure`` unless the browser speaks plain HTTP to a loopback address (there
  the browser would not keep a Secure cookie, and nothing crosses a network); see
  ``cookie_secure``. Over plain HTTP to any other address, sign-in is refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "font-src 'self'",
    "connect-src 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
])
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cookie_secure(request: Request) -> bool:
    """Whether cookies get ``Secure``: always, except plain HTTP to a loopback address."""
    return request.url.scheme == "https" or not is_loopback(request.url.hostname)


def plain_http_elsewhere(request: Request) -> bool:
    """Plain HTTP to a non-loopback address: a password would cross the network in clear."""
    return request.url.scheme != "https" and not is_loopback(request.url.hostname)


def same_origin(request: Request) -> bool:
    """Whether a state-changing request comes from a page of the console itself: the browser's
    ``Origin`` (or, failing that, ``Referer``) names this host, and ``Sec-Fetch-Site`` (when
    sent) does not say cross-site."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return False
    parts = urlsplit(source)
    return (parts.scheme, parts.netloc) == (request.url.scheme, request.url.netloc)


class SecurityMiddleware:
    """Pure ASGI (it must not buffer the live event streams): host check and headers."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] | None = None) -> None:
        self.app = app
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.allowed is not None and "*" not in self.allowed:
            host = _host_name(Headers(scope=scope).get("host", ""))
            if host not in self.allowed:
                response = PlainTextResponse("unknown host: start edge-cloud with --allowed-host", 400)
                await response(scope, receive, send)
                return
        static = scope["path"].startswith("/static/")
        versioned = scope.get("query_string", b"").startswith(b"v=")
        https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers.setdefault(name, value)
                if not static:
                    headers.setdefault("cache-control", "no-store")
                elif versioned:  # /static/x?v=HASH: the name changes with the content
                    headers["cache-control"] = "public, max-age=31536000, immutable"
                else:
                    headers["cache-control"] = "no-cache"
                if https:
                    headers.setdefault("strict-transport-security", "max-age=31536000")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _host_name(host: str) -> str:
    host = host.lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
