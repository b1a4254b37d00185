"""voxgate's own WebSocket client, for upstreams: an :class:`UpstreamConnection` on asyncio.

Why not aiohttp's client: the relay's hot path hands every upstream frame to the session
synchronously, from ``data_received`` (see :mod:`voxgate.session.ports`), with no task switch
per frame; aiohttp's client only delivers through an awaited queue. The protocol here is small:
an HTTP/1.1 upgrade (RFC 6455 §4.1, key and accept checked), frames parsed by
:class:`~voxgate.protocol.wsframe.FrameParser`, masked client frames, pings answered and
counted, the close handshake, and flow control both ways (a full socket buffer makes
``write_text`` refuse and ``send_text`` wait; a full receive queue pauses reading, so TCP slows
the server). No proxies, no compression (voxgate never offers permessage-deflate).

Must not: log the request (it carries the upstream key) or the URL's query; buffer without
bound.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import random
import ssl
import struct
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from voxgate.protocol.wsframe import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameParser,
    Masker,
    close_payload,
    frame_header,
    masked_frame,
    parse_close,
    xor_mask,
)
from voxgate.session.delivery import Delivery
from voxgate.session.ports import EncodedFrameSink, FrameSink, PeerGone

_c_mask: Callable[[bytes, bytearray], None] | None
try:  # aiohttp's C masking helper is ~4x faster than big-int XOR; same result
    from aiohttp._websocket.mask import (  # type: ignore[import-not-found]
        _websocket_mask_cython,
    )

    _c_mask = _websocket_mask_cython

    def _mask(key: bytes, payload: bytes) -> bytes | bytearray:
        buf = bytearray(payload)
        _websocket_mask_cython(key, buf)
        return buf  # a bytearray: concatenated into the frame, never kept

    MASKER: Masker = _mask
except ImportError:  # pragma: no cover - aiohttp without its extensions
    _c_mask = None
    MASKER = xor_mask
_LEN16_MASKED = struct.Struct("!BBH4s").pack  # FIN+text, mask bit + 126, length, masking key

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEAD_BYTES: Final = 64 * 1024
#: Received frames held for ``receive()`` before reading pauses (bytes of payload).
QUEUE_LIMIT_BYTES: Final = 1024 * 1024
#: The inbox is bounded in bytes above (reading pauses), not in frames.
_NO_FRAME_LIMIT: Final = 1 << 30
# masking keys only hide payloads from intermediaries (RFC 6455 §10.3), not secrets
_rand = random.Random()  # noqa: S311


class HandshakeError(Exception):
    """The server did not upgrade: ``status`` is its HTTP status (None: not HTTP at all)."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class WSClientConnection(asyncio.Protocol):
    """One upstream WebSocket. Use :func:`connect`; see the module docstring."""

    accepts_audio_bytes = False

    def __init__(self, request: bytes, accept: bytes, *, max_message_bytes: int) -> None:
        self._request = request
        self._accept = accept
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._head = bytearray()
        self._upgraded = False
        self.handshake: asyncio.Future[None] = self._loop.create_future()
        self._parser = FrameParser(max_message_bytes)
        self._inbox = Delivery(_NO_FRAME_LIMIT, on_taken=self._after_take)
        self._encoded_sink: EncodedFrameSink | None = None
        self._reading_paused = False
        #: control frames received (a plain attribute: the clock reads it once a second)
        self.heard = 0
        self._paused_writing = False
        self._drained: asyncio.Future[None] | None = None
        self._close_sent = False
        self._gone: PeerGone | None = None
        self._close_code: int | None = None
        self._closed: asyncio.Future[None] = self._loop.create_future()

    # ------------------------------------------------------------------ Connection

    @property
    def close_code(self) -> int | None:
        return self._close_code

    def set_sink(self, sink: FrameSink | None) -> None:
        self._inbox.sink = sink

    def set_encoded_sink(self, sink: EncodedFrameSink | None) -> None:
        """See :class:`~voxgate.session.ports.EncodedTextSource`: whole ASCII text frames of
        126..65535 bytes are offered to ``sink`` as they arrived, before any decoding."""
        self._encoded_sink = sink

    def receive(self) -> Coroutine[Any, Any, str | bytes]:
        """The inbox's own ``receive()`` (awaited by the caller): no coroutine of ours around
        it, one object fewer per idle session for the garbage collector."""
        return self._inbox.receive()

    def _after_take(self, queued_bytes: int) -> None:
        if self._reading_paused and queued_bytes <= QUEUE_LIMIT_BYTES // 2:
            self._reading_paused = False
            if self._transport is not None:
                self._transport.resume_reading()

    @property
    def writable(self) -> bool:
        return not (self._paused_writing or self._close_sent or self._transport is None)

    def write_text(self, text: str) -> bool:
        transport = self._transport
        if self._paused_writing or self._close_sent or transport is None:
            return False
        payload = text.encode()
        n = len(payload)
        key = _rand.getrandbits(32).to_bytes(4, "little")
        if 125 < n < 65536:  # the audio frames: header packed in one call
            head = _LEN16_MASKED(0x81, 0xFE, n, key)
        else:
            head = frame_header(OP_TEXT, n, mask_bit=0x80) + key
        mask = _c_mask
        masked: bytes | bytearray
        if mask is not None:  # MASKER's body, without its call (once per client frame)
            masked = buf = bytearray(payload)
            mask(key, buf)
        else:  # pragma: no cover - aiohttp without its extensions
            masked = MASKER(key, payload)
        # one write, one syscall: asyncio sends each write at once while its buffer is empty
        transport.write(head + masked)
        return True

    async def send_text(self, text: str) -> None:
        while not self.write_text(text):
            if self._gone is not None or self._close_sent or self._transport is None:
                raise self._gone or PeerGone(self._close_code)
            if self._drained is None:
                self._drained = self._loop.create_future()
            await asyncio.shield(self._drained)

    def write_audio(self, pcm: bytes) -> bool:
        return False

    async def ping(self) -> None:
        self._write_control(OP_PING, b"")

    async def close(self, code: int, reason: str = "") -> None:
        if self._transport is None:
            return
        if not self._close_sent and self._gone is None:
            self._write_control(OP_CLOSE, close_payload(code, reason))
            self._close_sent = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.shield(self._closed)
        if not self._closed.done() and self._transport is not None:
            self._transport.abort()

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 (stream sockets only)
        self._transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if not self._upgraded:
            data = self._read_head(data)
            if not data:
                return
        # The common case, one whole unfragmented text frame of 126..65535 bytes in this read
        # and nothing held from before, skips the general parser; while the session waits
        # with nothing queued, an ASCII one is first offered as it is (no decode, no copy).
        if (
            len(data) > 4
            and data[0] == 0x81
            and data[1] == 126
            and (data[2] << 8 | data[3]) == len(data) - 4
            and self._parser.idle
        ):
            payload = data[4:]
            inbox = self._inbox
            if inbox.idle:
                encoded = self._encoded_sink
                if encoded is not None and payload.isascii() and encoded(data, payload):
                    return
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                self._fail(1007, "text frame is not UTF-8")
                return
            if not inbox.offer(text):
                self._enqueue(text)
            return
        try:
            messages = self._parser.feed(data)
        except FrameError as exc:
            self._fail(exc.code, exc.reason)
            return
        for opcode, payload in messages:
            self._on_message(opcode, payload)

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        self._wake_writers()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeError("connection closed during the upgrade"))
        if self._gone is None:
            self._gone = PeerGone(self._close_code, clean=False)
        self._transport = None
        if not self._closed.done():
            self._closed.set_result(None)
        self._inbox.end(self._gone)
        self._wake_writers()

    # ------------------------------------------------------------------ internals

    def _read_head(self, data: bytes) -> bytes:
        """Collect the HTTP response; return what follows it (frames), or b"" while waiting."""
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > _MAX_HEAD_BYTES:
                self._abort_handshake(HandshakeError("response headers too large"))
            return b""
        head = bytes(self._head[:end]).decode("latin-1")
        rest = bytes(self._head[end + 4 :])
        self._head.clear()
        status_line, _, header_text = head.partition("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            self._abort_handshake(HandshakeError("the upstream did not answer with HTTP"))
            return b""
        status = int(parts[1])
        if status != 101:
            self._abort_handshake(
                HandshakeError(f"upstream refused the WebSocket upgrade with HTTP {status}", status)
            )
            return b""
        headers = _headers(header_text)
        if headers.get("sec-websocket-accept", "").encode() != self._accept:
            self._abort_handshake(HandshakeError("bad Sec-WebSocket-Accept", status))
            return b""
        if headers.get("sec-websocket-extensions"):
            self._abort_handshake(HandshakeError("unrequested WebSocket extension", status))
            return b""
        self._upgraded = True
        self.handshake.set_result(None)
        return rest

    def _abort_handshake(self, exc: HandshakeError) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(exc)
        if self._transport is not None:
            self._transport.abort()

    def _on_message(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_TEXT:
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                self._fail(1007, "text frame is not UTF-8")
                return
            if not self._inbox.offer(text):
                self._enqueue(text)
        elif opcode == OP_BINARY:
            self._enqueue(payload)
        elif opcode == OP_PING:
            self.heard += 1
            self._write_control(OP_PONG, payload)
        elif opcode == OP_PONG:
            self.heard += 1
        elif opcode == OP_CLOSE:
            self._on_close(payload)

    def _on_close(self, payload: bytes) -> None:
        try:
            code, reason = parse_close(payload)
        except FrameError as exc:
            self._fail(exc.code, exc.reason)
            return
        self._close_code = code if code is not None else 1005
        if not self._close_sent:
            self._write_control(OP_CLOSE, payload[:2])
            self._close_sent = True
        self._gone = PeerGone(code, reason, clean=True)
        self._inbox.end(self._gone)
        self._wake_writers()
        if self._transport is not None:
            self._transport.close()  # the server closes TCP first; we do not wait for it

    def _enqueue(self, frame: str | bytes) -> None:
        inbox = self._inbox
        inbox.push(frame)
        if inbox.queued_bytes > QUEUE_LIMIT_BYTES and not self._reading_paused:
            self._reading_paused = True
            if self._transport is not None:
                self._transport.pause_reading()

    def _wake_writers(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _write_control(self, opcode: int, payload: bytes) -> None:
        transport = self._transport
        if transport is None or self._close_sent or transport.is_closing():
            return
        key = _rand.getrandbits(32).to_bytes(4, "little")
        transport.write(masked_frame(opcode, payload, key, MASKER))

    def _fail(self, code: int, reason: str) -> None:
        """The server broke the protocol: close with ``code`` and give up on the socket."""
        self._write_control(OP_CLOSE, close_payload(code, reason))
        self._close_sent = True
        self._close_code = code
        self._gone = PeerGone(None, reason, clean=False)
        self._inbox.end(self._gone)
        if self._transport is not None:
            self._transport.abort()


def _headers(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


async def connect(
    url: str,
    headers: Mapping[str, str],
    *,
    max_message_bytes: int,
    ssl_context: ssl.SSLContext | None = None,
) -> WSClientConnection:
    """Open a WebSocket to ``url`` (``ws://`` or ``wss://``); the caller bounds the time.

    Raises:
        HandshakeError: the server answered, but not with a valid upgrade.
        OSError: the connection could not be made (refused, DNS, TLS).
    """
    parts = urlsplit(url)
    secure = parts.scheme in ("wss", "https")
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())  # noqa: S324 (RFC 6455)
    host_header = host if parts.port is None else f"{host}:{port}"
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host_header}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    loop = asyncio.get_running_loop()
    context = (ssl_context or ssl.create_default_context()) if secure else None
    transport, proto = await loop.create_connection(
        lambda: WSClientConnection(request, accept, max_message_bytes=max_message_bytes),
        host,
        port,
        ssl=context,
        server_hostname=host if secure else None,
    )
    try:
        await proto.handshake
    except BaseException:
        transport.abort()
        raise
    return proto
