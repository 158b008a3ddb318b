"""Cloud to device: desired config, its reported result, commands and replies."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from agent import codec
from cloud_sync.protocol.data import _is_seq
from cloud_sync.protocol.errors import ProtocolError
from cloud_sync.protocol.framing import VERSION
from cloud_sync.protocol.topics import DEVICE_ID
from cloud_sync.protocol.values import check_values

# -- cloud to device: desired config, its reported result, commands and replies -----------------
# (docs/protocol.md, "Remote configuration and commands"). Both ends use these; the device's
# handling is agent/remote/config.py and agent/remote/commands.py, the console's
# cloud_sync/server/console/remote.py.

MAX_DESIRED = 256 << 10
"""A desired-config document is at most this many bytes..."""
MAX_CONFIG_TEXT = 128 << 10
"""...and the TOML it carries at most this many characters."""
MAX_COMMAND = 16 << 10
MAX_REPLY = 256 << 10
MAX_REPORT_ERRORS = 200
COMMAND_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
COMMAND_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
REQUESTER = re.compile(r"[A-Za-z0-9_-]{1,64}")
SIGNING_CONTEXT = b"edge-agent config v1\n"
"""Prefix of the bytes a desired config's signature covers (see ``signed_bytes``)."""
CONFIG_RESULTS = ("applying", "applied", "rejected", "rolled_back", "superseded")


