"""The relay benchmark's client: a minimal RFC 6455 client on ``asyncio.Protocol``.

Owns one benchmark session's wire: the handshake (optionally offering ``voxgate.v1``), frame
parsing in ``data_received``, echo matching by the header in the audio, pings, close, and the
``voxgate.session.ack`` a ``voxgate.v1`` client sends. No task and no queue per session; a send
is one ``transport.write`` of a prebuilt frame. It costs about a third of what aiohttp's client
WebSocket costs per frame, which keeps the load core below saturation at 300 sessions. Client
frames are masked (the mask bit is set, as RFC 6455 requires) with an all-zero key, so the
payload is the plain text; the server unmasks as usual and cannot tell the difference.

Two kinds of session (see bench/README.md, "Traffic"):

* **text** (stock OpenAI clients): ``input_audio_buffer.append`` with base64 audio;
* **binary** (voxgate's browser client): offers ``voxgate.v1``, sends each 20 ms frame as a
  binary WebSocket frame of raw PCM16, receives ``voxgate.*`` events and acknowledges what it
  received about once a second, as ``src/voxgate/web/static/voxgate-client.js`` does.

Does not pace or measure a run (``relay_load.py``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
import time
from urllib.parse import urlsplit

from relay_procs import CLIENT_KEY

FRAME_NS = 20_000_000  # 20 ms
FRAME_BYTES = 960  # 20 ms of PCM16 mono at 24 kHz
HEADER = struct.Struct("<IIQ2x")  # session index, seq, monotonic send ns, pad to 18 bytes
HEADER_B64 = 24  # 18 bytes -> exactly 24 base64 chars, so the rest encodes independently
V1 = "voxgate.v1"
#: Gateway events a client does not count in ``received_events`` (voxgate's replay.py).
UNNUMBERED = b"voxgate.session."

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
ZERO_MASK = b"\x00\x00\x00\x00"

HEADER_UNPACK = HEADER.unpack_from
b64decode = base64.b64decode
monotonic_ns = time.monotonic_ns


def client_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + ZERO_MASK + payload


def event_type(data: bytes) -> bytes:
    """The first ``"type"`` value of a compact JSON event (the top-level one for every sender
    here: the echo and voxgate both put ``type`` first), or b"" when there is none."""
    for key in (b'"type":"', b'"type": "'):
        i = data.find(key)
        if i >= 0:
            start = i + len(key)
            return data[start : data.find(b'"', start)]
    return b""


class Meter:
    """Shared counters and latency samples for one run."""

    def __init__(self) -> None:
        self.lats: list[int] = []  # round trip, ns
        self.sent_at: list[int] = []  # send time of the same frame, monotonic ns
        self.win_start_ns = 1 << 62  # set when the measurement window opens


class ClientWS(asyncio.Protocol):
    """One benchmark session: handshake, session.created, then echoes matched by header.

    ``subprotocol``: the one the request offered; the server must select it (checked). With
    ``voxgate.v1`` the session is binary: :attr:`binary` is set, ``voxgate.*`` events before
    ``session.created`` are accepted, and :meth:`ack` may be called.
    """

    def __init__(
        self,
        idx: int,
        meter: Meter,
        request: bytes,
        accept: bytes,
        subprotocol: str | None = None,
    ) -> None:
        self.idx = idx
        self.meter = meter
        self._request = request
        self._accept = accept
        self.subprotocol = subprotocol
        self.binary = subprotocol == V1
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.frag = bytearray()
        self.upgraded = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.created = False
        self.sent = 0
        self.received = 0
        self.expect = 0
        self.out_of_order = 0
        self.misrouted = 0
        self.other_events = 0  # every event but the audio echoes, voxgate.* included
        self.gateway_events = 0  # voxgate.* events (v1 clients only)
        self.events = 0  # received_events as voxgate counts it: all but voxgate.session.*
        self.acks = 0
        self.errors = 0
        self.first_error = ""
        self.closed_early = False
        self.close_sent = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.close_sent:
            self.closed_early = True
        self._fail("connection closed before session.created")
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded and not self._upgrade(buf):
            return
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            n = b1 & 0x7F
            p = pos + 2
            if n == 126:
                if size - p < 2:
                    break
                n = (buf[p] << 8) | buf[p + 1]
                p += 2
            elif n == 127:
                if size - p < 8:
                    break
                n = int.from_bytes(buf[p : p + 8], "big")
                p += 8
            if b1 & 0x80:  # servers must not mask; tolerate it anyway
                if size - p < 4:
                    break
                key = bytes(buf[p : p + 4])
                p += 4
                if size - p < n:
                    break
                payload = bytes(b ^ key[i & 3] for i, b in enumerate(buf[p : p + n]))
            else:
                if size - p < n:
                    break
                payload = bytes(buf[p : p + n])
            pos = p + n
            self._frame(b0, payload)
        if pos:
            del buf[:pos]

    def _upgrade(self, buf: bytearray) -> bool:
        """Consume the 101 response; False while incomplete or when refused."""
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(buf[:end]).decode("latin-1")
        del buf[: end + 4]
        status = head.split("\r\n", 1)[0]
        if " 101 " not in status + " ":
            self._fail(f"handshake refused: {status}")
            return False
        if self._accept.decode() not in head:
            self._fail("bad Sec-WebSocket-Accept")
            return False
        if self.subprotocol is not None:
            selected = [
                line.split(":", 1)[1].strip()
                for line in head.split("\r\n")[1:]
                if line.lower().startswith("sec-websocket-protocol:")
            ]
            if selected != [self.subprotocol]:
                self._fail(f"server selected subprotocol {selected}, not {self.subprotocol}")
                return False
        self.upgraded = True
        return True

    # -- frames
    def _frame(self, b0: int, payload: bytes) -> None:
        opcode = b0 & 0x0F
        if opcode in (OP_TEXT, OP_CONT):
            if not b0 & 0x80:  # fragmented message: keep collecting
                self.frag += payload
                return
            if self.frag:
                payload = bytes(self.frag) + payload
                self.frag.clear()
            self._text(payload)
        elif opcode == OP_BINARY and len(payload) >= HEADER.size:
            self.events += 1  # raw output audio (voxgate.v1): the header is at its start
            self._echo(payload)
        elif opcode == OP_PING:
            self._write(client_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            if not self.close_sent:
                self.closed_early = True
                self.close_sent = True
                self._write(client_frame(OP_CLOSE, payload[:2]))
            if self.transport is not None:
                self.transport.close()

    def _text(self, data: bytes) -> None:
        i = data.find(b'"delta"')
        if i >= 0:
            self.events += 1
            q = data.index(b'"', i + 8) + 1
            self._echo(b64decode(data[q : q + HEADER_B64]))
            return
        kind = event_type(data)
        if kind.startswith(b"voxgate."):
            self.other_events += 1
            self.gateway_events += 1
            if not kind.startswith(UNNUMBERED):
                self.events += 1
            return
        self.events += 1
        if not self.created:
            if kind == b"session.created":
                self.created = True
                if not self.ready.done():
                    self.ready.set_result(None)
            else:
                self._fail(f"first event was not session.created: {data[:160]!r}")
            return
        self.other_events += 1
        if kind == b"error":
            self.errors += 1
            if not self.first_error:
                self.first_error = data[:300].decode(errors="replace")

    def _echo(self, header: bytes) -> None:
        sid, seq, ts = HEADER_UNPACK(header)
        now = monotonic_ns()
        self.received += 1
        if sid != self.idx:
            self.misrouted += 1
        if seq != self.expect:
            self.out_of_order += 1
        self.expect = seq + 1
        meter = self.meter
        if ts >= meter.win_start_ns:
            meter.lats.append(now - ts)
            meter.sent_at.append(ts)

    def ack(self) -> None:
        """``voxgate.session.ack``: every event received so far but ``voxgate.session.*``."""
        text = b'{"type":"voxgate.session.ack","received_events":%d}' % self.events
        self._write(client_frame(OP_TEXT, text))
        self.acks += 1

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
            if self.transport is not None:
                self.transport.close()

    def _write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    async def close(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.close_sent = True
        self._write(client_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), 5)
        if not self.transport.is_closing():
            self.transport.close()


def handshake(
    host: str, port: int, path: str, subprotocol: str | None = None
) -> tuple[bytes, bytes]:
    """The upgrade request (Bearer CLIENT_KEY, optionally offering a subprotocol) and the
    ``Sec-WebSocket-Accept`` value the server must answer with."""
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())  # noqa: S324 (RFC 6455)
    offer = f"Sec-WebSocket-Protocol: {subprotocol}\r\n" if subprotocol else ""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\n{offer}Authorization: Bearer {CLIENT_KEY}\r\n\r\n"
    ).encode()
    return request, accept


async def connect(
    url: str, idx: int, meter: Meter, wait_s: float, subprotocol: str | None = None
) -> ClientWS | str:
    """A session that has received ``session.created``, or why it failed."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    request, accept = handshake(host, port, path, subprotocol)
    loop = asyncio.get_running_loop()
    proto: ClientWS | None = None
    try:
        async with asyncio.timeout(wait_s):
            _, proto = await loop.create_connection(
                lambda: ClientWS(idx, meter, request, accept, subprotocol), host, port
            )
            await proto.ready
    except (OSError, ConnectionError, TimeoutError) as exc:
        if proto is not None and proto.transport is not None:
            proto.transport.close()
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return proto


def audio_rest() -> bytes:
    """The 942 bytes after the header: constant, so every frame differs only in its header."""
    return bytes((i * 37) & 0xFF for i in range(FRAME_BYTES - HEADER.size))


def frame_parts() -> tuple[bytes, bytes]:
    """A text append's wire frame around its 24-char header: ``head + b64(hdr) + suffix``."""
    prefix = b'{"type":"input_audio_buffer.append","audio":"'
    suffix = base64.b64encode(audio_rest()) + b'"}'
    text_len = len(prefix) + HEADER_B64 + len(suffix)
    head = client_frame(OP_TEXT, b"x" * text_len)[:-text_len]  # frame header + zero mask
    return head + prefix, suffix


def binary_frame_parts() -> tuple[bytes, bytes]:
    """A binary frame's wire form around its 18-byte header: ``head + hdr + rest``.

    The same 960 bytes as the text append decodes to, so voxgate's base64 of it (and the
    echo's delta) carries the same 1280 characters a text client sends.
    """
    head = client_frame(OP_BINARY, b"x" * FRAME_BYTES)[:-FRAME_BYTES]
    return head, audio_rest()
