"""Signed-in sessions, kept in the console's memory.

The browser holds only a random 256-bit token in an HttpOnly cookie; the server keeps, under
the token's SHA-256, who signed in, when, and the session's CSRF token. So a session ends for
real at sign-out, after ``idle`` seconds without a request, after ``lifetime`` seconds in any
case, when its user leaves the users file or changes password, and when the console restarts
(everyone signs in again: the price of keeping no session secret on disk).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Session:
    user: str
    fingerprint: str
    """The user's password-hash fingerprint when they signed in (``Users.fingerprint``)."""
    csrf: str
    created: float
    seen: float
    key: str = field(repr=False, default="")


class Sessions:
    """At most ``limit`` sessions (the oldest go first); times from ``clock``."""

    def __init__(
        self,
        idle: float = 12 * 3600.0,
        lifetime: float = 7 * 86400.0,
        limit: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.idle = idle
        self.lifetime = lifetime
        self.limit = limit
        self._clock = clock
        self._by_key: dict[str, Session] = {}

    def create(self, user: str, fingerprint: str) -> tuple[str, Session]:
        """A new session; returns the token for the cookie (never stored) and the session."""
        self._prune()
        token = secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(user, fingerprint, secrets.token_urlsafe(32), now, now, _key(token))
        self._by_key[session.key] = session
        return token, session

    def get(self, token: str | None, fingerprint: Callable[[str], str | None]) -> Session | None:
        """The live session of ``token``, touched; None (and forgotten) if it has ended."""
        if not token or len(token) > 100:
            return None
        key = _key(token)
        session = self._by_key.get(key)
        if session is None:
            return None
        now = self._clock()
        expired = now - session.seen > self.idle or now - session.created > self.lifetime
        if expired or fingerprint(session.user) != session.fingerprint:
            del self._by_key[key]
            return None
        session.seen = now
        return session

    def end(self, session: Session) -> None:
        self._by_key.pop(session.key, None)

    def __len__(self) -> int:
        return len(self._by_key)

    def _prune(self) -> None:
        now = self._clock()
        if len(self._by_key) < self.limit:
            return
        for key, session in list(self._by_key.items()):
            if now - session.seen > self.idle or now - session.created > self.lifetime:
                del self._by_key[key]
        while len(self._by_key) >= self.limit:
            del self._by_key[next(iter(self._by_key))]  # dicts keep insertion order: the oldest


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a CSRF token from a form or header."""
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())  # type: ignore[union-attr]


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
