"""Turn a client's credential into a :class:`Grant` (what the session may do), or refuse.

Accepted credentials: a server key from ``VOXGATE_API_KEYS`` (constant-time compare), or an
``ek_`` client key signed with ``VOXGATE_SECRET`` and not yet expired. Refusals raise
:class:`AuthError`, which the endpoint turns into the real server's bad-key behaviour: an
``error`` event, then close 3000 (realtime-protocol.md §7). Pure; callers pass ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from voxgate.auth import client_keys
from voxgate.auth.server_keys import ServerKeys
from voxgate.protocol.errors import AuthError


@dataclass(frozen=True, slots=True)
class Grant:
    kind: Literal["server_key", "client_key"]
    max_session_s: float
    subject: str | None = None
    key_id: str | None = None
    session: dict[str, Any] | None = field(default=None, compare=False)
    #: server tools this key's sessions get (names or globs; None: every configured tool)
    tools: tuple[str, ...] | None = None
    #: what the key was minted with for the application (server tools see it)
    metadata: dict[str, str] | None = field(default=None, compare=False)


class Authenticator:
    def __init__(
        self, server_keys: ServerKeys, secret: bytes, default_max_session_s: float
    ) -> None:
        self._server_keys = server_keys
        self._secret = secret
        self._default_max_session_s = default_max_session_s

    def authenticate(self, credential: str | None, *, now: float) -> Grant:
        """Return the grant for ``credential``.

        Raises:
            AuthError: missing, unknown, malformed, forged or expired credential.
        """
        if not credential:
            raise AuthError(
                "Missing bearer or basic authentication in header. Pass the key as "
                "'Authorization: Bearer <key>' or as the 'openai-insecure-api-key.<key>' "
                "subprotocol.",
                code=None,
            )
        if client_keys.looks_like_client_key(credential):
            try:
                claims = client_keys.verify(self._secret, credential, now=now)
            except client_keys.ClientKeyError as exc:
                if exc.reason == "expired":
                    raise AuthError(
                        "The ephemeral key has expired. Mint a new one and reconnect."
                    ) from None
                raise AuthError("Incorrect API key provided.") from None
            cap = claims.max_session_s or self._default_max_session_s
            return Grant(
                kind="client_key",
                max_session_s=min(cap, self._default_max_session_s),
                subject=claims.subject,
                key_id=claims.key_id,
                session=claims.session,
                tools=claims.tools,
                metadata=claims.metadata,
            )
        if self._server_keys.check(credential):
            return Grant(kind="server_key", max_session_s=self._default_max_session_s)
        raise AuthError("Incorrect API key provided.")
