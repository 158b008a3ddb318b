"""The console's side of remote control: publishing desired configs and commands, and reading
what devices report and reply, over the ingest's own MQTT connection (one connection per
console process).

It subscribes, unshared, to every device's retained ``config/desired`` and ``config/reported``
(so a restarted console knows them at once) and to ``<prefix>/+/reply/<requester>``, the reply
topic of this console process alone. What it holds is small and bounded: per device the
desired version, the last report and the last few command replies.

A config is checked here first, as far as the cloud can: TOML, the agent's own sections and the
``with`` tables of the modules registered beside the console (a module only the device has is a
warning, not an error; secrets are not resolved here). The console imports nothing a config
names: a module *file* is an error in an unsigned document (the device refuses it unless its
operator's file loads it) and "checked on the device only" in a signed one. The check runs on a
worker thread, never on the event loop. The device checks every document again, fully.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import codec
from agent.api import Module
from agent.config import parse_config_text, validate_config
from agent.errors import ConfigError, ModuleLoadError
from agent.registry import available_modules, names_a_file, resolve_registered
from cloud_sync import protocol
from cloud_sync.protocol import DesiredConfig, ProtocolError
from cloud_sync.server.ingest import Ingest

MAX_DEVICES = 200_000
REPLIES_KEPT = 10
COMMAND_TIMEOUT = 10.0
COMMAND_EXPIRY = 60.0
"""A command not delivered within this long is dropped by the broker (MQTT 5) or refused by the
device (``expires_at``): a device that comes back an hour later does not run it."""
_PLACEHOLDER_DATA_DIR = "/var/lib/edge-agent"
CHECKS_AT_ONCE = 2
"""Config checks running at a time (each on a worker thread); more wait their turn."""
FILE_MODULE_REASON = (
    "a module file: a remote config names modules by their registered name (a device takes a "
    "file only where its operator's file loads the same one; sign the document for that)"
)
DEVICE_ONLY_REASON = "checked on the device only"


@dataclass
class Checked:
    """A config as the console checked it: what would be published, or why not."""

    doc: DesiredConfig | None = None
    errors: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    published: bool = False


class RemoteDesk:
    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.prefix = ingest.prefix
        self.requester = re.sub(r"[^A-Za-z0-9_-]", "-", ingest.client_id)[:64] or "console"
        self.desired: dict[str, dict[str, Any]] = {}
        self.reports: dict[str, dict[str, Any]] = {}
        self.replies: dict[str, deque[dict[str, Any]]] = {}
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._checks = asyncio.Semaphore(CHECKS_AT_ONCE)
        ingest.side = self

    # -- the ingest's side channel ----------------------------------------------------------------

    def filters(self) -> list[str]:
        self._loop = asyncio.get_running_loop()
        return [
            f"{self.prefix}/+/config/desired",
            f"{self.prefix}/+/config/reported",
            f"{self.prefix}/+/reply/{self.requester}",
        ]

    def received(self, topic: str, payload: bytes, properties: Any) -> None:
        try:
            device, kind, rest = protocol.parse_remote_topic(self.prefix, topic)
        except ProtocolError:
            return
        if len(self.reports) >= MAX_DEVICES and device not in self.reports:
            return
        if kind == "config" and rest == "reported" and payload:
            self._keep_report(device, payload)
        elif kind == "config" and rest == "desired":
            self._keep_desired(device, payload)
        elif kind == "reply":
            self._keep_reply(device, payload, getattr(properties, "CorrelationData", None))

    def _keep_report(self, device: str, payload: bytes) -> None:
        try:
            report = protocol.decode_report(payload)
        except ProtocolError as exc:
            self.reports[device] = {"result": "unreadable", "detail": exc.detail, "errors": []}
            return
        self.reports[device] = {
            "version": report.version, "result": report.result, "errors": report.errors,
            "detail": report.detail, "running": report.running, "at": report.at,
        }

    def _keep_desired(self, device: str, payload: bytes) -> None:
        if not payload:
            self.desired.pop(device, None)
            return
        try:
            doc = protocol.decode_desired(payload)
        except ProtocolError:
            return
        self.desired[device] = {
            "version": doc.version, "issued_by": doc.issued_by, "issued_at": doc.issued_at,
            "signed": doc.signature is not None,
        }

    def _keep_reply(self, device: str, payload: bytes, correlation: bytes | None) -> None:
        try:
            reply = protocol.decode_reply(payload)
        except ProtocolError as exc:
            reply = {"ok": False, "id": None, "error": {"code": exc.reason, "message": exc.detail}}
        key = correlation.decode(errors="replace") if correlation else str(reply.get("id"))
        reply = {**reply, "device": device, "at": time.time()}
        waiting = self._waiting.pop(key, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(reply)
        self.replies.setdefault(device, deque(maxlen=REPLIES_KEPT)).appendleft(reply)

    # -- configs ----------------------------------------------------------------------------------

    def next_version(self, device: str) -> int:
        versions = [self.desired.get(device, {}).get("version"), self.reports.get(device, {}).get("version")]
        return max([v for v in versions if isinstance(v, int)], default=0) + 1

    async def check(self, device: str, text: str, version: int | None, user: str) -> Checked:
        """A pasted TOML config (or a signed JSON document) checked, as a document to publish."""
        async with self._checks:
            return await asyncio.to_thread(self._check, device, text, version, user)

    def _check(self, device: str, text: str, version: int | None, user: str) -> Checked:
        text = text.replace("\r\n", "\n")
        if text.lstrip().startswith("{"):
            try:
                doc = protocol.decode_desired(text.strip().encode())
            except ProtocolError as exc:
                return Checked(errors=[{"path": "", "reason": exc.detail}])
            if doc.device not in (None, device):
                return Checked(errors=[{"path": "device", "reason": f"the document is for {doc.device}"}])
        else:
            if len(text) > protocol.MAX_CONFIG_TEXT:
                return Checked(errors=[{"path": "", "reason": f"over {protocol.MAX_CONFIG_TEXT} characters"}])
            version = version or self.next_version(device)
            doc = DesiredConfig(version, text, device, int(time.time()), user[:128])
        checked = Checked(doc=doc)
        signed = doc.signature is not None
        try:
            raw = parse_config_text(doc.config, f"config v{doc.version}")
            raw.setdefault("device_id", device)
            raw.setdefault("data_dir", _PLACEHOLDER_DATA_DIR)
            validate_config(raw, Path("/remote/agent.toml"), environ={}, resolve_secrets=False,
                            resolve=lambda use: _registered_only(use, signed))
        except ConfigError as exc:
            for issue in exc.issues:
                item = {"path": issue.path, "reason": issue.reason}
                warning = issue.path.endswith(".use") and issue.reason.startswith(DEVICE_ONLY_REASON)
                (checked.warnings if warning else checked.errors).append(item)
        return checked

    def publish_config(self, device: str, checked: Checked) -> bool:
        """Publish a checked document (retained, so the device gets it whenever it connects)."""
        if checked.doc is None or checked.errors:
            return False
        topic = protocol.config_topic(self.prefix, device, "desired")
        checked.published = self.ingest.publish(topic, checked.doc.encode(), retain=True)
        if checked.published:
            self._keep_desired(device, checked.doc.encode())
        return checked.published

    # -- commands ---------------------------------------------------------------------------------

    async def command(self, device: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Send ``name`` to ``device`` and wait for its reply (an error object if none comes)."""
        if not protocol.COMMAND_NAME.fullmatch(name):
            return _failed(None, "bad_command", f"{name[:40]!r}: not a command name")
        command_id = uuid.uuid4().hex
        reply_to = protocol.reply_topic(self.prefix, device, self.requester)
        command = protocol.Command(name, command_id, args, reply_to, time.time() + COMMAND_EXPIRY)
        waiting: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = waiting
        try:
            sent = self.ingest.publish(
                protocol.command_topic(self.prefix, device, name), command.encode(),
                correlation=command_id.encode(), response_topic=reply_to, expiry=COMMAND_EXPIRY,
            )
            if not sent:
                return _failed(command_id, "not_connected", "the console is not connected to the broker")
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    return await waiting
            except TimeoutError:
                return _failed(command_id, "no_reply", f"no reply within {COMMAND_TIMEOUT:g} s: is the "
                               "device online, with [remote] allow_commands?")
        finally:
            self._waiting.pop(command_id, None)

    def state(self, device: str) -> dict[str, Any]:
        """What the panel and ``GET /api/devices/<id>/remote`` show."""
        return {
            "desired": self.desired.get(device),
            "reported": self.reports.get(device),
            "replies": list(self.replies.get(device, ())),
            "next_version": self.next_version(device),
        }


def _registered_only(use: str, signed: bool) -> type[Module[Any]]:
    """A module's class if it is registered beside the console (an installed package); nothing
    a config names is ever imported from a file here."""
    if names_a_file(use):
        raise ModuleLoadError(use, f"{DEVICE_ONLY_REASON} (a module file)" if signed else FILE_MODULE_REASON)
    if use not in available_modules():
        raise ModuleLoadError(use, f"{DEVICE_ONLY_REASON} (not installed beside the console)")
    return resolve_registered(use)


def parse_args(text: str) -> dict[str, Any]:
    """Command arguments typed as a JSON object (empty: none); ``ValueError`` saying why not."""
    if not text.strip():
        return {}
    try:
        args = codec.loads(text)
    except ValueError:
        raise ValueError("arguments: not JSON (write an object, e.g. {\"name\": \"win\"})") from None
    if not isinstance(args, dict):
        raise ValueError("arguments: a JSON object, e.g. {\"level\": \"DEBUG\"}")
    return args


def _failed(command_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {"v": protocol.VERSION, "id": command_id, "ok": False, "error": {"code": code, "message": message},
            "at": time.time()}
