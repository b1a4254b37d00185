"""What the fake upstream saw and sent on each connection, for test assertions.

A :class:`ConnectionRecord` is filled by the I/O layer and read by tests. Waiting is
event-driven: every change wakes waiters (an :class:`asyncio.Event` swapped on each
notification), so ``await record.wait_for("response.create", count=2)`` never polls or sleeps.
Credentials are never recorded: see :class:`~voxgate.testing.handshake.Handshake`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from voxgate.testing.core import AudioLedger, FakeSession
from voxgate.testing.handshake import Handshake

T = TypeVar("T")


class Waitable:
    """A predicate waiter woken by :meth:`notify` (no polling)."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_until(self, probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
        """Return ``probe()`` as soon as it is not None; raise TimeoutError after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            result = probe()
            if result is not None:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                continue


class ConnectionRecord(Waitable):
    """One connection: handshake, client events, events sent, audio, and how it ended.

    Attributes:
        conn_id: 1-based, in accept order.
        handshake: path, query, redacted headers and subprotocols, key presence and prefix.
        selected_subprotocol: what the server echoed (``"realtime"`` or None).
        session_core: the protocol core, or None when the connection failed at connect.
        sent_events: server events sent, in order (bounded).
        close_code / close_reason / closed_by: how it ended (``"server"``, ``"client"``,
            ``"abort"``), set when ``closed`` is.
    """

    def __init__(
        self,
        conn_id: int,
        handshake: Handshake,
        *,
        selected_subprotocol: str | None,
        max_sent_events: int = 10_000,
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.handshake = handshake
        self.selected_subprotocol = selected_subprotocol
        self.session_core: FakeSession | None = None
        self.sent_events: deque[dict[str, Any]] = deque(maxlen=max_sent_events)
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed_by: str | None = None
        self.closed = asyncio.Event()

    # -- convenience views

    @property
    def headers(self) -> Mapping[str, str]:
        return self.handshake.headers

    @property
    def client_events(self) -> list[dict[str, Any]]:
        """Every parsed client event, in order (append events carry ``audio_len``, not audio)."""
        return list(self.session_core.client_events) if self.session_core else []

    @property
    def audio(self) -> AudioLedger:
        """Input audio per committed item, cleared chunks and the pending buffer."""
        if self.session_core is None:
            return AudioLedger(cap_bytes=0)
        return self.session_core.ledger

    @property
    def session(self) -> dict[str, Any] | None:
        """The effective session config right now."""
        return self.session_core.session if self.session_core else None

    def events_of(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.client_events if e.get("type") == event_type]

    def sent_of(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.sent_events if e.get("type") == event_type]

    # -- waiting

    async def wait_for(
        self, event_type: str, count: int = 1, *, timeout_s: float = 5.0
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` client events of ``event_type`` arrived; return them."""

        def probe() -> list[dict[str, Any]] | None:
            found = self.events_of(event_type)
            return found if len(found) >= count else None

        return await self.wait_until(probe, timeout_s, f"{count} x {event_type!r} received")

    async def wait_for_sent(
        self, event_type: str, count: int = 1, *, timeout_s: float = 5.0
    ) -> list[dict[str, Any]]:
        """Wait until the server sent ``count`` events of ``event_type``; return them."""

        def probe() -> list[dict[str, Any]] | None:
            found = self.sent_of(event_type)
            return found if len(found) >= count else None

        return await self.wait_until(probe, timeout_s, f"{count} x {event_type!r} sent")

    async def wait_closed(self, *, timeout_s: float = 5.0) -> int | None:
        """Wait for the connection to end; return its close code."""
        await asyncio.wait_for(self.closed.wait(), timeout_s)
        return self.close_code

    def _mark_closed(self, code: int | None, reason: str | None, by: str) -> None:
        if self.closed.is_set():
            return
        self.close_code, self.close_reason, self.closed_by = code, reason, by
        self.closed.set()
        self.notify()
