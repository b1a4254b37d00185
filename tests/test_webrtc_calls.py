"""WebRTC calls from Python peers (aiortc) and the stock openai SDK: the calls endpoint, the
sideband, and how calls end. Real sockets, real ICE/DTLS/SCTP on 127.0.0.1's host address.

Browser-driven tests (the Agents SDK for JavaScript, the console) are in
``test_browser_webrtc.py``; these cover what a browser test would only do slowly or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI
from structlog.testing import capture_logs

from gateway_helpers import SERVER_KEY, fake_and_gateway, text_item
from voxgate.app import HUB
from voxgate.testing import FakeRealtimeServer
from voxgate.testing.gateway import RunningGateway
from voxgate.testing.responder import CallTool, ResponseContext, Say
from webrtc_peer import Peer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

TESTS = Path(__file__).resolve().parent


def calls_url(gw: RunningGateway) -> str:
    return gw.http_url + "/v1/realtime/calls"


async def mint(gw: RunningGateway, session: dict[str, Any] | None = None) -> str:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            gw.http_url + "/v1/realtime/client_secrets",
            json={"session": session or {"type": "realtime", "model": "gpt-realtime"}},
            headers={"Authorization": f"Bearer {SERVER_KEY}"},
        )
        value = (await resp.json())["value"]
    assert isinstance(value, str)
    return value


def say_text(peer: Peer, text: str) -> None:
    peer.send(text_item(text))
    peer.send({"type": "response.create"})


async def test_a_call_answers_201_and_speaks_over_rtp() -> None:
    async with fake_and_gateway() as (fake, gw), Peer() as peer:
        await peer.call(calls_url(gw), await mint(gw))
        assert peer.status == 201
        assert peer.call_id is not None
        assert peer.call_id.startswith("rtc_")
        await peer.wait_for("session.created")
        say_text(peer, "hello there my friend")
        await peer.wait_for("output_audio_buffer.stopped")
        # The reply arrived as audio on the track (the fake's tone), not as events.
        assert peer.loud_frames > 10
        types = [e["type"] for e in peer.events]
        assert "response.output_audio.delta" not in types
        assert types.index("output_audio_buffer.started") > types.index("response.created")
        assert types.index("output_audio_buffer.stopped") > types.index("response.done")
        (started,) = peer.of("output_audio_buffer.started")
        (done,) = peer.of("response.done")
        assert started["response_id"] == done["response"]["id"]
        record = await fake.wait_for_connection()
        # The microphone reached the upstream as appends in the session's format (PCM 24 kHz).
        await record.wait_for("input_audio_buffer.append", count=20)


async def test_the_openai_sdk_creates_a_call_with_a_session_part() -> None:
    client = None
    async with fake_and_gateway() as (fake, gw), Peer(mic=False) as peer:
        client = AsyncOpenAI(api_key=SERVER_KEY, base_url=gw.http_url + "/v1")
        raw = await client.realtime.calls.with_raw_response.create(
            sdp=await peer.offer(),
            session={"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief."},
        )
        assert raw.status_code == 201
        await peer.accept(raw.content.decode(), raw.headers["Location"])
        await peer.wait_for("session.created")
        record = await fake.wait_for_connection()
        await record.wait_for("session.update")
        assert record.session is not None
        assert record.session["instructions"] == "Be brief."
        await client.close()


async def test_refusals_are_openai_http_errors() -> None:
    async with fake_and_gateway(max_sessions=1) as (_fake, gw), aiohttp.ClientSession() as http:
        url = calls_url(gw)
        async with Peer() as peer:
            await peer.call(url, "vk-wrong-key")
            assert peer.status == 401
            assert peer.error is not None
            assert peer.error["code"] == "invalid_api_key"
        resp = await http.post(
            url,
            data="not sdp",
            headers={"Authorization": f"Bearer {SERVER_KEY}", "Content-Type": "application/sdp"},
        )
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "invalid_offer"
        async with Peer() as first, Peer() as second:
            await first.call(url, SERVER_KEY)
            assert first.status == 201
            await second.call(url, SERVER_KEY)
            assert second.status == 429
            assert second.error is not None
            assert second.error["code"] == "voxgate_capacity_exceeded"
        # A page on another origin may call with an ek_ key: CORS preflight and Location.
        pre = await http.options(
            url,
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert pre.status == 204
        assert pre.headers["Access-Control-Allow-Origin"] == "*"
        assert "authorization" in pre.headers["Access-Control-Allow-Headers"]


async def test_hang_up_ends_the_session_and_the_upstream() -> None:
    async with fake_and_gateway() as (fake, gw):
        hub = gw.app[HUB]
        async with Peer() as peer:
            await peer.call(calls_url(gw), await mint(gw))
            await peer.wait_for("session.created")
            assert hub.active_sessions == 1
        record = await fake.wait_for_connection()
        assert await record.wait_closed() == 1000
        assert await hub.wait_idle(10)


async def test_the_server_hangs_up_a_call() -> None:
    async with fake_and_gateway() as (fake, gw), Peer() as peer:
        await peer.call(calls_url(gw), await mint(gw))
        await peer.wait_for("session.created")
        async with aiohttp.ClientSession() as http:
            url = f"{calls_url(gw)}/{peer.call_id}/hangup"
            ek = await http.post(url, headers={"Authorization": f"Bearer {await mint(gw)}"})
            assert ek.status == 401  # a caller's own key cannot hang up calls
            ok = await http.post(url, headers={"Authorization": f"Bearer {SERVER_KEY}"})
            assert ok.status == 200
        record = await fake.wait_for_connection()
        assert await record.wait_closed() == 1000
        assert await gw.app[HUB].wait_idle(10)


async def test_a_caller_that_vanishes_is_found_by_the_heartbeat() -> None:
    """ICE goes silent (the caller's process dies: no hang-up, no DTLS close, no SCTP abort)."""
    async with fake_and_gateway(ping_interval_s=1.0) as (fake, gw):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(TESTS / "webrtc_peer.py"),
            calls_url(gw),
            await mint(gw),
            stdout=subprocess.PIPE,
            cwd=TESTS,
        )
        assert proc.stdout is not None
        with capture_logs() as logs:
            call_id = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
            assert call_id.startswith("rtc_")
            proc.kill()
            await proc.wait()
            assert await gw.app[HUB].wait_idle(15)
        record = await fake.wait_for_connection()
        assert await record.wait_closed() == 1000
        closed = [e for e in logs if e["event"] == "session.closed"]
        assert closed[0]["cause"] in {"client_heartbeat_timeout", "client_lost"}


