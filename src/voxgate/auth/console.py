"""Console login: one-time login tokens, a session cookie, CSRF, and ``ek_`` keys for the page.

The console page never holds a server key. ``voxgate serve`` prints
``http://host:port/?login=<token>`` (as Jupyter does); the page trades the token once for:

* an ``HttpOnly; SameSite=Strict; Path=/`` session cookie (``Secure`` when served over https;
  every attribute explicit, first-party only, so Safari keeps it), and
* a CSRF token in the JSON body, which the page sends back as ``X-CSRF-Token``.

``POST /console/api/key`` mints a short-lived ``ek_`` key only with the cookie *and* a matching
CSRF header (constant-time compare). Routes:

* ``POST /console/api/login`` ``{"token"}`` → cookie + ``{"csrf_token", "expires_at"}``
* ``GET /console/api/session`` (cookie) → ``{"csrf_token", "expires_at"}`` (page reloads)
* ``POST /console/api/key`` (cookie + CSRF) ``{"session"?}`` → ``{"value", "expires_at"}``
* ``POST /console/api/logout`` (cookie + CSRF) → cookie cleared
* ``POST /console/api/login_tokens`` (server key) → a fresh ``{"token", "path"}``

State (login tokens and console sessions) lives in one :class:`ConsoleAuth` stored on the app;
both tables are capped (oldest evicted first) and entries expire. Only SHA-256 digests of
tokens are kept, so a memory dump does not hand out live credentials.
This module must not serve pages or know about the realtime session itself.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
from aiohttp import web

from voxgate.auth.requests import (
    ConsoleKeyRequest,
    ConsoleLoginRequest,
    NoBody,
    RequestError,
    error_response,
    parse,
    read_body,
)
from voxgate.auth.routes import DEFAULT_MODEL, MAX_SESSION_S, SERVER_KEYS, mint_for
from voxgate.protocol.errors import ClientEventError
from voxgate.protocol.session_config import validate_session_config
from voxgate.transports.negotiate import bearer_token

V = TypeVar("V")

COOKIE_NAME = "voxgate_console"
CSRF_HEADER = "X-CSRF-Token"
LOGIN_PARAM = "login"
#: Lifetime of an ``ek_`` key minted for the page: it only bounds *starting* a session (§2.1).
PAGE_KEY_TTL_S = 60
#: Longest realtime session a console key allows.
PAGE_SESSION_CAP_S = 3600.0
_MAX_TOKEN_CHARS = 128


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A logged-in console: its CSRF token, a subject for minted keys, and its expiry."""

    csrf_token: str
    subject: str
    expires_at: float


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


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
        login_ttl_s: default lifetime of a login token.
        session_ttl_s: lifetime of a console session (cookie ``Max-Age``).
        max_login_tokens: unredeemed login tokens kept; the oldest is dropped beyond it.
        max_sessions: console sessions kept; the oldest is logged out beyond it.
        clock: wall clock in seconds (tests may pass their own).
    """

    def __init__(
        self,
        *,
        login_ttl_s: float = 600.0,
        session_ttl_s: float = 12 * 3600.0,
        max_login_tokens: int = 32,
        max_sessions: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.login_ttl_s = login_ttl_s
        self.session_ttl_s = session_ttl_s
        self._clock = clock
        self._logins: _ExpiringTable[bool] = _ExpiringTable(max_login_tokens, clock)
        self._sessions: _ExpiringTable[ConsoleSession] = _ExpiringTable(max_sessions, clock)

    def new_login_token(self, ttl_s: float | None = None) -> str:
        """A fresh single-use login token, valid for ``ttl_s`` (default ``login_ttl_s``)."""
        token = secrets.token_urlsafe(24)
        self._logins.put(token, True, self.login_ttl_s if ttl_s is None else ttl_s)
        return token

    def redeem(self, login_token: str) -> tuple[str, ConsoleSession] | None:
        """Trade a login token (once) for ``(session_cookie_value, session)``; None if invalid."""
        if not login_token or len(login_token) > _MAX_TOKEN_CHARS:
            return None
        if self._logins.pop(login_token) is None:
            return None
        cookie = secrets.token_urlsafe(32)
        session = ConsoleSession(
            csrf_token=secrets.token_urlsafe(32),
            subject="console-" + secrets.token_hex(6),
            expires_at=self._clock() + self.session_ttl_s,
        )
        self._sessions.put(cookie, session, self.session_ttl_s)
        return cookie, session

    def session(self, cookie: str | None) -> ConsoleSession | None:
        if not cookie or len(cookie) > _MAX_TOKEN_CHARS:
            return None
        return self._sessions.get(cookie)

    def logout(self, cookie: str) -> None:
        self._sessions.pop(cookie)

    @staticmethod
    def csrf_ok(session: ConsoleSession, header: str | None) -> bool:
        if not header:
            return False
        return hmac.compare_digest(session.csrf_token.encode(), header.encode("utf-8", "replace"))

    def counts(self) -> tuple[int, int]:
        """(live login tokens, live console sessions), for tests and metrics."""
        return len(self._logins), len(self._sessions)


CONSOLE_AUTH = web.AppKey("voxgate.console_auth", ConsoleAuth)


def new_login_url(app: web.Application, base_url: str, ttl_s: float | None = None) -> str:
    """``<base_url>/?login=<fresh one-time token>``: what ``serve`` prints and tests open."""
    token = app[CONSOLE_AUTH].new_login_token(ttl_s)
    return f"{base_url.rstrip('/')}/?{LOGIN_PARAM}={token}"


# ---------------------------------------------------------------------------- HTTP


def _error(status: int, message: str, code: str) -> web.Response:
    return error_response(status, message, param=None, code=code)


def _json(body: dict[str, Any]) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _cross_origin(request: web.Request) -> bool:
    """A browser POST from another origin (defence in depth next to SameSite and CSRF)."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin == "null"
    return origin != f"{request.scheme}://{request.host}"


