"""Logins of the status page: PBKDF2 password hashes, signed session cookies, CSRF tokens.

Standard library only (``hashlib.pbkdf2_hmac``, ``hmac``, ``secrets``): the page must work on an
offline host with nothing more installed. Sessions are stateless, signed with a key made at
process start, so a restart logs everybody out (acceptable for an admin page, and no secret
lives on disk). The CSRF token is derived from the session, so a form posted from another site
(which can make the browser send the cookie but cannot read the page) carries none that fits.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from node.config import WebUser

ALGORITHM = "pbkdf2_sha256"
ITERATIONS = 600_000  # OWASP 2023 figure for PBKDF2-HMAC-SHA256
COOKIE = "hipnode_session"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """``pbkdf2_sha256$<iterations>$<salt>$<hash>`` for ``web.users[].password_hash``."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"{ALGORITHM}${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check of ``password`` against a stored hash; a malformed hash is ``False``."""
    try:
        algorithm, iterations, salt, expected = encoded.split("$")
        if algorithm != ALGORITHM:
            return False
        digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), _unb64(salt), int(iterations))
        return hmac.compare_digest(digest, _unb64(expected))
    except (ValueError, TypeError):
        return False


@dataclass(frozen=True)
class Session:
    user: str
    expires: int  # unix seconds
    nonce: str


class Sessions:
    """Issues and checks signed session cookies, and the CSRF token of each session."""

    def __init__(self, users: list[WebUser], lifetime_s: float, key: bytes | None = None) -> None:
        self.users = {u.name: u for u in users}
        self.lifetime_s = lifetime_s
        self._key = key if key is not None else secrets.token_bytes(32)
        # Checked even for an unknown user, so the response time does not say which names exist.
        self._dummy = hash_password(secrets.token_hex(8), iterations=ITERATIONS)

    def login(self, name: str, password: str) -> str | None:
        """A cookie value for a correct name + password, else ``None``."""
        user = self.users.get(name)
        ok = verify_password(password, user.password_hash if user is not None else self._dummy)
        if user is None or not ok:
            return None
        expires = int(time.time() + self.lifetime_s)
        body = f"{_b64(name.encode())}.{expires}.{secrets.token_hex(8)}"
        return f"{body}.{self._sign(body)}"

    def check(self, cookie: str | None) -> Session | None:
        """The session a cookie value stands for, if it is ours, unexpired and its user still
        configured."""
        if not cookie:
            return None
        try:
            user_b64, expires, nonce, signature = cookie.split(".")
            body = f"{user_b64}.{expires}.{nonce}"
            if not hmac.compare_digest(signature, self._sign(body)):
                return None
            user = _unb64(user_b64).decode("utf-8")
            if int(expires) < time.time() or user not in self.users:
                return None
        except (ValueError, UnicodeDecodeError):
            return None
        return Session(user, int(expires), nonce)

    def csrf_token(self, session: Session) -> str:
        return self._sign(f"csrf.{session.user}.{session.nonce}")

    def check_csrf(self, session: Session, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token, self.csrf_token(session))

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode("utf-8"), hashlib.sha256).digest())
