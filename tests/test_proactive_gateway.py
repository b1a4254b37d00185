"""Proactive messages through the gateway and the fake upstream (issue 14).

The HTTP API and the Python API push a message into a live session; voxgate injects it only at
a safe point. Stock clients see an ordinary assistant turn; ``voxgate.v1`` clients also get
``voxgate.message.delivered``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
from openai import AsyncOpenAI

from gateway_helpers import SERVER_KEY
from tool_helpers import Events, fake_with_tools, user_text
from voxgate.app import MESSAGES
from voxgate.session.injector import CONTEXT_PREFIX, SAY_PREFIX
from voxgate.testing import ResponseContext, Say, b64, silence, tone
from voxgate.testing.gateway import RunningGateway
from voxgate.testing.responder import Reply

TIMEOUT_S = 15.0
FRAME = 960  # 20 ms of 24 kHz PCM16
TEXT_WITH_TRANSCRIPTS: Any = {
    "type": "realtime",
    "output_modalities": ["text"],
    "audio": {"input": {"transcription": {"model": "whisper-1"}}},
}


def model(ctx: ResponseContext) -> Reply:
    """The fake model: follows a speak instruction, knows what context it was given."""
    if ctx.instructions.startswith(SAY_PREFIX):
        return [Say(ctx.instructions[len(SAY_PREFIX) :])]
    text = ctx.latest_user_text() or ""
    if "name" in text:
        context = [
            part.get("text", "")
            for item in ctx.items
            if item.get("role") == "system"
            for part in item.get("content") or []
        ]
        known = [c[len(CONTEXT_PREFIX) :] for c in context if c.startswith(CONTEXT_PREFIX)]
        return [Say("From the context: " + " ".join(known) if known else "I don't know.")]
    if "long" in text:
        return [Say(" ".join(["This is a long answer."] * 40))]
    return [Say(f"You said: {text}")]


async def api(
    gw: RunningGateway, method: str, path: str, body: Any = None, key: str | None = SERVER_KEY
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, gw.http_url + path, json=body, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


async def only_session(gw: RunningGateway) -> str:
    status, listing = await api(gw, "GET", "/v1/sessions")
    assert status == 200
    [session] = listing["data"]
    return str(session["id"])


async def send_audio(conn: Any, audio: bytes) -> None:
    for i in range(0, len(audio), FRAME):
        await conn.input_audio_buffer.append(audio=b64(audio[i : i + FRAME]))


async def test_a_speak_message_waits_for_the_user_to_finish_then_is_an_ordinary_turn() -> None:
    async with fake_with_tools((), {"responder": model}) as (_, gw):
        client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            await conn.session.update(session=TEXT_WITH_TRANSCRIPTS)
            await events.wait("session.updated")
            await send_audio(conn, tone(400))
            await events.wait("input_audio_buffer.speech_started")
            session_id = await only_session(gw)
            status, posted = await api(
                gw,
                "POST",
                f"/v1/sessions/{session_id}/messages",
                {"text": "Apple just fell five percent.", "mode": "speak", "expires_in": 30},
            )
            assert status == 202
            assert posted["status"] == "queued"
            _, still = await api(gw, "GET", f"/v1/sessions/{session_id}/messages/{posted['id']}")
            assert still["status"] == "queued"  # the user is still speaking
            await send_audio(conn, silence(600))
            status, final = await api(
                gw, "GET", f"/v1/sessions/{session_id}/messages/{posted['id']}?wait=10"
            )
            assert final["status"] == "delivered"
            await events.wait("response.done", 2)
            await events.close()
        await client.close()
    assert not events.of("error")
    assert not [e for e in events.seen if e.type.startswith("voxgate.")]
    texts = [e.text for e in events.of("response.output_text.done")]
    assert len(texts) == 2
    assert texts[0].endswith("ms of audio")  # the answer to the user's own turn came first
    assert texts[1] == "Apple just fell five percent."
    types = [e.type for e in events.seen]
    first_done = types.index("response.done")
    stopped = types.index("input_audio_buffer.speech_stopped")
    second_created = [i for i, t in enumerate(types) if t == "response.created"][1]
    assert stopped < first_done < second_created  # after the user's turn and its answer
    assert final["response_id"] == events.of("response.created")[1].response.id


async def test_a_message_that_expires_while_the_user_speaks_is_dropped_and_says_why() -> None:
    async with fake_with_tools((), {"responder": model}) as (_, gw):
        client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            await conn.session.update(session=TEXT_WITH_TRANSCRIPTS)
            await events.wait("session.updated")
            await send_audio(conn, tone(300))
            await events.wait("input_audio_buffer.speech_started")
            session_id = await only_session(gw)
            record = await gw.app[MESSAGES].send(
                session_id, "Too late.", mode="speak", expires_in=0.2
            )
            assert record.status == "queued"
            waited = await gw.app[MESSAGES].wait(record.message_id, TIMEOUT_S)
            assert waited is record
            assert (record.status, record.reason) == ("expired", "expired")
            await send_audio(conn, silence(600))
            await events.wait("response.done")
            await conn.conversation.item.create(item=user_text("and now?"))
            await conn.response.create()
            await events.wait("response.done", 2)
            await events.close()
        await client.close()
    texts = [e.text for e in events.of("response.output_text.done")]
    assert "Too late." not in texts
    assert len(texts) == 2


async def test_a_context_message_is_silent_and_used_by_the_next_answer() -> None:
    async with fake_with_tools((), {"responder": model}) as (fake, gw):
        client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await events.wait("session.updated")
            session_id = await only_session(gw)
            status, posted = await api(
                gw,
                "POST",
                f"/v1/sessions/{session_id}/messages",
                {"text": "The trader's name is Ada.", "mode": "context"},
            )
            assert status == 202
            _, final = await api(
                gw, "GET", f"/v1/sessions/{session_id}/messages/{posted['id']}?wait=10"
            )
            assert final["status"] == "delivered"
            assert final["item_id"].startswith("item_vgctx_")
            await conn.conversation.item.create(item=user_text("what is my name?"))
            await conn.response.create()
            await events.wait("response.done")
            await events.close()
        record = await fake.wait_for_connection()
        await client.close()
    assert events.of("response.output_text.done")[0].text == (
        "From the context: The trader's name is Ada."
    )
    added = events.of("conversation.item.added")
    assert [a.item.role for a in added] == ["user", "assistant"]
    assert added[0].previous_item_id is None  # the hidden context item is skipped
    system = [e for e in record.client_events if e.get("item", {}).get("role") == "system"]
    assert len(system) == 1


async def test_a_high_priority_message_interrupts_a_running_answer() -> None:
    async with fake_with_tools((), {"responder": model, "response_pacing_s": 0.02}) as (_, gw):
        client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await conn.conversation.item.create(item=user_text("give me the long version"))
            await conn.response.create()
            await events.wait("response.output_text.delta")
            session_id = await only_session(gw)
            record = await gw.app[MESSAGES].send(
                session_id, "Margin call on your account.", priority="high"
            )
            await gw.app[MESSAGES].wait(record.message_id, TIMEOUT_S)
            await events.wait("response.done", 2)
            await events.close()
        await client.close()
    assert record.status == "delivered"
    first, second = events.of("response.done")
    assert first.response.status == "cancelled"
    assert second.response.status == "completed"
    assert events.of("response.output_text.done")[-1].text == "Margin call on your account."


async def test_opted_in_clients_hear_of_the_delivery_stock_clients_do_not() -> None:
    async with fake_with_tools((), {"responder": model}) as (_, gw):
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(
                gw.realtime_url(),
                protocols=("realtime", "voxgate.v1"),
                headers={"Authorization": f"Bearer {SERVER_KEY}"},
            )
            seen: list[dict[str, Any]] = []

            async def until(etype: str) -> dict[str, Any]:
                async with asyncio.timeout(TIMEOUT_S):
                    while True:
                        event = orjson.loads((await ws.receive()).data)
                        seen.append(event)
                        if event["type"] == etype:
                            return dict(event)

            await until("session.created")
            session_id = await only_session(gw)
            record = await gw.app[MESSAGES].send(session_id, "Hello from the desk.")
            delivered = await until("voxgate.message.delivered")
            await ws.close()
    assert delivered["message_id"] == record.message_id
    assert delivered["mode"] == "speak"
    done = [e for e in seen if e["type"] == "response.done"]
    assert done[0]["response"]["id"] == delivered["response_id"]
    assert done[0]["response"]["metadata"] is None  # voxgate's tag is not shown


async def test_the_api_checks_keys_sessions_bodies_and_idempotency_keys() -> None:
    async with fake_with_tools((), {"responder": model}) as (_, gw):
        client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await events.wait("session.updated")
            session_id = await only_session(gw)
            path = f"/v1/sessions/{session_id}/messages"
            assert (await api(gw, "GET", "/v1/sessions", key=None))[0] == 401
            assert (await api(gw, "GET", "/v1/sessions", key="vk-wrong"))[0] == 401
            status, body = await api(gw, "POST", "/v1/sessions/vg_nope/messages", {"text": "x"})
            assert (status, body["error"]["code"]) == (404, "session_not_found")
            status, body = await api(gw, "POST", path, {"text": "x", "mode": "shout"})
            assert (status, body["error"]["param"]) == (400, "mode")
            status, body = await api(gw, "POST", path, {"text": "x", "expires_in": 86400})
            assert (status, body["error"]["code"]) == (400, "decimal_above_max_value")
            status, body = await api(gw, "POST", path, {"text": ""})
            assert status == 400
            once = {"text": "Alert 7 fired.", "idempotency_key": "alert-7"}
            status, first = await api(gw, "POST", path, once)
            assert status == 202
            status, again = await api(gw, "POST", path, once)
            assert (status, again["id"]) == (200, first["id"])
            _, listing = await api(gw, "GET", "/v1/sessions?subject=nobody")
            assert listing["data"] == []
            await events.wait("response.done")
            await events.close()
        await client.close()
    assert [e.text for e in events.of("response.output_text.done")] == ["Alert 7 fired."]