def _set_cookie(response: web.Response, request: web.Request, value: str, max_age: int) -> None:
    response.set_cookie(
        COOKIE_NAME,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )


def _authenticated(request: web.Request) -> ConsoleSession | web.Response:
    session = request.app[CONSOLE_AUTH].session(request.cookies.get(COOKIE_NAME))
    if session is None:
        return _error(
            401,
            "You are not signed in to the console. Open the console link printed by "
            "`voxgate serve`.",
            "console_login_required",
        )
    return session


def _with_csrf(request: web.Request) -> ConsoleSession | web.Response:
    if _cross_origin(request):
        return _error(403, "Cross-origin requests are not allowed.", "cross_origin")
    session = _authenticated(request)
    if isinstance(session, web.Response):
        return session
    if not ConsoleAuth.csrf_ok(session, request.headers.get(CSRF_HEADER)):
        return _error(403, "Missing or wrong CSRF token. Reload the page.", "csrf_failed")
    return session


async def login(request: web.Request) -> web.Response:
    if _cross_origin(request):
        return _error(403, "Cross-origin requests are not allowed.", "cross_origin")
    try:
        body = parse(ConsoleLoginRequest, await read_body(request))
    except RequestError as exc:
        return exc.response()
    redeemed = request.app[CONSOLE_AUTH].redeem(body.token)
    if redeemed is None:
        return _error(
            401,
            "This console link has already been used or has expired. Restart `voxgate serve` "
            "or ask for a new link.",
            "login_token_invalid",
        )
    cookie, session = redeemed
    response = _json({"csrf_token": session.csrf_token, "expires_at": int(session.expires_at)})
    _set_cookie(response, request, cookie, int(request.app[CONSOLE_AUTH].session_ttl_s))
    return response


async def session_info(request: web.Request) -> web.Response:
    session = _authenticated(request)
    if isinstance(session, web.Response):
        return session
    return _json({"csrf_token": session.csrf_token, "expires_at": int(session.expires_at)})


async def logout(request: web.Request) -> web.Response:
    session = _with_csrf(request)
    if isinstance(session, web.Response):
        return session
    try:
        parse(NoBody, await read_body(request))
    except RequestError as exc:
        return exc.response()
    request.app[CONSOLE_AUTH].logout(request.cookies[COOKIE_NAME])
    response = _json({"ok": True})
    _set_cookie(response, request, "", 0)
    return response


async def mint_page_key(request: web.Request) -> web.Response:
    """``POST /console/api/key``: an ``ek_`` key for this console (cookie + CSRF required)."""
    session = _with_csrf(request)
    if isinstance(session, web.Response):
        return session
    try:
        body = parse(ConsoleKeyRequest, await read_body(request))
        config = body.session or {"type": "realtime"}
        try:
            full = validate_session_config(config)
        except ClientEventError as exc:
            raise RequestError(exc.message, param=exc.param, code=exc.code) from None
        if full.get("type") == "realtime" and not config.get("model"):
            config = {**config, "model": request.app[DEFAULT_MODEL]}
        value, expires_at = mint_for(
            request.app,
            config,
            ttl_s=PAGE_KEY_TTL_S,
            subject=session.subject,
            max_session_s=min(PAGE_SESSION_CAP_S, request.app[MAX_SESSION_S]),
        )
    except RequestError as exc:
        return exc.response()
    return _json({"value": value, "expires_at": expires_at})


async def create_login_token(request: web.Request) -> web.Response:
    """``POST /console/api/login_tokens`` with a server key: a new one-time console link."""
    token = bearer_token(request.headers.get("Authorization"))
    if not request.app[SERVER_KEYS].check(token):
        return _error(401, "Incorrect API key provided.", "invalid_api_key")
    try:
        parse(NoBody, await read_body(request))
    except RequestError as exc:
        return exc.response()
    login_token = request.app[CONSOLE_AUTH].new_login_token()
    return _json({"token": login_token, "path": f"/?{LOGIN_PARAM}={login_token}"})


def add_routes(app: web.Application, auth: ConsoleAuth | None = None) -> None:
    """Store a :class:`ConsoleAuth` on ``app`` and add the ``/console/api/*`` routes."""
    app[CONSOLE_AUTH] = auth or ConsoleAuth()
    app.router.add_post("/console/api/login", login)
    app.router.add_get("/console/api/session", session_info)
    app.router.add_post("/console/api/key", mint_page_key)
    app.router.add_post("/console/api/logout", logout)
    app.router.add_post("/console/api/login_tokens", create_login_token)
