"""Upstream resilience (issue #6): stock clients through voxgate while the upstream link fails.

voxgate → FaultProxy → FakeRealtimeServer, all on real sockets. The proxy cuts the upstream
connection (TCP reset both ways, no close frame), refuses new ones, or the fake expires the
session; the client is the stock ``openai`` SDK (or a raw ``voxgate.v1`` socket where the test
reads gateway events). Each test checks the conversation goes on, what the upstream that
finally committed each turn received (every byte once, in order), and that the client never
sees an item twice or waits for a response that will not end.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
from openai import AsyncOpenAI

from gateway_helpers import SERVER_KEY, UPSTREAM_KEY, gateway_settings, recv_json, recv_until
from voxgate.testing import FakeRealtimeServer, FaultProxy
from voxgate.testing.audio import encode
from voxgate.testing.gateway import RunningGateway, run_gateway

pytestmark = pytest.mark.slow
TIMEOUT_S = 15.0
FRAME = 960  # 20 ms of 24 kHz PCM16


def speechlike(ms: int, *, loud: bool, seed: int) -> bytes:
    """Unique bytes (seeded noise, so any slice is findable): loud = a tone the fake's VAD
    hears as speech, quiet = noise far below its threshold."""
    rng = np.random.default_rng(seed)
    n = 24 * ms
    noise = rng.normal(0.0, 0.004, n)
    if loud:
        noise += 0.5 * np.sin(2 * np.pi * 300 * np.arange(n) / 24000)
    return encode(noise, None)


@asynccontextmanager
async def rig(
    fake_kwargs: dict[str, Any] | None = None, **settings: Any
) -> AsyncIterator[tuple[FakeRealtimeServer, FaultProxy, RunningGateway]]:
    kwargs: dict[str, Any] = {"api_keys": {UPSTREAM_KEY}, "ping_interval_s": None}
    kwargs.update(fake_kwargs or {})
    async with FakeRealtimeServer(**kwargs) as fake, FaultProxy("127.0.0.1", fake.port) as proxy:
        url = proxy.url_for(fake.url)
        async with run_gateway(gateway_settings(url, **settings)) as gw:
            yield fake, proxy, gw


class Events:
    """Every event a stock SDK connection receives, read by one pump task (agents/openai
    iterators must not be cancelled mid-read, realtime-protocol.md §11)."""

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
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: len(self.of(etype)) >= count)
        return self.of(etype)

    async def close(self) -> None:
        self._task.cancel()
        with_suppress = asyncio.gather(self._task, return_exceptions=True)
        await with_suppress


def text_item(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def assert_no_duplicate_items(events: Events) -> None:
    added = [e.item.id for e in events.of("conversation.item.added")]
    assert len(added) == len(set(added)), added


async def test_cut_before_ready_is_invisible_to_the_client() -> None:
    async with rig({"session_created_delay_s": 0.3}) as (fake, proxy, gw):
        client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            await fake.wait_for_connection(1)  # upgraded, session.created not sent yet
            proxy.cut()
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await conn.conversation.item.create(item=text_item("hello again"))
            await conn.response.create()
            done = await events.wait("response.done")
            assert done[0].response.status == "completed"
            assert len(events.of("session.created")) == 1
            assert not events.of("error")
            await events.close()
        assert fake.accepted_count == 2
        second = await fake.wait_for_connection(2)
        assert [e["type"] for e in second.client_events][:3] == [
            "session.update",
            "conversation.item.create",
            "response.create",
        ]
        await client.close()


async def test_cut_while_the_user_speaks_the_new_upstream_gets_the_whole_turn_once() -> None:
    lead = speechlike(400, loud=False, seed=1)
    speech = speechlike(900, loud=True, seed=2)
    tail = speechlike(700, loud=False, seed=3)
    stream = lead + speech + tail
    cut_at = len(lead) + len(speech) // 2 // FRAME * FRAME
    async with rig() as (fake, proxy, gw):
        client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            await events.wait("session.created")
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await events.wait("session.updated")
            for i in range(0, cut_at, FRAME):
                await conn.input_audio_buffer.append(
                    audio=base64.b64encode(stream[i : i + FRAME]).decode()
                )
            first = await fake.wait_for_connection(1)
            await first.wait_for_sent("input_audio_buffer.speech_started")
            await events.wait("input_audio_buffer.speech_started")
            await first.wait_until(
                lambda: True if first.audio.total_appended >= cut_at else None, TIMEOUT_S, "audio"
            )
            proxy.cut()
            for i in range(cut_at, len(stream), FRAME):
                await conn.input_audio_buffer.append(
                    audio=base64.b64encode(stream[i : i + FRAME]).decode()
                )
            done = await events.wait("response.done")
            assert done[0].response.status == "completed"
            started = events.of("input_audio_buffer.speech_started")
            stopped = events.of("input_audio_buffer.speech_stopped")
            committed = events.of("input_audio_buffer.committed")
            assert len(started) == len(stopped) == len(committed) == 1
            assert started[0].item_id == stopped[0].item_id == committed[0].item_id
            assert not events.of("error")
            assert_no_duplicate_items(events)
            await events.close()
        second = await fake.wait_for_connection(2)
        ledger = second.audio
        assert len(ledger.committed) == 1
        turn = ledger.committed[0][1]
        start = stream.find(turn)
        assert start >= 0, "the committed turn is not a slice of what the client sent"
        assert start <= len(lead)
        assert start + len(turn) >= len(lead) + len(speech)
        # everything the new upstream got is the client's stream from one point on, once
        assert ledger.all_bytes() == stream[start : start + len(ledger.all_bytes())]
        assert start + len(ledger.all_bytes()) == len(stream)
        await client.close()


async def test_cut_during_a_response_ends_it_failed_and_the_conversation_goes_on() -> None:
    async with rig({"response_pacing_s": 0.05}) as (fake, proxy, gw):
        client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await conn.conversation.item.create(item=text_item("tell me a long story"))
            await conn.response.create()
            created = await events.wait("response.created")
            await events.wait("response.output_text.delta")
            proxy.cut()
            done = await events.wait("response.done")
            assert done[0].response.id == created[0].response.id
            assert done[0].response.status == "failed"
            details = done[0].response.status_details
            assert details.type == "failed"
            assert details.error.code == "voxgate_upstream_lost"
            await conn.conversation.item.create(item=text_item("are you there"))
            await conn.response.create()
            done = await events.wait("response.done", 2)
            assert done[1].response.status == "completed"
            text = [e.text for e in events.of("response.output_text.done")]
            assert text[-1] == "You said: are you there"
            assert_no_duplicate_items(events)
            assert not events.of("error")
            await events.close()
        second = await fake.wait_for_connection(2)
        items = second.session_core.conversation.items if second.session_core else []
        ids = [i["id"] for i in items]
        assert len(ids) == len(set(ids))
        texts = [
            p.get("text")
            for i in items
            for p in i.get("content") or []
            if p.get("type") == "input_text"
        ]
        assert texts[:2] == ["tell me a long story", "are you there"]
        await client.close()


TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


async def test_cut_during_a_function_call_keeps_the_call_and_its_output() -> None:
    async with rig() as (fake, proxy, gw):
        client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            await conn.session.update(
                session={"type": "realtime", "output_modalities": ["text"], "tools": [TOOL]}
            )
            await conn.conversation.item.create(item=text_item("get_weather in Oslo please"))
            await conn.response.create()
            calls = await events.wait("response.function_call_arguments.done")
            await events.wait("response.done")
            proxy.cut()  # the client runs its tool while voxgate reconnects
            await conn.conversation.item.create(
                item={
                    "type": "function_call_output",
                    "call_id": calls[0].call_id,
                    "output": '{"temp_c": 3}',
                }
            )
            await conn.response.create()
            done = await events.wait("response.done", 2)
            assert done[1].response.status == "completed"
            answer = events.of("response.output_text.done")[-1].text
            assert answer == 'The get_weather tool returned: {"temp_c": 3}'
            assert not events.of("error")
            assert_no_duplicate_items(events)
            await events.close()
        second = await fake.wait_for_connection(2)
        items = second.session_core.conversation.items if second.session_core else []
        kinds = [(i["type"], i.get("call_id")) for i in items]
        assert ("function_call", calls[0].call_id) in kinds
        assert kinds.count(("function_call_output", calls[0].call_id)) == 1
        await client.close()


async def test_upstream_refusing_for_ten_seconds_then_back_loses_nothing() -> None:
    held = speechlike(1000, loud=False, seed=7)
    async with rig() as (fake, proxy, gw):
        client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            await conn.session.update(
                session={
                    "type": "realtime",
                    "output_modalities": ["text"],
                    "audio": {"input": {"turn_detection": None}},
                }
            )
            await events.wait("session.updated")
            proxy.refuse(duration_s=10.0)
            proxy.cut()
            await proxy.wait_for_refused(1)
            for i in range(0, len(held), FRAME):  # sent while voxgate cannot reach upstream
                await conn.input_audio_buffer.append(
                    audio=base64.b64encode(held[i : i + FRAME]).decode()
                )
            await conn.input_audio_buffer.commit()
            await conn.conversation.item.create(item=text_item("still there?"))
            await conn.response.create()
            done = await events.wait("response.done", timeout_s=40.0)
            assert done[0].response.status == "completed"
            assert not events.of("error")
            committed = events.of("input_audio_buffer.committed")
            await events.close()
        assert proxy.refused >= 2
        second = fake.connections[-1]
        assert second.audio.committed_audio(committed[0].item_id) == held
        await client.close()


async def test_upstream_session_expiry_moves_the_call_and_tells_opted_in_clients() -> None:
    async with rig() as (fake, _, gw), aiohttp.ClientSession() as http:
        async with http.ws_connect(
            gw.realtime_url(),
            headers={"Authorization": f"Bearer {SERVER_KEY}"},
            protocols=("voxgate.v1",),
        ) as ws:
            await recv_until(ws, "session.created")
            await ws.send_str(
                orjson.dumps(
                    {
                        "type": "session.update",
                        "session": {"type": "realtime", "instructions": "Hi"},
                    }
                ).decode()
            )
            await recv_until(ws, "session.updated")
            await ws.send_str(
                orjson.dumps(
                    {"type": "conversation.item.create", "item": text_item("one")}
                ).decode()
            )
            await recv_until(ws, "conversation.item.done")
            fake.expire_session()
            reconnecting = await recv_until(ws, "voxgate.upstream.reconnecting")
            assert not [e for e in reconnecting if e["type"] == "error"]
            assert reconnecting[-1]["reason"] == "session_expired"
            back = await recv_json(ws)
            assert back["type"] == "voxgate.upstream.reconnected"
            assert back["state_restored"] is True
            assert back["replayed_items"] == 1
            await ws.send_str(
                '{"type":"response.create","response":{"output_modalities":["text"]}}'
            )
            seen = await recv_until(ws, "response.done")
            assert seen[-1]["response"]["status"] == "completed"
            assert [e["text"] for e in seen if e["type"] == "response.output_text.done"] == [
                "You said: one"
            ]
        second = await fake.wait_for_connection(2)
        assert second.session is not None
        assert second.session["instructions"] == "Hi"


async def test_fatal_upstream_errors_are_never_retried() -> None:
    async with rig() as (fake, proxy, gw), aiohttp.ClientSession() as http:
        async with http.ws_connect(
            gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}
        ) as ws:
            await recv_until(ws, "session.created")
            fake.fail_next_connections("invalid_api_key", count=5, close_code=3000)
            proxy.cut()
            seen = await recv_until(ws, "error")
            # the upstream refused voxgate's own key: the client's key is fine (issue 12.9)
            assert seen[-1]["error"]["code"] == "voxgate_upstream_auth_failed"
            msg = await ws.receive(timeout=TIMEOUT_S)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        # one connection that worked, one refused for good: no retry loop after a bad key
        assert len(fake.connections) == 2


async def test_twenty_cuts_in_one_call() -> None:
    """Repeated cuts: every one heals, the conversation keeps every turn, none twice."""
    async with rig() as (fake, proxy, gw):
        client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            for n in range(20):
                await conn.conversation.item.create(item=text_item(f"turn {n}"))
                await conn.response.create()
                await events.wait("response.done", n + 1)
                proxy.cut()
                await fake.wait_for_connection(n + 2)
            await conn.conversation.item.create(item=text_item("last"))
            await conn.response.create()
            await events.wait("response.done", 21)
            assert [e.text for e in events.of("response.output_text.done")] == [
                f"You said: {t}" for t in [*(f"turn {n}" for n in range(20)), "last"]
            ]
            assert not events.of("error")
            assert_no_duplicate_items(events)
            await events.close()
        last = fake.connections[-1]
        items = last.session_core.conversation.items if last.session_core else []
        user_texts = [p["text"] for i in items if i.get("role") == "user" for p in i["content"]]
        assert user_texts == [*(f"turn {n}" for n in range(20)), "last"]
        assistant = [p["text"] for i in items if i.get("role") == "assistant" for p in i["content"]]
        assert len(assistant) == 21  # every answer replayed once, as text
        await client.close()


async def test_recycle_moves_the_session_at_a_quiet_point_never_mid_response() -> None:
    async with rig(upstream_max_session_s=0.5) as (fake, _, gw), aiohttp.ClientSession() as http:
        async with http.ws_connect(
            gw.realtime_url(),
            headers={"Authorization": f"Bearer {SERVER_KEY}"},
            protocols=("voxgate.v1",),
        ) as ws:
            await recv_until(ws, "session.created")
            fake.hold_responses()  # a response that stays running: not a quiet point
            await ws.send_str(
                orjson.dumps({"type": "conversation.item.create", "item": text_item("hi")}).decode()
            )
            await ws.send_str('{"type":"response.create"}')
            await recv_until(ws, "response.created")
            first = await fake.wait_for_connection(1)
            # past the recycle age, but a response is running: nothing moves
            await first.wait_for_sent("response.created")
            assert fake.accepted_count == 1
            fake.release_responses()
            await recv_until(ws, "response.done")
            reconnecting = await recv_until(ws, "voxgate.upstream.reconnecting")
            assert reconnecting[-1]["reason"] == "recycle"
            back = await recv_json(ws)
            assert back["type"] == "voxgate.upstream.reconnected"
            assert back["replayed_items"] == 2  # the user item and the answer
            assert first.closed.is_set() or await first.wait_closed() == 1000
            await ws.send_str(
                orjson.dumps(
                    {"type": "conversation.item.create", "item": text_item("again")}
                ).decode()
            )
            await ws.send_str('{"type":"response.create"}')
            seen = await recv_until(ws, "response.done")
            assert seen[-1]["response"]["status"] == "completed"
        assert fake.accepted_count >= 2


async def test_openai_agents_tool_round_trip_survives_a_cut() -> None:
    from agents import function_tool
    from agents.realtime import RealtimeAgent, RealtimeRunner

    cut_done = asyncio.Event()
    proxy_box: list[FaultProxy] = []

    @function_tool
    async def get_weather(city: str) -> str:
        """Get the weather for a city."""
        proxy_box[0].cut()  # the upstream link dies while the tool runs
        cut_done.set()
        return f"sunny in {city}"

    agent = RealtimeAgent(name="assistant", instructions="Be brief.", tools=[get_weather])
    async with rig() as (fake, proxy, gw):
        proxy_box.append(proxy)
        session = await RealtimeRunner(agent).run(
            model_config={"url": gw.realtime_url(), "api_key": SERVER_KEY}
        )
        seen: list[Any] = []
        async with session:
            await session.send_message("what does get_weather say?")
            async with asyncio.timeout(TIMEOUT_S):
                async for event in session:
                    seen.append(event)
                    if event.type == "raw_model_event" and event.data.type == "raw_server_event":
                        data = event.data.data
                        if data.get("type") == "response.done" and "tool returned" in str(data):
                            break
        assert cut_done.is_set()
        types = [e.type for e in seen]
        assert "tool_start" in types
        assert "tool_end" in types
        assert [e for e in seen if e.type == "error"] == []
        last = fake.connections[-1]
        outputs = [
            e
            for e in last.events_of("conversation.item.create")
            if e["item"]["type"] == "function_call_output"
        ]
        assert [o["item"]["output"] for o in outputs] == ["sunny in test"]
        assert len(fake.connections) == 2


async def test_item_ids_the_client_knows_keep_working_when_the_new_upstream_renames_them() -> None:
    async with (
        rig({"honour_item_ids": False}) as (fake, proxy, gw),
        aiohttp.ClientSession() as http,
        http.ws_connect(gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}) as ws,
    ):
        await recv_until(ws, "session.created")
        ids = []
        for text in ("first", "second"):
            await ws.send_str(
                orjson.dumps({"type": "conversation.item.create", "item": text_item(text)}).decode()
            )
            ids.append((await recv_until(ws, "conversation.item.done"))[-1]["item"]["id"])
        proxy.cut()
        second = await fake.wait_for_connection(2)
        await second.wait_for("conversation.item.create", 2)
        upstream_ids = [i["id"] for i in second.session_core.conversation.items]  # type: ignore[union-attr]
        assert set(upstream_ids).isdisjoint(ids)  # the new upstream named them itself
        await ws.send_str(
            orjson.dumps({"type": "conversation.item.retrieve", "item_id": ids[0]}).decode()
        )
        retrieved = (await recv_until(ws, "conversation.item.retrieved"))[-1]
        assert retrieved["item"]["id"] == ids[0]
        assert retrieved["item"]["content"][0]["text"] == "first"
        await ws.send_str(
            orjson.dumps(
                {
                    "type": "conversation.item.create",
                    "previous_item_id": ids[0],
                    "item": text_item("between"),
                }
            ).decode()
        )
        added = (await recv_until(ws, "conversation.item.added"))[-1]
        assert added["previous_item_id"] == ids[0]
        await ws.send_str(
            orjson.dumps({"type": "conversation.item.delete", "item_id": ids[1]}).decode()
        )
        deleted = (await recv_until(ws, "conversation.item.deleted"))[-1]
        assert deleted["item_id"] == ids[1]
        texts = [i["content"][0]["text"] for i in second.session_core.conversation.items]  # type: ignore[union-attr]
        assert texts == ["first", "between"]
