"""HTTP request bodies as pydantic models, and their errors in OpenAI's HTTP error shape.

Every HTTP endpoint of voxgate reads its body with :func:`read_body` and validates it with one
model here (the session config inside is then checked by the same validator as
``session.update``). Any mistake becomes a 400 (or 408 for a body that does not arrive) with
``{"error": {"message", "type": "invalid_request_error", "param", "code"}}``, codes and
messages as the real server words them (realtime-protocol.md §7): never a 500, never pydantic's
own text or a Python type name.

This module must not mint keys or know about routes.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Final, Literal, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

INVALID_REQUEST: Final = "invalid_request_error"
#: How long a client may take to send a request body (set on the app by ``create_app``).
BODY_TIMEOUT_S = web.AppKey("voxgate.body_timeout_s", float)
DEFAULT_BODY_TIMEOUT_S: Final = 10.0
MAX_SUBJECT_CHARS: Final = 256
MAX_LOGIN_TOKEN_CHARS: Final = 128
_SHOWN_VALUE_CHARS: Final = 64

M = TypeVar("M", bound=BaseModel)


class RequestError(Exception):
    """A request the endpoint refuses; becomes :func:`error_response`."""

    def __init__(
        self, message: str, *, param: str | None, code: str | None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status

    def response(self) -> web.Response:
        response = error_response(self.status, self.message, param=self.param, code=self.code)
        if self.status == 408:
            response.force_close()  # the rest of a body that never came is not worth waiting for
        return response


def error_response(
    status: int, message: str, *, param: str | None, code: str | None
) -> web.Response:
    """OpenAI's HTTP error body; ``Cache-Control: no-store`` (it may answer a credential)."""
    body = {"error": {"message": message, "type": INVALID_REQUEST, "param": param, "code": code}}
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def read_body(request: web.Request) -> Any:
    """The JSON body (``{}`` when empty), read within the app's body timeout.

    Raises:
        RequestError: 408 when the body does not arrive in time, 400 when it is not JSON.
    """
    timeout_s = request.app.get(BODY_TIMEOUT_S, DEFAULT_BODY_TIMEOUT_S)
    try:
        async with asyncio.timeout(timeout_s):
            raw = await request.read()
    except TimeoutError:
        raise RequestError(
            f"The request body was not received within {timeout_s:g} seconds.",
            param=None,
            code="request_timeout",
            status=408,
        ) from None
    if not raw.strip():
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RequestError(
            "We could not parse the JSON body of your request.", param=None, code="invalid_json"
        ) from None


def parse(model: type[M], body: Any) -> M:
    """Validate ``body`` with ``model``.

    Raises:
        RequestError: the first problem, as the real server would word it.
    """
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _from_pydantic(exc.errors(include_url=False)[0]) from None


# ------------------------------------------------------------------------------ models


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ExpiresAfter(_Body):
    """``expires_after`` of a client secret (realtime-protocol.md §2.1)."""

    anchor: Literal["created_at"] = "created_at"
    seconds: int = Field(default=600, ge=10, le=7200)


class VoxgateExtension(_Body):
    """voxgate's own ``voxgate`` field: the end user a key is for, a session length cap, the
    server tools its sessions get (names or globs; absent: every configured tool) and the
    application's metadata handed to those tools (at most 16 keys, like OpenAI's)."""

    subject: str | None = Field(default=None, min_length=1, max_length=MAX_SUBJECT_CHARS)
    max_session_seconds: float | None = Field(default=None, ge=1)
    tools: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None, max_length=128
    )
    metadata: (
        dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None
    ) = Field(default=None, max_length=16)


class ClientSecretRequest(_Body):
    """``POST /v1/realtime/client_secrets`` (GA). ``session`` is checked by the session
    validator (:func:`voxgate.protocol.session_config.validate_session_config`)."""

    expires_after: ExpiresAfter | None = None
    session: dict[str, Any] | None = None
    voxgate: VoxgateExtension | None = None


class BetaClientSecret(_Body):
    expires_after: ExpiresAfter | None = None