def _json_object(payload: bytes, what: str, limit: int) -> dict[str, Any]:
    if len(payload) > limit:
        raise ProtocolError("too_large", f"{what} of {len(payload)} bytes (at most {limit})")
    try:
        doc = codec.loads(payload)
    except ValueError as exc:  # orjson and json decode errors are ValueErrors
        raise ProtocolError("bad_json", f"{what} is not JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("bad_body", f"{what} is not a JSON object")
    check_values(doc, what)
    return doc


@dataclass(frozen=True)
class DesiredConfig:
    """A versioned config document for one device (or any device, without ``device``)."""

    version: int
    config: str
    """The agent config as TOML text."""
    device: str | None = None
    issued_at: int | None = None
    issued_by: str | None = None
    signature: str | None = None
    """Base64 Ed25519 signature over ``signed_bytes()``; None if unsigned."""

    def fields(self) -> dict[str, Any]:
        """The document's fields but the signature (what a signature covers)."""
        doc: dict[str, Any] = {"v": VERSION, "version": self.version, "config": self.config}
        for key in ("device", "issued_at", "issued_by"):
            if getattr(self, key) is not None:
                doc[key] = getattr(self, key)
        return doc

    def signed_bytes(self) -> bytes:
        """``SIGNING_CONTEXT`` + the fields as canonical JSON: keys sorted, no spaces, UTF-8 (not
        ASCII-escaped). The values are integers and strings only, so every JSON library agrees."""
        return SIGNING_CONTEXT + canonical_json(self.fields())

    def digest(self) -> str:
        """SHA-256 of the signed bytes: the document's identity, signature aside."""
        return hashlib.sha256(self.signed_bytes()).hexdigest()

    def encode(self) -> bytes:
        doc = self.fields()
        if self.signature is not None:
            doc["signature"] = self.signature
        return codec.dumps_bytes(doc)


def canonical_json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def decode_desired(payload: bytes) -> DesiredConfig:
    """A desired-config document; ``ProtocolError`` naming the field otherwise."""
    doc = _json_object(payload, "the desired config", MAX_DESIRED)
    unknown = sorted(set(doc) - {"v", "version", "config", "device", "issued_at", "issued_by", "signature"})
    if unknown:
        raise ProtocolError("bad_body", f"{unknown[0][:40]}: unknown field")
    if doc.get("v", VERSION) != VERSION:
        raise ProtocolError("bad_version", f"v: format {str(doc.get('v'))[:20]} (this agent reads {VERSION})")
    version, config = doc.get("version"), doc.get("config")
    if not _is_seq(version):
        raise ProtocolError("bad_body", "version: not a positive integer")
    if not isinstance(config, str) or len(config) > MAX_CONFIG_TEXT:
        raise ProtocolError("bad_body", f"config: not TOML text of at most {MAX_CONFIG_TEXT} characters")
    device, issued_at = doc.get("device"), doc.get("issued_at")
    issued_by, signature = doc.get("issued_by"), doc.get("signature")
    if device is not None and not (isinstance(device, str) and DEVICE_ID.fullmatch(device)):
        raise ProtocolError("bad_body", "device: not a device id")
    if issued_at is not None and not _is_seq(issued_at, allow_zero=True):
        raise ProtocolError("bad_body", "issued_at: not whole Unix seconds")
    if issued_by is not None and not (isinstance(issued_by, str) and len(issued_by) <= 128):
        raise ProtocolError("bad_body", "issued_by: not a string of at most 128 characters")
    if signature is not None and not (isinstance(signature, str) and len(signature) <= 256):
        raise ProtocolError("bad_body", "signature: not a base64 string")
    return DesiredConfig(version, config, device, issued_at, issued_by, signature)


@dataclass(frozen=True)
class ConfigReport:
    """What a device did with a desired config, retained on ``.../config/reported``."""

    version: int | None
    """The document's version (None when it could not be read at all)."""
    result: str
    """``applying`` (running it, within the grace period), ``applied``, ``rejected``,
    ``rolled_back`` or ``superseded`` (the operator's file changed on the device since)."""
    errors: list[dict[str, str]] = field(default_factory=list)
    """Every problem, each ``{"path": "modules[0].with.every", "reason": "..."}``."""
    detail: str = ""
    running: dict[str, Any] = field(default_factory=dict)
    """The config the device runs now: ``{"source": "file"|"remote", "version": N|null}``."""
    digest: str | None = None
    at: float = 0.0

    def encode(self) -> bytes:
        return codec.dumps_bytes(
            {
                "v": VERSION,
                "version": self.version,
                "result": self.result,
                "errors": self.errors[:MAX_REPORT_ERRORS],
                "detail": self.detail[:2000],
                "running": self.running,
                "digest": self.digest,
                "at": self.at,
            }
        )


def decode_report(payload: bytes) -> ConfigReport:
    doc = _json_object(payload, "a config report", MAX_REPLY)
    version, result, errors = doc.get("version"), doc.get("result"), doc.get("errors", [])
    if version is not None and not _is_seq(version):
        raise ProtocolError("bad_report", "version: not a positive integer")
    if result not in CONFIG_RESULTS:
        raise ProtocolError("bad_report", f"result: not one of {', '.join(CONFIG_RESULTS)}")
    if not isinstance(errors, list) or not all(
        isinstance(e, dict) and isinstance(e.get("path", ""), str) and isinstance(e.get("reason"), str)
        for e in errors
    ):
        raise ProtocolError("bad_report", "errors: not a list of {path, reason}")
    running = doc.get("running") if isinstance(doc.get("running"), dict) else {}
    at = doc.get("at") if type(doc.get("at")) in (int, float) else 0.0
    digest = doc.get("digest") if isinstance(doc.get("digest"), str) else None
    detail = doc.get("detail") if isinstance(doc.get("detail"), str) else ""
    kept = [{"path": e.get("path", ""), "reason": e["reason"]} for e in errors[:MAX_REPORT_ERRORS]]
    return ConfigReport(version, result, kept, str(detail), running or {}, digest, float(at or 0.0))


@dataclass(frozen=True)
class Command:
    """A request on ``<prefix>/<device-id>/cmd/<name>``. On MQTT 5 the reply goes to the
    message's Response Topic with its Correlation Data; on 3.1.1 to ``reply_to``."""

    name: str
    id: str
    args: dict[str, Any] = field(default_factory=dict)
    reply_to: str | None = None
    expires_at: float | None = None
    """Unix seconds (the device's clock); a command received later is not executed."""

    def encode(self) -> bytes:
        doc: dict[str, Any] = {"v": VERSION, "id": self.id, "args": self.args}
        if self.reply_to is not None:
            doc["reply_to"] = self.reply_to
        if self.expires_at is not None:
            doc["expires_at"] = self.expires_at
        return codec.dumps_bytes(doc)


def decode_command(name: str, payload: bytes) -> Command:
    """A command; ``ProtocolError`` naming the field otherwise (the caller replies with it)."""
    if not COMMAND_NAME.fullmatch(name):
        raise ProtocolError("bad_command", f"{name[:40]!r}: not a command name")
    doc = _json_object(payload, "the command", MAX_COMMAND)
    unknown = sorted(set(doc) - {"v", "id", "args", "reply_to", "expires_at"})
    if unknown:
        raise ProtocolError("bad_command", f"{unknown[0][:40]}: unknown field")
    command_id, args = doc.get("id"), doc.get("args", {})
    reply_to, expires_at = doc.get("reply_to"), doc.get("expires_at")
    if not (isinstance(command_id, str) and COMMAND_ID.fullmatch(command_id)):
        raise ProtocolError("bad_command", "id: 1 to 64 of A-Z a-z 0-9 _ . : -")
    if not isinstance(args, dict):
        raise ProtocolError("bad_command", "args: not an object")
    if reply_to is not None and not (isinstance(reply_to, str) and 0 < len(reply_to) <= 256):
        raise ProtocolError("bad_command", "reply_to: not a topic")
    if expires_at is not None and (type(expires_at) not in (int, float) or not math.isfinite(expires_at)):
        raise ProtocolError("bad_command", "expires_at: not Unix seconds")
    return Command(name, command_id, args, reply_to, None if expires_at is None else float(expires_at))


def encode_reply(command_id: str | None, result: Any = None, error: tuple[str, str] | None = None) -> bytes:
    """``{"v":1,"id":...,"ok":true,"result":...}`` or ``{..."ok":false,"error":{"code","message"}}``."""
    doc: dict[str, Any] = {"v": VERSION, "id": command_id, "ok": error is None}
    if error is None:
        doc["result"] = result
    else:
        doc["error"] = {"code": error[0], "message": error[1][:2000]}
    return codec.dumps_bytes(doc)


def decode_reply(payload: bytes) -> dict[str, Any]:
    doc = _json_object(payload, "a reply", MAX_REPLY)
    if not isinstance(doc.get("ok"), bool):
        raise ProtocolError("bad_reply", "ok: not a boolean")
    return doc
