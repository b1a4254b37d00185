"""Run a voxgate gateway in process, on 127.0.0.1 and a free port, for tests (yours and ours).

::

    async with run_gateway(Settings(backend="openai", openai_url=fake.url, ...)) as gw:
        client = AsyncOpenAI(api_key=gw.server_key, websocket_base_url=gw.ws_base)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from voxgate.app import create_app
from voxgate.backends.base import Backend
from voxgate.config import Settings


@dataclass(frozen=True)
class RunningGateway:
    app: web.Application
    host: str
    port: int
    settings: Settings

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_base(self) -> str:
        """What to pass as openai-python's ``websocket_base_url``."""
        return f"ws://{self.host}:{self.port}/v1"

    def realtime_url(self, query: str = "model=gpt-realtime") -> str:
        return f"ws://{self.host}:{self.port}/v1/realtime" + (f"?{query}" if query else "")

    @property
    def server_key(self) -> str:
        keys = self.settings.api_key_values()
        if not keys:
            raise LookupError("no server key configured")
        return keys[0]


@asynccontextmanager
async def run_gateway(
    settings: Settings, backend: Backend | None = None
) -> AsyncIterator[RunningGateway]:
    """Start the gateway on ``settings.host`` and a free port; stop it on exit."""
    app = create_app(settings, backend=backend)
    runner = web.AppRunner(app, max_field_size=settings.max_header_bytes, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, 0)
    await site.start()
    port = int(runner.addresses[0][1])
    try:
        yield RunningGateway(app=app, host=settings.host, port=port, settings=settings)
    finally:
        await runner.cleanup()
