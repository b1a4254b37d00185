"""The minimal aiohttp WebSocket pipe: the baseline a relay is measured against.

``GET /v1/realtime`` (and ``/realtime``) accepts a client WebSocket, opens one upstream
aiohttp WebSocket to ``--upstream`` (query string passed through, ``Authorization: Bearer
$OPENAI_API_KEY``), and copies frames both ways with two tasks, text as text and binary as
binary, unchanged. No authentication, no parsing, no buffering of its own. The client
session's ``TCPConnector(limit=0)`` lifts aiohttp's default cap of 100 connections, which would
otherwise silently cap the pipe at 100 sessions. ``GET /healthz`` answers 200.

Run: ``OPENAI_API_KEY=sk-x python bench/pipe_baseline.py --port 9200 \
--upstream ws://127.0.0.1:9100/v1/realtime``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import WSMsgType, web

WS = web.WebSocketResponse | aiohttp.ClientWebSocketResponse
Copier = Callable[[WS, WS], Awaitable[None]]

SESSION_KEY = web.AppKey("client_session", aiohttp.ClientSession)


async def copy_frames(src: WS, dst: WS) -> None:
    """Forward every data frame from src to dst unchanged until src closes."""
    async for msg in src:
        if msg.type is WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif msg.type is WSMsgType.ERROR:
            break


def make_app(upstream_url: str, api_key: str, copier: Copier = copy_frames) -> web.Application:
    """The relay app; ``copier`` moves frames in one direction (the JSON baseline swaps it)."""
    headers = {"Authorization": f"Bearer {api_key}"}

    async def realtime(request: web.Request) -> web.WebSocketResponse:
        client = web.WebSocketResponse(
            compress=False, max_msg_size=16 * 1024 * 1024, protocols=("realtime",)
        )
        await client.prepare(request)
        url = upstream_url
        if request.query_string:
            url = f"{upstream_url}?{request.query_string}"
        try:
            upstream = await request.app[SESSION_KEY].ws_connect(
                url, headers=headers, compress=0, max_msg_size=16 * 1024 * 1024
            )
        except (aiohttp.ClientError, OSError, TimeoutError):
            await client.close(code=1011, message=b"upstream unreachable")
            return client
        tasks = {
            asyncio.create_task(copier(client, upstream)),
            asyncio.create_task(copier(upstream, client)),
        }
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await upstream.close()
            await client.close()
        return client

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def client_session(app: web.Application):  # type: ignore[no-untyped-def]
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            app[SESSION_KEY] = session
            yield

    app = web.Application()
    app.cleanup_ctx.append(client_session)
    app.router.add_get("/v1/realtime", realtime)
    app.router.add_get("/realtime", realtime)
    app.router.add_get("/healthz", healthz)
    return app


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument(
        "--upstream",
        default=os.environ.get("VOXGATE_OPENAI_URL", "ws://127.0.0.1:9100/v1/realtime"),
    )
    return parser.parse_args()


def serve(args: argparse.Namespace, copier: Copier = copy_frames) -> None:
    app = make_app(args.upstream, os.environ.get("OPENAI_API_KEY", "sk-bench-upstream"), copier)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, backlog=1024)


if __name__ == "__main__":
    serve(parse_args(__doc__.splitlines()[0]))
