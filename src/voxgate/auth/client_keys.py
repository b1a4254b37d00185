"""``ek_`` client keys: short-lived credentials a server mints for a browser or device. Pure.

A key is ``ek_<payload>.<signature>``: the payload is zlib-compressed JSON (base64url), the
signature an HMAC-SHA256 over it with ``VOXGATE_SECRET``, so any node that shares the secret
verifies a key without shared state. The payload carries the session config, an optional
subject (end-user id), the server tools its sessions get and the application's metadata
(issue 14), the expiry (10 s to 2 h, default 600 s; it bounds *starting* a session,
realtime-protocol.md §2.1) and the maximum session length. Verification is constant-time on
the signature and rejects expired, forged or malformed keys with one typed error.

Mint and verify share their limits: :func:`mint` refuses to produce a key :func:`verify` would
refuse (longer than ``MAX_KEY_CHARS``, a lifetime outside 10 s..2 h), and :func:`verify`
refuses a key claiming a lifetime :func:`mint` would never give.
"""

from __future__ import annotations

import secrets
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from voxgate.protocol import tokens

PREFIX = "ek_"
MIN_TTL_S = 10
MAX_TTL_S = 7200
DEFAULT_TTL_S = 600
#: A key bigger than this is refused before any decoding work (protects the verifier).
MAX_KEY_CHARS = 48 * 1024
_VERSION = 1
#: Room a key's header needs besides the key (``Bearer ``, or the other subprotocols offered).
_HEADER_OVERHEAD = 256


class ClientKeyError(ValueError):
    """The key is malformed, forged or expired. ``code`` is the OpenAI error code to send."""

    def __init__(self, reason: str, code: str = "invalid_api_key") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class ClientKeyTooLarge(ValueError):
    """The key would be longer than the verifier (or a header) accepts."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"client key of {size} characters exceeds {limit}")
        self.size = size
        self.limit = limit


@dataclass(frozen=True, slots=True)
class ClientKeyClaims:
    """What a verified key grants."""

    key_id: str
    issued_at: int
    expires_at: int
    max_session_s: float | None
    subject: str | None = None
    session: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    #: server tools the key's sessions get (None: all configured); issue 14
    tools: tuple[str, ...] | None = None
    metadata: dict[str, str] | None = field(default=None, hash=False, compare=False)


#: ek_ keys sign the bare payload (keys minted by earlier versions keep verifying).
_DOMAIN = b""


def mint(
    secret: bytes,
    *,
    now: float,
    ttl_s: int = DEFAULT_TTL_S,
    session: dict[str, Any] | None = None,
    subject: str | None = None,
    max_session_s: float | None = None,
    max_key_chars: int = MAX_KEY_CHARS,
    tools: tuple[str, ...] | None = None,
    metadata: dict[str, str] | None = None,
) -> tuple[str, ClientKeyClaims]:
    """Mint a key.

    Args:
        ttl_s: lifetime, already validated to lie in 10..7200.
        max_key_chars: the longest key the caller's verifier path accepts (never more than
            ``MAX_KEY_CHARS``; less when headers are smaller).

    Raises:
        ValueError: ``ttl_s`` out of range.
        ClientKeyTooLarge: the key would be longer than ``max_key_chars``.
    """
    if not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
        raise ValueError("ttl_s out of range")
    claims = ClientKeyClaims(
        key_id=secrets.token_hex(8),
        issued_at=int(now),
        expires_at=int(now) + ttl_s,
        max_session_s=max_session_s,
        subject=subject,
        session=session,
        tools=tools,
        metadata=metadata,
    )
    body: dict[str, Any] = {
        "v": _VERSION,
        "kid": claims.key_id,
        "iat": claims.issued_at,
        "exp": claims.expires_at,
        "max": max_session_s,
        "sub": subject,
        "ses": session,
    }
    if tools is not None:  # only when set: keys minted without them stay as they were
        body["tls"] = list(tools)
    if metadata:
        body["md"] = metadata
    key = tokens.seal(
        secret, prefix=PREFIX, domain=_DOMAIN, payload=zlib.compress(orjson.dumps(body), 6)
    )
    limit = min(max_key_chars, MAX_KEY_CHARS)
    if len(key) > limit:
        raise ClientKeyTooLarge(len(key), limit)
    return key, claims


def max_key_chars(max_header_bytes: int) -> int:
    """The longest key a client can present when header fields are capped at ``max_header_bytes``
    (``Authorization: Bearer <key>`` or the ``Sec-WebSocket-Protocol`` list)."""
    return max(0, min(MAX_KEY_CHARS, max_header_bytes - _HEADER_OVERHEAD))


def looks_like_client_key(credential: str) -> bool:
    return credential.startswith(PREFIX)


def verify(secret: bytes, key: str, *, now: float) -> ClientKeyClaims:
    """Verify a key and return its claims.

    Raises:
        ClientKeyError: malformed, bad signature, unknown version, or expired.
    """
    try:
        payload = tokens.unseal(secret, key, prefix=PREFIX, domain=_DOMAIN, max_chars=MAX_KEY_CHARS)
    except tokens.TokenError as exc:
        raise ClientKeyError(exc.reason) from None
    try:
        body = orjson.loads(zlib.decompress(payload, bufsize=64 * 1024))
    except (zlib.error, orjson.JSONDecodeError, ValueError):
        raise ClientKeyError("malformed") from None
    if not isinstance(body, dict) or body.get("v") != _VERSION:
        raise ClientKeyError("malformed")
    exp, iat = body.get("exp"), body.get("iat")
    if not isinstance(exp, int) or not isinstance(iat, int) or exp - iat > MAX_TTL_S:
        raise ClientKeyError("malformed")
    if now >= exp:
        raise ClientKeyError("expired")
    session = body.get("ses")
    max_s = body.get("max")
    sub = body.get("sub")
    tools, metadata = body.get("tls"), body.get("md")
    return ClientKeyClaims(
        key_id=str(body.get("kid", "")),
        issued_at=iat,
        expires_at=exp,
        max_session_s=float(max_s) if isinstance(max_s, int | float) else None,
        subject=sub if isinstance(sub, str) else None,
        session=session if isinstance(session, dict) else None,
        tools=tuple(str(t) for t in tools) if isinstance(tools, list) else None,
        metadata={str(k): str(v) for k, v in metadata.items()}
        if isinstance(metadata, dict)
        else None,
    )
