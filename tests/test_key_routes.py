"""Minting ek_ keys over HTTP: GA and beta shapes, server-key auth, validation errors."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from openai import AsyncOpenAI, AuthenticationError

from voxgate.config import Settings
from voxgate.testing.gateway import RunningGateway, run_gateway

SERVER_KEY = "vk-routes-test-key-0001"


@pytest.fixture
async def gateway() -> AsyncIterator[RunningGateway]:
    settings = Settings(
        backend="openai",
        openai_url="ws://127.0.0.1:9/v1/realtime",  # never dialled by these tests
        openai_api_key="sk-upstream-never-used",
        api_keys=SERVER_KEY,
        secret="routes-test-secret-0123456789",
    )
    async with run_gateway(settings) as gw:
        yield gw


async def test_ga_client_secret_via_the_stock_sdk(gateway: RunningGateway) -> None:
    client = AsyncOpenAI(api_key=SERVER_KEY, base_url=gateway.http_url + "/v1")
    secret = await client.realtime.client_secrets.create(
        expires_after={"anchor": "created_at", "seconds": 120},
        session={
            "type": "realtime",
            "model": "gpt-realtime",
            "instructions": "Be brief.",
            "audio": {"output": {"voice": "marin"}},
        },
    )
    assert secret.value.startswith("ek_")
    assert abs(secret.expires_at - (time.time() + 120)) < 5
    session = secret.session
    assert session.type == "realtime"
    assert session.instructions == "Be brief."
    assert session.audio is not None
    assert session.audio.output is not None
    assert session.audio.output.voice == "marin"
    await client.close()


async def test_client_secret_session_expires_with_the_key(gateway: RunningGateway) -> None:
    """``session.expires_at`` was 0: a session from this key cannot start after the key expires."""
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            gateway.http_url + "/v1/realtime/client_secrets",
            headers={"Authorization": f"Bearer {SERVER_KEY}"},
            json={"expires_after": {"anchor": "created_at", "seconds": 300}},
        )
        body = await resp.json()
    assert resp.status == 200
    assert body["session"]["expires_at"] == body["expires_at"]
    assert abs(body["expires_at"] - (time.time() + 300)) < 5


async def test_beta_sessions_endpoint_returns_client_secret_value(gateway: RunningGateway) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            gateway.http_url + "/v1/realtime/sessions",
            headers={"Authorization": f"Bearer {SERVER_KEY}"},
            json={
                "model": "gpt-realtime",
                "modalities": ["audio", "text"],
                "voice": "verse",
                "input_audio_format": "g711_ulaw",
                "temperature": 0.7,
            },
        )
        body = await resp.json()
    assert resp.status == 200
    assert body["client_secret"]["value"].startswith("ek_")
    assert body["client_secret"]["expires_at"] - time.time() < 65
    assert body["voice"] == "verse"
    assert body["input_audio_format"] == "g711_ulaw"


async def test_minting_requires_a_server_key(gateway: RunningGateway) -> None:
    client = AsyncOpenAI(api_key="vk-wrong", base_url=gateway.http_url + "/v1", max_retries=0)
    with pytest.raises(AuthenticationError):
        await client.realtime.client_secrets.create()
    # an ek_ key cannot mint further keys
    good = AsyncOpenAI(api_key=SERVER_KEY, base_url=gateway.http_url + "/v1")
    ek = (await good.realtime.client_secrets.create()).value
    chained = AsyncOpenAI(api_key=ek, base_url=gateway.http_url + "/v1", max_retries=0)
    with pytest.raises(AuthenticationError):
        await chained.realtime.client_secrets.create()
    for c in (client, good, chained):
        await c.close()


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (
            {"expires_after": {"anchor": "created_at", "seconds": 5}},
            "integer_below_min_value",
            "expires_after.seconds",
        ),
        (
            {"expires_after": {"anchor": "created_at", "seconds": 7201}},
            "integer_above_max_value",
            "expires_after.seconds",
        ),
        ({"session": {"model": "gpt-realtime"}}, "missing_required_parameter", "session.type"),
        (
            {"session": {"type": "realtime", "temperature": 0.8}},
            "unknown_parameter",
            "session.temperature",
        ),
        ({"bogus": 1}, "unknown_parameter", "bogus"),
        ({"voxgate": {"subject": ""}}, "string_below_min_length", "voxgate.subject"),
        (
            {"voxgate": {"max_session_seconds": 1e9}},
            "decimal_above_max_value",
            "voxgate.max_session_seconds",
        ),
    ],
)
async def test_invalid_requests_get_openai_shaped_errors(
    gateway: RunningGateway, body: dict[str, object], code: str, param: str
) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            gateway.http_url + "/v1/realtime/client_secrets",
            headers={"Authorization": f"Bearer {SERVER_KEY}"},
            json=body,
        )
        err = (await resp.json())["error"]
    assert resp.status == 400
    assert (err["code"], err["param"], err["type"]) == (code, param, "invalid_request_error")


async def test_malformed_json_body(gateway: RunningGateway) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            gateway.http_url + "/v1/realtime/client_secrets",
            headers={"Authorization": f"Bearer {SERVER_KEY}", "Content-Type": "application/json"},
            data=b"{not json",
        )
        err = (await resp.json())["error"]
    assert resp.status == 400
    assert err["code"] == "invalid_json"


async def test_health_and_metrics(gateway: RunningGateway) -> None:
    async with aiohttp.ClientSession() as http:
        health = await http.get(gateway.http_url + "/healthz")
        assert (await health.json())["status"] == "ok"
        metrics = await (await http.get(gateway.http_url + "/metrics")).text()
        assert "voxgate_sessions_active" in metrics
        assert "voxgate_event_loop_lag_seconds_count" in metrics  # measured while serving
        ready = await http.get(gateway.http_url + "/readyz")
        body = await ready.json()
        # this gateway's upstream is a closed port: readyz says so (it said "ready")
        assert (ready.status, body["status"], body["problem"]) == (
            503,
            "not_ready",
            "upstream_unreachable",
        )
        assert "sk-upstream" not in str(body)


async def test_default_instructions_claim_no_knowledge_cutoff(gateway: RunningGateway) -> None:
    """A dated cutoff ("2023-10") is wrong for the local engine's models and ages badly."""
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            gateway.http_url + "/v1/realtime/client_secrets",
            headers={"Authorization": f"Bearer {SERVER_KEY}"},
        )
        instructions = (await resp.json())["session"]["instructions"]
    assert instructions
    assert "cutoff" not in instructions.lower()
    assert not re.search(r"\b(19|20)\d\d\b", instructions)
