"""voxgate's upstream WebSocket client against real servers on 127.0.0.1 (aiohttp, or raw asyncio
where a server must misbehave). No mocks: every byte crosses a socket."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import WSMsgType, web

from voxgate.backends.ws_client import (
    QUEUE_LIMIT_BYTES,
    HandshakeError,
    WSClientConnection,
    connect,
)
from voxgate.session.ports import PeerGone

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MIB = 1024 * 1024
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[str]:
    """An aiohttp app on a free port with ``handler`` at /ws; yields the ws:// URL."""
    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        await runner.cleanup()


async def open_ws(url: str, **headers: str) -> WSClientConnection:
    async with asyncio.timeout(5):
        return await connect(url, headers, max_message_bytes=4 * MIB)


async def upgraded(request: web.Request, **kw: object) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(**kw)  # type: ignore[arg-type]
    await ws.prepare(request)
    return ws


async def until(predicate: Callable[[], bool]) -> None:
    """Yield to the loop (not a timed sleep) until a condition no event announces holds."""
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 (nothing to await: pause_reading is silent)
            await asyncio.sleep(0)


# ---------------------------------------------------------------------------- handshake


async def test_handshake_then_text_both_ways() -> None:
    seen: dict[str, str] = {}

    async def echo(request: web.Request) -> web.StreamResponse:
        seen["auth"] = request.headers.get("Authorization", "")
        seen["model"] = request.query.get("model", "")
        ws = await upgraded(request)
        async for msg in ws:
            await ws.send_str("echo:" + msg.data)
        return ws

    async with serving(echo) as url:
        conn = await open_ws(url + "?model=gpt-x", Authorization="Bearer sk-test")
        await conn.send_text("héllo")
        async with asyncio.timeout(5):
            assert await conn.receive() == "echo:héllo"
        await conn.close(1000)
    assert seen == {"auth": "Bearer sk-test", "model": "gpt-x"}


@pytest.mark.parametrize("status", [401, 404])
async def test_refused_upgrade_reports_the_http_status(status: int) -> None:
    async def refuse(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text="no")

    async with serving(refuse) as url:
        with pytest.raises(HandshakeError) as caught:
            await open_ws(url)
    assert caught.value.status == status


