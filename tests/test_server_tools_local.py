"""Server tools and proactive messages on the local engine, with stock clients (issue 14).

The offline engine speaks the same protocol: its responder calls the session's tools (a micro
tool it recognises in the transcript, ``search_knowledge`` for anything else), voxgate runs
them and hides them, and the answer that used them is spoken. Real models, real sockets; the
sleeps in :func:`stream_realtime` pace audio like a microphone, every wait is on an event.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import aiohttp
import pytest
from openai import AsyncOpenAI
from pydantic import Field
from structlog.testing import capture_logs

from speech_fixtures import chunks, synth_pcm24k
from tool_helpers import Events, gateway_with_tools, user_text
from voxgate.app import BACKEND, MESSAGES
from voxgate.backends.local.backend import LocalBackend
from voxgate.backends.local.responder import KnowledgeResponder
from voxgate.config import Settings
from voxgate.testing.gateway import RunningGateway
from voxgate.tools.knowledge import KnowledgeBase
from voxgate.tools.registry import ToolContext, tool

pytestmark = [pytest.mark.timeout(120)]
KEY = "vk-local-tools"
TIMEOUT_S = 30.0
Symbol = Annotated[
    Literal["AAPL", "MSFT", "TSLA"],
    Field(description="Ticker: AAPL (Apple), MSFT (Microsoft), TSLA (Tesla)"),
]


@tool
def get_quote(symbol: Symbol, ctx: ToolContext) -> dict[str, Any]:
    """Get the latest price quote of a stock."""
    price = {"AAPL": 189.5, "MSFT": 402.25, "TSLA": 251.0}[symbol]
    return {"summary": f"{symbol} is at {price:.2f} dollars.", "for": ctx.subject}


@asynccontextmanager
async def local_gateway() -> AsyncIterator[RunningGateway]:
    async with gateway_with_tools(Settings(backend="local", api_keys=KEY), [get_quote]) as gw:
        backend = gw.app[BACKEND]
        assert isinstance(backend, LocalBackend)
        await asyncio.wait_for(backend.wait_warm(), 60)
        yield gw


async def stream_realtime(conn: Any, pcm: bytes, chunk_ms: int = 20) -> None:
    """Append ``pcm`` in ``chunk_ms`` chunks at real-time pace (the clock paces the audio)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, chunk in enumerate(chunks(pcm, chunk_ms)):
        await asyncio.sleep(max(0.0, start + i * chunk_ms / 1000 - loop.time()))
        await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())


def no_tool_traces(events: Events) -> None:
    assert not [e for e in events.seen if "function_call" in e.type]
    for text in ("get_quote", "search_knowledge"):
        assert all(text not in json.dumps(e.model_dump()) for e in events.seen), text
    assert events.of("session.created")[0].session.tools == []


async def ask(conn: Any, events: Events, text: str) -> str:
    before = len(events.of("response.done"))
    await conn.conversation.item.create(item=user_text(text))
    await conn.response.create()
    await events.wait("response.done", before + 1, TIMEOUT_S)
    return str(events.of("response.output_audio_transcript.done")[-1].transcript)


async def test_knowledge_and_a_micro_tool_go_through_the_tool_path_unseen() -> None:
    question = "What is a stop loss order?"
    with capture_logs() as logs:
        async with local_gateway() as gw:
            client = AsyncOpenAI(api_key=KEY, websocket_base_url=gw.ws_base)
            async with client.realtime.connect(model="gpt-realtime") as conn:
                events = Events(conn)
                answer = await ask(conn, events, question)
                quote = await ask(conn, events, "What is the price of Tesla?")
                await events.close()
            await client.close()
    assert answer == " ".join(KnowledgeResponder(KnowledgeBase.example()).answer(question))
    assert quote == "TSLA is at 251.00 dollars."
    calls = [(e["tool"], e["outcome"]) for e in logs if e["event"] == "tool.call"]
    assert calls == [("search_knowledge", "ok"), ("get_quote", "ok")]
    no_tool_traces(events)
    assert not events.of("error")
    assert len(events.of("response.created")) == len(events.of("response.done")) == 2
    assert events.of("response.output_audio.delta")


