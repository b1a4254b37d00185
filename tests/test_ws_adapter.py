"""The aiohttp server WebSocket adapter, driven by a real aiohttp client over 127.0.0.1.

Each test's server handler does what ``transports/websocket.py`` does (prepare a
``GatewayWebSocket``, wrap it in ``AiohttpClientConnection``) and then plays the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import orjson
from aiohttp import WSMsgType, web

from voxgate.session.ports import PeerGone
from voxgate.transports.ws_adapter import (
    WRITE_HIGH_BYTES,
    AiohttpClientConnection,
    GatewayWebSocket,
)

Session = Callable[[AiohttpClientConnection, web.Request], Awaitable[None]]
MAX_FRAME = 64 * 1024
T = TypeVar("T")


@contextlib.asynccontextmanager
async def gateway(session: Session) -> AsyncIterator[aiohttp.ClientSession]:
    """Serve ``session`` at /ws; yields a client session whose base URL is the server."""

    async def handle(request: web.Request) -> web.StreamResponse:
        ws = GatewayWebSocket(
            compress=False, max_msg_size=MAX_FRAME, heartbeat=None, autoping=False
        )
        await ws.prepare(request)
        assert ws.sink_capable, "aiohttp internals moved: the adapter fell back"
        await session(AiohttpClientConnection(ws, request), request)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as client:
            yield client
    finally:
        await runner.cleanup()


def future() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


async def within(aw: Awaitable[T], seconds: float = 5) -> T:
    async with asyncio.timeout(seconds):
        return await aw


# ---------------------------------------------------------------------------- sink


async def test_sink_takes_frames_while_the_session_waits_in_receive() -> None:
    offered: list[tuple[str | bytes, bool]] = []
    took_a, result = future(), future()

    async def session(conn: AiohttpClientConnection, request: web.Request) -> None:
        def sink(frame: str | bytes) -> bool:
            offered.append((frame, reading.done()))
            if frame == "a":
                took_a.set_result(None)
                return True
            return False

        conn.set_sink(sink)
        reading = asyncio.create_task(conn.receive())
        await took_a
        still_waiting = not reading.done()
        await conn.send_text("took a")
        result.set_result((still_waiting, await reading))

    async with gateway(session) as client, client.ws_connect("/ws") as ws:
        await ws.send_str("a")
        assert (await within(ws.receive())).data == "took a"
        await ws.send_str("b")
        assert await within(result) == (True, "b")
    assert offered == [("a", False), ("b", False)]


async def test_binary_frames_reach_the_sink_as_bytes() -> None:
    got = future()

    async def session(conn: AiohttpClientConnection, request: web.Request) -> None:
        def sink(frame: str | bytes) -> bool:
            got.set_result(frame)
            return True

        conn.set_sink(sink)
        waiting = asyncio.create_task(conn.receive())
        await got
        waiting.cancel()

    async with gateway(session) as client, client.ws_connect("/ws") as ws:
        await ws.send_bytes(b"\x00\x01pcm")
        assert await within(got) == b"\x00\x01pcm"


async def test_frame_arriving_while_the_session_is_busy_is_queued_not_sunk() -> None:
    offered: list[str | bytes] = []
    busy, result = future(), future()

    async def session(conn: AiohttpClientConnection, request: web.Request) -> None:
        def sink(frame: str | bytes) -> bool:
            offered.append(frame)
            return frame != "first"

        conn.set_sink(sink)
        first = await conn.receive()  # offered, declined, returned: now busy with it
        arrived = asyncio.Event()
        loop = asyncio.get_running_loop()

        # aiohttp's hook runs before each chunk is parsed; call_soon lands after the parse
        def on_data() -> None:
            loop.call_soon(arrived.set)

        request.protocol._data_received_cb = on_data
        busy.set_result(None)
        await arrived.wait()
        queued_while_busy = list(offered)
        second = await conn.receive()
        result.set_result((first, queued_while_busy, second))

    async with gateway(session) as client, client.ws_connect("/ws") as ws:
        await ws.send_str("first")
        await within(busy)
        await ws.send_str("second")
        assert await within(result) == ("first", ["first"], "second")


async def test_arrival_order_is_kept_across_sink_and_receive() -> None:
    count = 1000
    handled: list[int] = []
    via_sink: list[int] = []
    done = future()

    def sink(frame: str | bytes) -> bool:
        if frame == "end" or int(frame) % 3 == 0:
            return False  # declined: it must come out of receive() in its turn
        handled.append(int(frame))
        via_sink.append(int(frame))
        return True

    async def session(conn: AiohttpClientConnection, request: web.Request) -> None:
        conn.set_sink(sink)
        while (frame := await conn.receive()) != "end":
            handled.append(int(frame))
            if int(frame) % 2:
                await asyncio.sleep(0)  # the session is busy for a while with this one
        done.set_result(None)

    async with gateway(session) as client, client.ws_connect("/ws") as ws:
        for i in range(count):
            await ws.send_str(str(i))
            if i % 10 < 7:  # singles and bursts of three: frames meet a parked and a busy session
                await asyncio.sleep(0)
        await ws.send_str("end")
        await within(done)
    assert handled == list(range(count))
    assert via_sink  # both paths were taken (every third frame is declined by the sink)


# ---------------------------------------------------------------------------- control frames


async def test_pings_are_answered_and_control_frames_counted() -> None:
    heard = future()

    async def session(conn: AiohttpClientConnection, request: web.Request) -> None:
        assert await conn.receive() == "report"
        heard.set_result(conn.heard)
        await conn.receive()

    async with gateway(session) as client, client.ws_connect("/ws", autoping=False) as ws:
        await ws.ping(b"still there?")
        msg = await within(ws.receive())
        assert (msg.type, msg.data) == (WSMsgType.PONG, b"still there?")
        await ws.pong(b"unsolicited")
        await ws.send_str("report")
        assert await within(heard) == 2


# ---------------------------------------------------------------------------- endings


async def test_client_close_is_a_clean_peer_gone_with_its_code() -> None:
    gone = future()

    async def session(conn: AiohttpClientConnection, request: web.Request) -> None:
        try:
            await conn.receive()
        except PeerGone as exc:
            gone.set_result((exc.code, exc.reason, exc.clean, conn.close_code))

    async with gateway(session) as client, client.ws_connect("/ws") as ws:
        await ws.close(code=4001, message=b"bye")
        assert await within(gone) == (4001, "bye", True, 4001)


def reset(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Drop the client's TCP connection with an RST (SO_LINGER 0), as a crashed client would."""
    sock = ws.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws._response.connection.transport.abort()  # type: ignore[union-attr]