@contextlib.asynccontextmanager
async def raw_upgrade(
    answer: Callable[[bytes], bytes], after: bytes = b""
) -> AsyncIterator[tuple[str, asyncio.Future[bytes]]]:
    """A hand-written server: reads the upgrade request, writes ``answer(key) + after``, then
    collects everything the client sends until it closes (the future's result)."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[bytes] = loop.create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        writer.write(answer(key) + after)
        rest = b""
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                rest += chunk
        received.set_result(rest)
        writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}/", received
    finally:
        server.close()
        await server.wait_closed()


def accept_for(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID, usedforsecurity=False).digest())


def upgrade_answer(accept: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n" + extra + b"\r\n"
    )


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda key: upgrade_answer(base64.b64encode(b"x" * 20)), id="bad-accept"),
        pytest.param(
            lambda key: upgrade_answer(
                accept_for(key), b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
            ),
            id="unrequested-extension",
        ),
    ],
)
async def test_invalid_upgrade_is_refused_and_the_socket_dropped(
    answer: Callable[[bytes], bytes],
) -> None:
    async with raw_upgrade(answer) as (url, received):
        with pytest.raises(HandshakeError):
            await open_ws(url)
        async with asyncio.timeout(5):
            assert await received == b""  # the client sent nothing more and hung up


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        pytest.param(b"\xc1\x02hi", 1002, id="reserved-bit"),
        pytest.param(b"\x81\x02\xff\xfe", 1007, id="text-not-utf8"),
        pytest.param(b"\x82\x7f" + (5 * MIB).to_bytes(8, "big"), 1009, id="too-big"),
        pytest.param(b"\x88\x01\x03", 1002, id="one-byte-close"),
    ],
)
async def test_protocol_error_from_the_server_is_answered_with_its_close_code(
    bad: bytes, code: int
) -> None:
    async with raw_upgrade(lambda key: upgrade_answer(accept_for(key)), bad) as (url, received):
        conn = await open_ws(url)
        with pytest.raises(PeerGone) as caught:
            async with asyncio.timeout(5):
                await conn.receive()
        async with asyncio.timeout(5):
            sent = await received
    assert caught.value.clean is False
    assert conn.close_code == code
    assert sent[0] == 0x88  # a final close frame, masked, with the code
    assert sent[1] & 0x80
    key, body = sent[2:6], sent[6 : 6 + (sent[1] & 0x7F)]
    assert bytes(c ^ key[i % 4] for i, c in enumerate(body))[:2] == code.to_bytes(2, "big")


# ---------------------------------------------------------------------------- sink and queue


async def test_sink_takes_frames_while_the_reader_is_parked() -> None:
    async def on_request(request: web.Request) -> web.StreamResponse:
        ws = await upgraded(request)
        async for msg in ws:
            for word in msg.data.split():  # several frames in one burst
                await ws.send_str(word.upper())
        return ws

    async with serving(on_request) as url:
        conn = await open_ws(url)
        offered: list[tuple[str | bytes, bool]] = []
        took_a = asyncio.get_running_loop().create_future()

        def sink(frame: str | bytes) -> bool:
            offered.append((frame, reading.done()))
            if frame == "A":
                took_a.set_result(None)
            return frame != "B"

        conn.set_sink(sink)
        reading = asyncio.create_task(conn.receive())
        await conn.send_text("a")
        async with asyncio.timeout(5):
            await took_a
        assert not reading.done()  # taken by the sink: receive() still waits
        # the sink declines "B": it is queued, and "C" behind it never reaches the sink
        await conn.send_text("b c")
        async with asyncio.timeout(5):
            assert await reading == "B"
            assert await conn.receive() == "C"
        assert offered == [("A", False), ("B", False)]
        await conn.close(1000)


async def test_encoded_sink_gets_whole_ascii_frames_as_they_arrived() -> None:
    """Frames of 126..65535 bytes go to the encoded sink undecoded while the reader is parked;
    a non-ASCII frame and a declined one are decoded and offered to the ordinary sink, a
    short one never reaches the encoded sink, and receive() gets what neither sink took."""
    long_a = "a" * 200
    long_b = "b" * 300
    long_u = "\u00e9" * 100  # 200 bytes of UTF-8, not ASCII
    frames = ["go", long_a, long_b, long_u, "short"]

    async def on_request(request: web.Request) -> web.StreamResponse:
        ws = await upgraded(request)
        async for msg in ws:
            await ws.send_str(frames[int(msg.data)])
        return ws

    async with serving(on_request) as url:
        conn = await open_ws(url)
        encoded: list[bytes] = []
        offered: list[str | bytes] = []
        seen = asyncio.Event()

        def encoded_sink(frame: bytes, payload: bytes) -> bool:
            assert payload == frame[4:]
            encoded.append(frame)
            seen.set()
            return frame.endswith(b"a")  # "b" frames are declined

        def sink(frame: str | bytes) -> bool:
            offered.append(frame)
            seen.set()
            return True

        conn.set_sink(sink)
        conn.set_encoded_sink(encoded_sink)
        reading = asyncio.create_task(conn.receive())
        for i in range(1, 5):
            seen.clear()
            await conn.send_text(str(i))
            async with asyncio.timeout(5):
                await seen.wait()
        assert encoded == [
            struct.pack("!BBH", 0x81, 126, n) + t.encode()
            for n, t in ((200, long_a), (300, long_b))
        ]
        assert offered == [long_b, long_u, "short"]
        assert not reading.done()
        conn.set_sink(None)
        conn.set_encoded_sink(None)
        await conn.send_text("1")  # no sinks: decoded and queued
        async with asyncio.timeout(5):
            assert await reading == long_a
        await conn.close(1000)


async def test_frames_queue_in_order_while_the_reader_is_busy() -> None:
    async def burst(request: web.Request) -> web.StreamResponse:
        ws = await upgraded(request)
        await ws.receive()  # "go": the client's sink is in place
        for i in range(3):
            await ws.send_str(str(i))
        await ws.send_bytes(b"\x00raw")
        await ws.receive()  # the client's close; aiohttp answers it
        return ws

    async with serving(burst) as url:
        conn = await open_ws(url)
        offered: list[str | bytes] = []

        def take(frame: str | bytes) -> bool:
            offered.append(frame)
            return True

        conn.set_sink(take)
        await conn.send_text("go")
        # never parked in receive(): everything that arrives before the close reply is queued
        await conn.close(1000)
        async with asyncio.timeout(5):
            got = [await conn.receive() for _ in range(4)]
            with pytest.raises(PeerGone) as caught:
                await conn.receive()
    assert got == ["0", "1", "2", b"\x00raw"]
    assert offered == []
    assert (caught.value.code, caught.value.clean) == (1000, True)


async def test_receive_queue_is_bounded_by_pausing_the_socket() -> None:
    frame_bytes = 64 * 1024
    total = 8 * MIB // frame_bytes

    async def flood(request: web.Request) -> web.StreamResponse:
        ws = await upgraded(request)
        for i in range(total):
            await ws.send_str(f"{i:08d}".ljust(frame_bytes, "."))
        await ws.send_str("end")
        await ws.receive()
        return ws

    async with serving(flood) as url:
        conn = await open_ws(url)
        await until(lambda: conn._reading_paused)
        # one socket read (asyncio reads at most 256 KiB) may land past the limit, no more
        assert conn._inbox.queued_bytes <= QUEUE_LIMIT_BYTES + 256 * 1024 + frame_bytes
        async with asyncio.timeout(30):
            got = [await conn.receive() for _ in range(total + 1)]
        assert [int(f[:8]) for f in got[:-1]] == list(range(total))
        assert got[-1] == "end"
        await conn.close(1000)


# ---------------------------------------------------------------------------- control frames


async def test_pings_both_ways_are_answered_and_counted() -> None:
    pong_data: list[bytes] = []

    async def pinger(request: web.Request) -> web.StreamResponse:
        ws = await upgraded(request, autoping=False)
        await ws.ping(b"are you there")
        msg = await ws.receive()
        assert msg.type is WSMsgType.PONG
        pong_data.append(msg.data)
        await ws.send_str("pong seen")
        msg = await ws.receive()  # the client's ping
        assert msg.type is WSMsgType.PING
        await ws.pong(msg.data)
        await ws.send_str("ping seen")
        await ws.receive()
        return ws

    async with serving(pinger) as url:
        conn = await open_ws(url)
        async with asyncio.timeout(5):
            assert await conn.receive() == "pong seen"
            assert conn.heard == 1  # the server's ping
            await conn.ping()
            assert await conn.receive() == "ping seen"
            assert conn.heard == 2  # and the pong to ours
        await conn.close(1000)
    assert pong_data == [b"are you there"]


# ---------------------------------------------------------------------------- endings


async def test_server_close_is_a_clean_peer_gone_with_its_code() -> None:
    echoed: list[int | None] = []

    async def closer(request: web.Request) -> web.StreamResponse:
        ws = await upgraded(request)
        await ws.close(code=1001, message=b"restarting")
        echoed.append(ws.close_code)  # the code the client answered with
        return ws

    async with serving(closer) as url:
        conn = await open_ws(url)
        with pytest.raises(PeerGone) as caught:
            async with asyncio.timeout(5):
                await conn.receive()
        async with asyncio.timeout(5):
            await conn.close(1000)  # already over: returns, never raises
        assert not conn.write_text("late")
    gone = caught.value
    assert (gone.code, gone.reason, gone.clean) == (1001, "restarting", True)
    assert conn.close_code == 1001
    assert echoed == [1001]


async def test_client_close_reaches_the_server_with_its_code() -> None:
    got: asyncio.Future[tuple[object, ...]] = asyncio.get_running_loop().create_future()

    async def listener(request: web.Request) -> web.StreamResponse:
        ws = await upgraded(request)
        msg = await ws.receive()
        got.set_result((msg.type, msg.data, msg.extra))
        return ws

    async with serving(listener) as url:
        conn = await open_ws(url)
        async with asyncio.timeout(5):
            await conn.close(1000, "done")
            assert await got == (WSMsgType.CLOSE, 1000, "done")
            with pytest.raises(PeerGone) as caught:
                await conn.receive()
    assert (caught.value.code, caught.value.clean) == (1000, True)


async def test_connection_reset_is_an_unclean_peer_gone() -> None:
    async def crash(request: web.Request) -> web.StreamResponse:
        ws = await upgraded(request)
        await ws.receive()
        assert request.transport is not None  # an RST (SO_LINGER 0), as a crashed peer sends
        sock = request.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        request.transport.abort()
        return ws

    async with serving(crash) as url:
        conn = await open_ws(url)
        await conn.send_text("bye")
        with pytest.raises(PeerGone) as caught:
            async with asyncio.timeout(5):
                await conn.receive()
        with pytest.raises(PeerGone):
            await conn.send_text("after")
        assert not conn.write_text("after")
    assert (caught.value.code, caught.value.clean) == (None, False)


# ---------------------------------------------------------------------------- backpressure


async def test_write_text_refuses_and_send_text_waits_while_the_server_does_not_read() -> None:
    start_reading = asyncio.Event()
    received: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()

    async def slow(request: web.Request) -> web.StreamResponse:
        ws = await upgraded(request, max_msg_size=0)
        await start_reading.wait()
        frames = []
        async for msg in ws:
            frames.append(msg.data[:8])
            if msg.data == "last":
                break
        received.set_result(frames)
        await ws.receive()
        return ws

    async with serving(slow) as url:
        conn = await open_ws(url)
        chunk = "." * (64 * 1024)
        sent = 0
        while sent < 10_000 and conn.write_text(f"{sent:08d}{chunk}"):
            sent += 1
        assert 0 < sent < 10_000
        assert not conn.writable
        sending = asyncio.create_task(conn.send_text("last"))
        await asyncio.sleep(0)  # one scheduling round: the send runs until it must wait
        assert not sending.done()
        start_reading.set()
        async with asyncio.timeout(30):
            await sending
            frames = await received
        assert frames == [f"{i:08d}" for i in range(sent)] + ["last"]
        await conn.close(1000)
