"""Helpers for server-tool and proactive-message tests: a gateway with extra tools, readers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from gateway_helpers import UPSTREAM_KEY, gateway_settings
from voxgate.app import TOOLS, create_app
from voxgate.backends.base import Backend
from voxgate.config import Settings
from voxgate.testing import FakeRealtimeServer
from voxgate.testing.gateway import RunningGateway
from voxgate.tools.registry import Tool

TIMEOUT_S = 15.0


@asynccontextmanager
async def gateway_with_tools(
    settings: Settings, tools: Sequence[Tool] = (), backend: Backend | None = None
) -> AsyncIterator[RunningGateway]:
    """``run_gateway`` with ``tools`` registered next to the configured ones."""
    app = create_app(settings, backend=backend)
    for extra in tools:
        app[TOOLS].add(extra)
    runner = web.AppRunner(app, max_field_size=settings.max_header_bytes, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, 0)
    await site.start()
    port = int(runner.addresses[0][1])
    try:
        yield RunningGateway(app=app, host=settings.host, port=port, settings=settings)
    finally:
        await runner.cleanup()


@asynccontextmanager
async def fake_with_tools(
    tools: Sequence[Tool] = (), fake_kwargs: dict[str, Any] | None = None, **settings: Any
) -> AsyncIterator[tuple[FakeRealtimeServer, RunningGateway]]:
    kwargs: dict[str, Any] = {"api_keys": {UPSTREAM_KEY}}
    kwargs.update(fake_kwargs or {})
    async with (
        FakeRealtimeServer(**kwargs) as fake,
        gateway_with_tools(gateway_settings(fake.url, **settings), tools) as gw,
    ):
        yield fake, gw


class Events:
    """Every event a stock SDK connection receives, read by one pump task (SDK iterators must
    not be cancelled mid-read, realtime-protocol.md §11)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.seen: list[Any] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        async for event in self.conn:
            async with self._changed:
                self.seen.append(event)
                self._changed.notify_all()

    def of(self, etype: str) -> list[Any]:
        return [e for e in self.seen if e.type == etype]

    async def wait(self, etype: str, count: int = 1, timeout_s: float = TIMEOUT_S) -> list[Any]:
        return await self.wait_for(lambda: len(self.of(etype)) >= count, timeout_s, etype)

    async def wait_for(
        self, predicate: Callable[[], bool], timeout_s: float = TIMEOUT_S, what: str = ""
    ) -> list[Any]:
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(predicate)
        except TimeoutError:
            types = [e.type for e in self.seen]
            raise AssertionError(f"timed out waiting for {what}; saw {types}") from None
        return self.seen

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def user_text(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