async def test_a_spoken_question_gets_the_spoken_answer_that_used_the_tool() -> None:
    async with local_gateway() as gw:
        client = AsyncOpenAI(api_key=KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            await events.wait("session.created")
            pcm = synth_pcm24k("What is the price of Apple?", lead_ms=400, trail_ms=1200)
            await stream_realtime(conn, pcm)
            await events.wait("response.done", 1, TIMEOUT_S)
            await events.close()
        await client.close()
    transcript = events.of("response.output_audio_transcript.done")[0].transcript
    assert transcript == "AAPL is at 189.50 dollars."
    audio = b"".join(base64.b64decode(e.delta) for e in events.of("response.output_audio.delta"))
    assert len(audio) > 24_000
    no_tool_traces(events)
    assert not events.of("error")


async def test_openai_agents_own_tool_and_a_server_tool_on_the_local_engine() -> None:
    from agents import function_tool
    from agents.realtime import RealtimeAgent, RealtimeRunner

    @function_tool
    def get_weather(city: str) -> str:
        """Get the weather for a city."""
        return f"It is sunny in {city}."

    agent = RealtimeAgent(name="coach", instructions="Be brief.", tools=[get_weather])
    async with local_gateway() as gw:
        session = await RealtimeRunner(agent).run(
            model_config={"url": gw.realtime_url(), "api_key": KEY}
        )
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=10_000)
        seen: list[Any] = []

        async def pump() -> None:
            async for event in session:
                await queue.put(event)

        async def until_answer() -> None:
            async with asyncio.timeout(TIMEOUT_S):
                while True:
                    event = await queue.get()
                    seen.append(event)
                    if not (
                        event.type == "raw_model_event" and event.data.type == "raw_server_event"
                    ):
                        continue
                    raw = event.data.data
                    if raw.get("type") == "response.done" and "message" in str(raw["response"]):
                        return  # the spoken answer is complete

        async with session:
            task = asyncio.create_task(pump())
            await session.send_message("What's the weather in Oslo?")
            await until_answer()
            await session.send_message("What is the price of Microsoft?")
            await until_answer()
            task.cancel()
    assert [e for e in seen if e.type == "error"] == []
    tool_events = [(e.type, e.tool.name) for e in seen if e.type in ("tool_start", "tool_end")]
    assert tool_events == [("tool_start", "get_weather"), ("tool_end", "get_weather")]
    raws = [
        e.data.data
        for e in seen
        if e.type == "raw_model_event" and e.data.type == "raw_server_event"
    ]
    transcripts = [
        r["transcript"] for r in raws if r.get("type") == "response.output_audio_transcript.done"
    ]
    assert transcripts == ["It is sunny in Oslo.", "MSFT is at 402.25 dollars."]
    assert all("get_quote" not in json.dumps(r) for r in raws)


async def test_a_proactive_message_is_spoken_by_the_local_engine() -> None:
    async with local_gateway() as gw:
        client = AsyncOpenAI(api_key=KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            await events.wait("session.created")
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    gw.http_url + "/v1/sessions", headers={"Authorization": f"Bearer {KEY}"}
                ) as resp,
            ):
                [session] = (await resp.json())["data"]
            record = await gw.app[MESSAGES].send(
                session["id"], "Tesla just crossed two hundred fifty dollars."
            )
            await gw.app[MESSAGES].wait(record.message_id, TIMEOUT_S)
            await events.wait("response.done", 1, TIMEOUT_S)
            await events.close()
        await client.close()
    assert record.status == "delivered"
    transcript = events.of("response.output_audio_transcript.done")[0].transcript
    assert transcript == "Tesla just crossed two hundred fifty dollars."
    assert events.of("response.created")[0].response.id == record.response_id
    assert not events.of("error")


async def test_a_speak_message_waits_while_the_user_speaks_on_the_local_engine() -> None:
    async with local_gateway() as gw:
        client = AsyncOpenAI(api_key=KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            await events.wait("session.created")
            [session] = await gw.app[MESSAGES].sessions()
            pcm = synth_pcm24k("What is a limit order?", lead_ms=400, trail_ms=1200)
            streaming = asyncio.create_task(stream_realtime(conn, pcm))
            await events.wait("input_audio_buffer.speech_started", 1, TIMEOUT_S)
            record = await gw.app[MESSAGES].send(session["id"], "Your Tesla alert fired.")
            assert record.status == "queued"
            await streaming
            await gw.app[MESSAGES].wait(record.message_id, TIMEOUT_S)
            await events.wait("response.done", 2, TIMEOUT_S)
            await events.close()
        await client.close()
    assert record.status == "delivered"
    types = [e.type for e in events.seen]
    stopped = types.index("input_audio_buffer.speech_stopped")
    said = [e.transcript for e in events.of("response.output_audio_transcript.done")]
    assert said[1] == "Your Tesla alert fired."
    assert "limit order" in said[0].lower()  # the user's question was answered first
    second = [i for i, t in enumerate(types) if t == "response.created"][1]
    assert stopped < types.index("response.done") < second
