"""Parsing the addresses the simulators take on the command line: broker URLs and HOST:PORT."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

MQTT_PORT = 1883


class AddressError(ValueError):
    """An address on the command line that cannot be used; the message says why."""


def broker_address(url: str) -> tuple[str, int]:
    """``(host, port)`` of ``mqtt://host:port`` (``tcp://`` and a bare ``host:port`` work too)."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "tcp"):
        raise AddressError(f"{url}: only mqtt:// brokers are supported (no TLS in the simulators)")
    if not parts.hostname:
        raise AddressError(f"{url}: no host")
    try:
        port = parts.port or MQTT_PORT
    except ValueError as error:
        raise AddressError(f"{url}: {error}") from None
    return parts.hostname, port


def host_port(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` or ``:PORT`` or ``PORT``."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise AddressError(f"{text}: expected HOST:PORT") from None
    if not 0 <= number <= 65535:
        raise AddressError(f"{text}: port out of range")
    return (host.strip("[]") or default_host), number


def require_loopback(host: str, what: str) -> None:
    """Refuse to listen anywhere but loopback: the fault tools must never face a real network."""
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise AddressError(f"{what} {host}: the link proxy listens on loopback only")
