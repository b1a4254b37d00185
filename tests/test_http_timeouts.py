"""Slow and silent HTTP clients (issue 12 item 4), over raw sockets.

Never-finished upgrade requests and silent sockets used to stay open indefinitely. Now a
connection must send a complete request head within ``VOXGATE_HTTP_REQUEST_TIMEOUT_S``, a POST
body within the same time, an idle keep-alive connection is closed after it, and at most
``VOXGATE_HTTP_MAX_PENDING_CONNECTIONS`` connections may be half-open at once (the oldest is
closed first), while real clients keep being served.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gateway_helpers import SERVER_KEY, UPSTREAM_KEY, gateway_settings, recv_json
from serve_helpers import clean_env, closed_port, voxgate_serve
from voxgate.app import create_app
from voxgate.server import Serving, serve
from voxgate.startup import bind
from voxgate.testing import FakeRealtimeServer

HEAD_TIMEOUT_S = 0.5
WAIT_S = 10.0  # bound on every wait; a closed connection shows up long before


@dataclass
class Server:
    serving: Serving
    fake: FakeRealtimeServer

    @property
    def port(self) -> int:
        return self.serving.port

    async def raw(self, data: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        if data:
            writer.write(data)
            await writer.drain()
        return reader, writer


@asynccontextmanager
async def guarded_server(**overrides: Any) -> AsyncIterator[Server]:
    """The gateway as ``voxgate serve`` runs it (pre-bound socket, guard), in process."""
    values: dict[str, Any] = {"http_request_timeout_s": HEAD_TIMEOUT_S, "port": 0}
    values.update(overrides)
    async with FakeRealtimeServer(api_keys={UPSTREAM_KEY}) as fake:
        settings = gateway_settings(fake.url, **values)
        socks = bind(settings.host, 0)
        serving = await serve(create_app(settings), settings, socks)
        try:
            yield Server(serving, fake)
        finally:
            await serving.runner.cleanup()
            for sock in socks:
                sock.close()


async def _closed_within(reader: asyncio.StreamReader, limit_s: float = WAIT_S) -> bytes:
    """Everything the server sent until it closed the connection (bounded by ``limit_s``)."""
    async with asyncio.timeout(limit_s):
        return await reader.read()


async def test_a_silent_socket_is_closed_after_the_head_timeout() -> None:
    async with guarded_server() as srv:
        started = time.monotonic()
        reader, writer = await srv.raw()
        assert await _closed_within(reader) == b""
        assert time.monotonic() - started >= HEAD_TIMEOUT_S * 0.9
        assert srv.serving.guard.timed_out == 1
        writer.close()


async def test_a_never_finished_upgrade_request_is_closed() -> None:
    async with guarded_server() as srv:
        head = (
            b"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        )  # no blank line: the head never ends
        reader, writer = await srv.raw(head)
        assert await _closed_within(reader) == b""
        assert srv.serving.guard.timed_out == 1
        writer.close()


async def test_half_open_connections_are_capped_oldest_first() -> None:
    async with guarded_server(http_request_timeout_s=60, http_max_pending_connections=4) as srv:
        silent = [await srv.raw(b"GET / HT") for _ in range(4)]
        # a real client connecting after them is served, and takes the oldest one's place
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{srv.port}/healthz") as resp,
        ):
            assert resp.status == 200
        assert await _closed_within(silent[0][0]) == b""
        guard = srv.serving.guard
        assert (guard.evicted, guard.pending, guard.timed_out) == (1, 3, 0)
        for _, writer in silent:
            writer.close()


async def test_a_slow_request_body_gets_408() -> None:
    async with guarded_server() as srv:
        head = (
            b"POST /v1/realtime/client_secrets HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + SERVER_KEY.encode() + b"\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"session":'
        )
        reader, writer = await srv.raw(head)
        answer = await _closed_within(reader)
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 408 " in status_line
    body = orjson.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "request_timeout"
    assert body["error"]["type"] == "invalid_request_error"


async def test_an_idle_keep_alive_connection_is_closed() -> None:
    async with guarded_server() as srv:
        reader, writer = await srv.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await _closed_within(reader)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200")


async def test_a_websocket_session_outlives_the_head_timeout() -> None:
    async with guarded_server() as srv, aiohttp.ClientSession() as http:
        async with http.ws_connect(
            f"ws://127.0.0.1:{srv.port}/v1/realtime?model=gpt-realtime",
            headers={"Authorization": f"Bearer {SERVER_KEY}"},
        ) as ws:
            assert (await recv_json(ws))["type"] == "session.created"
            # a silent socket opened later is closed: the session's deadline has passed too
            reader, writer = await srv.raw()
            assert await _closed_within(reader) == b""
            writer.close()
            await ws.send_str('{"type":"session.update","session":{"type":"realtime"}}')
            assert (await recv_json(ws))["type"] == "session.updated"
        assert srv.serving.guard.timed_out == 1


async def test_voxgate_serve_closes_silent_sockets(tmp_path: Path) -> None:
    env = clean_env(
        VOXGATE_HTTP_REQUEST_TIMEOUT_S="1",
        VOXGATE_OPENAI_URL=f"ws://127.0.0.1:{closed_port()}/v1/realtime",
        VOXGATE_API_KEYS=SERVER_KEY,
        VOXGATE_LOG_LEVEL="error",
    )
    async with voxgate_serve(
        "--backend", "openai", "--port", "0", env=env, cwd=str(tmp_path)
    ) as proc:
        port = await proc.port()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await _closed_within(reader) == b""
        writer.close()
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
