"""aiohttp's server WebSocket as a :class:`~voxgate.session.ports.ClientConnection`.

Two pieces. :class:`GatewayWebSocket` is aiohttp's ``WebSocketResponse`` with two changes: it
tells a client *why* before an oversized-frame close (aiohttp closes with 1009 silently), and
it parses frames into a :class:`_SinkQueue`, which offers each arriving data frame to the
session's sink synchronously, from the parser's callback, while the session waits in
``receive()`` with nothing queued (the hot path: no task switch per frame). The queue is
aiohttp's own ``WebSocketDataQueue`` subclassed, so everything the sink declines, and every
control frame, takes aiohttp's normal path with its bounds and flow control unchanged.

:class:`AiohttpClientConnection` adapts one prepared ``GatewayWebSocket``: frames as ``str`` /
``bytes``, pings answered and counted inside ``receive()``, every ending (close frame, reset,
error) raised as one :class:`~voxgate.session.ports.PeerGone`, and ``write_text`` writing a
whole unmasked frame straight to the transport when its buffer has room.

The sink hooks into aiohttp internals (``_post_start``, the reader queue); they are checked
once at import against the pinned aiohttp series, and if they ever do not fit, the adapter
falls back to aiohttp's plain ``receive()`` (correct, one task switch per frame slower) and
says so in the log once.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Any, Final

import orjson
import structlog
from aiohttp import WSMsgType, web
from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader

from voxgate.protocol.close import CloseCode
from voxgate.protocol.errors import INVALID_REQUEST
from voxgate.protocol.ids import new_id
from voxgate.protocol.wsframe import OP_TEXT, frame_header
from voxgate.session.ports import FrameSink, PeerGone

log = structlog.get_logger(__name__)

_DATA = (WSMsgType.TEXT, WSMsgType.BINARY)
_TEXT: Final = WSMsgType.TEXT
_BINARY: Final = WSMsgType.BINARY
_PING: Final = WSMsgType.PING
_PONG: Final = WSMsgType.PONG
_CLOSE: Final = WSMsgType.CLOSE
_LEN16 = struct.Struct("!BBH").pack
#: Socket buffer above which ``write_text`` refuses (the transport's own high-water mark).
WRITE_HIGH_BYTES: Final = 64 * 1024
_READER_CHUNK = 2**16  # aiohttp's DEFAULT_CHUNK_SIZE for the reader queue


class _SinkQueue(WebSocketDataQueue):
    """aiohttp's reader queue, offering data frames to a sink first (see the module doc)."""

    sink: FrameSink | None = None
    parked = False

    def feed_data(self, data: Any, size: int) -> None:
        sink = self.sink
        if sink is not None and self.parked and not self._buffer:
            mtype = data[0]
            if (mtype is _TEXT or mtype is _BINARY) and sink(data[1]):
                return
        super().feed_data(data, size)


class GatewayWebSocket(web.WebSocketResponse):
    """aiohttp's server WebSocket with a sink-capable reader and an explained 1009 close."""

    sink_capable = False

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        try:
            self._ws_protocol = protocol
            self._writer = writer
            self._reset_heartbeat()
            loop = self._loop
            if loop is None:
                raise TypeError("prepared without a loop")
            queue = _SinkQueue(request._protocol, _READER_CHUNK, loop=loop)
            parser = WebSocketReader(
                queue,
                self._max_msg_size,
                compress=bool(self._compress),
                decode_text=self._decode_text,
            )
            request.protocol.set_parser(parser)
            request.protocol.keep_alive(False)
        except (AttributeError, TypeError) as exc:  # aiohttp internals moved: plain path
            _warn_fallback(exc)
            super()._post_start(request, protocol, writer)
            return
        self._reader = queue
        self._parser = parser
        self.sink_capable = True

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        if code == CloseCode.MESSAGE_TOO_BIG and not message and not self.closed:
            limit = self._max_msg_size
            event = {
                "type": "error",
                "event_id": new_id("event"),
                "error": {
                    "type": INVALID_REQUEST,
                    "code": "voxgate_frame_too_large",
                    "message": f"A WebSocket frame exceeded the maximum of {limit} bytes.",
                    "param": None,
                    "event_id": None,
                },
            }
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.send_str(orjson.dumps(event).decode())
            message = b"invalid_request_error.voxgate_frame_too_large"
        return await super().close(code=code, message=message, drain=drain)


