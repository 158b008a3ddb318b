"""Warnings about files that hold secrets, or that decide what the agent trusts.

A password file or a private key that other users can read is a secret shared with them; a
public key for signed configs, or a CA file, that others can *write* lets them decide what the
agent trusts. The agent still runs (an operator may have a reason), but says so at start-up,
in ``edge-agent check`` and in ``edge-agent status``.
"""

from __future__ import annotations

import stat
from pathlib import Path

from agent.config import AgentConfig, BrokerLogin, MqttSourceConfig


def check_secret_files(config: AgentConfig) -> list[str]:
    """One line per file whose permissions are too loose (or that is missing)."""
    warnings: list[str] = []
    logins: list[tuple[str, BrokerLogin]] = [("cloud", config.cloud)] if config.cloud else []
    logins += [(f"sources.{s.name}", s) for s in config.sources if isinstance(s, MqttSourceConfig)]
    for where, login in logins:
        for key in ("password_file", "tls_key"):
            path = getattr(login, key)
            if path is not None:
                warnings += _secret(f"{where}.{key}", path)
        if login.tls_ca is not None:
            warnings += _trusted(f"{where}.tls_ca", login.tls_ca)
        problem = certificate_problem(f"{where}.tls_cert", login.tls_cert) if login.tls_cert else None
        if problem is not None:
            warnings.append(problem)
    if config.remote is not None and config.remote.public_key_file is not None:
        warnings += _trusted("remote.public_key_file", config.remote.public_key_file)
    return warnings


def _secret(where: str, path: Path) -> list[str]:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return [f"{where}: cannot read {path}: {exc.strerror}"]
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return [f"{where}: {path} is open to other users (mode {stat.S_IMODE(mode):04o}): "
                f"chmod 600 it, owned by the agent's user"]
    return []


def _trusted(where: str, path: Path) -> list[str]:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return [f"{where}: cannot read {path}: {exc.strerror}"]
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return [f"{where}: other users can write {path} (mode {stat.S_IMODE(mode):04o}): chmod 644 it"]
    return []


EXPIRY_WARNING_DAYS = 30


def certificate_dates(path: Path) -> tuple[float, float] | None:
    """``(not_before, not_after)`` of a PEM certificate as Unix seconds; None if unreadable.

    Uses the decoder that CPython's own ``ssl`` tests use, so a device needs no extra package."""
    import ssl

    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return None
    try:
        info = decode(str(path))
        return ssl.cert_time_to_seconds(info["notBefore"]), ssl.cert_time_to_seconds(info["notAfter"])
    except (OSError, ssl.SSLError, KeyError, ValueError):
        return None


def certificate_problem(where: str, path: Path, now: float | None = None) -> str | None:
    """Why the certificate at ``path`` is (or soon will be) refused, if it is."""
    import time

    dates = certificate_dates(path)
    if dates is None:
        return None
    now = time.time() if now is None else now
    not_before, not_after = dates
    def day(at: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))

    if now > not_after:
        return f"{where}: {path} expired on {day(not_after)}: renew it"
    if now < not_before:
        return f"{where}: {path} is not valid before {day(not_before)} (is the clock right?)"
    if not_after - now < EXPIRY_WARNING_DAYS * 86400:
        return f"{where}: {path} expires in {(not_after - now) / 86400:.0f} days: renew it"
    return None