async def test_a_listen_only_caller_is_kept_alive_by_ice() -> None:
    """No microphone, no events: ICE consent, not media, is its proof of life."""
    async with fake_and_gateway(ping_interval_s=0.5) as (_fake, gw), Peer(mic=False) as peer:
        await peer.call(calls_url(gw), await mint(gw))
        await peer.wait_for("session.created")
        hub = gw.app[HUB]
        assert not await hub.wait_idle(3.0)  # six heartbeat intervals later, still in the call
        say_text(peer, "still there")
        await peer.wait_for("output_audio_buffer.stopped")


# ------------------------------------------------------------------ the sideband


def _tool_then_answer(ctx: ResponseContext) -> list[Say | CallTool]:
    last = ctx.items[-1] if ctx.items else {}
    if last.get("type") == "function_call_output":
        return [Say(f"The lookup says {last.get('output')}")]
    if ctx.tools:
        return [CallTool("lookup_order", '{"order":"A17"}')]
    return [Say("No tools here.")]


@contextlib.asynccontextmanager
async def _call_with_sideband(
    fake_kwargs: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[FakeRealtimeServer, RunningGateway, Peer]]:
    async with fake_and_gateway(fake_kwargs) as (fake, gw), Peer() as peer:
        await peer.call(calls_url(gw), await mint(gw))
        await peer.wait_for("session.created")
        yield fake, gw, peer


async def test_a_server_attaches_by_call_id_and_answers_the_tool() -> None:
    """OpenAI's sideband pattern with the stock SDK: the server owns the tools."""
    async with _call_with_sideband({"responder": _tool_then_answer}) as (_fake, gw, peer):
        client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(call_id=str(peer.call_id)) as side:
            tool = {
                "type": "function",
                "name": "lookup_order",
                "description": "Order status",
                "parameters": {"type": "object", "properties": {"order": {"type": "string"}}},
            }
            await side.session.update(session={"type": "realtime", "tools": [tool]})
            say_text(peer, "Where is my order?")  # the caller speaks (here: types) ...
            seen: list[str] = []
            async for event in side:  # ... and the server sees the call and answers the tool
                seen.append(event.type)
                if event.type == "response.function_call_arguments.done":
                    await side.conversation.item.create(
                        item={
                            "type": "function_call_output",
                            "call_id": event.call_id,
                            "output": "shipped today",
                        }
                    )
                    await side.response.create()
                if event.type == "response.done" and seen.count("response.done") == 2:
                    break
            assert "response.output_audio.delta" not in seen  # the audio is on the call
            assert "output_audio_buffer.started" in seen
        # The caller heard the answer the server's tool output produced.
        await peer.wait_until(
            lambda: any(
                e["type"] == "response.output_audio_transcript.done"
                and e["transcript"] == "The lookup says shipped today"
                for e in peer.events
            )
        )
        await peer.wait_for("output_audio_buffer.stopped", count=1)
        # The sideband left; the call goes on.
        say_text(peer, "thanks")
        await peer.wait_for("response.done", count=3)
        await client.close()


async def test_sideband_refusals_and_end_of_call() -> None:
    async with _call_with_sideband() as (_fake, gw, peer), aiohttp.ClientSession() as http:
        base = gw.realtime_url(f"call_id={peer.call_id}")

        async def attach(key: str, url: str = base) -> aiohttp.ClientWebSocketResponse:
            return await http.ws_connect(url, headers={"Authorization": f"Bearer {key}"})

        ek = await attach(await mint(gw))  # a caller's ek_ key may not watch calls
        msg = await ek.receive(timeout=10)
        assert json.loads(msg.data)["error"]["code"] == "invalid_api_key"
        await ek.receive(timeout=10)
        assert ek.close_code == 3000
        other = await attach(SERVER_KEY, gw.realtime_url("call_id=rtc_nosuchcall"))
        msg = await other.receive(timeout=10)
        assert json.loads(msg.data)["error"]["code"] == "call_not_found"
        await other.receive(timeout=10)
        assert other.close_code == 4000

        side = await attach(SERVER_KEY)
        say_text(peer, "hello")
        types: list[str] = []
        while "response.done" not in types:
            types.append(json.loads((await side.receive(timeout=10)).data)["type"])
        await peer.close()  # the caller hangs up: the sideband is closed with the call
        while not side.closed:
            await side.receive(timeout=10)
        assert side.close_code == 1000
