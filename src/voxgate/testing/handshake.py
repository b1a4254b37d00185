"""Connect-time checks of the fake upstream: credentials, beta header, model (§1, §7).

Pure. The real server always completes the HTTP upgrade, then reports a bad connection with an
``error`` event and a close frame; :func:`check_handshake` returns that failure as a
:class:`FatalSessionError` (or None) and :class:`Handshake` is the redacted record of what the
client sent. The raw key never leaves :func:`parse_handshake`'s caller: the record keeps only
whether a key was sent, where from, and its first characters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from voxgate.protocol.close import CloseCode
from voxgate.protocol.errors import INVALID_REQUEST, AuthError, FatalSessionError

KEY_SUBPROTOCOL = "openai-insecure-api-key."
REDACTED = "<redacted>"
_SECRET_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
KEY_PREFIX_CHARS = 6


@dataclass(frozen=True)
class Handshake:
    """What one client sent on connect, with credentials redacted."""

    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-case names; secrets replaced by ``<redacted>``
    subprotocols: Sequence[str]  # as offered; the key token replaced by ``<redacted>``
    api_key_provided: bool
    api_key_source: str | None  # "header" | "subprotocol" | None
    api_key_prefix: str  # first characters only (``sk-abc``), "" when none
    model: str | None = None
    intent: str | None = None
    call_id: str | None = None
    beta_header: bool = False
    extra: Mapping[str, str] = field(default_factory=dict)


def parse_handshake(
    path: str,
    query: Mapping[str, str],
    headers: Iterable[tuple[str, str]],
    subprotocols: Sequence[str],
) -> tuple[Handshake, str | None]:
    """Split a connect request into a redacted :class:`Handshake` and the raw key (or None)."""
    lowered: dict[str, str] = {}
    for name, value in headers:
        lowered[name.lower()] = value
    key: str | None = None
    source: str | None = None
    auth = lowered.get("authorization", "")
    if auth.lower().startswith("bearer "):
        key, source = auth[7:].strip() or None, "header"
    offered = [p.strip() for p in subprotocols if p.strip()]
    for proto in offered:
        if proto.startswith(KEY_SUBPROTOCOL) and key is None:
            key, source = proto[len(KEY_SUBPROTOCOL) :] or None, "subprotocol"
    safe_protocols = [
        KEY_SUBPROTOCOL + REDACTED if p.startswith(KEY_SUBPROTOCOL) else p for p in offered
    ]
    safe_headers = {n: (REDACTED if n in _SECRET_HEADERS else v) for n, v in lowered.items()}
    if "sec-websocket-protocol" in safe_headers:
        # Browsers carry the key as a subprotocol token (§1.3).
        safe_headers["sec-websocket-protocol"] = ", ".join(safe_protocols)
    beta = "realtime=v1" in lowered.get("openai-beta", "") or "openai-beta.realtime-v1" in offered
    hs = Handshake(
        path=path,
        query=dict(query),
        headers=safe_headers,
        subprotocols=safe_protocols,
        api_key_provided=key is not None,
        api_key_source=source if key is not None else None,
        api_key_prefix=key[:KEY_PREFIX_CHARS] if key else "",
        model=query.get("model") or None,
        intent=query.get("intent") or None,
        call_id=query.get("call_id") or None,
        beta_header=beta,
    )
    return hs, key


def mask_key(key: str) -> str:
    """Mask a key the way the real server quotes it: ``sk-abc*****wxyz``."""
    if len(key) <= 10:
        return key[:2] + "*****"
    return key[:KEY_PREFIX_CHARS] + "*" * max(5, len(key) - 10) + key[-4:]


def check_handshake(
    hs: Handshake,
    key: str | None,
    *,
    key_ok: Callable[[str], bool],
    model_ok: Callable[[str], bool],
) -> FatalSessionError | None:
    """The real server's connect checks, in order: auth, beta shape, model (§1.2, §7)."""
    if key is None:
        return AuthError("Missing bearer or basic authentication in header", code=None)
    if not key_ok(key):
        return AuthError(
            f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
    if hs.beta_header:
        return _bad_request(
            "beta_api_shape_disabled",
            "The beta Realtime API shape (OpenAI-Beta: realtime=v1) is no longer supported. "
            "Use the GA Realtime API.",
        )
    if hs.model is None:
        if hs.intent == "transcription":
            return None
        return _bad_request("missing_model", "Missing required parameter: 'model'.")
    if not model_ok(hs.model):
        return _bad_request(
            "invalid_model",
            f"Model '{hs.model}' is not supported in realtime mode.",
        )
    return None


def _bad_request(code: str, message: str) -> FatalSessionError:
    return FatalSessionError(
        message, code=code, close_code=CloseCode.BAD_REQUEST, error_type=INVALID_REQUEST
    )


DEFAULT_MODELS: frozenset[str] = frozenset(
    {
        "gpt-realtime",
        "gpt-realtime-mini",
        "gpt-realtime-2",
        "gpt-realtime-2.1",
        "gpt-4o-realtime-preview",
        "gpt-4o-mini-realtime-preview",
    }
)
DEFAULT_MODEL_PREFIXES: tuple[str, ...] = (
    "gpt-realtime",
    "gpt-4o-realtime",
    "gpt-4o-mini-realtime",
)


def default_model_ok(model: str) -> bool:
    """The realtime models of §1.1 and anything starting ``gpt-realtime``/``gpt-4o-realtime``."""
    return model in DEFAULT_MODELS or model.startswith(DEFAULT_MODEL_PREFIXES)
