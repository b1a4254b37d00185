"""Resume tokens: what lets a dropped ``voxgate.v1`` client take its session back. No I/O.

A token is ``vgr_<payload>.<signature>``: the payload is base64url JSON naming the session,
its subject (end user, or none), a generation counter and a random nonce; the signature is an
HMAC-SHA256 over it with ``VOXGATE_SECRET`` (domain-separated from ``ek_`` keys, so neither can
stand in for the other). The signature proves voxgate issued the token; *single use* is the
session's job: it remembers the nonce of the one token it will accept and issues a new token
(next generation, new nonce) on every resume, so a token used once, or an older one, no longer
matches. A token never travels in a URL (the client sends it in its first frame).

:class:`ResumeState` is the session's side: the rules for taking it back (same session, same
subject, current generation and nonce), with the one token it accepts now kept in the
:class:`~voxgate.store.base.Store` so every node of a deployment agrees on it.

Tokens do not expire on their own: they are only good while their session lives (its grace
period bounds how long a dropped client may take), which is why they still work after the
``ek_`` key that started the session has expired.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

import orjson

from voxgate.protocol import tokens
from voxgate.store.base import Store

PREFIX = "vgr_"
MAX_TOKEN_CHARS = 2048
_DOMAIN = b"voxgate.resume.v1\x00"


class ResumeTokenError(ValueError):
    """Malformed or forged token. ``reason`` is for logs; clients get one generic message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ResumeClaims:
    session_id: str
    subject: str | None
    generation: int
    nonce: str


def encode(secret: bytes, claims: ResumeClaims) -> str:
    """The signed token carrying ``claims``."""
    body = {"s": claims.session_id, "u": claims.subject, "g": claims.generation, "n": claims.nonce}
    return tokens.seal(secret, prefix=PREFIX, domain=_DOMAIN, payload=orjson.dumps(body))


def mint(
    secret: bytes, *, session_id: str, subject: str | None, generation: int
) -> tuple[str, ResumeClaims]:
    """Mint the token for ``generation`` of a session (a fresh random nonce each time)."""
    claims = ResumeClaims(session_id, subject, generation, secrets.token_urlsafe(12))
    return encode(secret, claims), claims


def verify(secret: bytes, token: str) -> ResumeClaims:
    """Check the signature and shape; return the claims.

    Raises:
        ResumeTokenError: not a token, bad signature, or bad payload.
    """
    try:
        payload = tokens.unseal(
            secret, token, prefix=PREFIX, domain=_DOMAIN, max_chars=MAX_TOKEN_CHARS
        )
        body = orjson.loads(payload)
    except tokens.TokenError as exc:
        raise ResumeTokenError(exc.reason) from None
    except orjson.JSONDecodeError:
        raise ResumeTokenError("malformed") from None
    if not isinstance(body, dict):
        raise ResumeTokenError("malformed")
    sid, sub, gen, nonce = body.get("s"), body.get("u"), body.get("g"), body.get("n")
    if not (isinstance(sid, str) and isinstance(gen, int) and isinstance(nonce, str)):
        raise ResumeTokenError("malformed")
    if sub is not None and not isinstance(sub, str):
        raise ResumeTokenError("malformed")
    return ResumeClaims(sid, sub, gen, nonce)


def same_nonce(a: str, b: str) -> bool:
    """Constant-time nonce comparison."""
    return hmac.compare_digest(a.encode(), b.encode())


class ResumeState:
    """One session's side of resume: issue its tokens, and decide whether one may resume it.

    The single-use state (the one generation and nonce the session accepts now) lives in the
    :class:`~voxgate.store.base.Store`, so any node of a deployment can check and consume a
    token; the rules (same session, same subject, current token) are here.
    """

    def __init__(
        self, secret: bytes, store: Store, *, session_id: str, subject: str | None
    ) -> None:
        self._secret = secret
        self._store = store
        self.session_id = session_id
        self.subject = subject
        self.generation = 0
        self.resumes = 0

    async def issue(self) -> str:
        """Mint the next token; every earlier one stops working."""
        nonce = secrets.token_urlsafe(12)
        self.generation = await self._store.rotate_resume(self.session_id, nonce)
        return encode(
            self._secret, ResumeClaims(self.session_id, self.subject, self.generation, nonce)
        )

    def check(self, claims: ResumeClaims, *, presented_subject: str | None) -> str | None:
        """None if the claims name this session and its user, else why not (for logs)."""
        if claims.session_id != self.session_id:
            return "other_session"
        if claims.subject != self.subject:
            return "other_subject"
        if presented_subject is not None and presented_subject != self.subject:
            return "other_subject"
        return None

    async def accepts(self, claims: ResumeClaims, *, presented_subject: str | None) -> str | None:
        """:meth:`check`, then the token must be the current one: None if it may resume."""
        why = self.check(claims, presented_subject=presented_subject)
        if why is not None:
            return why
        if not await self._store.consume_resume(self.session_id, claims.generation, claims.nonce):
            return "token_used"
        return None

    async def consume(self) -> str:
        """Accept a resume (after :meth:`accepts`): the next token, every earlier one void."""
        self.resumes += 1
        return await self.issue()
