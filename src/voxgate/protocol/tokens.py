"""Signed tokens: one helper for every credential voxgate mints (``ek_`` keys, resume tokens).

A token is ``<prefix><payload>.<signature>``: ``payload`` is base64url (no padding) of bytes
the caller chose, ``signature`` is base64url of HMAC-SHA256 over ``domain + payload`` with the
deployment's ``VOXGATE_SECRET``. The domain separates kinds: a token of one kind never verifies
as another. Verification is constant-time on the signature and checks the size before doing
any work. Pure: no I/O, no clock (expiry is the caller's, it knows its claims).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac


class TokenError(ValueError):
    """Not a token of this kind: ``reason`` is ``malformed`` or ``bad_signature`` (for logs)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: bytes, domain: bytes, payload: str) -> str:
    return b64e(hmac.new(secret, domain + payload.encode("ascii"), hashlib.sha256).digest())


def seal(secret: bytes, *, prefix: str, domain: bytes, payload: bytes) -> str:
    """The signed token carrying ``payload``."""
    body = b64e(payload)
    return f"{prefix}{body}.{_signature(secret, domain, body)}"


def unseal(secret: bytes, token: str, *, prefix: str, domain: bytes, max_chars: int) -> bytes:
    """The payload of a genuine token of this kind.

    Raises:
        TokenError: wrong prefix, too long, malformed, or a signature this secret did not make.
    """
    if not isinstance(token, str) or not token.startswith(prefix) or len(token) > max_chars:
        raise TokenError("malformed")
    body, dot, signature = token[len(prefix) :].partition(".")
    if not dot or not body or not signature:
        raise TokenError("malformed")
    try:
        expected = _signature(secret, domain, body)
    except UnicodeEncodeError:
        raise TokenError("malformed") from None
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        raise TokenError("bad_signature")
    try:
        return b64d(body)
    except (binascii.Error, ValueError):
        raise TokenError("malformed") from None
