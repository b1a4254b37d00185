"""The fake OpenAI Realtime server: its sans-I/O core, real sockets, and the stock SDKs."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from agents.realtime.openai_realtime import get_server_event_type_adapter

from voxgate.protocol.session_config import default_realtime_session, default_transcription_session
from voxgate.testing import (
    CallTool,
    FakeRealtimeServer,
    ResponseContext,
    Say,
    b64,
    mask_key,
    silence,
    tone,
)
from voxgate.testing.core import Action, Close, FakeSession, Send, StartResponse

TIMEOUT_S = 10.0


# ====================================================================== sans-I/O core


class CoreDriver:
    """Feeds a FakeSession and runs its responses to completion (or leaves them held)."""

    def __init__(self, session: dict[str, Any] | None = None, **kw: Any) -> None:
        self.core = FakeSession(session or default_realtime_session(session_id="sess_t"), **kw)
        self.sent: list[dict[str, Any]] = []
        self.closes: list[Close] = []
        self.started: list[str] = []
        self.hold = False
        self.run(self.core.open())

    def run(self, actions: list[Action]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for action in actions:
            if isinstance(action, Send):
                out.append(action.event)
            elif isinstance(action, Close):
                self.closes.append(action)
            elif isinstance(action, StartResponse):
                self.started.append(action.response_id)
                if not self.hold:
                    out.extend(self.drain(action.response_id))
        self.sent.extend(out)
        return out

    def drain(self, response_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        done = False
        while not done:
            actions, done = self.core.advance(response_id)
            out.extend(a.event for a in actions if isinstance(a, Send))
        return out

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        return self.run(self.core.receive_text(json.dumps(event)))

    def types(self, events: list[dict[str, Any]] | None = None) -> list[str]:
        return [e["type"] for e in (self.sent if events is None else events)]


def _sdk_valid(events: list[dict[str, Any]]) -> None:
    adapter = get_server_event_type_adapter()
    for event in events:
        if "previous_item_id" in event and event["previous_item_id"] is None:
            event = {**event, "previous_item_id": ""}
        adapter.validate_python(event)


def _manual(d: CoreDriver, **extra: Any) -> None:
    d.feed(
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}, **extra},
        }
    )


def test_session_created_is_first() -> None:
    d = CoreDriver()
    assert d.types() == ["session.created"]
    assert d.sent[0]["session"]["type"] == "realtime"


def test_invalid_json_binary_and_unknown_types() -> None:
    d = CoreDriver()
    assert d.run(d.core.receive_text("{nope"))[0]["error"]["code"] == "invalid_json"
    assert d.run(d.core.receive_binary())[0]["error"]["code"] == "invalid_event"
    err = d.feed({"type": "ping", "event_id": "evt_9"})[0]["error"]
    assert (err["code"], err["param"], err["event_id"]) == ("invalid_value", "type", "evt_9")
    assert "'session.update'" in err["message"]
    err = d.feed({"type": "transcription_session.update"})[0]["error"]
    assert err["code"] == "invalid_value"


def test_session_update_error_echoes_event_id_and_changes_nothing() -> None:
    d = CoreDriver()
    before = dict(d.core.session)
    err = d.feed(
        {"type": "session.update", "event_id": "e1", "session": {"type": "realtime", "x": 1}}
    )
    assert err[0]["error"]["event_id"] == "e1"
    assert d.core.session == before


def test_commit_under_100_ms_is_commit_empty() -> None:
    d = CoreDriver()
    _manual(d)
    d.feed({"type": "input_audio_buffer.append", "audio": b64(tone(50))})
    err = d.feed({"type": "input_audio_buffer.commit"})[0]["error"]
    assert err["code"] == "input_audio_buffer_commit_empty"
    assert "buffer only has 50.00ms of audio" in err["message"]


def test_manual_commit_records_audio_and_creates_item_without_response() -> None:
    d = CoreDriver()
    _manual(d)
    chunks = [tone(40, phase_samples=i) for i in range(5)]
    for c in chunks:
        assert d.feed({"type": "input_audio_buffer.append", "audio": b64(c)}) == []
    out = d.feed({"type": "input_audio_buffer.commit"})
    assert d.types(out) == [
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    item_id = out[0]["item_id"]
    assert d.core.audio.committed_audio(item_id) == b"".join(chunks)
    assert d.core.audio.buffer == b""
    assert out[1]["item"]["content"] == [{"type": "input_audio", "transcript": None}]


def test_clear_moves_buffer_to_cleared() -> None:
    d = CoreDriver()
    _manual(d)
    d.feed({"type": "input_audio_buffer.append", "audio": b64(tone(30))})
    assert d.types(d.feed({"type": "input_audio_buffer.clear"})) == ["input_audio_buffer.cleared"]
    assert d.core.audio.cleared == [tone(30)]
    assert d.core.audio.buffer == b""


def test_second_response_while_active_is_rejected_then_cancel_works() -> None:
    d = CoreDriver()
    d.hold = True
    created = d.feed({"type": "response.create"})
    assert d.types(created) == ["response.created"]
    err = d.feed({"type": "response.create", "event_id": "agents_py_response_create_2"})[0]
    assert err["error"]["code"] == "conversation_already_has_active_response"
    assert err["error"]["event_id"] == "agents_py_response_create_2"
    done = d.feed({"type": "response.cancel"})
    assert done[-2]["type"] == "response.done"
    assert done[-2]["response"]["status_details"] == {
        "type": "cancelled",
        "reason": "client_cancelled",
    }
    assert d.drain(d.started[0]) == []
    err = d.feed({"type": "response.cancel"})[0]["error"]
    assert err["code"] == "response_cancel_not_active"
    _sdk_valid(d.sent)


def test_out_of_band_responses_may_run_beside_the_default_one() -> None:
    d = CoreDriver()
    d.hold = True
    d.feed({"type": "response.create"})
    oob = d.feed({"type": "response.create", "response": {"conversation": "none"}})
    assert d.types(oob) == ["response.created"]
    d.hold = False
    events = d.drain(d.started[1])
    assert not any(t.startswith("conversation.") for t in d.types(events))


def test_response_params_are_applied_and_echoed() -> None:
    d = CoreDriver()
    out = d.feed(
        {
            "type": "response.create",
            "response": {
                "output_modalities": ["text"],
                "instructions": "be terse",
                "metadata": {"turn": "1"},
                "input": [
                    {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "ping"}],
                    }
                ],
            },
        }
    )
    done = next(e for e in out if e["type"] == "response.done")["response"]
    assert done["output_modalities"] == ["text"]
    assert done["metadata"] == {"turn": "1"}
    assert done["output"][0]["content"][0]["text"] == "You said: ping"
    _sdk_valid(out)


def test_unknown_response_param_is_rejected() -> None:
    d = CoreDriver()
    err = d.feed({"type": "response.create", "response": {"temperature": 1}})[0]["error"]
    assert (err["code"], err["param"]) == ("unknown_parameter", "response.temperature")
    err = d.feed({"type": "response.create", "response": {"output_modalities": ["x"]}})[0]
    assert err["error"]["param"] == "response.output_modalities[0]"


def test_max_output_tokens_ends_incomplete() -> None:
    d = CoreDriver()
    d.feed(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "one two three four five"}],
            },
        }
    )
    out = d.feed({"type": "response.create", "response": {"max_output_tokens": 2}})
    done = next(e for e in out if e["type"] == "response.done")["response"]
    assert done["status"] == "incomplete"
    assert done["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
    _sdk_valid(out)


def test_function_call_round_trip_in_the_core() -> None:
    d = CoreDriver()
    tool = {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    d.feed({"type": "session.update", "session": {"type": "realtime", "tools": [tool]}})
    d.feed(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "use get_weather please"}],
            },
        }
    )
    out = d.feed({"type": "response.create"})
    call = next(e for e in out if e["type"] == "response.function_call_arguments.done")
    assert json.loads(call["arguments"]) == {"city": "test"}
    d.feed(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call["call_id"], "output": "3C"},
        }
    )
    out = d.feed({"type": "response.create"})
    transcript = next(e for e in out if e["type"] == "response.output_audio_transcript.done")
    assert transcript["transcript"] == "The get_weather tool returned: 3C"
    _sdk_valid(d.sent)


def test_custom_responder_and_transcriber() -> None:
    def responder(ctx: ResponseContext) -> list[Say | CallTool]:
        return [Say(f"heard {ctx.latest_user_text()}")]

    session = default_realtime_session(session_id="s")
    session["audio"]["input"]["transcription"] = {"model": "whisper-1"}
    session["audio"]["input"]["turn_detection"] = None
    session["output_modalities"] = ["text"]
    d = CoreDriver(session, responder=responder, transcriber=lambda audio, fmt: "hello world")
    d.feed({"type": "input_audio_buffer.append", "audio": b64(tone(200))})
    out = d.feed({"type": "input_audio_buffer.commit"})
    completed = out[-1]
    assert completed["type"] == "conversation.item.input_audio_transcription.completed"
    assert completed["transcript"] == "hello world"
    assert completed["usage"]["type"] == "tokens"
    out = d.feed({"type": "response.create"})
    assert next(e for e in out if e["type"] == "response.output_text.done")["text"] == (
        "heard hello world"
    )
    retrieved = d.feed({"type": "conversation.item.retrieve", "item_id": completed["item_id"]})
    assert retrieved[0]["item"]["content"][0]["transcript"] == "hello world"
    assert base64.b64decode(retrieved[0]["item"]["content"][0]["audio"]) == tone(200)
    _sdk_valid(d.sent)


def test_server_vad_detects_a_turn_and_answers() -> None:
    d = CoreDriver()
    appended = [silence(100), tone(400), silence(300), silence(100)]
    events: list[dict[str, Any]] = []
    for chunk in appended:
        events += d.feed({"type": "input_audio_buffer.append", "audio": b64(chunk)})
    types = d.types(events)
    assert types[:5] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    assert "response.created" in types
    assert "response.done" in types
    started, stopped = events[0], events[1]
    assert started["audio_start_ms"] == 0  # 100 ms onset minus 300 ms prefix padding, clamped
    assert stopped["audio_end_ms"] == 500
    assert started["item_id"] == stopped["item_id"] == events[2]["item_id"]
    committed = d.core.audio.committed_audio(events[2]["item_id"])
    assert committed is not None
    # Every appended byte is in exactly one place, in order.
    assert committed + bytes(d.core.audio.buffer) == b"".join(appended)
    assert len(committed) == 48 * 700  # committed once 200 ms of silence followed the speech
    _sdk_valid(events)


def test_vad_barge_in_cancels_the_running_response() -> None:
    d = CoreDriver()
    d.hold = True
    d.feed({"type": "response.create"})
    out = d.feed({"type": "input_audio_buffer.append", "audio": b64(tone(100))})
    assert d.types(out)[0] == "input_audio_buffer.speech_started"
    done = next(e for e in out if e["type"] == "response.done")["response"]
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}


def test_vad_without_interrupt_or_create_response() -> None:
    d = CoreDriver()
    d.feed(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {
                    "input": {
                        "turn_detection": {
                            "type": "server_vad",
                            "create_response": False,
                            "interrupt_response": False,
                            "silence_duration_ms": 100,
                        }
                    }
                },
            },
        }
    )
    d.hold = True
    d.feed({"type": "response.create", "response": {"conversation": "none"}})
    out = d.feed({"type": "input_audio_buffer.append", "audio": b64(tone(200) + silence(200))})
    assert "response.done" not in d.types(out)
    assert "response.created" not in d.types(out)
    assert "input_audio_buffer.committed" in d.types(out)


def test_pcmu_session_uses_8_khz_bytes() -> None:
    d = CoreDriver()
    fmt = {"type": "audio/pcmu"}
    d.feed(
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {
                    "input": {"format": fmt, "turn_detection": None},
                    "output": {"format": fmt},
                },
            },
        }
    )
    d.feed({"type": "input_audio_buffer.append", "audio": b64(tone(100, fmt))})
    assert d.types(d.feed({"type": "input_audio_buffer.commit"}))[0] == (
        "input_audio_buffer.committed"
    )
    out = d.feed({"type": "response.create"})
    audio = b"".join(
        base64.b64decode(e["delta"]) for e in out if e["type"] == "response.output_audio.delta"
    )
    assert len(audio) % 8 == 0
    assert len(audio) >= 8 * 100


def test_transcription_session_transcribes_and_refuses_responses() -> None:
    d = CoreDriver(default_transcription_session(session_id="sess_tr"))
    d.feed(
        {
            "type": "session.update",
            "session": {"type": "transcription", "audio": {"input": {"turn_detection": None}}},
        }
    )
    d.feed({"type": "input_audio_buffer.append", "audio": b64(tone(250))})
    out = d.feed({"type": "input_audio_buffer.commit"})
    assert out[-1]["transcript"] == "250 ms of audio"
    assert d.feed({"type": "response.create"})[0]["type"] == "error"
    _sdk_valid(d.sent)


def test_truncate_after_an_audio_reply() -> None:
    d = CoreDriver()
    _manual(d)
    out = d.feed({"type": "response.create"})
    item_id = next(e for e in out if e["type"] == "response.output_item.done")["item"]["id"]
    ok = d.feed(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 50,
        }
    )
    assert ok[0] == {**ok[0], "type": "conversation.item.truncated", "audio_end_ms": 50}
    err = d.feed(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 10**6,
        }
    )[0]["error"]
    assert err["code"] == "invalid_value"


def test_expire_is_fatal_with_1001() -> None:
    d = CoreDriver()
    d.run(d.core.expire())
    assert d.sent[-1]["error"]["code"] == "session_expired"
    assert d.closes == [Close(1001, "invalid_request_error.session_expired")]


def test_mask_key_quotes_only_the_ends() -> None:
    assert mask_key("sk-abcdef123456wxyz") == "sk-abc*********wxyz"
    assert "123456" not in mask_key("sk-abcdef123456wxyz")


# ====================================================================== real sockets


@pytest.fixture
async def fake() -> AsyncIterator[FakeRealtimeServer]:
    async with FakeRealtimeServer(ping_interval_s=None) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def _next(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), TIMEOUT_S)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    event: dict[str, Any] = json.loads(msg.data)
    return event


async def _until(ws: aiohttp.ClientWebSocketResponse, event_type: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    while not seen or seen[-1]["type"] != event_type:
        seen.append(await _next(ws))
    return seen


async def _connect(
    http: aiohttp.ClientSession, url: str, key: str | None = "sk-test", **kw: Any
) -> aiohttp.ClientWebSocketResponse:
    headers = dict(kw.pop("headers", {}))
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return await http.ws_connect(url, headers=headers, **kw)


async def _expect_fatal(
    ws: aiohttp.ClientWebSocketResponse, code: str | None, close_code: int, reason: str
) -> dict[str, Any]:
    event = await _next(ws)
    assert event["type"] == "error"
    assert event["error"]["code"] == code
    msg = await asyncio.wait_for(ws.receive(), TIMEOUT_S)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert (ws.close_code, msg.extra) == (close_code, reason)
    return event


@pytest.mark.parametrize("path", ["/v1/realtime", "/realtime"])
async def test_both_paths_serve_session_created_first(
    fake: FakeRealtimeServer, http: aiohttp.ClientSession, path: str
) -> None:
    url = f"ws://127.0.0.1:{fake.port}{path}?model=gpt-realtime"
    async with await _connect(http, url) as ws:
        event = await _next(ws)
        assert event["type"] == "session.created"
        assert event["session"]["model"] == "gpt-realtime"


async def test_missing_auth_closes_3000(
    fake: FakeRealtimeServer, http: aiohttp.ClientSession
) -> None:
    async with await _connect(http, fake.agents_url(), key=None) as ws:
        event = await _expect_fatal(ws, None, 3000, "invalid_request_error")
        assert event["error"]["message"] == "Missing bearer or basic authentication in header"


async def test_bad_key_is_quoted_masked_and_closes_3000(http: aiohttp.ClientSession) -> None:
    async with FakeRealtimeServer(api_keys={"sk-good"}, ping_interval_s=None) as fake:
        async with await _connect(http, fake.agents_url(), key="sk-abcdef123456wxyz") as ws:
            event = await _expect_fatal(
                ws, "invalid_api_key", 3000, "invalid_request_error.invalid_api_key"
            )
        message = event["error"]["message"]
        assert message.startswith("Incorrect API key provided: sk-abc*")
        assert "wxyz. You can find your API key at" in message
        assert "123456" not in message
        record = await fake.wait_for_connection()
        assert await record.wait_closed(timeout_s=TIMEOUT_S) == 3000
        assert record.handshake.api_key_prefix == "sk-abc"
        assert "sk-abcdef123456wxyz" not in repr(record.handshake)


async def test_subprotocol_auth_selects_realtime_and_redacts(
    fake: FakeRealtimeServer, http: aiohttp.ClientSession
) -> None:
    protocols = ("realtime", "openai-insecure-api-key.ek_secret123")
    async with await _connect(http, fake.agents_url(), key=None, protocols=protocols) as ws:
        assert ws.protocol == "realtime"
        assert (await _next(ws))["type"] == "session.created"
    record = await fake.wait_for_connection()
    assert record.handshake.api_key_source == "subprotocol"
    assert record.selected_subprotocol == "realtime"
    assert "ek_secret123" not in repr(record.handshake)


async def test_beta_header_is_fatal_4000(
    fake: FakeRealtimeServer, http: aiohttp.ClientSession
) -> None:
    headers = {"OpenAI-Beta": "realtime=v1"}
    async with await _connect(http, fake.agents_url(), headers=headers) as ws:
        await _expect_fatal(
            ws, "beta_api_shape_disabled", 4000, "invalid_request_error.beta_api_shape_disabled"
        )


@pytest.mark.parametrize(
    ("query", "code"), [("", "missing_model"), ("?model=whisper-1", "invalid_model")]
)
async def test_model_errors_close_4000(
    fake: FakeRealtimeServer, http: aiohttp.ClientSession, query: str, code: str
) -> None:
    async with await _connect(http, fake.url + query) as ws:
        await _expect_fatal(ws, code, 4000, f"invalid_request_error.{code}")


async def test_intent_transcription_without_model(
    fake: FakeRealtimeServer, http: aiohttp.ClientSession
) -> None:
    async with await _connect(http, fake.url + "?intent=transcription") as ws:
        session = (await _next(ws))["session"]
        assert session["type"] == "transcription"
        assert session["object"] == "realtime.transcription_session"


async def test_fail_next_connections_sends_error_then_closes(
    fake: FakeRealtimeServer, http: aiohttp.ClientSession
) -> None:
    fake.fail_next_connections("insufficient_quota", count=1)
    async with await _connect(http, fake.agents_url()) as ws:
        await _expect_fatal(
            ws, "insufficient_quota", 1011, "invalid_request_error.insufficient_quota"
        )
    async with await _connect(http, fake.agents_url()) as ws:
        assert (await _next(ws))["type"] == "session.created"


async def test_session_created_delay_holds_client_events(http: aiohttp.ClientSession) -> None:
    fake = FakeRealtimeServer(session_created_delay_s=0.2, ping_interval_s=None)
    async with fake, await _connect(http, fake.agents_url()) as ws:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await ws.send_json({"type": "session.update", "session": {"type": "realtime"}})
        first, second = await _next(ws), await _next(ws)
        assert loop.time() - t0 >= 0.2
        assert [first["type"], second["type"]] == ["session.created", "session.updated"]


async def test_refuse_by_reset_closes_tcp_without_an_answer(
    fake: FakeRealtimeServer, http: aiohttp.ClientSession
) -> None:
    import websockets

    fake.refuse_connections(1, mode="reset")
    with pytest.raises((websockets.exceptions.InvalidMessage, OSError, EOFError)):
        async with websockets.connect(
            fake.agents_url(), additional_headers={"Authorization": "Bearer sk-test"}
        ):
            pass
    assert fake.refused_count == 1
    assert fake.accepted_count == 0
    async with await _connect(http, fake.agents_url()) as ws:
        assert (await _next(ws))["type"] == "session.created"


async def test_refuse_with_503_by_count(
    fake: FakeRealtimeServer, http: aiohttp.ClientSession
) -> None:
    fake.refuse_connections(1, mode="http_503")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await _connect(http, fake.agents_url())
    assert info.value.status == 503
    assert fake.refused_count == 1
    async with await _connect(http, fake.agents_url()) as ws:
        assert (await _next(ws))["type"] == "session.created"


async def test_refuse_for_a_duration(fake: FakeRealtimeServer, http: aiohttp.ClientSession) -> None:
    fake.refuse_connections(duration_s=60, mode="http_503")
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await _connect(http, fake.agents_url())
    fake.refuse_connections(duration_s=0, mode="http_503")
    async with await _connect(http, fake.agents_url()) as ws:
        assert (await _next(ws))["type"] == "session.created"


async def test_refuse_until_accept(fake: FakeRealtimeServer, http: aiohttp.ClientSession) -> None:
    fake.refuse_connections(mode="http_503")
    for _ in range(2):
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await _connect(http, fake.agents_url())
    fake.accept_connections()
    async with await _connect(http, fake.agents_url()) as ws:
        assert (await _next(ws))["type"] == "session.created"


async def test_drop_all_aborts_without_close_frame(
    fake: FakeRealtimeServer, http: aiohttp.ClientSession
) -> None:
    async with await _connect(http, fake.agents_url()) as ws:
        await _next(ws)
        assert await fake.drop_all() == 1
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT_S)
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        assert ws.close_code == 1006
    record = await fake.wait_for_connection()
    await record.wait_closed(timeout_s=TIMEOUT_S)
    assert record.closed_by == "abort"


async def test_expire_session_hook(fake: FakeRealtimeServer, http: aiohttp.ClientSession) -> None:
    async with await _connect(http, fake.agents_url()) as ws:
        await _next(ws)
        fake.expire_session()
        event = await _expect_fatal(
            ws, "session_expired", 1001, "invalid_request_error.session_expired"
        )
        assert "maximum duration of 60 minutes" in event["error"]["message"]


async def test_send_raw_and_close_connection_hooks(
    fake: FakeRealtimeServer, http: aiohttp.ClientSession
) -> None:
    async with await _connect(http, fake.agents_url()) as ws:
        await _next(ws)
        record = await fake.wait_for_connection()
        fake.send_raw({"type": "voxgate.test", "event_id": "event_raw"}, record)
        assert (await _next(ws))["type"] == "voxgate.test"
        fake.close_connection(1011, "boom")
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT_S)
        assert (msg.type, ws.close_code, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1011, "boom")
    assert await record.wait_closed(timeout_s=TIMEOUT_S) == 1011
    assert record.closed_by == "server"


async def test_server_close_ends_live_connections_with_1001(http: aiohttp.ClientSession) -> None:
    fake = FakeRealtimeServer(ping_interval_s=None)
    async with fake:
        ws = await _connect(http, fake.agents_url())
        await _next(ws)
        reading = asyncio.create_task(ws.receive())
    msg = await asyncio.wait_for(reading, TIMEOUT_S)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1001
    await ws.close()


async def test_max_session_length(http: aiohttp.ClientSession) -> None:
    fake = FakeRealtimeServer(max_session_s=0.2, ping_interval_s=None)
    async with fake, await _connect(http, fake.agents_url()) as ws:
        await _next(ws)
        await _expect_fatal(ws, "session_expired", 1001, "invalid_request_error.session_expired")


async def test_server_pings(http: aiohttp.ClientSession) -> None:
    fake = FakeRealtimeServer(ping_interval_s=0.1)
    async with fake, await _connect(http, fake.agents_url(), autoping=False) as ws:
        await _next(ws)
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT_S)
        assert msg.type == aiohttp.WSMsgType.PING
        await ws.pong(msg.data)


async def test_bad_frames_are_non_fatal(
    fake: FakeRealtimeServer, http: aiohttp.ClientSession
) -> None:
    async with await _connect(http, fake.agents_url()) as ws:
        await _next(ws)
        await ws.send_str("not json")
        assert (await _next(ws))["error"]["code"] == "invalid_json"
        await ws.send_bytes(b"\x00\x01")
        assert (await _next(ws))["error"]["code"] == "invalid_event"
        await ws.send_json({"type": "ping"})
        assert (await _next(ws))["error"]["param"] == "type"
        await ws.send_json({"type": "conversation.item.retrieve", "item_id": "item_x"})
        assert (await _next(ws))["type"] == "error"


async def test_records_audio_headers_and_waits(
    fake: FakeRealtimeServer, http: aiohttp.ClientSession
) -> None:
    chunks = [tone(20, phase_samples=480 * i) for i in range(10)]
    async with await _connect(http, fake.agents_url(), headers={"X-Test": "1"}) as ws:
        await _next(ws)
        await ws.send_json(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
            }
        )
        for chunk in chunks:
            await ws.send_json({"type": "input_audio_buffer.append", "audio": b64(chunk)})
        await ws.send_json({"type": "input_audio_buffer.commit"})
        committed = (await _until(ws, "input_audio_buffer.committed"))[-1]
        await ws.send_json({"type": "input_audio_buffer.append", "audio": b64(b"\x01\x02")})
        record = await fake.wait_for_connection()
        appends = await record.wait_for("input_audio_buffer.append", 11, timeout_s=TIMEOUT_S)
        assert appends[0]["audio_len"] == len(b64(chunks[0]))
        assert record.audio.committed_audio(committed["item_id"]) == b"".join(chunks)
        assert record.audio.buffer == b"\x01\x02"
        assert record.headers["authorization"] == "<redacted>"
        assert record.headers["x-test"] == "1"
        assert record.handshake.api_key_provided
        await record.wait_for_sent("conversation.item.done")


async def test_hold_responses_then_cancel_over_the_socket(
    fake: FakeRealtimeServer, http: aiohttp.ClientSession
) -> None:
    fake.hold_responses()
    async with await _connect(http, fake.agents_url()) as ws:
        await _next(ws)
        await ws.send_json({"type": "response.create"})
        created = (await _until(ws, "response.created"))[-1]
        await ws.send_json({"type": "response.create", "event_id": "second"})
        err = await _next(ws)
        assert err["error"]["code"] == "conversation_already_has_active_response"
        await ws.send_json({"type": "response.cancel"})
        done = (await _until(ws, "response.done"))[-1]
        assert done["response"]["id"] == created["response"]["id"]
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
    fake.release_responses()


async def test_vad_turn_over_the_socket_records_every_byte(
    fake: FakeRealtimeServer, http: aiohttp.ClientSession
) -> None:
    audio = silence(100) + tone(300) + silence(300)
    chunks = [audio[i : i + 960] for i in range(0, len(audio), 960)]
    async with await _connect(http, fake.agents_url()) as ws:
        await _next(ws)
        for chunk in chunks:
            await ws.send_json({"type": "input_audio_buffer.append", "audio": b64(chunk)})
        seen = await _until(ws, "response.done")
        types = [e["type"] for e in seen]
        assert types.index("input_audio_buffer.speech_started") < types.index(
            "input_audio_buffer.speech_stopped"
        )
        committed = next(e for e in seen if e["type"] == "input_audio_buffer.committed")
    record = await fake.wait_for_connection()
    turn = record.audio.committed_audio(committed["item_id"])
    assert turn is not None
    assert turn + bytes(record.audio.buffer) == audio


# ====================================================================== stock SDKs


async def test_openai_sdk_text_turn(fake: FakeRealtimeServer) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="sk-test", websocket_base_url=fake.ws_base_url)
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


async def test_openai_sdk_manual_commit_audio_turn(fake: FakeRealtimeServer) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="sk-test", websocket_base_url=fake.ws_base_url)
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
        for i in range(0, len(sent), 4800):
            await conn.input_audio_buffer.append(audio=b64(sent[i : i + 4800]))
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        audio = b""
        transcript = ""
        committed_id = None
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
    assert len(audio) == 48 * 100 * len(transcript.split(" "))
    record = await fake.wait_for_connection()
    assert committed_id is not None
    assert record.audio.committed_audio(committed_id) == sent


async def test_openai_sdk_function_call_round_trip(fake: FakeRealtimeServer) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key="sk-test", websocket_base_url=fake.ws_base_url)
    tool = {
        "type": "function",
        "name": "lookup_order",
        "description": "Find an order",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}, "verbose": {"type": "boolean"}},
            "required": ["order_id"],
        },
    }
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
        assert json.loads(call.arguments) == {"order_id": "test", "verbose": True}
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


async def _agents_session(
    fake: FakeRealtimeServer, tools: list[Any], monkeypatch: pytest.MonkeyPatch
) -> Any:
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")
    from agents.realtime import RealtimeAgent, RealtimeRunner

    agent = RealtimeAgent(name="assistant", instructions="Be brief.", tools=tools)
    return await RealtimeRunner(agent).run(
        model_config={"url": fake.agents_url(), "api_key": "sk-test"}
    )


async def _pump_until(session: Any, stop: Any) -> list[Any]:
    """Read agents' events from a pump task into a bounded queue until ``stop(event)``."""
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


