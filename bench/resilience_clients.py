"""Clients for ``bench/resilience.py``.

* :class:`Inbox` clients, one reader task each, every event time-stamped on arrival:
  :func:`open_v1` (raw ``websockets``, subprotocol ``voxgate.v1``, as the resume tests use),
  :func:`resume_v1` (a resuming connection) and :func:`open_stock` (the stock ``openai`` SDK).
* Many cheap sessions for load and memory: :func:`open_raw`, relay_client.py's asyncio-protocol
  client with an optional subprotocol; :class:`Probe`, the same client pinging every so often
  and timing the pongs; :func:`stalled_client`, one that upgrades and never reads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson
from openai import AsyncOpenAI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import relay_client
from resilience_common import CLIENT_KEY

now = time.perf_counter


class Mic:
    """A microphone: a 20 ms append every 20 ms on an absolute clock, each frame different
    (faint noise, far below any VAD threshold), everything sent kept in ``pcm``."""

    def __init__(self, seed: int = 3) -> None:
        self._rng = np.random.default_rng(seed)
        self.pcm = bytearray()
        self.stop = asyncio.Event()

    def frame(self) -> str:
        pcm = self._rng.normal(0.0, 0.004 * 32767, 480).astype("<i2").tobytes()
        self.pcm += pcm
        return (
            '{"type":"input_audio_buffer.append","audio":"' + base64.b64encode(pcm).decode() + '"}'
        )

    async def run(self, send: Callable[[str], Awaitable[None]]) -> None:
        t0, k = time.monotonic(), 0
        while not self.stop.is_set():
            await send(self.frame())
            k += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), max(0.0, t0 + k * 0.02 - time.monotonic()))


def text_item(text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        },
    }


class Inbox:
    """Every event of one connection as ``(arrival time, type, event)``, read by one task."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, Any]] = []
        self.counted = 0  # events a voxgate.v1 client counts for a resume
        self.closed = False
        self._changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def add(self, etype: str, event: Any) -> None:
        self.events.append((now(), etype, event))
        if not etype.startswith("voxgate.session."):
            self.counted += 1
        self._changed.set()

    async def wait(
        self, pred: Callable[[str, Any], bool], after: int = 0, timeout_s: float = 30.0
    ) -> tuple[int, float, Any]:
        """The first event from index ``after`` on with ``pred(type, event)``."""
        i = after
        async with asyncio.timeout(timeout_s):
            while True:
                while i < len(self.events):
                    t, etype, event = self.events[i]
                    if pred(etype, event):
                        return i, t, event
                    i += 1
                if self.closed:
                    raise ConnectionError("connection closed")
                self._changed.clear()
                await self._changed.wait()

    async def wait_type(
        self, etype: str, after: int = 0, timeout_s: float = 30.0
    ) -> tuple[int, float, Any]:
        return await self.wait(lambda t, _e: t == etype, after, timeout_s)

    def find(self, etype: str, after: int = 0) -> tuple[float, Any] | None:
        for t, et, event in self.events[after:]:
            if et == etype:
                return t, event
        return None

    def of(self, etype: str) -> list[Any]:
        return [e for _t, et, e in self.events if et == etype]

    def _done(self) -> None:
        self.closed = True
        self._changed.set()


