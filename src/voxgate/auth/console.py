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

State lives in one :class:`~voxgate.auth.console_session.ConsoleAuth` stored on the app: login
tokens in memory (single use; only SHA-256 digests), session cookies and CSRF tokens signed
with a key derived from ``VOXGATE_SECRET``, so with a shared secret a console stays signed in
across a restart. Request bodies are validated (:mod:`voxgate.auth.requests`).
This module must not serve pages or know about the realtime session itself.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from voxgate.auth.bearer import bearer_token
from voxgate.auth.console_session import ConsoleAuth, ConsoleSession
from voxgate.auth.requests import (
    ConsoleKeyRequest,
    ConsoleLoginRequest,
    NoBody,
    RequestError,
    error_response,
    parse,
    read_body,
)
from voxgate.auth.routes import (
    DEFAULT_MODEL,
    MAX_SESSION_S,
    SERVER_KEYS,
    SIGNING_SECRET,
    mint_for,
)
from voxgate.protocol.errors import ClientEventError
from voxgate.protocol.session_config import validate_session_config

__all__ = ["CONSOLE_AUTH", "COOKIE_NAME", "CSRF_HEADER", "ConsoleAuth", "ConsoleSession"]

COOKIE_NAME = "voxgate_console"
CSRF_HEADER = "X-CSRF-Token"
LOGIN_PARAM = "login"
#: Lifetime of an ``ek_`` key minted for the page: it only bounds *starting* a session (§2.1).
PAGE_KEY_TTL_S = 60
#: Longest realtime session a console key allows.
PAGE_SESSION_CAP_S = 3600.0


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
    """Store a :class:`ConsoleAuth` on ``app`` and add the ``/console/api/*`` routes.

    The default one signs cookies with the app's ``SIGNING_SECRET`` (set by ``create_app``).
    """
    app[CONSOLE_AUTH] = auth or ConsoleAuth(secret=app.get(SIGNING_SECRET))
    app.router.add_post("/console/api/login", login)
    app.router.add_get("/console/api/session", session_info)
    app.router.add_post("/console/api/key", mint_page_key)
    app.router.add_post("/console/api/logout", logout)
    app.router.add_post("/console/api/login_tokens", create_login_token)
