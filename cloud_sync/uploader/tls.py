"""Saying clearly why a TLS connection to the broker failed.

When the broker refuses our client certificate, the TLS alert reaches the client only after
its side of the handshake, and paho then waits for a CONNACK that never comes: the connection
ends as a bare timeout. So after a failed connect with TLS on, the uploader asks
``diagnose``, which checks our certificate's dates and makes one TLS handshake of its own to
read the broker's alert, and puts the answer in ``edge-agent status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from agent.config import BrokerLogin
from agent.secret_files import certificate_dates, certificate_problem
from cloud_sync.mqtt import ssl_context

PROBE_TIMEOUT = 3.0
_REFUSED = {
    "CERTIFICATE_EXPIRED": "it has expired",
    "UNKNOWN_CA": "it is signed by a CA the broker does not trust",
    "CERTIFICATE_REVOKED": "it has been revoked",
    "BAD_CERTIFICATE": "it is not acceptable",
    "CERTIFICATE_UNKNOWN": "it is not acceptable",
    "UNSUPPORTED_CERTIFICATE": "it is not of a kind the broker accepts",
    "ACCESS_DENIED": "access denied",
}


async def diagnose(login: BrokerLogin) -> str | None:
    """A sentence on what is wrong with TLS towards ``login``'s broker, or None if TLS is not
    the problem (or is off)."""
    if not login.tls:
        return None
    if login.tls_cert is not None and certificate_dates(login.tls_cert) is not None:
        problem = certificate_problem("tls_cert", login.tls_cert)
        if problem is not None and "expires in" not in problem:
            return f"TLS: our client certificate is refused: {problem}"
    try:
        context = ssl_context(login)
    except (OSError, ssl.SSLError) as exc:
        return f"TLS: cannot load tls_ca, tls_cert or tls_key: {exc}"
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            reader, writer = await asyncio.open_connection(login.host, login.port, ssl=context)
            try:
                await reader.read(1)  # a refusal of our certificate arrives as an alert here
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except ssl.SSLCertVerificationError as exc:
        where = f"tls_ca = {login.tls_ca}" if login.tls_ca else "the system's CAs"
        return f"TLS: the broker's certificate is not trusted ({exc.verify_message}; checked against {where})"
    except ssl.SSLError as exc:
        return _refusal(login, exc)
    except (OSError, TimeoutError):
        return None
    return None


def _refusal(login: BrokerLogin, exc: ssl.SSLError) -> str:
    text = str(exc).upper()
    if "CERTIFICATE_REQUIRED" in text:
        return "TLS: the broker requires a client certificate: set tls_cert and tls_key"
    for alert, why in _REFUSED.items():
        if alert in text:
            return f"TLS: the broker refused our client certificate {login.tls_cert}: {why} ({exc.reason})"
    return f"TLS: {exc.reason or exc}"