class V1Client:
    """A raw ``websockets`` client (voxgate.v1); ``inbox.counted`` is its received count."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.inbox = Inbox()
        self.frame_bytes: list[int] = []
        self.inbox.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for frame in self.ws:
                event = orjson.loads(frame)
                self.frame_bytes.append(len(frame))
                self.inbox.add(str(event.get("type")), event)
        except ConnectionClosed:
            pass
        finally:
            self.inbox._done()

    async def send(self, event: dict[str, Any] | str) -> None:
        await self.ws.send(event if isinstance(event, str) else orjson.dumps(event).decode())

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
        if self.inbox.task is not None:
            await asyncio.gather(self.inbox.task, return_exceptions=True)


async def open_v1(url: str) -> V1Client:
    ws = await connect(
        url,
        additional_headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        subprotocols=["voxgate.v1"],  # type: ignore[list-item]
        ping_interval=None,
        max_size=None,
    )
    return V1Client(ws)


async def resume_v1(url: str, token: str, received: int) -> tuple[V1Client, float]:
    """Open a resuming connection and send the request; returns it and when it opened."""
    ws = await connect(
        url,
        subprotocols=["voxgate.v1", "voxgate.resume"],  # type: ignore[list-item]
        ping_interval=None,
        max_size=None,
    )
    opened = now()
    client = V1Client(ws)
    await client.send(
        {"type": "voxgate.session.resume", "resume_token": token, "received_events": received}
    )
    return client, opened


class StockClient:
    """The stock ``openai`` SDK realtime connection, its events pumped into an inbox."""

    def __init__(self, port: int) -> None:
        self.sdk = AsyncOpenAI(api_key=CLIENT_KEY, websocket_base_url=f"ws://127.0.0.1:{port}/v1")
        self.inbox = Inbox()
        self._cm: Any = None
        self.conn: Any = None

    async def start(self) -> StockClient:
        self._cm = self.sdk.realtime.connect(model="gpt-realtime")
        self.conn = await self._cm.__aenter__()
        self.inbox.task = asyncio.create_task(self._pump())
        return self

    async def _pump(self) -> None:
        try:
            with contextlib.suppress(Exception):  # the SDK raises its own types when closed
                async for event in self.conn:
                    self.inbox.add(event.type, event)
        finally:
            self.inbox._done()

    async def send(self, event: dict[str, Any] | str) -> None:
        if isinstance(event, str):
            await self.conn.send_raw(event)
        else:
            await self.conn.send(event)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._cm.__aexit__(None, None, None), 5)
        if self.inbox.task is not None:
            self.inbox.task.cancel()
            await asyncio.gather(self.inbox.task, return_exceptions=True)
        await self.sdk.close()


async def open_stock(port: int) -> StockClient:
    return await StockClient(port).start()


# --------------------------------------------------------------------------- many sessions


def _handshake(url: str, subprotocol: str | None) -> tuple[str, int, bytes, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + relay_client.WS_GUID).digest())  # noqa: S324
    proto = f"Sec-WebSocket-Protocol: {subprotocol}\r\n" if subprotocol else ""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\n{proto}Authorization: Bearer {CLIENT_KEY}\r\n\r\n"
    ).encode()
    return host, port, request, accept


async def open_raw(
    url: str,
    idx: int,
    *,
    subprotocol: str | None = None,
    cls: type[relay_client.ClientWS] = relay_client.ClientWS,
) -> relay_client.ClientWS | str:
    """relay_client.py's cheap client (ready at ``session.created``), or why it failed."""
    host, port, request, accept = _handshake(url, subprotocol)
    proto: relay_client.ClientWS | None = None
    try:
        async with asyncio.timeout(20):
            _, proto = await asyncio.get_running_loop().create_connection(
                lambda: cls(idx, relay_client.Meter(), request, accept), host, port
            )
            await proto.ready
    except (OSError, ConnectionError, TimeoutError) as exc:
        if proto is not None and proto.transport is not None:
            proto.transport.close()
        return f"{type(exc).__name__}: {exc}"
    return proto


async def open_many(
    url: str,
    n: int,
    subprotocol: str | None = None,
    cls: type[relay_client.ClientWS] = relay_client.ClientWS,
) -> tuple[list[relay_client.ClientWS], list[str]]:
    sem = asyncio.Semaphore(32)

    async def one(i: int) -> relay_client.ClientWS | str:
        async with sem:
            return await open_raw(url, i, subprotocol=subprotocol, cls=cls)

    outcomes = await asyncio.gather(*(one(i) for i in range(n)))
    ok = [o for o in outcomes if isinstance(o, relay_client.ClientWS)]
    return ok, [o for o in outcomes if isinstance(o, str)]


async def stream(
    sessions: list[relay_client.ClientWS], seconds: float, every: float, sample: Callable[[], None]
) -> int:
    """One 20 ms append per session every 20 ms (staggered); ``sample()`` every ``every`` s."""
    head, suffix = relay_client.frame_parts()
    hdr = bytearray(relay_client.HEADER.size)
    m = len(sessions)
    step = relay_client.FRAME_NS / max(1, m)
    clock = time.monotonic_ns
    t0 = clock()
    end = t0 + int(seconds * 1e9)
    next_sample = t0
    j = sent = 0
    while (t := clock()) < end:
        if t >= next_sample:
            sample()
            next_sample += int(every * 1e9)
        due = t0 + int(j * step)
        if due > t:
            await asyncio.sleep((due - t) / 1e9)
            continue
        s = sessions[j % m]
        if s.transport is not None and not s.closed_early:
            relay_client.HEADER.pack_into(hdr, 0, j % m, s.sent, clock())
            s.transport.write(head + base64.b64encode(hdr) + suffix)
            s.sent += 1
            sent += 1
        j += 1
    sample()
    return sent


class Silent(relay_client.ClientWS):
    """A session that sends nothing: it only answers voxgate's pings (counted)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.pinged = 0

    def _frame(self, b0: int, payload: bytes) -> None:
        if b0 & 0x0F == relay_client.OP_PING:
            self.pinged += 1
        super()._frame(b0, payload)


class Probe(relay_client.ClientWS):
    """An idle session that pings; pong payloads carry the send time (monotonic ns)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.samples: list[tuple[int, int]] = []  # (sent at ns, rtt ns)
        self.pings = 0

    def ping(self) -> None:
        self.pings += 1
        self._write(
            relay_client.client_frame(relay_client.OP_PING, time.monotonic_ns().to_bytes(8, "big"))
        )

    def _frame(self, b0: int, payload: bytes) -> None:
        if b0 & 0x0F == relay_client.OP_PONG and len(payload) == 8:
            sent = int.from_bytes(payload, "big")
            self.samples.append((sent, time.monotonic_ns() - sent))
            return
        super()._frame(b0, payload)


async def stalled_client(port: int) -> asyncio.StreamWriter:
    """A voxgate.v1 client that completes the upgrade and then never reads a byte."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: voxgate.v1\r\n"
        b"Authorization: Bearer " + CLIENT_KEY.encode() + b"\r\n\r\n"
    )
    await writer.drain()
    return writer