class BetaSessionRequest(_Body):
    """``POST /v1/realtime/sessions``: the flat beta session (§2.2, §9).

    Fields the beta shares with GA (``tool_choice``, ``tracing``, token limits, nested
    objects) are checked after conversion by the GA session validator, and their errors name
    the beta field (:func:`voxgate.auth.beta_shape.beta_param`).
    """

    model: str | None = None
    modalities: list[Literal["audio", "text"]] | None = None
    instructions: str | None = None
    voice: str | None = None
    input_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None
    output_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None
    input_audio_transcription: dict[str, Any] | None = None
    input_audio_transcription_model: str | None = None
    turn_detection: dict[str, Any] | None = None
    input_audio_noise_reduction: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    temperature: float | None = None
    max_response_output_tokens: Any = None
    speed: float | None = None
    tracing: Any = None
    client_secret: BetaClientSecret | None = None
    voxgate: VoxgateExtension | None = None


class ConsoleLoginRequest(_Body):
    """``POST /console/api/login``."""

    token: str = Field(max_length=MAX_LOGIN_TOKEN_CHARS)


class ConsoleKeyRequest(_Body):
    """``POST /console/api/key``: the page's session config (checked like ``session.update``)."""

    session: dict[str, Any] | None = None


class NoBody(_Body):
    """Endpoints that take no parameters: an empty body or ``{}``."""


# ------------------------------------------------------------------------------ errors

_TYPE_WORDS: Final = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


def _param(loc: tuple[int | str, ...]) -> str | None:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def _got(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a decimal", str: "a string"}
    if value is None:
        return "null"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return names.get(type(value), "an unknown type")


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= _SHOWN_VALUE_CHARS else text[:_SHOWN_VALUE_CHARS] + "…"


def _from_pydantic(err: ErrorDetails) -> RequestError:
    """One pydantic error as the real server would say it."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    param = _param(tuple(err["loc"]))
    where = f"'{param}'" if param else "the request body"
    if kind == "missing":
        return RequestError(
            f"Missing required parameter: {where}.", param=param, code="missing_required_parameter"
        )
    if kind == "extra_forbidden":
        return RequestError(f"Unknown parameter: {where}.", param=param, code="unknown_parameter")
    if kind in _TYPE_WORDS:
        return RequestError(
            f"Invalid type for {where}: expected {_TYPE_WORDS[kind]}, but got {_got(value)} "
            "instead.",
            param=param,
            code="invalid_type",
        )
    if kind == "literal_error":
        return RequestError(
            f"Invalid value: '{_shown(value)}'. Supported values are: {ctx.get('expected')}.",
            param=param,
            code="invalid_value",
        )
    if kind in ("greater_than_equal", "greater_than"):
        return RequestError(
            f"Invalid {where}: value below minimum value. Expected a value >= "
            f"{ctx.get('ge', ctx.get('gt'))}, but got {_shown(value)} instead.",
            param=param,
            code="integer_below_min_value" if isinstance(value, int) else "decimal_below_min_value",
        )
    if kind in ("less_than_equal", "less_than"):
        return RequestError(
            f"Invalid {where}: value above maximum value. Expected a value <= "
            f"{ctx.get('le', ctx.get('lt'))}, but got {_shown(value)} instead.",
            param=param,
            code="integer_above_max_value" if isinstance(value, int) else "decimal_above_max_value",
        )
    if kind == "string_too_long":
        return RequestError(
            f"Invalid {where}: string too long. Expected a string with maximum length "
            f"{ctx.get('max_length')}.",
            param=param,
            code="string_above_max_length",
        )
    if kind == "string_too_short":
        return RequestError(
            f"Invalid {where}: string too short. Expected a string with minimum length "
            f"{ctx.get('min_length')}.",
            param=param,
            code="string_below_min_length",
        )
    reason = str(ctx.get("error", "")) or "unsupported value"
    return RequestError(f"Invalid value for {where}: {reason}.", param=param, code="invalid_value")