async def test_reset_is_an_unclean_peer_gone() -> None:
    gone, ready = future(), future()

    async def session(conn: AiohttpClientConnection, request: web.Request) -> None:
        ready.set_result(await conn.receive())
        try:
            await conn.receive()
        except PeerGone as exc:
            gone.set_result(exc)

    async with gateway(session) as client, client.ws_connect("/ws") as ws:
        await ws.send_str("hello")
        assert await within(ready) == "hello"
        reset(ws)
        exc = await within(gone)
    assert isinstance(exc, PeerGone)
    assert exc.clean is False


async def test_reset_carries_no_close_code() -> None:
    gone, ready = future(), future()

    async def session(conn: AiohttpClientConnection, request: web.Request) -> None:
        ready.set_result(await conn.receive())
        try:
            await conn.receive()
        except PeerGone as exc:
            gone.set_result(exc.code)

    async with gateway(session) as client, client.ws_connect("/ws") as ws:
        await ws.send_str("hello")
        await within(ready)
        reset(ws)
        assert await within(gone) is None


async def test_oversized_frame_close_is_preceded_by_the_reason() -> None:
    async def session(conn: AiohttpClientConnection, request: web.Request) -> None:
        with contextlib.suppress(PeerGone):
            while True:
                await conn.receive()

    async with gateway(session) as client, client.ws_connect("/ws") as ws:
        await ws.send_str("x" * (MAX_FRAME + 1))
        error = await within(ws.receive())
        close = await within(ws.receive())
    assert error.type is WSMsgType.TEXT
    event = orjson.loads(error.data)
    assert (event["type"], event["error"]["code"]) == ("error", "voxgate_frame_too_large")
    assert (close.type, close.data) == (WSMsgType.CLOSE, 1009)
    assert close.extra == "invalid_request_error.voxgate_frame_too_large"


# ---------------------------------------------------------------------------- writing


async def test_write_text_refuses_while_the_transport_buffer_is_full() -> None:
    result = future()

    async def session(conn: AiohttpClientConnection, request: web.Request) -> None:
        chunk = "." * (32 * 1024)
        written = 0
        while written < 10_000 and conn.write_text(f"{written:08d}{chunk}"):
            written += 1
        assert request.transport is not None
        buffered = request.transport.get_write_buffer_size()
        result.set_result((written, conn.writable, buffered))
        await conn.send_text("last")  # waits for the client to read
        with contextlib.suppress(PeerGone):
            await conn.receive()

    async with gateway(session) as client, client.ws_connect("/ws") as ws:
        # not reading: the client's socket and the server's buffer fill up
        written, writable, buffered = await within(result)
        assert 0 < written < 10_000
        assert writable is False
        assert buffered > WRITE_HIGH_BYTES
        frames = [(await within(ws.receive())).data for _ in range(written + 1)]
    assert [f[:8] for f in frames[:-1]] == [f"{i:08d}" for i in range(written)]
    assert frames[-1] == "last"


async def test_write_text_refuses_once_the_server_has_sent_its_close() -> None:
    result = future()

    async def session(conn: AiohttpClientConnection, request: web.Request) -> None:
        closing = asyncio.create_task(conn.close(1001, "going away"))
        await asyncio.sleep(0)  # one scheduling round: the close frame is written
        result.set_result((conn.writable, conn.write_text("after close")))
        await closing

    async with gateway(session) as client, client.ws_connect("/ws") as ws:
        msg = await within(ws.receive())
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
        assert await within(result) == (False, False)


async def test_write_encoded_sends_the_frame_as_it_is_with_write_texts_refusals() -> None:
    result = future()
    text = '{"type":"response.output_audio.delta","delta":"' + "A" * 300 + '"}'
    payload = text.encode()

    async def session(conn: AiohttpClientConnection, request: web.Request) -> None:
        frame = struct.pack("!BBH", 0x81, 126, len(payload)) + payload
        sent = conn.write_encoded(frame)
        closing = asyncio.create_task(conn.close(1001, "going away"))
        await asyncio.sleep(0)  # one scheduling round: the close frame is written
        result.set_result((sent, conn.write_encoded(frame)))
        await closing

    async with gateway(session) as client, client.ws_connect("/ws") as ws:
        msg = await within(ws.receive())
        assert (msg.type, msg.data) == (WSMsgType.TEXT, text)
        msg = await within(ws.receive())
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
        assert await within(result) == (True, False)
