"""The device page's remote-control panel, and its JSON twin.

HTML (a signed-in session; POSTs need the session's CSRF token and a same-origin request):

* ``GET /devices/<id>/remote`` — the panel's live part: desired and reported config, replies.
* ``POST /devices/<id>/config`` — ``config`` (TOML, or a signed JSON document), ``version``.
* ``POST /devices/<id>/command`` — ``name`` and ``args`` (a JSON object); waits for the reply.

With htmx these return fragments swapped into the panel; without JavaScript, whole pages.

JSON (``Authorization: Bearer`` only for the POSTs, so a browser's cookie never suffices):

* ``GET /api/devices/<id>/remote`` — as the panel shows it.
* ``POST /api/devices/<id>/config`` — body ``{"config": "<toml>", "version": N}`` or a signed document.
* ``POST /api/devices/<id>/commands/<name>`` — body: the arguments object; answers with the reply.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent import codec
from cloud_sync.protocol import DEVICE_ID, MAX_DESIRED
from cloud_sync.server.console.remote import Checked, RemoteDesk, parse_args
from cloud_sync.server.console.security import same_origin
from cloud_sync.server.console.sessions import same_token
from cloud_sync.server.console.signin import read_form

if TYPE_CHECKING:
    from cloud_sync.server.auth import Guard
    from cloud_sync.server.console.app import Console

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]
COMMANDS = ("ping", "status", "sync-now", "restart-module", "set-log-level")
FORM_LIMIT = 3 * MAX_DESIRED  # a TOML text, URL-encoded


class RemotePanel:
    def __init__(self, console: Console, desk: RemoteDesk) -> None:
        self.console = console
        self.desk = desk

    def routes(self, guard: Guard) -> list[Route]:
        signed_in, api_guard, bearer_only = guard.page, guard.api, guard.bearer
        return [
            Route("/devices/{device_id}/remote", signed_in(self.panel), methods=["GET"]),
            Route("/devices/{device_id}/config", signed_in(self.push_config), methods=["POST"]),
            Route("/devices/{device_id}/command", signed_in(self.send_command), methods=["POST"]),
            Route("/api/devices/{device_id}/remote", api_guard(self.api_state), methods=["GET"]),
            Route("/api/devices/{device_id}/config", bearer_only(self.api_config), methods=["POST"]),
            Route("/api/devices/{device_id}/commands/{name}", bearer_only(self.api_command),
                  methods=["POST"]),
        ]

    # -- HTML -------------------------------------------------------------------------------------

    async def panel(self, request: Request) -> Response:
        device = _device(request)
        if device is None:
            return Response("no such device", 404)
        return self._render(request, "remote_state.html", device, state=self.desk.state(device))

    async def push_config(self, request: Request) -> Response:
        device, form, refusal = await self._checked_form(request)
        if refusal is not None:
            return refusal
        assert device is not None
        session = self.console.session(request)
        user = session.user if session else "?"
        version = form.get("version", "").strip()
        if version and not (version.isdigit() and 0 < int(version) < 1 << 62):
            checked = Checked(errors=[{"path": "version", "reason": "a positive whole number"}])
        else:
            number = int(version) if version else None
            checked = await self.desk.check(device, form.get("config", ""), number, user)
            if not checked.errors and not self.desk.publish_config(device, checked):
                checked.errors.append({"path": "", "reason": "not published: the console is not connected "
                                                              "to the broker"})
        if checked.published and checked.doc is not None:
            log.info("%s published config v%d for %s", user, checked.doc.version, device)
        return self._render(request, "remote_result.html", device, checked=checked, reply=None,
                            status=200 if not checked.errors else 400)

    async def send_command(self, request: Request) -> Response:
        device, form, refusal = await self._checked_form(request)
        if refusal is not None:
            return refusal
        assert device is not None
        name = form.get("name", "")
        try:
            args = parse_args(form.get("args", ""))
        except ValueError as exc:
            reply: dict[str, Any] = _error("bad_args", str(exc))
        else:
            if name not in COMMANDS:
                reply = _error("unknown_command", f"{name[:40]}: not a command")
            else:
                reply = await self.desk.command(device, name, args)
        shown = reply.get("result") if reply.get("ok") else reply.get("error")
        return self._render(request, "remote_result.html", device, checked=None, reply=reply,
                            reply_text=json.dumps(shown, indent=2, sort_keys=True))

    async def _checked_form(self, request: Request) -> tuple[str | None, dict[str, str], Response | None]:
        device = _device(request)
        if device is None:
            return None, {}, Response("no such device", 404)
        form = await read_form(request, FORM_LIMIT)
        session = self.console.session(request)
        if session is None or not same_origin(request) or not same_token(form.get("csrf"), session.csrf):
            return device, form, Response("The form has expired: reload the page and try again.", 403)
        return device, form, None

    def _render(
        self, request: Request, template: str, device: str, status: int = 200, **context: Any
    ) -> Response:
        layout = "fragment.html" if request.headers.get("hx-request") else "base.html"
        return self.console.render(request, template, status, layout=layout, device=device, **context)

    # -- JSON -------------------------------------------------------------------------------------

    async def api_state(self, request: Request) -> Response:
        device = _device(request)
        if device is None:
            return JSONResponse({"error": "device_id: 1 to 64 of A-Z a-z 0-9 _ -"}, 400)
        return Response(codec.dumps_bytes(self.desk.state(device)), media_type="application/json")

    async def api_config(self, request: Request) -> Response:
        device = _device(request)
        body = await request.body()
        if device is None or len(body) > FORM_LIMIT:
            return JSONResponse({"error": "bad device id or body too large"}, 400)
        try:
            doc = codec.loads(body)
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, 400)
        if not isinstance(doc, dict):
            return JSONResponse({"error": "the body is not a JSON object"}, 400)
        if "signature" in doc:
            checked = await self.desk.check(device, body.decode(errors="replace"), None, "api")
        else:
            version = doc.get("version")
            checked = await self.desk.check(device, str(doc.get("config", "")),
                                      version if isinstance(version, int) and version > 0 else None, "api")
        published = self.desk.publish_config(device, checked)
        return JSONResponse({
            "published": published, "version": checked.doc.version if checked.doc else None,
            "errors": checked.errors, "warnings": checked.warnings,
        }, 200 if published else 400)

    async def api_command(self, request: Request) -> Response:
        device = _device(request)
        if device is None:
            return JSONResponse({"error": "device_id: 1 to 64 of A-Z a-z 0-9 _ -"}, 400)
        try:
            args = parse_args((await request.body())[:65536].decode(errors="replace"))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        reply = await self.desk.command(device, request.path_params["name"], args)
        return Response(codec.dumps_bytes(reply), media_type="application/json")


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "id": None, "error": {"code": code, "message": message}}


def _device(request: Request) -> str | None:
    device = str(request.path_params["device_id"])
    return device if DEVICE_ID.fullmatch(device) else None
