"""Server tools through the gateway and the fake upstream, with the stock openai SDK.

voxgate merges its tools into the upstream session, runs their calls and hides them: the
client sees its own session config, its own items and one answer that used the tool.
"""

from __future__ import annotations

import json
from typing import Any

from openai import AsyncOpenAI

from gateway_helpers import SERVER_KEY
from tool_helpers import Events, fake_with_tools, user_text
from voxgate.testing import CallTool, ResponseContext, Say
from voxgate.testing.responder import Reply
from voxgate.tools.registry import tool


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
