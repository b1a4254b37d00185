"""HTTP routes that mint ``ek_`` client keys, authenticated with a server key.

* ``POST /v1/realtime/client_secrets`` — GA shape: ``{value, expires_at, session}`` (§2.1).
* ``POST /v1/realtime/sessions`` — retired beta shape: flat session + ``client_secret.value``
  (§2.2), 60 s default expiry as the beta had.

voxgate extension (ignored by OpenAI clients): a top-level ``"voxgate": {"subject": "user-42",
"max_session_seconds": 1800}`` binds the key to an end user and caps the session length.
Errors use OpenAI's HTTP error shape ``{"error": {message, type, param, code}}``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from voxgate.auth import client_keys
from voxgate.auth.beta_shape import BetaShapeError, beta_to_ga, ga_to_beta
from voxgate.auth.server_keys import ServerKeys
from voxgate.protocol import ids
from voxgate.protocol.errors import ClientEventError
from voxgate.protocol.session_config import validate_session_config
from voxgate.transports.negotiate import bearer_token

SERVER_KEYS = web.AppKey("voxgate.server_keys", ServerKeys)
SIGNING_SECRET = web.AppKey("voxgate.signing_secret", bytes)
MAX_SESSION_S = web.AppKey("voxgate.max_session_s", float)
DEFAULT_MODEL = web.AppKey("voxgate.default_model", str)

_MAX_SUBJECT_CHARS = 256


class _BadRequest(Exception):
    def __init__(self, message: str, *, param: str | None, code: str | None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


def _error(status: int, message: str, *, param: str | None, code: str | None) -> web.Response:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    }
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _json(body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def _read_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _BadRequest(
            "We could not parse the JSON body of your request.", param=None, code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise _BadRequest(
            "The request body must be a JSON object.", param=None, code="invalid_type"
        )
    return body


def _ttl(spec: Any, default: int, param: str) -> int:
    if spec is None:
        return default
    if not isinstance(spec, dict):
        raise _BadRequest(
            f"Invalid type for '{param}': expected an object.", param=param, code="invalid_type"
        )
    unknown = set(spec) - {"anchor", "seconds"}
    if unknown:
        name = sorted(unknown)[0]
        raise _BadRequest(
            f"Unknown parameter: '{param}.{name}'.",
            param=f"{param}.{name}",
            code="unknown_parameter",
        )
    if spec.get("anchor", "created_at") != "created_at":
        raise _BadRequest(
            f"Invalid value: '{spec.get('anchor')}'. Supported values are: 'created_at'.",
            param=f"{param}.anchor",
            code="invalid_value",
        )
    seconds = spec.get("seconds", default)
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        raise _BadRequest(
            f"Invalid type for '{param}.seconds': expected an integer.",
            param=f"{param}.seconds",
            code="invalid_type",
        )
    if seconds < client_keys.MIN_TTL_S:
        raise _BadRequest(
            f"Invalid '{param}.seconds': integer below minimum value. Expected a "
            f"value >= {client_keys.MIN_TTL_S}, but got {seconds} instead.",
            param=f"{param}.seconds",
            code="integer_below_min_value",
        )
    if seconds > client_keys.MAX_TTL_S:
        raise _BadRequest(
            f"Invalid '{param}.seconds': integer above maximum value. Expected a "
            f"value <= {client_keys.MAX_TTL_S}, but got {seconds} instead.",
            param=f"{param}.seconds",
            code="integer_above_max_value",
        )
    return seconds


def _extension(body: dict[str, Any], max_session_s: float) -> tuple[str | None, float | None]:
    ext = body.pop("voxgate", None)
    if ext is None:
        return None, None
    if not isinstance(ext, dict) or set(ext) - {"subject", "max_session_seconds"}:
        raise _BadRequest(
            "Invalid 'voxgate': expected {subject?, max_session_seconds?}.",
            param="voxgate",
            code="invalid_value",
        )
    subject = ext.get("subject")
    if subject is not None and (
        not isinstance(subject, str) or not 0 < len(subject) <= _MAX_SUBJECT_CHARS
    ):
        raise _BadRequest(
            "Invalid 'voxgate.subject': expected a non-empty string of at most "
            f"{_MAX_SUBJECT_CHARS} characters.",
            param="voxgate.subject",
            code="invalid_value",
        )
    cap = ext.get("max_session_seconds")
    if cap is not None and (
        isinstance(cap, bool) or not isinstance(cap, int | float) or not 1 <= cap <= max_session_s
    ):
        raise _BadRequest(
            f"Invalid 'voxgate.max_session_seconds': expected 1..{max_session_s:g}.",
            param="voxgate.max_session_seconds",
            code="invalid_value",
        )
    return subject, float(cap) if cap is not None else None


def _authorise(request: web.Request) -> None:
    token = bearer_token(request.headers.get("Authorization"))
    if not request.app[SERVER_KEYS].check(token):
        raise _BadRequest(
            "Incorrect API key provided." if token else "Missing bearer authentication in header.",
            param=None,
            code="invalid_api_key",
            status=401,
        )


def _mint(
    body_session: dict[str, Any],
    ttl: int,
    subject: str | None,
    cap: float | None,
    request: web.Request,
) -> tuple[str, int, dict[str, Any]]:
    try:
        full = validate_session_config(body_session)
    except ClientEventError as exc:
        raise _BadRequest(exc.message, param=exc.param, code=exc.code) from None
    if full.get("type") == "realtime" and not full.get("model"):
        full["model"] = request.app[DEFAULT_MODEL]
    value, claims = client_keys.mint(
        request.app[SIGNING_SECRET],
        now=time.time(),
        ttl_s=ttl,
        session=body_session,
        subject=subject,
        max_session_s=cap,
    )
    return value, claims.expires_at, full


async def create_client_secret(request: web.Request) -> web.Response:
    """``POST /v1/realtime/client_secrets`` (GA)."""
    try:
        _authorise(request)
        body = await _read_body(request)
        subject, cap = _extension(body, request.app[MAX_SESSION_S])
        unknown = set(body) - {"expires_after", "session"}
        if unknown:
            name = sorted(unknown)[0]
            raise _BadRequest(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
        ttl = _ttl(body.get("expires_after"), client_keys.DEFAULT_TTL_S, "expires_after")
        session = body.get("session")
        if session is None:
            session = {"type": "realtime", "model": request.app[DEFAULT_MODEL]}
        value, expires_at, full = _mint(session, ttl, subject, cap, request)
    except _BadRequest as exc:
        return _error(exc.status, exc.message, param=exc.param, code=exc.code)
    obj = (
        "realtime.transcription_session"
        if full.get("type") == "transcription"
        else ("realtime.session")
    )
    full = {
        "type": full.get("type"),
        "object": obj,
        "id": ids.session_id(),
        **full,
        "expires_at": 0,
    }
    return _json({"value": value, "expires_at": expires_at, "session": full})


async def create_beta_session(request: web.Request) -> web.Response:
    """``POST /v1/realtime/sessions`` (retired beta shape)."""
    try:
        _authorise(request)
        body = await _read_body(request)
        subject, cap = _extension(body, request.app[MAX_SESSION_S])
        secret_spec = body.get("client_secret")
        ttl = _ttl(
            secret_spec.get("expires_after") if isinstance(secret_spec, dict) else None,
            60,
            "client_secret.expires_after",
        )
        try:
            ga = beta_to_ga(body)
        except BetaShapeError as exc:
            raise _BadRequest(exc.message, param=exc.param, code="unknown_parameter") from None
        ga.setdefault("model", request.app[DEFAULT_MODEL])
        value, expires_at, full = _mint(ga, ttl, subject, cap, request)
    except _BadRequest as exc:
        return _error(exc.status, exc.message, param=exc.param, code=exc.code)
    flat = {
        "id": ids.session_id(),
        "object": "realtime.session",
        **ga_to_beta(full),
        "client_secret": {"value": value, "expires_at": expires_at},
    }
    return _json(flat)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/realtime/client_secrets", create_client_secret)
    app.router.add_post("/v1/realtime/sessions", create_beta_session)
