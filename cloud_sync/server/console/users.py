"""The console's users: a file of ``name:argon2-hash`` lines, read again when it changes.

    # edge-cloud console users (edge-cloud user add NAME --users FILE)
    alice:$argon2id$v=19$m=65536,t=3,p=4$...

Passwords are hashed with Argon2id (argon2-cffi's defaults, RFC 9106's low-memory profile). A
name is 1 to 64 of ``A-Z a-z 0-9 . _ @ -``. Lines starting with ``#`` and blank lines are
ignored. The file is written with mode 0600, atomically, so a running console never reads half
of it; it notices a changed file within a few seconds, and a removed user's or a changed
password's sessions end there and then (see ``Users.fingerprint``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
MIN_PASSWORD = 10
_HASHER = PasswordHasher()


@functools.cache
def _dummy() -> str:
    """A hash to verify against for an unknown name, so that it costs the same time."""
    return _HASHER.hash(secrets.token_urlsafe(16))


class UsersError(ValueError):
    """The users file cannot be read or written, or a name or password is not acceptable."""


def read_users(path: Path) -> dict[str, str]:
    """``{name: hash}`` from a users file; ``UsersError`` naming the line that is wrong."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsersError(f"{path}: cannot read the users file: {exc.strerror}") from None
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, hashed = line.partition(":")
        if not sep or not NAME.fullmatch(name) or not hashed.startswith("$argon2"):
            raise UsersError(f"{path}:{number}: not NAME:$argon2id$... (use edge-cloud user add)")
        users[name] = hashed
    return users


def write_users(path: Path, users: dict[str, str]) -> None:
    """Replace the users file atomically, readable by its owner only."""
    lines = ["# edge-cloud console users: NAME:ARGON2-HASH (edge-cloud user add NAME --users FILE)"]
    lines += [f"{name}:{hashed}" for name, hashed in sorted(users.items())]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write("\n".join(lines) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UsersError(f"{path}: cannot write the users file: {exc.strerror}") from None


def hash_password(name: str, password: str) -> str:
    if not NAME.fullmatch(name):
        raise UsersError(f"{name[:80]!r}: a user name is 1 to 64 of A-Z a-z 0-9 . _ @ -")
    if len(password) < MIN_PASSWORD:
        raise UsersError(f"the password is too short: at least {MIN_PASSWORD} characters")
    return _HASHER.hash(password)


class Users:
    """The users file as the console sees it: re-read (at most every ``recheck`` seconds) when
    its modification time or size changes; a file that turns unreadable keeps the last good list."""

    def __init__(self, path: Path | None, recheck: float = 2.0) -> None:
        self.path = path
        self.recheck = recheck
        self._users: dict[str, str] = {}
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        if path is not None:
            self._users = read_users(path)  # fail at start-up, not at the first sign-in
            self._stamp = _stamp(path)

    @property
    def configured(self) -> bool:
        return self.path is not None

    def _current(self) -> dict[str, str]:
        path = self.path
        if path is None:
            return {}
        now = time.monotonic()
        with self._lock:
            if now - self._checked < self.recheck:
                return self._users
            self._checked = now
            try:
                stamp = _stamp(path)
                if stamp != self._stamp:
                    self._users, self._stamp = read_users(path), stamp
                    log.info("users file %s read again: %d users", path, len(self._users))
            except (OSError, UsersError) as exc:
                log.warning("keeping the last users list: %s", exc)
            return self._users

    def verify(self, name: str, password: str) -> bool:
        """Whether ``password`` is ``name``'s; as slow for an unknown name as for a known one."""
        hashed = self._current().get(name)
        try:
            return _HASHER.verify(hashed or _dummy(), password) and hashed is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def fingerprint(self, name: str) -> str | None:
        """A short digest of ``name``'s password hash, kept in each session: a session whose
        user is gone or whose password changed no longer matches. None for an unknown user."""
        hashed = self._current().get(name)
        return hashlib.sha256(hashed.encode()).hexdigest()[:16] if hashed else None


def _stamp(path: Path) -> tuple[float, int]:
    info = path.stat()
    return info.st_mtime, info.st_size
