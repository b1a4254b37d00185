"""A server-side WebSocket attached to a running call by ``?call_id=`` (the "sideband").

OpenAI lets a server watch and steer a WebRTC or SIP call over a second WebSocket,
``wss://…/v1/realtime?call_id=<id>`` (realtime-protocol.md §2.3): it receives the call's events
and may send client events (``session.update``, tool outputs, ``response.create``). voxgate does
the same for its calls: a :class:`Sideband` receives every event the caller's event channel
gets (audio deltas excepted: the audio is on the media stream), and what it sends goes to the
session exactly like the caller's own events. It is an observer and a controller; it never owns
the session: when it leaves the call goes on, when the call ends it is closed with the call's
close code.

It must not slow the call down: events wait in a bounded outbox drained by the sideband's own
task; a sideband that falls ``outbox_limit`` events behind is closed (1008,
``voxgate_sideband_too_slow``) and the call continues.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from voxgate.protocol.close import CloseCode
from voxgate.session.ports import ClientConnection, PeerGone

OUTBOX_LIMIT: Final = 2048
TOO_SLOW_REASON: Final = "server_error.voxgate_sideband_too_slow"


class Sideband:
    """One attached server WebSocket (see the module docstring)."""

    def __init__(
        self,
        conn: ClientConnection,
        *,
        to_session: Callable[[str | bytes], None],
        log: Any,
        outbox_limit: int = OUTBOX_LIMIT,
    ) -> None:
        self.conn = conn
        self._to_session = to_session
        self._log = log
        self._outbox: deque[str] = deque()
        self._limit = outbox_limit
        self._ready = asyncio.Event()
        self._closing: tuple[int, str] | None = None
        self.sent = 0
        self.received = 0

    def push(self, text: str) -> None:
        """Queue one event for this sideband; never waits (a sideband that lags is dropped)."""
        if self._closing is not None:
            return
        if not self._outbox and self.conn.write_text(text):
            self.sent += 1
            return
        if len(self._outbox) >= self._limit:
            self._log.warning("sideband.too_slow", queued=len(self._outbox))
            self.end(CloseCode.POLICY, TOO_SLOW_REASON)
            return
        self._outbox.append(text)
        self._ready.set()

    def end(self, code: int, reason: str) -> None:
        """Close this sideband soon (its writer sends what is queued first, then closes)."""
        if self._closing is None:
            self._closing = (code, reason)
            self._ready.set()

    async def run(self) -> None:
        """Pump both ways until the sideband leaves or :meth:`end` is called."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._write(), name="sideband_writer")
            try:
                while True:
                    frame = await self.conn.receive()
                    self.received += 1
                    self._to_session(frame)
            except PeerGone:
                self.end(CloseCode.NORMAL, "")  # the writer closes and returns

    async def _write(self) -> None:
        conn = self.conn
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._outbox and (self._closing is None or self._closing[0] != CloseCode.POLICY):
                try:
                    await conn.send_text(self._outbox.popleft())
                except PeerGone:
                    self._outbox.clear()
                    break
                self.sent += 1
            if self._closing is not None:
                self._outbox.clear()
                code, reason = self._closing
                with contextlib.suppress(PeerGone):
                    await conn.close(code, reason)
                return
