"""voxgate's error tree and the OpenAI-shaped ``error`` event (realtime-protocol.md §7).

Pure: builds dicts, never logs, never touches a socket.

::

    VoxgateError
    ├── ClientEventError      non-fatal: the client sent something wrong; the session continues
    ├── FatalSessionError     the session ends: ``error`` event, then close(close_code, reason)
    │   └── AuthError         bad, expired or forged credential (close 3000)
    ├── UpstreamError         something the upstream said or did; mapped before a client sees it
    └── InvalidState          misuse of a state machine (a bug in voxgate, not in the peer)

Every error carries fields (``code``, ``param``, ``event_id``); nothing matches on message text.
"""

from __future__ import annotations

from typing import Any

from voxgate.protocol.close import CloseCode, close_reason
from voxgate.protocol.ids import event_id as new_event_id

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


def error_event(
    message: str,
    *,
    code: str | None,
    error_type: str = INVALID_REQUEST,
    param: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """Build an OpenAI-shaped ``error`` server event.

    Args:
        message: human-readable text; must never contain a secret.
        code: stable machine code (``invalid_json``, ``voxgate_upstream_timeout`` …) or None.
        error_type: ``invalid_request_error`` or ``server_error``.
        param: the offending parameter path, if any.
        event_id: the *client* event id that failed (echoed so SDKs can pair it, §6.5).
    """
    return {
        "type": "error",
        "event_id": new_event_id(),
        "error": {
            "type": error_type,
            "code": code,
            "message": message,
            "param": param,
            "event_id": event_id,
        },
    }


class VoxgateError(Exception):
    """Base of every error voxgate raises on purpose."""


class ClientEventError(VoxgateError):
    """A client event was wrong. Becomes a non-fatal ``error`` event; the session goes on."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None,
        param: str | None = None,
        event_id: str | None = None,
        error_type: str = INVALID_REQUEST,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param
        self.event_id = event_id
        self.error_type = error_type

    def to_event(self) -> dict[str, Any]:
        return error_event(
            self.message,
            code=self.code,
            error_type=self.error_type,
            param=self.param,
            event_id=self.event_id,
        )


class FatalSessionError(VoxgateError):
    """The session must end: send :meth:`to_event`, then close with ``close_code``/``reason``."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None,
        close_code: int = CloseCode.INTERNAL_ERROR,
        error_type: str = SERVER_ERROR,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.close_code = int(close_code)
        self.error_type = error_type
        self.param = param

    @property
    def reason(self) -> str:
        return close_reason(self.error_type, self.code)

    def to_event(self) -> dict[str, Any]:
        return error_event(
            self.message, code=self.code, error_type=self.error_type, param=self.param
        )


class AuthError(FatalSessionError):
    """Missing, malformed, forged or expired credential: error event then close 3000."""

    def __init__(self, message: str, *, code: str | None = "invalid_api_key") -> None:
        super().__init__(message, code=code, close_code=CloseCode.AUTH, error_type=INVALID_REQUEST)


class UpstreamError(VoxgateError):
    """The upstream failed or reported a fatal error; mapped and redacted before forwarding."""

    def __init__(self, message: str, *, code: str | None, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable


class InvalidState(VoxgateError, AssertionError):
    """A state machine was used in a way its contract forbids (a voxgate bug)."""
