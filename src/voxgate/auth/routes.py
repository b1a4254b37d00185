"""HTTP routes that mint ``ek_`` client keys, authenticated with a server key.

* ``POST /v1/realtime/client_secrets`` — GA shape: ``{value, expires_at, session}`` (§2.1).
* ``POST /v1/realtime/sessions`` — retired beta shape: flat session + ``client_secret.value``
  (§2.2), 60 s default expiry as the beta had.

voxgate extension (ignored by OpenAI clients): a top-level ``"voxgate": {"subject": "user-42",
"max_session_seconds": 1800, "tools": ["get_quote", "search_*"], "metadata": {"account":
"A-1"}}`` binds the key to an end user, caps the session length, names the server tools its
sessions get (issue 14; a name no configured tool has is refused with ``unknown_tool``) and
carries the application's metadata to those tools.
Bodies are validated by the models in :mod:`voxgate.auth.requests`; errors use OpenAI's HTTP
error shape ``{"error": {message, type, param, code}}``. A key is never minted larger than the
realtime endpoint accepts (``client_secret_too_large`` instead).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from voxgate.auth import client_keys
from voxgate.auth.bearer import bearer_token
from voxgate.auth.beta_shape import beta_message, beta_param, beta_to_ga, ga_to_beta
from voxgate.auth.requests import (
    BetaSessionRequest,
    ClientSecretRequest,
    ExpiresAfter,
    RequestError,
    VoxgateExtension,
    parse,
    read_body,
)
from voxgate.auth.server_keys import ServerKeys
from voxgate.protocol import ids
from voxgate.protocol.errors import ClientEventError
from voxgate.protocol.session_config import validate_session_config

SERVER_KEYS = web.AppKey("voxgate.server_keys", ServerKeys)
SIGNING_SECRET = web.AppKey("voxgate.signing_secret", bytes)
MAX_SESSION_S = web.AppKey("voxgate.max_session_s", float)
DEFAULT_MODEL = web.AppKey("voxgate.default_model", str)
#: Longest key minted here: what the realtime endpoint's verifier and header limits accept.
MAX_KEY_CHARS = web.AppKey("voxgate.max_key_chars", int)
#: Server tool names (or globs) that match no configured tool (set by the app; issue 14).
UnknownTools = Callable[[list[str]], list[str]]
UNKNOWN_TOOLS: web.AppKey[UnknownTools] = web.AppKey("voxgate.unknown_tools")


@dataclass(frozen=True, slots=True)
class KeyExtras:
    """What the ``voxgate`` extension binds a key to."""

    subject: str | None = None
    max_session_s: float | None = None
    tools: tuple[str, ...] | None = None
    metadata: dict[str, str] | None = None


#: Default lifetime of a beta-shape key, as the beta had (realtime-protocol.md §2.2).
BETA_TTL_S = 60


def _extension(ext: VoxgateExtension | None, request: web.Request) -> KeyExtras:
    if ext is None:
        return KeyExtras()
    max_session_s = request.app[MAX_SESSION_S]
    cap = ext.max_session_seconds
    if cap is not None and cap > max_session_s:
        raise RequestError(
            f"Invalid 'voxgate.max_session_seconds': value above maximum value. Expected a "
            f"value <= {max_session_s:g}, but got {cap:g} instead.",
            param="voxgate.max_session_seconds",
            code="decimal_above_max_value",
        )
    unknown = request.app.get(UNKNOWN_TOOLS)
    missing = unknown(ext.tools) if ext.tools and unknown is not None else []
    if missing:
        raise RequestError(
            f"Invalid 'voxgate.tools': no server tool is named {missing[0]!r}.",
            param="voxgate.tools",
            code="unknown_tool",
        )
    tools = tuple(ext.tools) if ext.tools is not None else None
    return KeyExtras(ext.subject, cap, tools, dict(ext.metadata) if ext.metadata else None)


def _authorise(request: web.Request) -> None:
    token = bearer_token(request.headers.get("Authorization"))
    if not request.app[SERVER_KEYS].check(token):
        raise RequestError(
            "Incorrect API key provided." if token else "Missing bearer authentication in header.",
            param=None,
            code="invalid_api_key",
            status=401,
        )


def mint_for(
    app: web.Application,
    session: dict[str, Any],
    *,
    ttl_s: int,
    subject: str | None,
    max_session_s: float | None,
    tools: tuple[str, ...] | None = None,
    metadata: dict[str, str] | None = None,
) -> tuple[str, int]:
    """Mint an ``ek_`` key carrying ``session`` (already validated), within the verifier's limits.

    Raises:
        RequestError: the key would be larger than the realtime endpoint accepts.
    """
    limit = app.get(MAX_KEY_CHARS, client_keys.MAX_KEY_CHARS)
    try:
        value, claims = client_keys.mint(
            app[SIGNING_SECRET],
            now=time.time(),
            ttl_s=ttl_s,
            session=session,
            subject=subject,
            max_session_s=max_session_s,
            max_key_chars=limit,
            tools=tools,
            metadata=metadata,
        )
    except client_keys.ClientKeyTooLarge as exc:
        raise RequestError(
            f"The session config makes a client secret of {exc.size} characters; at most "
            f"{exc.limit} are accepted. Shorten the instructions or tools.",
            param="session",
            code="client_secret_too_large",
        ) from None
    return value, claims.expires_at


def _mint(
    body_session: dict[str, Any], ttl: int, extras: KeyExtras, request: web.Request
) -> tuple[str, int, dict[str, Any]]:
    try:
        full = validate_session_config(body_session)
    except ClientEventError as exc:
        raise RequestError(exc.message, param=exc.param, code=exc.code) from None
    if full.get("type") == "realtime" and not full.get("model"):
        full["model"] = request.app[DEFAULT_MODEL]
    value, expires_at = mint_for(
        request.app,
        body_session,
        ttl_s=ttl,
        subject=extras.subject,
        max_session_s=extras.max_session_s,
        tools=extras.tools,
        metadata=extras.metadata,
    )
    return value, expires_at, full


async def create_client_secret(request: web.Request) -> web.Response:
    """``POST /v1/realtime/client_secrets`` (GA)."""
    try:
        _authorise(request)
        body = parse(ClientSecretRequest, await read_body(request))
        extras = _extension(body.voxgate, request)
        ttl = (body.expires_after or ExpiresAfter()).seconds
        session = body.session
        if session is None:
            session = {"type": "realtime", "model": request.app[DEFAULT_MODEL]}
        value, expires_at, full = _mint(session, ttl, extras, request)
    except RequestError as exc:
        return exc.response()
    obj = (
        "realtime.transcription_session"
        if full.get("type") == "transcription"
        else ("realtime.session")
    )
    # The session cannot start after the key expires: its expiry is the key's (not 0).
    full = {"type": full.get("type"), "object": obj, "id": ids.session_id(), **full}
    full["expires_at"] = expires_at
    return _json({"value": value, "expires_at": expires_at, "session": full})


async def create_beta_session(request: web.Request) -> web.Response:
    """``POST /v1/realtime/sessions`` (retired beta shape)."""
    try:
        _authorise(request)
        body = parse(BetaSessionRequest, await read_body(request))
        extras = _extension(body.voxgate, request)
        spec = body.client_secret.expires_after if body.client_secret else None
        ttl = spec.seconds if spec is not None else BETA_TTL_S
        ga = beta_to_ga(body.model_dump(exclude_unset=True, exclude={"voxgate", "client_secret"}))
        ga.setdefault("model", request.app[DEFAULT_MODEL])
        try:
            value, expires_at, full = _mint(ga, ttl, extras, request)
        except RequestError as exc:
            raise RequestError(
                beta_message(exc.message, exc.param),
                param=beta_param(exc.param),
                code=exc.code,
                status=exc.status,
            ) from None
    except RequestError as exc:
        return exc.response()
    flat = {
        "id": ids.session_id(),
        "object": "realtime.session",
        **ga_to_beta(full),
        "client_secret": {"value": value, "expires_at": expires_at},
    }
    return _json(flat)


def _json(body: dict[str, Any]) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/realtime/client_secrets", create_client_secret)
    app.router.add_post("/v1/realtime/sessions", create_beta_session)
