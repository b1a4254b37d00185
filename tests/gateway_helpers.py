"""Helpers for gateway tests: a fake upstream with voxgate in front of it, raw clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from voxgate.config import Settings
from voxgate.testing import FakeRealtimeServer
from voxgate.testing.gateway import RunningGateway, run_gateway

SERVER_KEY = "vk-gateway-test-key-000001"
UPSTREAM_KEY = "sk-upstream-test-key-0000000001"
SIGNING_SECRET = "gateway-test-signing-secret-0001"
TIMEOUT_S = 10.0


def gateway_settings(upstream_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "backend": "openai",
        "openai_url": upstream_url,
        "openai_api_key": UPSTREAM_KEY,
        "api_keys": SERVER_KEY,
        "secret": SIGNING_SECRET,
        "ping_interval_s": 0,
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def fake_and_gateway(
    fake_kwargs: dict[str, Any] | None = None, **settings: Any
) -> AsyncIterator[tuple[FakeRealtimeServer, RunningGateway]]:
    kwargs: dict[str, Any] = {"api_keys": {UPSTREAM_KEY}}
    kwargs.update(fake_kwargs or {})
    async with (
        FakeRealtimeServer(**kwargs) as fake,
        run_gateway(gateway_settings(fake.url, **settings)) as gw,
    ):
        yield fake, gw


async def recv_json(
    ws: aiohttp.ClientWebSocketResponse, timeout_s: float = TIMEOUT_S
) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout_s)
    if msg.type != aiohttp.WSMsgType.TEXT:
        raise AssertionError(f"expected a text frame, got {msg.type} {msg.data!r} {msg.extra!r}")
    event = orjson.loads(msg.data)
    assert isinstance(event, dict)
    return event


async def recv_until(
    ws: aiohttp.ClientWebSocketResponse, event_type: str, timeout_s: float = TIMEOUT_S
) -> list[dict[str, Any]]:
    """Every event up to and including the first of ``event_type``."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout_s):
        while True:
            event = await recv_json(ws, timeout_s)
            seen.append(event)
            if event["type"] == event_type:
                return seen


async def expect_close(
    ws: aiohttp.ClientWebSocketResponse, timeout_s: float = TIMEOUT_S
) -> tuple[int | None, str]:
    """Read until the close frame; return (code, reason)."""
    async with asyncio.timeout(timeout_s):
        while True:
            msg = await ws.receive()
            if msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
            ):
                return ws.close_code, str(msg.extra or "")


def text_item(text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        },
    }
