"""Beta clients through voxgate to the GA fake upstream, on raw sockets (issue 15).

Every translated event is seen here on the wire, both ways: what the beta client receives
(beta names and flat shapes), and what the GA upstream received (GA shapes, recorded by the
fake). The real beta SDK drives the same paths in test_beta_sdk.py.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from gateway_helpers import SERVER_KEY, fake_and_gateway, recv_json, recv_until
from voxgate.testing import b64, tone

BETA = {"Authorization": f"Bearer {SERVER_KEY}", "OpenAI-Beta": "realtime=v1"}
GA_ONLY_TYPES = {
    "conversation.item.added",
    "conversation.item.done",
    "response.output_audio.delta",
    "response.output_audio.done",
    "response.output_audio_transcript.delta",
    "response.output_audio_transcript.done",
    "response.output_text.delta",
    "response.output_text.done",
}


async def send(ws: aiohttp.ClientWebSocketResponse, event: dict[str, Any]) -> None:
    await ws.send_str(orjson.dumps(event).decode())


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def assert_beta_only(events: list[dict[str, Any]]) -> None:
    seen = set(types(events))
    assert not seen & GA_ONLY_TYPES, seen & GA_ONLY_TYPES
    for event in events:
        text = orjson.dumps(event).decode()
        assert '"output_audio"' not in text
        assert '"output_text"' not in text
        assert '"output_modalities"' not in text


async def test_connect_gets_flat_session_then_conversation_created_and_updates_are_flat() -> None:
    async with (
        fake_and_gateway() as (fake, gw),
        aiohttp.ClientSession() as http,
        http.ws_connect(gw.realtime_url(), headers=BETA) as ws,
    ):
        created = await recv_json(ws)
        assert created["type"] == "session.created"
        flat = created["session"]
        assert flat["modalities"] == ["audio", "text"]
        assert flat["input_audio_format"] == "pcm16"
        assert flat["turn_detection"]["type"] == "server_vad"
        assert "audio" not in flat
        conversation = await recv_json(ws)
        assert conversation["type"] == "conversation.created"

        await send(
            ws,
            {
                "type": "session.update",
                "session": {
                    "modalities": ["text"],
                    "voice": "ash",
                    "input_audio_format": "g711_ulaw",
                    "turn_detection": None,
                    "temperature": 0.65,
                    "input_audio_transcription": {"model": "whisper-1"},
                    "max_response_output_tokens": 300,
                },
            },
        )
        updated = await recv_json(ws)
        assert updated["type"] == "session.updated"
        s = updated["session"]
        assert s["modalities"] == ["text"]
        assert s["voice"] == "ash"
        assert s["input_audio_format"] == "g711_ulaw"
        assert s["turn_detection"] is None
        assert s["temperature"] == 0.65
        assert s["input_audio_transcription"]["model"] == "whisper-1"
        assert s["max_response_output_tokens"] == 300

        record = await fake.wait_for_connection()
        [ga] = await record.wait_for("session.update")
        assert ga["session"]["type"] == "realtime"
        assert ga["session"]["output_modalities"] == ["text"]
        assert ga["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert ga["session"]["audio"]["output"]["voice"] == "ash"
        assert ga["session"]["max_output_tokens"] == 300
        assert "temperature" not in ga["session"]  # GA has none (README: known gaps)
        assert not record.handshake.headers.get("OpenAI-Beta")  # the upstream sees GA only


async def test_text_turn_has_beta_event_names_and_item_shapes() -> None:
    async with (
        fake_and_gateway() as (fake, gw),
        aiohttp.ClientSession() as http,
        http.ws_connect(gw.realtime_url(), headers=BETA) as ws,
    ):
        await recv_until(ws, "conversation.created")
        await send(ws, {"type": "session.update", "session": {"modalities": ["text"]}})
        await recv_until(ws, "session.updated")
        await send(
            ws,
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Hello there"}],
                },
            },
        )
        [created] = await recv_until(ws, "conversation.item.created")
        assert created["item"]["content"][0] == {"type": "input_text", "text": "Hello there"}
        await send(ws, {"type": "response.create", "response": {"temperature": 0.7}})
        events = await recv_until(ws, "response.done")
        assert_beta_only(events)
        got = types(events)
        assert got[0] == "response.created"
        assert "response.text.delta" in got
        assert "response.text.done" in got
        assert got.count("conversation.item.created") == 1  # the assistant item, once
        done = events[-1]["response"]
        assert done["modalities"] == ["text"]
        assert done["output"][0]["content"][0]["type"] == "text"
        text = "".join(e["delta"] for e in events if e["type"] == "response.text.delta")
        assert text == "You said: Hello there"
        assistant_id = done["output"][0]["id"]
        await send(ws, {"type": "conversation.item.retrieve", "item_id": assistant_id})
        retrieved = (await recv_until(ws, "conversation.item.retrieved"))[-1]
        assert retrieved["item"]["content"][0]["type"] == "text"
        assert retrieved["item"]["content"][0]["text"] == "You said: Hello there"
        record = await fake.wait_for_connection()
        [response_create] = record.events_of("response.create")
        assert "temperature" not in response_create.get("response", {})


async def test_audio_turn_sends_audio_unchanged_and_gets_beta_audio_events() -> None:
    pcm = tone(400, {"type": "audio/pcm"})
    async with (
        fake_and_gateway() as (fake, gw),
        aiohttp.ClientSession() as http,
        http.ws_connect(gw.realtime_url(), headers=BETA) as ws,
    ):
        await recv_until(ws, "conversation.created")
        await send(ws, {"type": "session.update", "session": {"turn_detection": None}})
        await recv_until(ws, "session.updated")
        for i in range(0, len(pcm), 4800):
            await send(ws, {"type": "input_audio_buffer.append", "audio": b64(pcm[i : i + 4800])})
        await send(ws, {"type": "input_audio_buffer.commit"})
        committed = await recv_until(ws, "input_audio_buffer.committed")
        item_id = committed[-1]["item_id"]
        [user_item] = (await recv_until(ws, "conversation.item.created"))[-1:]
        assert user_item["item"]["content"][0]["type"] == "input_audio"
        await send(ws, {"type": "response.create"})
        events = await recv_until(ws, "response.done")
        assert_beta_only(events)
        got = types(events)
        for name in (
            "response.audio.delta",
            "response.audio.done",
            "response.audio_transcript.delta",
            "response.audio_transcript.done",
        ):
            assert name in got, name
        audio = [e for e in events if e["type"] == "response.audio.delta"]
        assert all(e["delta"] for e in audio)
        assert events[-1]["response"]["output"][0]["content"][0]["type"] == "audio"
        record = await fake.wait_for_connection()
        assert record.audio.committed_audio(item_id) == pcm


async def test_function_call_round_trip_in_beta_shape() -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    async with (
        fake_and_gateway() as (_, gw),
        aiohttp.ClientSession() as http,
        http.ws_connect(gw.realtime_url(), headers=BETA) as ws,
    ):
        await recv_until(ws, "conversation.created")
        await send(
            ws,
            {"type": "session.update", "session": {"modalities": ["text"], "tools": [tool]}},
        )
        updated = (await recv_until(ws, "session.updated"))[-1]
        assert updated["session"]["tools"][0]["name"] == "get_weather"
        await send(
            ws,
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "get_weather in Oslo"}],
                },
            },
        )
        await send(ws, {"type": "response.create"})
        events = await recv_until(ws, "response.done")
        assert_beta_only(events)
        [args] = [e for e in events if e["type"] == "response.function_call_arguments.done"]
        assert args["name"] == "get_weather"
        await send(
            ws,
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": args["call_id"],
                    "output": '{"temp": 3}',
                },
            },
        )
        await send(ws, {"type": "response.create"})
        events = await recv_until(ws, "response.done")
        assert_beta_only(events)
        text = "".join(e["delta"] for e in events if e["type"] == "response.text.delta")
        assert text == 'The get_weather tool returned: {"temp": 3}'


async def test_transcription_session_in_beta_shape() -> None:
    pcm = tone(500, {"type": "audio/pcm"})
    async with (
        fake_and_gateway() as (fake, gw),
        aiohttp.ClientSession() as http,
        http.ws_connect(gw.realtime_url("intent=transcription"), headers=BETA) as ws,
    ):
        created = await recv_json(ws)
        assert created["type"] == "transcription_session.created"
        assert created["session"]["object"] == "realtime.transcription_session"
        await send(
            ws,
            {
                "type": "transcription_session.update",
                "session": {
                    "input_audio_format": "pcm16",
                    "input_audio_transcription": {"model": "whisper-1", "language": "en"},
                    "turn_detection": None,
                },
            },
        )
        updated = await recv_json(ws)
        assert updated["type"] == "transcription_session.updated"
        assert updated["session"]["input_audio_transcription"]["model"] == "whisper-1"
        assert updated["session"]["turn_detection"] is None
        await send(ws, {"type": "input_audio_buffer.append", "audio": b64(pcm)})
        await send(ws, {"type": "input_audio_buffer.commit"})
        events = await recv_until(ws, "conversation.item.input_audio_transcription.completed")
        assert events[-1]["transcript"] == "500 ms of audio"
        assert_beta_only(events)
        record = await fake.wait_for_connection()
        [ga] = record.events_of("session.update")
        assert ga["session"]["type"] == "transcription"
        assert ga["session"]["audio"]["input"]["transcription"]["model"] == "whisper-1"


async def test_errors_name_beta_fields_and_unknown_types_list_beta_events() -> None:
    async with (
        fake_and_gateway() as (_, gw),
        aiohttp.ClientSession() as http,
        http.ws_connect(gw.realtime_url(), headers=BETA) as ws,
    ):
        await recv_until(ws, "conversation.created")
        await send(
            ws,
            {"type": "session.update", "event_id": "c1", "session": {"input_audio_format": "mp3"}},
        )
        error = (await recv_until(ws, "error"))[-1]["error"]
        assert error["event_id"] == "c1"
        assert error["param"].startswith("session.input_audio_format")
        assert "audio.input" not in error["message"]
        await send(ws, {"type": "session.nope", "event_id": "c2"})
        error = (await recv_until(ws, "error"))[-1]["error"]
        assert error["code"] == "invalid_value"
        assert error["param"] == "type"
        assert "'transcription_session.update'" in error["message"]
        assert error["event_id"] == "c2"


async def test_beta_sessions_key_works_on_the_beta_socket_and_browser_subprotocols() -> None:
    async with fake_and_gateway() as (fake, gw), aiohttp.ClientSession() as http:
        minted = await http.post(
            f"{gw.http_url}/v1/realtime/sessions",
            headers={"Authorization": f"Bearer {SERVER_KEY}"},
            json={"model": "gpt-realtime", "modalities": ["text"], "voice": "sage",
                  "instructions": "Answer in French."},
        )  # fmt: skip
        assert minted.status == 200
        key = (await minted.json())["client_secret"]["value"]
        protocols = ("realtime", f"openai-insecure-api-key.{key}", "openai-beta.realtime-v1")
        async with http.ws_connect(gw.realtime_url(), protocols=protocols) as ws:
            assert ws.protocol == "realtime"  # never the key
            created = await recv_json(ws)
            assert created["type"] == "session.created"
            assert created["session"]["modalities"] == ["text"]
            assert created["session"]["voice"] == "sage"
            assert created["session"]["instructions"] == "Answer in French."
            assert (await recv_json(ws))["type"] == "conversation.created"
        # a beta browser client offering only the beta subprotocol gets it selected
        protocols = (f"openai-insecure-api-key.{key}", "openai-beta.realtime-v1")
        async with http.ws_connect(gw.realtime_url(), protocols=protocols) as ws:
            assert ws.protocol == "openai-beta.realtime-v1"
            assert (await recv_json(ws))["type"] == "session.created"
        # beta and voxgate.v1 do not combine: no voxgate.v1, no gateway events, no resume token
        protocols = ("voxgate.v1", f"openai-insecure-api-key.{key}", "openai-beta.realtime-v1")
        async with http.ws_connect(gw.realtime_url(), protocols=protocols) as ws:
            assert ws.protocol == "openai-beta.realtime-v1"
            assert (await recv_json(ws))["type"] == "session.created"
            assert (await recv_json(ws))["type"] == "conversation.created"
            await ws.send_bytes(b"\x00\x00")  # binary audio is not theirs either
            error = (await recv_until(ws, "error"))[-1]["error"]
            assert error["code"] == "invalid_event"
        assert fake.accepted_count == 3
