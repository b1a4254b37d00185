"""Console login state: one-time login tokens, signed session cookies, CSRF tokens. Pure.

* A **login token** (what ``voxgate serve`` prints in the console link) is single-use and held
  in memory by the process that printed it (only its SHA-256 digest), so a restart prints a
  new link and the old one stops working.
* A **session cookie** is ``v1.<sid>.<subject>.<expiry>.<signature>``: an HMAC-SHA256 with a
  key derived from ``VOXGATE_SECRET`` (a different purpose than ``ek_`` keys), so any process
  sharing the secret accepts it: with a shared ``VOXGATE_SECRET`` the console stays signed in
  across a restart; with the default random secret a restart signs every console out.
* The **CSRF token** is derived from the cookie's ``sid`` with the same key, so it survives a
  restart with the cookie.

Logging out records the cookie as revoked in this process until it expires (bounded table);
the browser drops the cookie as well. This module must not do HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")

_VERSION = "v1"
_KEY_PURPOSE = b"voxgate console session v1"
#: Longest login token or cookie looked at (anything longer is refused unread).
MAX_TOKEN_CHARS = 256
_COOKIE = re.compile(
    r"v1\.([A-Za-z0-9_-]{16,64})\.(console-[0-9a-f]{12})\.(\d{1,12})\.([A-Za-z0-9_-]{43})"
)


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A logged-in console: its CSRF token, a subject for minted keys, and its expiry."""

    csrf_token: str
    subject: str
    expires_at: float


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class _ExpiringTable(Generic[V]):
    """Digest → (expiry, value), capped at ``max_items`` (oldest evicted), entries expire."""

    def __init__(self, max_items: int, clock: Callable[[], float]) -> None:
        self._items: OrderedDict[bytes, tuple[float, V]] = OrderedDict()
        self._max = max_items
        self._clock = clock

    def __len__(self) -> int:
        self._prune()
        return len(self._items)

    def put(self, token: str, value: V, ttl_s: float) -> float:
        self._prune()
        expires_at = self._clock() + ttl_s
        self._items[_digest(token)] = (expires_at, value)
        while len(self._items) > self._max:
            self._items.popitem(last=False)
        return expires_at

    def get(self, token: str) -> V | None:
        entry = self._items.get(_digest(token))
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    def pop(self, token: str) -> V | None:
        entry = self._items.pop(_digest(token), None)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    def _prune(self) -> None:
        # TTLs differ per entry, so scan: the table is small and bounded.
        now = self._clock()
        for key in [k for k, (exp, _) in self._items.items() if exp <= now]:
            del self._items[key]


class ConsoleAuth:
    """Per-app console login state. Not shared between apps; nothing at module level.

    Args:
        secret: the app's signing secret (``VOXGATE_SECRET``); cookies signed with a key
            derived from it are accepted by every process that shares it.
        login_ttl_s: default lifetime of a login token.
        session_ttl_s: lifetime of a console session (cookie ``Max-Age``).
        max_login_tokens: unredeemed login tokens kept; the oldest is dropped beyond it.
        max_revoked: logged-out cookies remembered until they expire; the oldest beyond it
            is forgotten (it still expires on its own).
        clock: wall clock in seconds (tests may pass their own).
    """

    def __init__(
        self,
        *,
        secret: bytes | None = None,
        login_ttl_s: float = 600.0,
        session_ttl_s: float = 12 * 3600.0,
        max_login_tokens: int = 32,
        max_revoked: int = 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.login_ttl_s = login_ttl_s
        self.session_ttl_s = session_ttl_s
        self._clock = clock
        root = secret if secret is not None else secrets.token_bytes(32)
        self._key = hmac.new(root, _KEY_PURPOSE, hashlib.sha256).digest()
        self._logins: _ExpiringTable[bool] = _ExpiringTable(max_login_tokens, clock)
        self._revoked: _ExpiringTable[bool] = _ExpiringTable(max_revoked, clock)

    def new_login_token(self, ttl_s: float | None = None) -> str:
        """A fresh single-use login token, valid for ``ttl_s`` (default ``login_ttl_s``)."""
        token = secrets.token_urlsafe(24)
        self._logins.put(token, True, self.login_ttl_s if ttl_s is None else ttl_s)
        return token

    def redeem(self, login_token: str) -> tuple[str, ConsoleSession] | None:
        """Trade a login token (once) for ``(session_cookie_value, session)``; None if invalid."""
        if not login_token or len(login_token) > MAX_TOKEN_CHARS:
            return None
        if self._logins.pop(login_token) is None:
            return None
        sid = secrets.token_urlsafe(16)
        subject = "console-" + secrets.token_hex(6)
        expires_at = int(self._clock() + self.session_ttl_s)
        body = f"{_VERSION}.{sid}.{subject}.{expires_at}"
        cookie = f"{body}.{self._sign(body)}"
        return cookie, ConsoleSession(self._csrf(sid), subject, float(expires_at))

    def session(self, cookie: str | None) -> ConsoleSession | None:
        """The session a cookie proves (signature, expiry, not logged out), or None."""
        if not cookie or len(cookie) > MAX_TOKEN_CHARS:
            return None
        m = _COOKIE.fullmatch(cookie)
        if m is None:
            return None
        sid, subject, expiry, signature = m.groups()
        body = f"{_VERSION}.{sid}.{subject}.{expiry}"
        if not hmac.compare_digest(self._sign(body), signature):
            return None
        if int(expiry) <= self._clock() or self._revoked.get(cookie) is not None:
            return None
        return ConsoleSession(self._csrf(sid), subject, float(expiry))

    def logout(self, cookie: str) -> None:
        session = self.session(cookie)
        if session is not None:
            self._revoked.put(cookie, True, session.expires_at - self._clock())

    @staticmethod
    def csrf_ok(session: ConsoleSession, header: str | None) -> bool:
        if not header:
            return False
        return hmac.compare_digest(session.csrf_token.encode(), header.encode("utf-8", "replace"))

    def counts(self) -> tuple[int, int]:
        """(live login tokens, revoked cookies remembered), for tests and metrics."""
        return len(self._logins), len(self._revoked)

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest())

    def _csrf(self, sid: str) -> str:
        return _b64(hmac.new(self._key, b"csrf." + sid.encode("ascii"), hashlib.sha256).digest())
