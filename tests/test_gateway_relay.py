"""The gateway relaying stock clients to the fake OpenAI server, over real sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import aiohttp
import orjson
import pytest
from openai import AsyncOpenAI

from gateway_helpers import (
    SERVER_KEY,
    SIGNING_SECRET,
    TIMEOUT_S,
    UPSTREAM_KEY,
    expect_close,
    fake_and_gateway,
    recv_json,
    recv_until,
    text_item,
)
from voxgate.app import ENDPOINT
from voxgate.auth import client_keys
from voxgate.testing import FakeRealtimeServer, b64, tone
from voxgate.testing.gateway import RunningGateway

# ---------------------------------------------------------------- stock openai SDK


async def test_openai_sdk_text_turn_through_the_gateway() -> None:
    async with fake_and_gateway() as (fake, gw):
        client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            assert (await conn.recv()).type == "session.created"
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "hi"}],
                }
            )
            await conn.response.create()
            text = ""
            async for event in conn:
                assert event.type != "error"
                if event.type == "response.output_text.delta":
                    text += event.delta
                if event.type == "response.done":
                    assert event.response.status == "completed"
                    break
        assert text == "You said: hi"
        record = await fake.wait_for_connection()
        # the upstream saw the server's own key, never the client's
        assert record.handshake.api_key_prefix
        assert UPSTREAM_KEY.startswith(record.handshake.api_key_prefix)
        assert SERVER_KEY not in json.dumps(dict(record.headers))
        await client.close()


async def test_openai_sdk_audio_turn_with_manual_commit() -> None:
    async with fake_and_gateway() as (fake, gw):
        client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=gw.ws_base)
        sent = tone(300)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.session.update(
                session={
                    "type": "realtime",
                    "audio": {
                        "input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}
                    },
                }
            )
            for i in range(0, len(sent), 960):
                await conn.input_audio_buffer.append(audio=b64(sent[i : i + 960]))
            await conn.input_audio_buffer.commit()
            await conn.response.create()
            audio = b""
            committed_id = None
            transcript = ""
            async for event in conn:
                assert event.type != "error"
                if event.type == "input_audio_buffer.committed":
                    committed_id = event.item_id
                if event.type == "response.output_audio.delta":
                    audio += base64.b64decode(event.delta)
                if event.type == "response.output_audio_transcript.done":
                    transcript = event.transcript
                if event.type == "response.done":
                    break
        assert transcript == "You said: 300 ms of audio"
        assert len(audio) > 0
        record = await fake.wait_for_connection()
        assert committed_id is not None
        assert record.audio.committed_audio(committed_id) == sent
        await client.close()


async def test_openai_sdk_function_call_round_trip() -> None:
    tool = {
        "type": "function",
        "name": "lookup_order",
        "description": "Find an order",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}},
            "required": ["order_id"],
        },
    }
    async with fake_and_gateway() as (_, gw):
        client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.session.update(
                session={"type": "realtime", "output_modalities": ["text"], "tools": [tool]}
            )
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "please lookup_order 42"}],
                }
            )
            await conn.response.create()
            call = None
            async for event in conn:
                assert event.type != "error"
                if event.type == "response.output_item.done" and event.item.type == "function_call":
                    call = event.item
                if event.type == "response.done":
                    break
            assert call is not None
            assert call.status == "completed"
            await conn.conversation.item.create(
                item={"type": "function_call_output", "call_id": call.call_id, "output": '{"ok":1}'}
            )
            await conn.response.create()
            text = ""
            async for event in conn:
                if event.type == "response.output_text.done":
                    text = event.text
                if event.type == "response.done":
                    break
        assert text == 'The lookup_order tool returned: {"ok":1}'
        await client.close()


# ---------------------------------------------------------------- openai-agents


async def _pump_until(session: Any, stop: Any) -> list[Any]:
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1000)

    async def pump() -> None:
        async for event in session:
            await queue.put(event)

    task = asyncio.create_task(pump())
    seen: list[Any] = []
    try:
        while True:
            event = await asyncio.wait_for(queue.get(), TIMEOUT_S)
            seen.append(event)
            if stop(event):
                return seen
    finally:
        task.cancel()


def _raw_done(event: Any, needle: str) -> bool:
    if event.type != "raw_model_event" or event.data.type != "raw_server_event":
        return False
    data = event.data.data
    return bool(data.get("type") == "response.done" and needle in json.dumps(data))


async def test_openai_agents_text_audio_and_tool_round_trip_without_errors() -> None:
    from agents import function_tool
    from agents.realtime import RealtimeAgent, RealtimeRunner
    from agents.realtime.model_inputs import RealtimeModelSendRawMessage

    @function_tool
    def get_weather(city: str) -> str:
        """Get the weather for a city."""
        return f"sunny in {city}"

    agent = RealtimeAgent(name="assistant", instructions="Be brief.", tools=[get_weather])
    async with fake_and_gateway() as (fake, gw):
        session = await RealtimeRunner(agent).run(
            model_config={"url": gw.realtime_url(), "api_key": SERVER_KEY}
        )
        async with session:
            await session.send_message("hello agent")
            seen = await _pump_until(session, lambda e: _raw_done(e, "You said: hello agent"))
            # an audio turn with a manual commit, then an explicit response.create (a commit
            # does not start a response, realtime-protocol.md §4)
            await session.send_audio(tone(300), commit=True)
            await session.model.send_event(
                RealtimeModelSendRawMessage(message={"type": "response.create"})
            )
            seen += await _pump_until(session, lambda e: _raw_done(e, "ms of audio"))
            await session.send_message("what does get_weather say?")
            seen += await _pump_until(session, lambda e: _raw_done(e, "tool returned"))
        types = [e.type for e in seen]
        assert [e for e in seen if e.type == "error"] == []
        assert "audio" in types
        assert "tool_start" in types
        assert "tool_end" in types
        record = await fake.wait_for_connection()
        outputs = [
            e
            for e in record.events_of("conversation.item.create")
            if e["item"]["type"] == "function_call_output"
        ]
        assert outputs[0]["item"]["output"] == "sunny in test"


# ---------------------------------------------------------------- browser-style + ek_ keys


async def _mint(gw: RunningGateway, body: dict[str, Any]) -> str:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            gw.http_url + "/v1/realtime/client_secrets",
            headers={"Authorization": f"Bearer {SERVER_KEY}"},
            json=body,
        )
        assert resp.status == 200, await resp.text()
        value = (await resp.json())["value"]
        assert isinstance(value, str)
        return value


async def test_browser_subprotocol_with_ek_key_applies_the_embedded_config() -> None:
    async with fake_and_gateway() as (fake, gw):
        key = await _mint(
            gw,
            {
                "session": {
                    "type": "realtime",
                    "model": "gpt-realtime",
                    "instructions": "You are a trading coach.",
                    "output_modalities": ["text"],
                }
            },
        )
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                gw.realtime_url(""), protocols=["realtime", f"openai-insecure-api-key.{key}"]
            ) as ws,
        ):
            assert ws.protocol == "realtime"  # the key-bearing subprotocol is never echoed
            created = await recv_json(ws)
            assert created["type"] == "session.created"
            assert created["session"]["instructions"] == "You are a trading coach."
            assert created["session"]["output_modalities"] == ["text"]
            await ws.send_str(orjson.dumps(text_item("hello")).decode())
            await ws.send_str('{"type":"response.create"}')
            events = await recv_until(ws, "response.done")
            assert [e for e in events if e["type"] == "error"] == []
            assert any(e["type"] == "response.output_text.delta" for e in events)
        record = await fake.wait_for_connection()
        assert record.handshake.query.get("model") == "gpt-realtime"
        assert key not in json.dumps(dict(record.headers))


@pytest.mark.parametrize(
    ("make_key", "code", "message_part"),
    [
        (
            lambda: client_keys.mint(SIGNING_SECRET.encode(), now=time.time() - 700)[0],
            "invalid_api_key",
            "expired",
        ),
        (
            lambda: client_keys.mint(b"another-secret-entirely", now=time.time())[0],
            "invalid_api_key",
            "Incorrect API key",
        ),
        (lambda: "ek_not-a-key", "invalid_api_key", "Incorrect API key"),
        (lambda: "vk-wrong-server-key", "invalid_api_key", "Incorrect API key"),
    ],
)
async def test_bad_keys_get_error_then_close_3000(
    make_key: Any, code: str, message_part: str
) -> None:
    async with fake_and_gateway() as (fake, gw), aiohttp.ClientSession() as http:
        async with http.ws_connect(
            gw.realtime_url(), headers={"Authorization": f"Bearer {make_key()}"}
        ) as ws:
            error = await recv_json(ws)
            assert error["type"] == "error"
            assert error["error"]["code"] == code
            assert message_part in error["error"]["message"]
            closed = await expect_close(ws)
            assert closed == (3000, "invalid_request_error.invalid_api_key")
        assert fake.accepted_count == 0  # no upstream was opened for a refused client


async def test_missing_key_model_and_beta_header() -> None:
    async with fake_and_gateway() as (_, gw), aiohttp.ClientSession() as http:
        async with http.ws_connect(gw.realtime_url()) as ws:
            assert (await recv_json(ws))["error"]["code"] is None
            assert await expect_close(ws) == (3000, "invalid_request_error")
        async with http.ws_connect(
            gw.realtime_url(""), headers={"Authorization": f"Bearer {SERVER_KEY}"}
        ) as ws:
            assert (await recv_json(ws))["error"]["code"] == "missing_model"
            assert await expect_close(ws) == (4000, "invalid_request_error.missing_model")
    # Beta clients are served by translation (issue 15) unless the operator turns them off.
    async with fake_and_gateway(beta_clients=False) as (_, gw), aiohttp.ClientSession() as http:
        async with http.ws_connect(
            gw.realtime_url(),
            headers={"Authorization": f"Bearer {SERVER_KEY}", "OpenAI-Beta": "realtime=v1"},
        ) as ws:
            assert (await recv_json(ws))["error"]["code"] == "beta_api_shape_disabled"
            assert (await expect_close(ws))[0] == 4000


async def test_key_max_session_length_ends_the_session_like_the_real_server() -> None:
    async with fake_and_gateway() as (fake, gw):
        key = await _mint(gw, {"voxgate": {"subject": "u1", "max_session_seconds": 1}})
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(gw.realtime_url(), headers={"Authorization": f"Bearer {key}"}) as ws,
        ):
            events = await recv_until(ws, "error", timeout_s=5)
            assert events[-1]["error"]["code"] == "session_expired"
            assert await expect_close(ws) == (1001, "invalid_request_error.session_expired")
        record = await fake.wait_for_connection()
        assert await record.wait_closed(timeout_s=5) is not None


# ---------------------------------------------------------------- readiness gating


async def test_audio_sent_before_the_upstream_is_ready_arrives_complete_and_in_order() -> None:
    async with fake_and_gateway({"session_created_delay_s": 2.0}) as (fake, gw):
        sent = tone(2000)  # 2 s of audio, sent in the first milliseconds, 100 frames
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}
            ) as ws,
        ):
            await ws.send_str(
                orjson.dumps(
                    {
                        "type": "session.update",
                        "session": {
                            "type": "realtime",
                            "audio": {"input": {"turn_detection": None}},
                        },
                    }
                ).decode()
            )
            for i in range(0, len(sent), 960):
                await ws.send_str(
                    '{"type":"input_audio_buffer.append","audio":"' + b64(sent[i : i + 960]) + '"}'
                )
            await ws.send_str('{"type":"input_audio_buffer.commit"}')
            events = await recv_until(ws, "input_audio_buffer.committed")
            assert events[0]["type"] == "session.created"
            assert [e for e in events if e["type"] == "error"] == []
            item_id = events[-1]["item_id"]
        record = await fake.wait_for_connection()
        assert record.audio.committed_audio(item_id) == sent
        types = [e["type"] for e in record.client_events]
        assert types[0] == "session.update"
        assert types[-1] == "input_audio_buffer.commit"
        assert types.count("input_audio_buffer.append") == 100


async def test_upstream_not_ready_in_time_gets_a_clear_error_and_close() -> None:
    async with fake_and_gateway({"session_created_delay_s": 5.0}, ready_timeout_s=0.5) as (_, gw):
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}
            ) as ws,
        ):
            await ws.send_str('{"type":"input_audio_buffer.append","audio":"AAAA"}')
            error = await recv_json(ws)
            assert error["error"]["code"] == "voxgate_upstream_timeout"
            assert "no buffered event was forwarded" in error["error"]["message"]
            assert await expect_close(ws) == (1013, "server_error.voxgate_upstream_timeout")


async def test_prebuffer_overflow_is_an_error_not_a_silent_drop() -> None:
    async with (
        fake_and_gateway({"session_created_delay_s": 5.0}, prebuffer_bytes=16 * 1024) as (
            _,
            gw,
        ),
        aiohttp.ClientSession() as http,
        http.ws_connect(gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}) as ws,
    ):
        frame = '{"type":"input_audio_buffer.append","audio":"' + "A" * 1280 + '"}'
        for _ in range(20):
            await ws.send_str(frame)
        error = await recv_json(ws)
        assert error["error"]["code"] == "voxgate_prebuffer_overflow"
        assert (await expect_close(ws))[0] == 1013


# ---------------------------------------------------------------- upstream failures


async def test_upstream_unreachable_is_retried_until_the_ready_deadline_then_reported() -> None:
    async with FakeRealtimeServer() as fake:
        fake.refuse_connections(mode="http_503")
        from gateway_helpers import gateway_settings
        from voxgate.testing.gateway import run_gateway

        settings = gateway_settings(fake.url, ready_timeout_s=1.5)
        async with run_gateway(settings) as gw, aiohttp.ClientSession() as http:
            async with http.ws_connect(
                gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}
            ) as ws:
                error = await recv_json(ws)
                assert error["error"]["code"] == "voxgate_upstream_unreachable"
                assert "503" in error["error"]["message"]
                assert (await expect_close(ws))[0] == 1013
        assert fake.refused_count >= 3  # a 503 is retried with backoff, not given up at once
        nowhere = gateway_settings("ws://127.0.0.1:1/v1/realtime", ready_timeout_s=1.5)
        async with (
            run_gateway(nowhere) as gw,
            aiohttp.ClientSession() as http,
            http.ws_connect(
                gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}
            ) as ws,
        ):
            error = await recv_json(ws)
            assert error["error"]["code"] == "voxgate_upstream_unreachable"
            assert (await expect_close(ws))[0] == 1013


async def test_bad_upstream_key_is_the_gateways_problem_not_the_clients() -> None:
    """Issue 12.9: OpenAI refusing voxgate's own key must not tell the client *its* key is
    wrong (close 3000 makes the console ask for a new key); a 1011-class close instead, the
    key never quoted, and /readyz says upstream_auth_failed."""
    async with fake_and_gateway({"api_keys": {"sk-the-right-one-0000"}}) as (_, gw):
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}
            ) as ws,
        ):
            error = await recv_json(ws)
            assert error["error"]["code"] == "voxgate_upstream_auth_failed"
            message = error["error"]["message"]
            assert "not your key" in message
            assert "sk-" not in message
            assert UPSTREAM_KEY[-4:] not in message
            assert await expect_close(ws) == (1011, "server_error.voxgate_upstream_auth_failed")
            async with http.get(f"{gw.http_url}/readyz") as resp:
                assert resp.status == 503
                assert (await resp.json())["problem"] == "upstream_auth_failed"


async def test_upstream_quota_error_is_fatal_and_forwarded() -> None:
    async with fake_and_gateway() as (fake, gw):
        fake.fail_next_connections("insufficient_quota", close_code=1011)
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}
            ) as ws,
        ):
            error = await recv_json(ws)
            assert error["error"]["code"] == "insufficient_quota"
            code, reason = await expect_close(ws)
            assert reason == "invalid_request_error.insufficient_quota"
            assert code == 4000


async def test_without_reconnect_upstream_expiry_and_loss_end_the_session() -> None:
    # reconnect_attempts=0 turns recovery off (test_upstream_resilience.py covers it on)
    async with (
        fake_and_gateway(reconnect_attempts=0) as (fake, gw),
        aiohttp.ClientSession() as http,
    ):
        async with http.ws_connect(
            gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}
        ) as ws:
            await recv_until(ws, "session.created")
            fake.expire_session()
            error = await recv_json(ws)
            assert error["error"]["code"] == "session_expired"
            assert (await expect_close(ws))[0] == 1001
        async with http.ws_connect(
            gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}
        ) as ws:
            await recv_until(ws, "session.created")
            await fake.drop_all()
            error = await recv_json(ws)
            assert error["error"]["code"] == "voxgate_upstream_lost"
            assert await expect_close(ws) == (1011, "server_error.voxgate_upstream_lost")


# ---------------------------------------------------------------- bad client input


async def test_bad_client_input_gets_errors_and_the_session_and_its_neighbour_go_on() -> None:
    async with (
        fake_and_gateway(max_frame_bytes=256 * 1024) as (_, gw),
        aiohttp.ClientSession() as http,
    ):
        auth = {"Authorization": f"Bearer {SERVER_KEY}"}
        async with (
            http.ws_connect(gw.realtime_url(), headers=auth) as bad,
            http.ws_connect(gw.realtime_url(), headers=auth) as good,
        ):
            await recv_until(bad, "session.created")
            await recv_until(good, "session.created")
            await bad.send_str("{not json")
            await bad.send_bytes(b"\x00\xffgarbage")
            await bad.send_str('{"type":"no.such.event","event_id":"evt_1"}')
            await bad.send_str('["a", "list"]')
            codes = [(await recv_json(bad))["error"] for _ in range(4)]
            assert [c["code"] for c in codes] == [
                "invalid_json",
                "invalid_event",
                "invalid_value",
                "invalid_event",
            ]
            assert codes[2]["event_id"] == "evt_1"
            assert codes[2]["param"] == "type"
            # the neighbour is untouched and both sessions still complete a turn
            for ws in (good, bad):
                await ws.send_str(
                    orjson.dumps(
                        {
                            "type": "session.update",
                            "session": {"type": "realtime", "output_modalities": ["text"]},
                        }
                    ).decode()
                )
                await ws.send_str(orjson.dumps(text_item("still here")).decode())
                await ws.send_str('{"type":"response.create"}')
                events = await recv_until(ws, "response.done")
                assert [e for e in events if e["type"] == "error"] == []
                assert events[-1]["response"]["status"] == "completed"
            # an oversized frame ends only the offender, with a reason
            await bad.send_str(
                '{"type":"input_audio_buffer.append","audio":"' + "A" * (300 * 1024) + '"}'
            )
            error = (await recv_until(bad, "error"))[-1]
            assert error["error"]["code"] == "voxgate_frame_too_large"
            assert await expect_close(bad) == (
                1009,
                "invalid_request_error.voxgate_frame_too_large",
            )
            await good.send_str(orjson.dumps(text_item("and now")).decode())
            await good.send_str('{"type":"response.create"}')
            assert (await recv_until(good, "response.done"))[-1]["response"][
                "status"
            ] == "completed"


async def test_error_floods_are_coalesced_with_a_count() -> None:
    async with (
        fake_and_gateway(error_coalesce_window_s=60) as (_, gw),
        aiohttp.ClientSession() as http,
        http.ws_connect(gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}) as ws,
    ):
        await recv_until(ws, "session.created")
        for _ in range(200):
            await ws.send_str("garbage")
        # a different, valid request proves the flood produced exactly one error
        await ws.send_str('{"type":"input_audio_buffer.clear"}')
        events = await recv_until(ws, "input_audio_buffer.cleared")
        errors = [e for e in events if e["type"] == "error"]
        assert len(errors) == 1
        assert errors[0]["error"]["code"] == "invalid_json"


async def test_client_that_vanishes_frees_its_upstream() -> None:
    async with fake_and_gateway() as (fake, gw), aiohttp.ClientSession() as http:
        ws = await http.ws_connect(
            gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}
        )
        await recv_until(ws, "session.created")
        record = await fake.wait_for_connection()
        # abort the TCP connection without a close frame
        assert ws._response is not None
        ws._response.connection.transport.abort()  # type: ignore[union-attr]
        assert await record.wait_closed(timeout_s=5) == 1000


# ---------------------------------------------------------------- heartbeats


async def test_idle_healthy_client_survives_pings_and_a_dead_one_is_dropped() -> None:
    async with fake_and_gateway(ping_interval_s=0.2) as (fake, gw), aiohttp.ClientSession() as http:
        # aiohttp answers pings by itself: idle for many intervals, the session stays up
        async with http.ws_connect(
            gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}
        ) as ws:
            await recv_until(ws, "session.created")
            with pytest.raises(TimeoutError):  # ~7 intervals of silence and no close
                async with asyncio.timeout(1.5):
                    await ws.receive()
            await ws.send_str('{"type":"input_audio_buffer.clear"}')
            assert (await recv_json(ws))["type"] == "input_audio_buffer.cleared"
        # a peer that completed the handshake and then went silent (no pongs) is detected
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(
            b"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer "
            + SERVER_KEY.encode()
            + b"\r\n\r\n"
        )
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 101")
        record = await fake.wait_for_connection(2)
        # within two intervals (plus scheduling slack) the session ends and frees its upstream
        assert await record.wait_closed(timeout_s=3) == 1000
        writer.close()


# ---------------------------------------------------------------- limits


async def test_session_limits_refuse_with_a_clear_error_not_a_hang() -> None:
    async with (
        fake_and_gateway(max_sessions=2, max_sessions_per_subject=1) as (_, gw),
        aiohttp.ClientSession() as http,
    ):
        alice = await _mint(gw, {"voxgate": {"subject": "alice"}})
        bob = await _mint(gw, {"voxgate": {"subject": "bob"}})
        async with http.ws_connect(
            gw.realtime_url(), headers={"Authorization": f"Bearer {alice}"}
        ) as first:
            await recv_until(first, "session.created")
            async with http.ws_connect(
                gw.realtime_url(), headers={"Authorization": f"Bearer {alice}"}
            ) as again:
                assert (await recv_json(again))["error"]["code"] == "voxgate_subject_limit"
                assert (await expect_close(again))[0] == 1013
            async with http.ws_connect(
                gw.realtime_url(), headers={"Authorization": f"Bearer {bob}"}
            ) as second:
                await recv_until(second, "session.created")
                async with http.ws_connect(
                    gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}
                ) as third:
                    error = await recv_json(third)
                    assert error["error"]["code"] == "voxgate_capacity_exceeded"
                    assert (await expect_close(third))[0] == 1013
        # both slots are free again once the sessions end
        assert await gw.app[ENDPOINT].wait_idle(5)
        async with http.ws_connect(
            gw.realtime_url(), headers={"Authorization": f"Bearer {alice}"}
        ) as later:
            assert (await recv_json(later))["type"] == "session.created"


# ---------------------------------------------------------------- query and extensions


async def test_transcription_intent_reaches_the_upstream() -> None:
    async with fake_and_gateway() as (fake, gw), aiohttp.ClientSession() as http:
        async with http.ws_connect(
            gw.realtime_url("intent=transcription"),
            headers={"Authorization": f"Bearer {SERVER_KEY}"},
        ) as ws:
            created = await recv_json(ws)
            assert created["session"]["type"] == "transcription"
        record = await fake.wait_for_connection()
        assert record.handshake.query.get("intent") == "transcription"
        assert "model" not in record.handshake.query


async def test_opted_in_client_sends_binary_audio_and_stock_clients_get_no_gateway_events() -> None:
    async with fake_and_gateway() as (fake, gw), aiohttp.ClientSession() as http:
        pcm = tone(200)
        async with http.ws_connect(
            gw.realtime_url(),
            headers={"Authorization": f"Bearer {SERVER_KEY}"},
            protocols=["realtime", "voxgate.v1"],
        ) as ws:
            assert ws.protocol == "voxgate.v1"
            await ws.send_str(
                orjson.dumps(
                    {
                        "type": "session.update",
                        "session": {
                            "type": "realtime",
                            "audio": {"input": {"turn_detection": None}},
                        },
                    }
                ).decode()
            )
            for i in range(0, len(pcm), 960):
                await ws.send_bytes(pcm[i : i + 960])
            await ws.send_str('{"type":"input_audio_buffer.commit"}')
            events = await recv_until(ws, "input_audio_buffer.committed")
            item_id = events[-1]["item_id"]
        record = await fake.wait_for_connection()
        assert record.audio.committed_audio(item_id) == pcm
        # a stock client's whole session: only OpenAI event types
        async with http.ws_connect(
            gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}
        ) as ws:
            await ws.send_str(orjson.dumps(text_item("hi")).decode())
            await ws.send_str('{"type":"response.create"}')
            events = await recv_until(ws, "response.done")
            assert not [e for e in events if e["type"].startswith("voxgate.")]


# ---------------------------------------------------------------- backpressure


async def test_client_that_stops_reading_is_dropped_and_voxgate_does_not_buffer_for_it() -> None:
    async with fake_and_gateway(client_send_timeout_s=0.5) as (fake, gw):
        _reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(
            b"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer "
            + SERVER_KEY.encode()
            + b"\r\n\r\n"
        )
        await writer.drain()
        record = await fake.wait_for_connection()
        # the upstream streams 64 MiB of audio at a client that never reads another byte
        delta = {
            "type": "response.output_audio.delta",
            "event_id": "event_x",
            "response_id": "resp_x",
            "item_id": "item_x",
            "output_index": 0,
            "content_index": 0,
            "delta": "A" * (256 * 1024),
        }
        for _ in range(256):
            fake.send_raw(delta, record)
        # voxgate stops reading the upstream once the client's socket is full, then, past the
        # send timeout, treats the client as gone and closes the upstream
        assert await record.wait_closed(timeout_s=10) == 1000
        sent_to_voxgate = sum(
            1 for e in record.sent_events if e["type"] == "response.output_audio.delta"
        )
        assert sent_to_voxgate < 256  # the rest was never pulled from the fake
        writer.close()
