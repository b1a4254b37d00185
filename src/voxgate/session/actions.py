"""What the session machine asks its runner to do. Frozen dataclasses; the runner executes them
in list order (the order is part of the contract: an ``error`` goes out before its close).

:data:`FORWARD` is the hot-path answer: "send the frame you gave me, unchanged, onward". It is
a constant so the audio path allocates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias


@dataclass(frozen=True, slots=True)
class SendClient:
    text: str


@dataclass(frozen=True, slots=True)
class SendUpstream:
    text: str


@dataclass(frozen=True, slots=True)
class StartFlush:
    """Send the pre-ready buffer upstream, oldest first, then call ``machine.flush_done()``."""


@dataclass(frozen=True, slots=True)
class EndSession:
    """Close the client with ``close_code``/``reason`` and the upstream with 1000.

    ``error_text``, if any, is sent to the client first (the real server sends the ``error``
    event and the close frame together, realtime-protocol.md §7).
    """

    close_code: int
    reason: str
    error_text: str | None = None
    cause: str = ""


@dataclass(frozen=True, slots=True)
class StartReconnect:
    """The upstream is gone but the session is not: open a fresh one and rebuild it.

    ``before_ready``: the client never saw ``session.created``, so the runner simply retries the
    initial connect and readiness gating. Otherwise it replays the mirror
    (:meth:`SessionMachine.replay`), then calls :meth:`SessionMachine.reconnected` or
    :meth:`SessionMachine.reconnect_failed`.
    """

    cause: str
    before_ready: bool = False
    retry_response: bool = False


@dataclass(frozen=True, slots=True)
class AckReplay:
    """An opted-in client has the first ``received_events`` numbered events: trim the log."""

    received_events: int


Action: TypeAlias = SendClient | SendUpstream | StartFlush | EndSession | StartReconnect | AckReplay


class _Forward:
    __slots__ = ()

    def __repr__(self) -> str:
        return "FORWARD"


FORWARD: Final = _Forward()
NOTHING: Final[tuple[Action, ...]] = ()
Outcome: TypeAlias = _Forward | tuple[Action, ...] | list[Action]
