"""The fault proxy: its pure policy (fault_policy), then real sockets (raw TCP, echo, the fake)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
import websockets
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError

from voxgate.testing import FakeRealtimeServer
from voxgate.testing.fault_policy import READ_BYTES, CutBudget, Pacer, RefusePolicy
from voxgate.testing.fault_proxy import FaultProxy

TIMEOUT_S = 10.0
AUTH = {"Authorization": "Bearer sk-test"}
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[object]]

# ====================================================================== pure policies


@given(st.lists(st.binary(max_size=64), max_size=20), st.integers(min_value=0, max_value=600))
def test_cut_budget_forwards_exactly_the_prefix(chunks: list[bytes], n_bytes: int) -> None:
    budget = CutBudget(n_bytes)
    forwarded = bytearray()
    spent_at: int | None = None
    for chunk in chunks:
        piece, spent = budget.take(chunk)
        forwarded += piece
        if spent:
            spent_at = len(forwarded)
            break
    whole = b"".join(chunks)
    assert bytes(forwarded) == whole[:n_bytes]
    assert spent_at == (n_bytes if chunks and len(whole) >= n_bytes else None)


@given(st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=30))
def test_pacer_never_exceeds_the_rate(sizes: list[int]) -> None:
    pacer, rate, now = Pacer(), 1000.0, 0.0
    first = pacer.ready_at(now)
    for size in sizes:
        now = pacer.ready_at(now)
        pacer.consume(size, now, rate)
    assert now - first >= (sum(sizes) - sizes[-1]) / rate - 1e-9


def test_refuse_policy_counts_down_then_accepts() -> None:
    policy = RefusePolicy()
    policy.start("reset", count=2)
    assert [policy.take(), policy.take(), policy.take()] == ["reset", "reset", None]
    assert not policy.active


def test_refuse_policy_without_count_refuses_until_stopped() -> None:
    policy = RefusePolicy()
    policy.start("close", count=None)
    assert all(policy.take() == "close" for _ in range(100))
    policy.stop()
    assert policy.take() is None


def test_url_for_keeps_scheme_path_and_query() -> None:
    proxy = FaultProxy("127.0.0.1", 1, port=4321)
    assert proxy.url_for("ws://127.0.0.1:9/v1/realtime?model=m") == (
        "ws://127.0.0.1:4321/v1/realtime?model=m"
    )


# ====================================================================== servers and helpers


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """An aiohttp WebSocket echo server (no compression, so frame sizes are known)."""

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", echo)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield int(runner.addresses[0][1])
    await runner.cleanup()


async def tcp_server(handler: Handler) -> asyncio.Server:
    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except OSError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(guarded, "127.0.0.1", 0)


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


async def read_until_lost(reader: asyncio.StreamReader) -> tuple[bytes, str]:
    """Everything the peer delivered, and how the stream ended (``eof`` or ``reset``)."""
    got = bytearray()
    while True:
        try:
            data = await reader.read(READ_BYTES)
        except ConnectionResetError:
            return bytes(got), "reset"
        if not data:
            return bytes(got), "eof"
        got += data


def ws_connect(url: str, **kw: object) -> connect:
    return connect(url, compression=None, open_timeout=TIMEOUT_S, **kw)  # type: ignore[arg-type]


async def expect_abnormal_close(ws: ClientConnection) -> None:
    with pytest.raises(ConnectionClosedError):
        await asyncio.wait_for(ws.recv(), TIMEOUT_S)
    assert ws.close_code == 1006


def payload_of(n_bytes: int) -> bytes:
    return bytes(i * 7 % 251 for i in range(n_bytes))


# ====================================================================== pass-through


async def test_websocket_frames_pass_both_ways(echo_port: int) -> None:
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        async with ws_connect(proxy.url_for(f"ws://x:{echo_port}/ws")) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00\x01binary")
            assert await ws.recv() == b"\x00\x01binary"
        record = await proxy.wait_for_connections(1)
        assert await record.wait_closed(timeout_s=TIMEOUT_S) == "closed"
        for stats in record.stats.values():
            assert stats.forwarded == stats.received > 0


async def test_fake_realtime_session_passes_through() -> None:
    async with FakeRealtimeServer() as fake, FaultProxy("127.0.0.1", fake.port) as proxy:
        url = proxy.url_for(fake.url) + "?model=gpt-realtime"
        async with ws_connect(url, additional_headers=AUTH) as ws:
            first = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
            assert first["type"] == "session.created"
            await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
            record = await fake.wait_for_connection()
            await record.wait_for("session.update", timeout_s=TIMEOUT_S)
        assert proxy.accepted == 1


# ====================================================================== cut


async def test_cut_resets_both_ends_and_the_fake_sees_the_connection_close() -> None:
    async with FakeRealtimeServer() as fake, FaultProxy("127.0.0.1", fake.port) as proxy:
        url = proxy.url_for(fake.url) + "?model=gpt-realtime"
        async with ws_connect(url, additional_headers=AUTH) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            assert proxy.cut() == 1
            await expect_abnormal_close(ws)
        upstream = await fake.wait_for_connection()
        await upstream.wait_closed(timeout_s=TIMEOUT_S)
        record = await proxy.wait_for_connections(1)
        assert await record.wait_closed(timeout_s=TIMEOUT_S) == "cut"
        assert await proxy.wait_for_cuts(1) == 1


async def test_cut_is_an_error_for_an_aiohttp_client(echo_port: int) -> None:
    async with (
        FaultProxy("127.0.0.1", echo_port) as proxy,
        aiohttp.ClientSession() as http,
        http.ws_connect(proxy.url_for(f"http://x:{echo_port}/ws")) as ws,
    ):
        await ws.send_str("ping")
        assert (await ws.receive(timeout=TIMEOUT_S)).data == "ping"
        proxy.cut()
        msg = await ws.receive(timeout=TIMEOUT_S)
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        assert ws.close_code == 1006


async def test_cut_only_the_chosen_connection(echo_port: int) -> None:
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        url = proxy.url_for(f"ws://x:{echo_port}/ws")
        async with ws_connect(url) as first, ws_connect(url) as second:
            await proxy.wait_for_connections(2)
            assert proxy.cut(conn_id=1) == 1
            await expect_abnormal_close(first)
            await second.send("still here")
            assert await second.recv() == "still here"


@pytest.mark.parametrize("n_bytes", [0, 1, 4096, 300_001])
async def test_cut_after_n_bytes_to_client_is_exact(n_bytes: int) -> None:
    payload = payload_of(1024 * 1024)

    async def source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        await reader.read()

    server = await tcp_server(source)
    async with server, FaultProxy("127.0.0.1", port_of(server)) as proxy:
        proxy.cut_after(n_bytes, "to_client", next_connections=1)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        got, ending = await read_until_lost(reader)
        writer.close()
        assert ending == "reset"
        assert got == payload[:n_bytes]
        record = await proxy.wait_for_connections(1)
        assert await record.wait_closed(timeout_s=TIMEOUT_S) == "cut"
        assert record.bytes_to_client == n_bytes


@pytest.mark.parametrize("n_bytes", [1, 70_000])
async def test_cut_after_n_bytes_to_target_is_exact(n_bytes: int) -> None:
    received: asyncio.Future[tuple[bytes, str]] = asyncio.get_running_loop().create_future()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.set_result(await read_until_lost(reader))

    server = await tcp_server(sink)
    async with server, FaultProxy("127.0.0.1", port_of(server)) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        record = await proxy.wait_for_connections(1)
        assert proxy.cut_after(n_bytes, "to_target") == 1
        payload = payload_of(200_000)
        writer.write(payload)
        got, ending = await asyncio.wait_for(received, TIMEOUT_S)
        assert (got, ending) == (payload[:n_bytes], "reset")
        assert await record.wait_closed(timeout_s=TIMEOUT_S) == "cut"
        assert (await read_until_lost(reader))[1] == "reset"
        writer.close()


async def test_cut_after_splits_a_websocket_frame(echo_port: int) -> None:
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        async with ws_connect(proxy.url_for(f"ws://x:{echo_port}/ws")) as ws:
            record = await proxy.wait_for_connections(1)
            handshake_bytes = record.bytes_to_client
            proxy.cut_after(5, "to_client")  # header (2) + 3 of the 11 payload bytes
            await ws.send("hello world")
            await expect_abnormal_close(ws)
        assert await record.wait_closed(timeout_s=TIMEOUT_S) == "cut"
        assert record.bytes_to_client == handshake_bytes + 5


async def test_peer_reset_is_passed_on_as_a_reset() -> None:
    received: asyncio.Future[tuple[bytes, str]] = asyncio.get_running_loop().create_future()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.set_result(await read_until_lost(reader))

    server = await tcp_server(sink)
    async with server, FaultProxy("127.0.0.1", port_of(server)) as proxy:
        _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"abc")
        record = await proxy.wait_for_connections(1)
        await record.wait_for_bytes(3, "to_target")
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
        assert await asyncio.wait_for(received, TIMEOUT_S) == (b"abc", "reset")
        assert await record.wait_closed(timeout_s=TIMEOUT_S) == "reset_by_client"


# ====================================================================== stall


async def test_stall_holds_frames_and_resume_delivers_them_in_order(echo_port: int) -> None:
    messages = [f"msg-{i:02d}" for i in range(50)]
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        async with ws_connect(proxy.url_for(f"ws://x:{echo_port}/ws")) as ws:
            record = await proxy.wait_for_connections(1)
            handshake_bytes = record.bytes_to_client
            proxy.stall("to_client")
            for text in messages:
                await ws.send(text)
            # Unmasked server frames under 126 bytes: 2 header bytes + payload.
            echoed = sum(2 + len(t) for t in messages)
            await record.wait_for_bytes(handshake_bytes + echoed, "to_client", forwarded=False)
            assert record.bytes_to_client == handshake_bytes
            proxy.resume("to_client")
            assert [await ws.recv() for _ in messages] == messages
            await ws.send("end")
            assert await ws.recv() == "end"
            assert record.bytes_to_client == handshake_bytes + echoed + 5


async def test_stall_both_directions_then_resume_loses_nothing() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(READ_BYTES):
            writer.write(data)
            await writer.drain()

    server = await tcp_server(echo)
    payload = payload_of(100_000)
    async with server, FaultProxy("127.0.0.1", port_of(server)) as proxy:
        proxy.stall()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(payload)
        record = await proxy.wait_for_connections(1)
        await record.wait_for_bytes(len(payload), "to_target", forwarded=False)
        assert record.bytes_to_target == 0
        proxy.resume()
        assert await reader.readexactly(len(payload)) == payload
        writer.write_eof()
        assert await read_until_lost(reader) == (b"", "eof")
        writer.close()
        assert await record.wait_closed(timeout_s=TIMEOUT_S) == "closed"


async def test_stalled_bytes_are_bounded_and_back_pressure_the_sender() -> None:
    payload = payload_of(8 * 1024 * 1024)
    limit = 256 * 1024

    async def source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()

    server = await tcp_server(source)
    async with server, FaultProxy("127.0.0.1", port_of(server), buffer_limit_bytes=limit) as proxy:
        proxy.stall("to_client")
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        record = await proxy.wait_for_connections(1)
        await record.wait_for_bytes(limit, "to_client", forwarded=False)
        assert record.bytes_to_client == 0
        proxy.resume("to_client")
        assert await reader.readexactly(len(payload)) == payload
        writer.close()
        stats = record.stats["to_client"]
        assert stats.received == stats.forwarded == len(payload)
        assert stats.peak_held_bytes <= limit + 2 * READ_BYTES


# ====================================================================== delay and throttle


async def test_delay_adds_at_least_the_latency_and_keeps_order(echo_port: int) -> None:
    delay_s = 0.2
    loop = asyncio.get_running_loop()
    messages = [f"m{i}" for i in range(20)]
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        async with ws_connect(proxy.url_for(f"ws://x:{echo_port}/ws")) as ws:
            proxy.set_delay(delay_s, "to_client")
            sent_at = loop.time()
            for text in messages:
                await ws.send(text)
            received = [await ws.recv() for _ in messages]
            assert loop.time() - sent_at >= delay_s
            assert received == messages
            proxy.set_delay(0)


async def test_heal_clears_every_fault(echo_port: int) -> None:
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        url = proxy.url_for(f"ws://x:{echo_port}/ws")
        async with ws_connect(url) as ws:
            record = await proxy.wait_for_connections(1)
            proxy.stall("to_client")
            proxy.set_delay(30.0)
            proxy.set_throttle(1.0)
            proxy.cut_after(1, "to_client", next_connections=3)
            proxy.refuse()
            await ws.send("after heal")
            await record.wait_for_bytes(record.bytes_to_target + 1, "to_target", forwarded=False)
            proxy.heal()
            assert await ws.recv() == "after heal"
        async with ws_connect(url) as second:
            await second.send("fresh")
            assert await second.recv() == "fresh"
        assert (proxy.cuts, proxy.refused) == (0, 0)


async def test_throttle_limits_bandwidth() -> None:
    payload = payload_of(64 * 1024)
    rate = 256 * 1024

    async def source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()

    server = await tcp_server(source)
    loop = asyncio.get_running_loop()
    async with server, FaultProxy("127.0.0.1", port_of(server)) as proxy:
        proxy.set_throttle(rate, "to_client")
        started = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await reader.readexactly(len(payload)) == payload
        writer.close()
        assert loop.time() - started >= (len(payload) - Pacer.slice_bytes(rate)) / rate


# ====================================================================== refuse


async def test_refuse_a_count_then_accept_again(echo_port: int) -> None:
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        url = proxy.url_for(f"ws://x:{echo_port}/ws")
        proxy.refuse(count=2)
        for _ in range(2):
            with pytest.raises((websockets.exceptions.InvalidMessage, OSError, EOFError)):
                async with ws_connect(url):
                    pass
        assert not proxy.refusing
        async with ws_connect(url) as ws:
            await ws.send("back")
            assert await ws.recv() == "back"
        assert (proxy.refused, proxy.accepted) == (2, 1)


async def test_refuse_by_closing_gives_eof() -> None:
    server = await tcp_server(lambda r, w: r.read())
    async with server, FaultProxy("127.0.0.1", port_of(server)) as proxy:
        proxy.refuse(count=1, mode="close")
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await read_until_lost(reader) == (b"", "eof")
        writer.close()
        assert await proxy.wait_for_refused(1) == 1


async def test_refuse_for_a_duration_ends_by_itself(echo_port: int) -> None:
    loop = asyncio.get_running_loop()
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        url = proxy.url_for(f"ws://x:{echo_port}/ws")
        started = loop.time()
        proxy.refuse(duration_s=0.2)
        with pytest.raises((websockets.exceptions.InvalidMessage, OSError, EOFError)):
            async with ws_connect(url):
                pass
        await proxy.wait_accepting(timeout_s=TIMEOUT_S)
        assert loop.time() - started >= 0.2
        async with ws_connect(url) as ws:
            await ws.send("open")
            assert await ws.recv() == "open"


async def test_unreachable_target_resets_the_client() -> None:
    server = await tcp_server(lambda r, w: r.read())
    dead_port = port_of(server)
    server.close()
    await server.wait_closed()
    async with FaultProxy("127.0.0.1", dead_port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert (await read_until_lost(reader))[1] == "reset"
        writer.close()
        record = await proxy.wait_for_connections(1)
        assert await record.wait_closed(timeout_s=TIMEOUT_S) == "unreachable"


# ====================================================================== lifecycle


def proxy_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("fault-proxy")]


async def test_shutdown_with_live_connections_leaves_no_tasks(echo_port: int) -> None:
    async with FakeRealtimeServer() as fake:
        proxy = FaultProxy("127.0.0.1", echo_port)
        upstream_proxy = FaultProxy("127.0.0.1", fake.port)
        async with proxy, upstream_proxy:
            url = proxy.url_for(f"ws://x:{echo_port}/ws")
            fake_url = upstream_proxy.url_for(fake.url) + "?model=gpt-realtime"
            clients = [await ws_connect(url) for _ in range(5)]
            clients.append(await ws_connect(fake_url, additional_headers=AUTH))
            assert json.loads(await clients[-1].recv())["type"] == "session.created"
            await proxy.wait_for_connections(5)
            await upstream_proxy.wait_for_connections(1)
            proxy.stall()
            await clients[0].send("held")
            assert proxy_tasks()
        assert proxy_tasks() == []
        for ws in clients:
            await expect_abnormal_close(ws)
        assert [r.outcome for r in proxy.connections] == ["shutdown"] * 5
        await (await fake.wait_for_connection()).wait_closed(timeout_s=TIMEOUT_S)


async def test_many_concurrent_connections(echo_port: int) -> None:
    async with FaultProxy("127.0.0.1", echo_port) as proxy:
        url = proxy.url_for(f"ws://x:{echo_port}/ws")

        async def round_trip(i: int) -> str:
            async with ws_connect(url) as ws:
                await ws.send(f"c{i}")
                return str(await ws.recv())

        replies = await asyncio.gather(*(round_trip(i) for i in range(50)))
        assert replies == [f"c{i}" for i in range(50)]
        assert proxy.accepted == 50
