"""Topic names of both directions, and the device ids in them."""

from __future__ import annotations

import re
from typing import Literal

from cloud_sync.protocol.errors import ProtocolError

DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

Kind = Literal["data", "status", "ack"]

KINDS: tuple[Kind, ...] = ("data", "status", "ack")


def topic(prefix: str, device_id: str, kind: Kind) -> str:
    """``<prefix>/<device-id>/<kind>``."""
    return f"{prefix}/{device_id}/{kind}"


def subscription(prefix: str, kind: Kind, share_group: str | None = None) -> str:
    """The filter for every device's ``kind`` topic, shared across a group of ingest workers."""
    base = f"{prefix}/+/{kind}"
    return f"$share/{share_group}/{base}" if share_group else base


def parse_topic(prefix: str, name: str) -> tuple[str, Kind]:
    """``(device_id, kind)`` of a topic under ``prefix``; ``ProtocolError`` if it is not one."""
    head = prefix + "/"
    if not name.startswith(head):
        raise ProtocolError("bad_topic", f"{name!r} is not under {prefix!r}")
    parts = name[len(head) :].split("/")
    if len(parts) != 2 or parts[1] not in KINDS:
        raise ProtocolError("bad_topic", f"{name!r} is not {prefix}/<device-id>/(data|status|ack)")
    device_id, kind = parts
    check_device_id(device_id)
    return device_id, kind  # type: ignore[return-value]  # checked against KINDS above


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID.fullmatch(device_id):
        raise ProtocolError("bad_device_id", f"{device_id[:80]!r}: a device id is 1 to 64 of A-Z a-z 0-9 _ -")
    return device_id


def config_topic(prefix: str, device_id: str, which: Literal["desired", "reported"]) -> str:
    """``<prefix>/<device-id>/config/desired`` (cloud → device, retained) or ``.../reported``."""
    return f"{prefix}/{device_id}/config/{which}"


def command_topic(prefix: str, device_id: str, name: str) -> str:
    """``<prefix>/<device-id>/cmd/<name>``."""
    return f"{prefix}/{device_id}/cmd/{name}"


def reply_topic(prefix: str, device_id: str, requester: str | None = None) -> str:
    """Where a device answers: ``<prefix>/<device-id>/reply[/<requester>]`` (under its own id, so
    a broker ACL can keep each device to ``<prefix>/<its-id>/#``)."""
    base = f"{prefix}/{device_id}/reply"
    return f"{base}/{requester}" if requester else base


def is_reply_topic(prefix: str, device_id: str, name: str) -> bool:
    """True if ``name`` is this device's reply topic or below it (no wildcards)."""
    base = reply_topic(prefix, device_id)
    return (name == base or name.startswith(base + "/")) and not any(c in name for c in "+#\0")


def parse_remote_topic(prefix: str, name: str) -> tuple[str, str, str]:
    """``(device_id, kind, rest)`` of a ``config/...``, ``cmd/...`` or ``reply[/...]`` topic,
    e.g. ``("gw-1", "config", "reported")``; ``ProtocolError`` otherwise."""
    head = prefix + "/"
    parts = name[len(head) :].split("/", 2) if name.startswith(head) else []
    if len(parts) < 2 or parts[1] not in ("config", "cmd", "reply"):
        raise ProtocolError("bad_topic", f"{name[:200]!r} is not {prefix}/<device-id>/(config|cmd|reply)/…")
    check_device_id(parts[0])
    return parts[0], parts[1], parts[2] if len(parts) > 2 else ""