async def test_openai_agents_text_turn_without_errors(
    fake: FakeRealtimeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = await _agents_session(fake, [], monkeypatch)
    async with session:
        await session.send_message("hello agent")
        seen = await _pump_until(session, lambda e: _raw_done(e, "You said: hello agent"))
    assert not [e for e in seen if e.type == "error"]
    assert "audio" in [e.type for e in seen]
    record = await fake.wait_for_connection()
    assert record.events_of("response.create")[0]["event_id"].startswith("agents_py")


async def test_openai_agents_tool_round_trip_without_errors(
    fake: FakeRealtimeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agents import function_tool

    @function_tool
    def get_weather(city: str) -> str:
        """Get the weather for a city."""
        return f"sunny in {city}"

    session = await _agents_session(fake, [get_weather], monkeypatch)
    async with session:
        await session.send_message("what does get_weather say?")
        seen = await _pump_until(session, lambda e: _raw_done(e, "tool returned"))
    types = [e.type for e in seen]
    assert "tool_start" in types
    assert "tool_end" in types
    assert not [e for e in seen if e.type == "error"]
    record = await fake.wait_for_connection()
    outputs = [
        e
        for e in record.events_of("conversation.item.create")
        if e["item"]["type"] == "function_call_output"
    ]
    assert outputs[0]["item"]["output"] == "sunny in test"