_warned: list[bool] = []


def _warn_fallback(exc: Exception) -> None:
    if not _warned:
        _warned.append(True)
        log.warning("ws_adapter.sink_unavailable", error=type(exc).__name__)


class AiohttpClientConnection:
    """One client's WebSocket, for the session (see the module docstring)."""

    def __init__(self, ws: GatewayWebSocket, request: web.BaseRequest) -> None:
        self._ws = ws
        self._transport = request.transport
        reader = ws._reader
        self._queue: _SinkQueue | None = reader if isinstance(reader, _SinkQueue) else None
        #: control frames received (a plain attribute: the clock reads it once a second)
        self.heard = 0
        self._gone: PeerGone | None = None
        self._closing = False  # our close frame is out: no data frame may follow it

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    @property
    def closed(self) -> bool:
        return self._ws.closed or self._gone is not None

    def set_sink(self, sink: FrameSink | None) -> None:
        if self._queue is not None:
            self._queue.sink = sink

    async def receive(self) -> str | bytes:
        ws = self._ws
        queue = self._queue
        while True:
            if self._gone is not None:
                raise self._gone
            if queue is not None:
                queue.parked = True
                try:
                    msg = await ws.receive()
                finally:
                    queue.parked = False
            else:
                msg = await ws.receive()
            mtype = msg.type
            if mtype is _TEXT or mtype is _BINARY:
                return msg.data  # type: ignore[no-any-return]
            if mtype is _PING:
                self.heard += 1
                try:
                    await ws.pong(msg.data)
                except (ConnectionError, RuntimeError):
                    self._gone = PeerGone(None)
            elif mtype is _PONG:
                self.heard += 1
            else:
                self._gone = _gone_from(msg, ws)

    async def send_text(self, text: str) -> None:
        try:
            await self._ws.send_str(text)
        except (ConnectionError, RuntimeError):
            raise PeerGone(self._ws.close_code) from None

    async def send_bytes(self, data: bytes) -> None:
        try:
            await self._ws.send_bytes(data)
        except (ConnectionError, RuntimeError):
            raise PeerGone(self._ws.close_code) from None

    @property
    def writable(self) -> bool:
        transport = self._transport
        return not (
            transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size() > WRITE_HIGH_BYTES
            or self._ws._closing
            or self._closing
        )

    def write_text(self, text: str) -> bool:
        transport = self._transport
        if (
            transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size() > WRITE_HIGH_BYTES
            or self._ws._closing
            or self._closing
        ):
            return False
        payload = text.encode()
        n = len(payload)
        # the audio deltas: a 16-bit length, the header packed in one call
        head = _LEN16(0x81, 126, n) if 125 < n < 65536 else frame_header(OP_TEXT, n)
        transport.write(head + payload)
        return True

    def write_encoded(self, frame: bytes) -> bool:
        """An encoded text frame (:class:`~voxgate.session.ports.EncodedTextWriter`): written
        as it is, like :meth:`write_text` (same refusals), without encoding it again."""
        transport = self._transport
        if (
            transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size() > WRITE_HIGH_BYTES
            or self._ws._closing
            or self._closing
        ):
            return False
        transport.write(frame)
        return True

    async def ping(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._ws.ping()

    async def close(self, code: int, reason: str = "") -> None:
        self._closing = True
        if self._ws.closed:
            return
        with contextlib.suppress(TimeoutError, ConnectionError, RuntimeError):
            async with asyncio.timeout(2.0):
                await self._ws.close(code=code, message=reason.encode()[:120])

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


def _gone_from(msg: Any, ws: web.WebSocketResponse) -> PeerGone:
    """One :class:`PeerGone` for every way aiohttp reports an ending."""
    if msg.type is _CLOSE:
        code = int(msg.data) if msg.data is not None else ws.close_code
        return PeerGone(code, msg.extra or "", clean=True)
    return PeerGone(None)  # no close frame from the peer: the connection was lost


__all__ = ["AiohttpClientConnection", "GatewayWebSocket"]
