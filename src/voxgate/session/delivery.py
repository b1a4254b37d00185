"""The receiving half of an in-process connection: a bounded queue that also feeds a sink.

Adapters whose frames do not come from a socket parser (the local engine's outbox, and later
WebRTC data channels, phone media and HTTP fallbacks) implement the receive side of
:class:`~voxgate.session.ports.Connection` with one :class:`Delivery`: ``put`` a frame, and it
goes to the session's sink at once when the session is waiting in :meth:`receive` with nothing
queued, else into the queue, in order. The queue is bounded in frames; ``put`` waits while it
is full (backpressure on the producer), ``put_nowait`` refuses. A socket reader, which cannot
refuse what arrived, uses :meth:`push` instead and applies its own flow control from
``queued_bytes`` and the ``on_taken`` callback (voxgate's upstream WebSocket client pauses
reading its socket). :meth:`end` makes :meth:`receive` raise
:class:`~voxgate.session.ports.PeerGone` once the queue is drained.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from voxgate.session.ports import FrameSink, PeerGone


class Delivery:
    def __init__(self, limit_frames: int, *, on_taken: Callable[[int], None] | None = None) -> None:
        """``on_taken(queued_bytes)`` is called after :meth:`receive` takes a frame."""
        self.limit_frames = limit_frames
        self.queued_bytes = 0
        self._on_taken = on_taken
        self._queue: deque[str | bytes] = deque()
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._space: asyncio.Future[None] | None = None
        self._parked = False
        #: the reader waits in :meth:`receive` with nothing queued: a frame may skip the queue
        #: (a plain flag, read by a socket reader per frame without a call)
        self.idle = False
        self.sink: FrameSink | None = None
        self.gone: PeerGone | None = None

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def parked(self) -> bool:
        """The reader waits in :meth:`receive` (frames may go to the sink if none are queued)."""
        return self._parked

    def offer(self, frame: str | bytes) -> bool:
        """Hand ``frame`` to the sink if the consumer is idle; False: it was not taken."""
        sink = self.sink
        return sink is not None and self.idle and sink(frame)

    def put_nowait(self, frame: str | bytes) -> bool:
        """Deliver or queue ``frame`` now; False (and nothing kept) when the queue is full."""
        if self.gone is not None:
            return True  # nobody will read it: taken and dropped
        if self.offer(frame):
            return True
        if len(self._queue) >= self.limit_frames:
            return False
        self.push(frame)
        return True

    def push(self, frame: str | bytes) -> None:
        """Queue ``frame`` behind the rest, whatever the bound (the caller flow-controls)."""
        self._queue.append(frame)
        self.queued_bytes += len(frame)
        self.idle = False
        self._wake()

    async def put(self, frame: str | bytes) -> None:
        """Deliver or queue ``frame``, waiting while the queue is full."""
        while not self.put_nowait(frame):
            if self._space is None:
                self._space = self._loop.create_future()
            await asyncio.shield(self._space)

    def push_front(self, frame: str | bytes) -> None:
        """Queue ``frame`` ahead of everything (over the bound by one at most: a control)."""
        self._queue.appendleft(frame)
        self.queued_bytes += len(frame)
        self.idle = False
        self._wake()

    def take_queued(self) -> list[str | bytes]:
        """Remove and return the queued frames, in order (to hand them to another connection
        of the same session, e.g. an HTTP fallback whose event stream is replaced)."""
        frames = list(self._queue)
        self._queue.clear()
        self.queued_bytes = 0
        self._free()
        return frames

    def end(self, gone: PeerGone, *, drop_queued: bool = False) -> None:
        """No more frames: ``receive`` raises ``gone`` after the queue (or at once)."""
        if self.gone is None:
            self.gone = gone
        if drop_queued:
            self._queue.clear()
            self.queued_bytes = 0
        self._wake()
        self._free()

    async def receive(self) -> str | bytes:
        while not self._queue:
            if self.gone is not None:
                raise self.gone
            self._waiter = self._loop.create_future()
            self._parked = self.idle = True
            try:
                await self._waiter
            finally:
                self._parked = self.idle = False
                self._waiter = None
        frame = self._queue.popleft()
        self.queued_bytes -= len(frame)
        self._free()
        if self._on_taken is not None:
            self._on_taken(self.queued_bytes)
        return frame

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _free(self) -> None:
        space, self._space = self._space, None
        if space is not None and not space.done():
            space.set_result(None)
