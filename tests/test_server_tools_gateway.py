"""Server tools through the gateway and the fake upstream, with the stock openai SDK.

voxgate merges its tools into the upstream session, runs their calls and hides them: the
client sees its own session config, its own items and one answer that used the tool.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from openai import AsyncOpenAI

from gateway_helpers import SERVER_KEY
from tool_helpers import Events, fake_with_tools, user_text
from voxgate.session.injector import SAY_PREFIX
from voxgate.testing import CallTool, ResponseContext, Say
from voxgate.testing.responder import Reply
from voxgate.tools.registry import ToolContext, tool


@tool
def get_quote(symbol: str) -> dict[str, Any]:
    """Latest price of a stock symbol."""
    return {"symbol": symbol, "price": 189.5}


def coach(ctx: ResponseContext) -> Reply:
    """The fake model: a price question calls get_quote; a tool output is read out."""
    last = ctx.items[-1] if ctx.items else {}
    if last.get("type") == "function_call_output":
        return [Say(f"Here it is: {last['output']}")]
    if "price" in (ctx.latest_user_text() or ""):
        return [CallTool("get_quote", '{"symbol": "AAPL"}')]
    return [Say("Okay.")]


def _hidden_names(events: Events) -> list[str]:
    """Anything a stock client saw that names the server tool."""
    return [e.type for e in events.seen if "get_quote" in json.dumps(e.model_dump())]


async def test_server_tool_round_trip_is_invisible_to_the_client() -> None:
    async with fake_with_tools([get_quote], {"responder": coach}) as (fake, gw):
        client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            await events.wait("session.created")
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await events.wait("session.updated")
            await conn.conversation.item.create(item=user_text("what is the price of Apple?"))
            await conn.response.create()
            await events.wait("response.done")
            await conn.conversation.item.create(item=user_text("thanks"))
            await events.wait("conversation.item.added", 3)
            await events.close()
        record = await fake.wait_for_connection()
        await client.close()
    seen = [e.type for e in events.seen]
    assert "error" not in seen
    assert not [t for t in seen if "function_call" in t]
    assert _hidden_names(events) == []
    # one answer, one response, paired ids, and it used the tool's output
    created, done = events.of("response.created"), events.of("response.done")
    assert len(created) == len(done) == 1
    assert created[0].response.id == done[0].response.id
    assert [o.type for o in done[0].response.output] == ["message"]
    text = events.of("response.output_text.done")[0].text
    assert text == 'Here it is: {"symbol":"AAPL","price":189.5}'
    # the client's session shows none of voxgate's tools
    assert events.of("session.created")[0].session.tools == []
    assert events.of("session.updated")[0].session.tools == []
    # ids stay a chain over what the client saw: user -> assistant -> user
    added = events.of("conversation.item.added")
    user_id, answer_id = added[0].item.id, added[1].item.id
    assert added[1].previous_item_id == user_id
    assert added[2].previous_item_id == answer_id
    # the upstream had the tool, the call, voxgate's output and voxgate's response.create
    sent = record.client_events
    assert sent[0]["type"] == "session.update"
    assert [t["name"] for t in sent[0]["session"]["tools"]] == ["get_quote"]
    outputs = [
        e["item"]
        for e in sent
        if e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output"
    ]
    assert len(outputs) == 1
    assert json.loads(outputs[0]["output"]) == {"symbol": "AAPL", "price": 189.5}
    creates = [e for e in sent if e["type"] == "response.create"]
    assert len(creates) == 2  # the client's, then voxgate's follow-up
    assert "voxgate" in creates[1]["response"]["metadata"]


# ---------------------------------------------------------------- openai-agents, mixed tools


def mixed(ctx: ResponseContext) -> Reply:
    """The fake model: "both" calls a server tool and the client's tool in one response."""
    last = ctx.items[-1] if ctx.items else {}
    if last.get("type") == "function_call_output":
        outputs = [str(i["output"]) for i in ctx.items if i.get("type") == "function_call_output"]
        return [Say("Results: " + " | ".join(outputs))]
    if "both" in (ctx.latest_user_text() or ""):
        return [
            CallTool("get_quote", '{"symbol": "MSFT"}'),
            CallTool("get_weather", '{"city": "Oslo"}'),
        ]
    return [Say("Okay.")]


async def _agent_events(session: Any, stop: Any) -> list[Any]:
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1000)

    async def pump() -> None:
        async for event in session:
            await queue.put(event)

    task = asyncio.create_task(pump())
    seen: list[Any] = []
    try:
        while True:
            event = await asyncio.wait_for(queue.get(), 15.0)
            seen.append(event)
            if stop(event):
                return seen
    finally:
        task.cancel()


