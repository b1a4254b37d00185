"""``/readyz`` tells the truth about the backend (issue 12 item 10).

It used to say ``ready`` with OpenAI unreachable and with the local LLM server down. Now it
probes the configured backend (a real realtime handshake, or one GET to the LLM server), caches
the result, shares one probe among concurrent callers, and says what is wrong.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway_helpers import SERVER_KEY, SIGNING_SECRET, UPSTREAM_KEY, gateway_settings
from voxgate.app import HEALTH
from voxgate.backends.local.backend import LocalBackend
from voxgate.backends.local.responder import ChatCompletionsResponder, KnowledgeResponder
from voxgate.config import Settings
from voxgate.observability.health import BackendHealth
from voxgate.testing import FakeRealtimeServer
from voxgate.testing.gateway import RunningGateway, run_gateway
from voxgate.tools.knowledge import KnowledgeBase


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _readyz(gw: RunningGateway) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(gw.http_url + "/readyz") as resp,
    ):
        return resp.status, await resp.json()


async def test_ready_when_the_upstream_accepts_the_key() -> None:
    async with (
        FakeRealtimeServer(api_keys={UPSTREAM_KEY}) as fake,
        run_gateway(gateway_settings(fake.url)) as gw,
    ):
        status, body = await _readyz(gw)
        assert (status, body["status"]) == (200, "ready")
        assert "problem" not in body
        assert fake.accepted_count == 1
        record = await fake.wait_for_connection()
        await record.wait_closed(timeout_s=10)  # the probe hangs up at once


async def test_a_refused_upstream_key_is_upstream_auth_failed() -> None:
    async with (
        FakeRealtimeServer(api_keys={"sk-some-other-key-0000000"}) as fake,
        run_gateway(gateway_settings(fake.url)) as gw,
    ):
        status, body = await _readyz(gw)
    assert status == 503
    assert (body["status"], body["problem"]) == ("not_ready", "upstream_auth_failed")
    assert "OPENAI_API_KEY" in body["detail"]
    assert UPSTREAM_KEY not in str(body)


async def test_an_unreachable_upstream_is_upstream_unreachable() -> None:
    url = f"ws://127.0.0.1:{_closed_port()}/v1/realtime"
    async with run_gateway(gateway_settings(url)) as gw:
        status, body = await _readyz(gw)
    assert (status, body["problem"]) == (503, "upstream_unreachable")
    assert "VOXGATE_OPENAI_URL" in body["detail"]


async def test_concurrent_and_repeated_readyz_share_one_probe() -> None:
    async with (
        FakeRealtimeServer(api_keys={UPSTREAM_KEY}) as fake,
        run_gateway(gateway_settings(fake.url)) as gw,
    ):
        results = await asyncio.gather(*(_readyz(gw) for _ in range(20)))
        results += [await _readyz(gw) for _ in range(5)]
        assert {status for status, _ in results} == {200}
        assert fake.accepted_count == 1
        assert gw.app[HEALTH].probes_run == 1


async def test_a_session_reporting_the_upstream_key_refused_shows_in_readyz() -> None:
    async with (
        FakeRealtimeServer(api_keys={UPSTREAM_KEY}) as fake,
        run_gateway(gateway_settings(fake.url)) as gw,
    ):
        assert (await _readyz(gw))[0] == 200
        gw.app[HEALTH].note_upstream_auth_failed()
        status, body = await _readyz(gw)
        assert (status, body["problem"]) == (503, "upstream_auth_failed")


async def test_health_reprobes_after_its_ttl_and_recovers() -> None:
    now = [0.0]
    answers: list[str | None] = ["upstream_unreachable", None]

    async def probe() -> str | None:
        return answers.pop(0)

    health = BackendHealth(probe, ok_ttl_s=30, fail_ttl_s=5, clock=lambda: now[0])
    assert await health.check() == "upstream_unreachable"
    now[0] = 4.9
    assert await health.check() == "upstream_unreachable"  # cached: no second probe yet
    assert health.probes_run == 1
    now[0] = 5.1
    assert await health.check() is None
    health.note_upstream_auth_failed()
    assert await health.check() == "upstream_auth_failed"
    assert health.probes_run == 2


async def test_a_hanging_probe_is_a_timeout_not_a_hang() -> None:
    never = asyncio.Event()

    async def probe() -> str | None:
        await never.wait()
        return None

    health = BackendHealth(probe, timeout_s=0.05)
    assert await health.check() == "probe_timeout"


# ------------------------------------------------------------------------------ local engine


@asynccontextmanager
async def _llm_server() -> AsyncIterator[str]:
    """A stand-in OpenAI-compatible server that answers ``GET /v1/models``."""

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "llama3.2"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


def _local_settings() -> Settings:
    return Settings(api_keys=SERVER_KEY, secret=SIGNING_SECRET)


@pytest.mark.parametrize("llm", ["down", "up", "none"])
async def test_local_backend_reports_an_unreachable_llm(llm: str) -> None:
    async with _llm_server() as up_url:
        responder: Any
        if llm == "none":
            responder = KnowledgeResponder(KnowledgeBase.example())
        else:
            url = up_url if llm == "up" else f"http://127.0.0.1:{_closed_port()}/v1"
            responder = ChatCompletionsResponder(url, model="llama3.2")
        backend = LocalBackend(responder=responder, warm=False)
        async with run_gateway(_local_settings(), backend=backend) as gw:
            status, body = await _readyz(gw)
    if llm == "down":
        assert (status, body["problem"]) == (503, "llm_unreachable")
        assert "VOXGATE_LOCAL_LLM_URL" in body["detail"]
    else:
        assert (status, body["status"]) == (200, "ready")
