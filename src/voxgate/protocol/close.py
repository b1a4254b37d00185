"""WebSocket close codes and close reasons (realtime-protocol.md §7).

Pure. The real server closes a fatal session with the ``error`` event first, then a close frame
whose reason is ``<error.type>.<error.code>``.
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    NO_STATUS = 1005
    ABNORMAL = 1006
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    # OpenAI application codes (§7): 3000 = auth, 4000 = bad request (model, beta shape).
    AUTH = 3000
    BAD_REQUEST = 4000
    # voxgate's own application codes for gateway-side fatal conditions.
    POLICY = 1008


#: Close codes after which a client or gateway may reconnect (openai-python's set, §7).
RETRYABLE_CLOSE_CODES: frozenset[int] = frozenset({1001, 1005, 1006, 1011, 1012, 1013, 1015})


def close_reason(error_type: str, code: str | None) -> str:
    """Return the close reason the real server uses: ``type.code`` (or ``type`` alone)."""
    return f"{error_type}.{code}" if code else error_type