def _raw(event: Any) -> dict[str, Any] | None:
    if event.type != "raw_model_event" or event.data.type != "raw_server_event":
        return None
    data: dict[str, Any] = event.data.data
    return data


async def test_openai_agents_with_its_own_tool_and_a_server_tool_in_one_response() -> None:
    from agents import function_tool
    from agents.realtime import RealtimeAgent, RealtimeRunner

    @function_tool
    def get_weather(city: str) -> str:
        """Get the weather for a city."""
        return f"sunny in {city}"

    agent = RealtimeAgent(name="coach", instructions="Be brief.", tools=[get_weather])
    async with fake_with_tools([get_quote], {"responder": mixed}) as (fake, gw):
        session = await RealtimeRunner(agent).run(
            model_config={"url": gw.realtime_url(), "api_key": SERVER_KEY}
        )
        async with session:
            await session.send_message("both please")

            def answered(event: Any) -> bool:
                raw = _raw(event)
                return bool(raw and raw.get("type") == "response.done" and "Results" in str(raw))

            seen = await _agent_events(session, answered)
        record = await fake.wait_for_connection()
    assert [e for e in seen if e.type == "error"] == []
    tool_events = [(e.type, e.tool.name) for e in seen if e.type in ("tool_start", "tool_end")]
    assert tool_events == [("tool_start", "get_weather"), ("tool_end", "get_weather")]
    raws = [r for r in (_raw(e) for e in seen) if r is not None]
    assert all("get_quote" not in json.dumps(r) for r in raws)
    final = [r for r in raws if r.get("type") == "response.done"][-1]
    text = final["response"]["output"][0]["content"][0]["transcript"]
    assert "sunny in Oslo" in text
    assert '"symbol":"MSFT"' in text  # the model read the server tool's output too
    # upstream: both outputs went in before the one response.create that answered them, and
    # that request was agents' own (the response carried a client call: no follow-up)
    sent = record.client_events
    outputs = [
        i
        for i, e in enumerate(sent)
        if e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output"
    ]
    creates = [i for i, e in enumerate(sent) if e["type"] == "response.create"]
    assert len(outputs) == 2
    assert len(creates) == 2
    assert max(outputs) < creates[1]
    assert sent[creates[1]].get("event_id", "").startswith("agents_py_response_create")


# ---------------------------------------------------------------- failures, floods, says


def scripted(ctx: ResponseContext) -> Reply:
    """The fake model for the failure tests: a word picks the tool, outputs are read out."""
    if ctx.instructions.startswith(SAY_PREFIX):
        return [Say(ctx.instructions[len(SAY_PREFIX) :])]
    last = ctx.items[-1] if ctx.items else {}
    if last.get("type") == "function_call_output":
        since = max(i for i, it in enumerate(ctx.items) if it.get("type") == "message")
        outputs = [
            str(it["output"])
            for it in ctx.items[since:]
            if it.get("type") == "function_call_output"
        ]
        return [Say(" | ".join(outputs))]
    text = ctx.latest_user_text() or ""
    if "flood" in text:
        return [CallTool("count", json.dumps({"n": n})) for n in range(40)]
    for word, name in (("slow", "slow_tool"), ("broken", "broken_tool"), ("wait", "lookup")):
        if word in text:
            return [CallTool(name, "{}")]
    return [Say("Okay.")]


async def _ask(conn: Any, events: Events, text: str) -> str:
    """Send a user message and a response.create; the text of the answer that comes back."""
    before = len(events.of("response.done"))
    await conn.conversation.item.create(item=user_text(text))
    await conn.response.create()
    await events.wait("response.done", before + 1)
    return str(events.of("response.output_text.done")[-1].text)


async def test_a_timeout_and_an_exception_become_outputs_the_model_reads() -> None:
    never = asyncio.Event()

    @tool(timeout_s=0.2)
    async def slow_tool() -> str:
        """Never answers in time."""
        await never.wait()
        return "late"

    @tool
    def broken_tool() -> str:
        """Fails."""
        raise RuntimeError("the price feed is down")

    async with fake_with_tools([slow_tool, broken_tool], {"responder": scripted}) as (_, gw):
        client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            timed_out = json.loads(await _ask(conn, events, "try the slow one"))
            failed = json.loads(await _ask(conn, events, "try the broken one"))
            await events.close()
        await client.close()
    assert timed_out == {
        "error": "timeout",
        "message": "The tool slow_tool did not finish within 0.2 s.",
    }
    assert failed == {"error": "tool_failed", "message": "RuntimeError: the price feed is down"}
    assert not events.of("error")
    assert len(events.of("response.created")) == len(events.of("response.done")) == 2


