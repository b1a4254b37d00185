"""One attached Server-Sent Events stream of an HTTP-fallback session, as a client connection.

A :class:`SseLeg` is the :class:`~voxgate.session.ports.ClientConnection` the session runner
talks to while one ``GET …/events`` stream is open. Its two halves:

* **to the client**: ``write_text`` / ``send_text`` number each frame as the session's replay
  log does (1, 2, 3 … in send order, ``voxgate.session.*`` not counted) and queue it as an SSE
  event ``id: <seq>`` + ``data: <json>``; the GET handler drains the queue with
  :meth:`next_chunk` (everything queued, in one write). The ids *are* the replay log's
  sequence numbers, so a client that comes back with ``Last-Event-ID: N`` resumes through the
  same replay log as a ``voxgate.v1`` WebSocket (``runner.resume``). The resume control events
  (``voxgate.session.resumable`` / ``.resumed``) are taken here, never streamed: the HTTP
  session keeps the resume token on the server (:attr:`on_control`).
* **from the client**: a :class:`~voxgate.session.delivery.Delivery` fed by the POST routes
  (JSON events as text frames, raw audio as binary frames), with the session's sink on it.

Bounds: at most ``high_bytes`` of SSE text waits for the stream (``write_text`` refuses
beyond, ``send_text`` waits: the runner's stall detection sees a stream that stopped
draining); the inbound queue is bounded in frames. Ending: :meth:`drop` (the stream broke, or
a newer stream replaced it: unclean, so a resumable session is detached and kept),
:meth:`close` (the session ends: a final ``event: close`` with code and reason).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Final

import orjson

from voxgate.session.delivery import Delivery
from voxgate.session.ports import FrameSink, PeerGone

_CONTROL_HEAD: Final = '{"type":"voxgate.session.'
#: SSE text queued for a stream beyond which ``write_text`` refuses (``send_text`` waits).
HIGH_BYTES: Final = 256 * 1024
ControlHook = Callable[[str], None]


def sse_event(seq: int, text: str) -> str:
    """One SSE event carrying a JSON frame. A frame with line breaks (pretty-printed JSON from
    an upstream) becomes several ``data:`` lines, which the SSE parser joins with ``\\n``."""
    if "\n" in text or "\r" in text:
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        return f"id: {seq}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"
    return f"id: {seq}\ndata: {text}\n\n"


class SseLeg:
    """See the module docstring.

    Args:
        first_seq: the sequence number of the first numbered frame this stream carries (1 for
            a new session, ``Last-Event-ID + 1`` for a resumed one).
        limit_frames: bound of the inbound (client → session) queue.
        on_control: called with each ``voxgate.session.*`` frame (the HTTP session keeps the
            resume token it carries).
    """

    def __init__(
        self,
        *,
        first_seq: int,
        limit_frames: int,
        on_control: ControlHook | None = None,
        high_bytes: int = HIGH_BYTES,
    ) -> None:
        self.inbound = Delivery(limit_frames)
        self.first_seq = first_seq
        self.last_seq = first_seq - 1
        self.high_bytes = high_bytes
        self._on_control = on_control
        self._out: deque[str] = deque()
        self._out_chars = 0
        self._loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[None] | None = None  # the stream writer waits here
        self._space: asyncio.Future[None] | None = None  # send_text waits here
        self._heard = 0
        self._close: tuple[int, str] | None = None
        self._finished = False
        self.gone: PeerGone | None = None
        #: set once the stream has something to say (the GET handler answers then)
        self.started = asyncio.Event()

    # ------------------------------------------------------------------ ClientConnection

    @property
    def heard(self) -> int:
        return self._heard

    @property
    def close_code(self) -> int | None:
        return self._close[0] if self._close else None

    @property
    def writable(self) -> bool:
        return self.gone is None and self._close is None and self._out_chars <= self.high_bytes

    def set_sink(self, sink: FrameSink | None) -> None:
        self.inbound.sink = sink

    async def receive(self) -> str | bytes:
        return await self.inbound.receive()

    def write_text(self, text: str) -> bool:
        if not self.writable:
            return False
        self._queue(text)
        return True

    async def send_text(self, text: str) -> None:
        while not self.writable:
            if self.gone is not None or self._close is not None:
                raise self.gone or PeerGone(self.close_code, clean=True)
            if self._space is None:
                self._space = self._loop.create_future()
            await asyncio.shield(self._space)
        self._queue(text)

    async def send_bytes(self, data: bytes) -> None:
        raise PeerGone(None)  # an event stream carries text only; nothing sends binary to it

    async def ping(self) -> None:
        """A comment line: keeps proxies from closing an idle stream; counted as heard once
        the stream took it (a stream that stopped draining is found as a stall)."""
        if self.gone is None and self._close is None:
            self._push(": ping\n\n")

    async def close(self, code: int, reason: str = "") -> None:
        if self._close is not None or self.gone is not None:
            return
        self._close = (code, reason)
        body = orjson.dumps({"code": code, "reason": reason}).decode()
        self._push(f"event: close\ndata: {body}\n\n")
        self.inbound.end(PeerGone(code, reason, clean=True), drop_queued=True)
        self._wake_space()

    def abort(self) -> None:
        self.drop()

    # ------------------------------------------------------------------ the HTTP side

    def drop(self, gone: PeerGone | None = None) -> list[str | bytes]:
        """The stream broke or was replaced: end this leg. Returns the client frames still
        queued (not yet read by the session), for the next stream of the same session."""
        if self.gone is None:
            self.gone = gone or PeerGone(None)
        left = self.inbound.take_queued()
        self.inbound.end(self.gone, drop_queued=True)
        self._wake_ready()
        self._wake_space()
        return left

    def end_from_client(self) -> None:
        """The client closed the session (DELETE): a clean 1000 for the session."""
        self.inbound.end(PeerGone(1000, "client closed", clean=True))

    async def next_chunk(self, idle_s: float) -> str | None:
        """Everything queued for the stream, as one string; ``": heartbeat"`` after ``idle_s``
        with nothing to say; None once the leg is over (dropped, or closed and flushed)."""
        while not self._out:
            if self.gone is not None or self._finished:
                return None
            self._ready = self._loop.create_future()
            try:
                async with asyncio.timeout(idle_s):
                    await self._ready
            except TimeoutError:
                return ": heartbeat\n\n"
            finally:
                self._ready = None
        if self.gone is not None:
            return None
        chunk = "".join(self._out)
        self._out.clear()
        self._out_chars = 0
        if self._close is not None:
            self._finished = True  # the close event is in this chunk: nothing follows
        self._wake_space()
        return chunk

    def flushed(self, chunk: str) -> None:
        """The stream wrote ``chunk``: a ping in it is proof the stream still drains."""
        if ": ping" in chunk:
            self._heard += 1

    # ------------------------------------------------------------------ internals

    def _queue(self, text: str) -> None:
        if text.startswith(_CONTROL_HEAD):
            if self._on_control is not None:
                self._on_control(text)
            self.started.set()  # the session is talking to this stream (resumed, or ready)
            return
        self.last_seq += 1
        self._push(sse_event(self.last_seq, text))

    def _push(self, chunk: str) -> None:
        self._out.append(chunk)
        self._out_chars += len(chunk)
        if not self.started.is_set():
            self.started.set()
        self._wake_ready()

    def _wake_ready(self) -> None:
        ready = self._ready
        if ready is not None and not ready.done():
            ready.set_result(None)

    def _wake_space(self) -> None:
        space, self._space = self._space, None
        if space is not None and not space.done():
            space.set_result(None)
