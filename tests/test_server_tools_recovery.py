"""Server tool calls survive an upstream reconnect and a client resume (issue 14).

voxgate → FaultProxy → FakeRealtimeServer for the upstream cut; a raw ``voxgate.v1`` client
through a FaultProxy for the client cut. A slow server tool is running when the link breaks;
its output must reach the upstream that is there when it finishes (after the replay of the
conversation, the call included), and the answer must reach the client, once, with no trace
of the tool.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
import pytest
from openai import AsyncOpenAI
from websockets.asyncio.client import connect

from gateway_helpers import SERVER_KEY, UPSTREAM_KEY, gateway_settings
from tool_helpers import Events, gateway_with_tools, user_text
from voxgate.testing import CallTool, FakeRealtimeServer, FaultProxy, ResponseContext, Say
from voxgate.testing.responder import Reply
from voxgate.tools.registry import Tool, tool

pytestmark = pytest.mark.slow
TIMEOUT_S = 15.0


def quote_model(ctx: ResponseContext) -> Reply:
    last = ctx.items[-1] if ctx.items else {}
    if last.get("type") == "function_call_output":
        return [Say(f"Here it is: {last['output']}")]
    if "price" in (ctx.latest_user_text() or ""):
        return [CallTool("slow_quote", '{"symbol": "NVDA"}')]
    return [Say("Okay.")]


def slow_quote_tool(started: asyncio.Event, release: asyncio.Event) -> Tool:
    @tool
    async def slow_quote(symbol: str) -> str:
        """A quote that takes a while."""
        started.set()
        await release.wait()
        return f"{symbol} 1.5"

    made: Tool = slow_quote
    return made


async def test_a_server_tool_call_cut_by_an_upstream_reconnect_is_answered_on_the_new_one() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    fake_kwargs: dict[str, Any] = {
        "api_keys": {UPSTREAM_KEY},
        "ping_interval_s": None,
        "responder": quote_model,
    }
    async with (
        FakeRealtimeServer(**fake_kwargs) as fake,
        FaultProxy("127.0.0.1", fake.port) as proxy,
    ):
        settings = gateway_settings(proxy.url_for(fake.url), reconnect_base_delay_s=0.05)
        async with gateway_with_tools(settings, [slow_quote_tool(started, release)]) as gw:
            client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=gw.ws_base)
            async with client.realtime.connect(model="gpt-realtime") as conn:
                events = Events(conn)
                await conn.session.update(
                    session={"type": "realtime", "output_modalities": ["text"]}
                )
                await conn.conversation.item.create(item=user_text("the price of Nvidia?"))
                await conn.response.create()
                first = await fake.wait_for_connection(1)
                await first.wait_for_sent("response.done", timeout_s=TIMEOUT_S)
                await asyncio.wait_for(started.wait(), TIMEOUT_S)
                proxy.cut()  # the upstream is lost while the tool runs
                second = await fake.wait_for_connection(2, timeout_s=TIMEOUT_S)

                def replayed_call() -> list[dict[str, Any]] | None:
                    found = [
                        e
                        for e in second.events_of("conversation.item.create")
                        if e["item"].get("type") == "function_call"
                    ]
                    return found or None

                await second.wait_until(replayed_call, TIMEOUT_S, "the call in the replay")
                release.set()
                await events.wait("response.done")
                await events.close()
            await client.close()
    text = events.of("response.output_text.done")[0].text
    assert text == "Here it is: NVDA 1.5"
    assert not events.of("error")
    assert len(events.of("response.created")) == len(events.of("response.done")) == 1
    assert all("slow_quote" not in json.dumps(e.model_dump()) for e in events.seen)
    # the new upstream got the conversation (the call too), then the output, then one request
    sent = [(e["type"], e.get("item", {}).get("type")) for e in second.client_events]
    assert sent[0] == ("session.update", None)
    assert ("conversation.item.create", "function_call") in sent
    out = sent.index(("conversation.item.create", "function_call_output"))
    assert sent.index(("conversation.item.create", "function_call")) < out
    assert sent[out + 1 :] == [("response.create", None)]
    # nothing of voxgate's own went to the upstream that was cut after the cut
    assert not [
        e for e in first.client_events if e.get("item", {}).get("type") == "function_call_output"
    ]


async def test_a_client_that_drops_while_a_server_tool_runs_resumes_to_the_answer() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    fake_kwargs: dict[str, Any] = {
        "api_keys": {UPSTREAM_KEY},
        "ping_interval_s": None,
        "responder": quote_model,
    }
    async with FakeRealtimeServer(**fake_kwargs) as fake:
        settings = gateway_settings(fake.url)
        async with (
            gateway_with_tools(settings, [slow_quote_tool(started, release)]) as gw,
            FaultProxy(gw.host, gw.port) as proxy,
        ):
            url = f"ws://127.0.0.1:{proxy.port}/v1/realtime?model=gpt-realtime"
            ws = await connect(
                url,
                additional_headers={"Authorization": f"Bearer {SERVER_KEY}"},
                subprotocols=["voxgate.v1"],  # type: ignore[list-item]
                ping_interval=None,
            )
            received: list[dict[str, Any]] = []
            token = ""
            while not token:
                event = orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
                if event["type"] == "voxgate.session.resumable":
                    token = event["resume_token"]
                elif not event["type"].startswith("voxgate.session."):
                    received.append(event)
            for frame in (
                {"type": "session.update", "session": {"type": "realtime",
                                                       "output_modalities": ["text"]}},
                {"type": "conversation.item.create", "item": user_text("price of Nvidia?")},
                {"type": "response.create"},
            ):  # fmt: skip
                await ws.send(orjson.dumps(frame).decode())
            await asyncio.wait_for(started.wait(), TIMEOUT_S)
            while len([e for e in received if e["type"] == "conversation.item.added"]) < 1:
                received.append(orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S)))
            proxy.cut()  # the client is gone while the tool runs
            upstream = await fake.wait_for_connection()
            release.set()

            def answered() -> list[dict[str, Any]] | None:
                done = upstream.sent_of("response.done")
                return done if len(done) >= 2 else None  # the call's response, then the answer

            await upstream.wait_until(answered, TIMEOUT_S, "the answer")
            back = await connect(
                f"ws://127.0.0.1:{gw.port}/v1/realtime?model=gpt-realtime",
                subprotocols=["voxgate.v1", "voxgate.resume"],  # type: ignore[list-item]
                ping_interval=None,
            )
            resume = {"type": "voxgate.session.resume", "resume_token": token,
                      "received_events": len(received)}  # fmt: skip
            await back.send(orjson.dumps(resume).decode())
            resumed = orjson.loads(await asyncio.wait_for(back.recv(), TIMEOUT_S))
            assert resumed["type"] == "voxgate.session.resumed"
            replayed = [
                orjson.loads(await asyncio.wait_for(back.recv(), TIMEOUT_S))
                for _ in range(resumed["replayed_events"])
            ]
            while not [e for e in replayed if e["type"] == "response.done"]:
                replayed.append(orjson.loads(await asyncio.wait_for(back.recv(), TIMEOUT_S)))
            await back.close()
            await ws.close()
    everything = received + replayed
    types = [e["type"] for e in everything]
    assert "function_call" not in json.dumps(everything)
    assert "slow_quote" not in json.dumps(everything)
    answer = [e for e in everything if e["type"] == "response.output_text.done"]
    assert [e["text"] for e in answer] == ["Here it is: NVDA 1.5"]
    assert types.count("response.created") == types.count("response.done") == 1
    ids = [e["event_id"] for e in everything]
    assert len(ids) == len(set(ids))