async def test_a_flood_of_calls_is_bounded_and_answered_in_one_turn() -> None:
    running = 0
    most = 0
    ran: list[int] = []
    gate = asyncio.Event()

    @tool
    async def count(n: int) -> str:
        """Counts, once the test opens the gate."""
        nonlocal running, most
        running += 1
        most = max(most, running)
        await gate.wait()
        ran.append(n)
        running -= 1
        return f"#{n}"

    async with fake_with_tools(
        [count], {"responder": scripted}, tool_concurrency=3, tool_max_pending=30
    ) as (fake, gw):
        client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            asking = asyncio.create_task(_ask(conn, events, "flood it"))
            record = await fake.wait_for_connection()

            def refused() -> list[dict[str, Any]] | None:
                outs = [
                    e
                    for e in record.events_of("conversation.item.create")
                    if e["item"]["type"] == "function_call_output"
                ]
                return outs if len(outs) >= 10 else None

            # 30 calls wait or run (3 at once), the 10 beyond the bound are answered at once
            early = await record.wait_until(refused, 15.0, "the refused calls' outputs")
            assert all("too_many_calls" in e["item"]["output"] for e in early)
            gate.set()
            answer = await asking
            await events.close()
        await client.close()
    parts = answer.split(" | ")
    assert len(parts) == 40
    assert sum(p.startswith("#") for p in parts) == 30 == len(ran)
    refused = [json.loads(p) for p in parts if not p.startswith("#")]
    assert {r["error"] for r in refused} == {"too_many_calls"}
    assert most <= 3
    assert not events.of("error")
    assert len(events.of("response.created")) == 1
    creates = [e for e in record.client_events if e["type"] == "response.create"]
    assert len(creates) == 2  # the client's, and one follow-up for all 40 outputs


async def test_a_tool_can_say_something_while_it_works() -> None:
    release = asyncio.Event()

    @tool
    async def lookup(ctx: ToolContext) -> str:
        """Takes a while."""
        assert await ctx.say("One moment, checking.")
        await release.wait()
        return "found it"

    async with fake_with_tools([lookup], {"responder": scripted}) as (_, gw):
        client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await conn.conversation.item.create(item=user_text("please wait for it"))
            await conn.response.create()
            await events.wait("response.done")
            assert events.of("response.output_text.done")[0].text == "One moment, checking."
            release.set()
            await events.wait("response.done", 2)
            await events.close()
        await client.close()
    texts = [e.text for e in events.of("response.output_text.done")]
    assert texts == ["One moment, checking.", "found it"]
    assert not events.of("error")


async def test_a_key_names_its_tools_and_a_tool_sees_the_keys_subject_and_metadata() -> None:
    @tool
    def whoami(ctx: ToolContext) -> dict[str, Any]:
        """Who is asking."""
        return {"subject": ctx.subject, "account": ctx.metadata.get("account")}

    def ask_whoami(ctx: ResponseContext) -> Reply:
        last = ctx.items[-1] if ctx.items else {}
        if last.get("type") == "function_call_output":
            return [Say(str(last["output"]))]
        return [CallTool("whoami", "{}")]

    async with fake_with_tools([get_quote, whoami], {"responder": ask_whoami}) as (fake, gw):
        async with aiohttp.ClientSession() as http:
            resp = await http.post(
                gw.http_url + "/v1/realtime/client_secrets",
                headers={"Authorization": f"Bearer {SERVER_KEY}"},
                json={
                    "session": {"type": "realtime", "output_modalities": ["text"]},
                    "voxgate": {
                        "subject": "trader-7",
                        "tools": ["who*"],
                        "metadata": {"account": "A-1"},
                    },
                },
            )
            assert resp.status == 200, await resp.text()
            key = (await resp.json())["value"]
            refused = await http.post(
                gw.http_url + "/v1/realtime/client_secrets",
                headers={"Authorization": f"Bearer {SERVER_KEY}"},
                json={"voxgate": {"tools": ["get_quotes"]}},
            )
            assert refused.status == 400
            assert (await refused.json())["error"]["code"] == "unknown_tool"
        client = AsyncOpenAI(api_key=key, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            answer = await _ask(conn, events, "who am I?")
            await events.close()
        record = await fake.wait_for_connection()
        await client.close()
    assert json.loads(answer) == {"subject": "trader-7", "account": "A-1"}
    first = record.client_events[0]
    assert [t["name"] for t in first["session"]["tools"]] == ["whoami"]
    assert events.of("session.created")[0].session.tools == []
