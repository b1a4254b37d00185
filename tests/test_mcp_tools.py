"""Tools from real MCP servers (the official SDK) over stdio and streamable HTTP (issue 14).

The server is ``tests/mcp_market_server.py`` in a process of its own: started by voxgate for
stdio, started by the test for HTTP (it prints the port it listens on).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI

from gateway_helpers import SERVER_KEY
from tool_helpers import Events, fake_with_tools, user_text
from voxgate.session.server_side import ToolCallContext
from voxgate.testing import CallTool, ResponseContext, Say
from voxgate.testing.responder import Reply
from voxgate.tools.mcp import McpServers, parse_servers
from voxgate.tools.registry import ToolConfigError, ToolRegistry

SERVER = str(Path(__file__).with_name("mcp_market_server.py"))
STDIO = {"market": {"command": sys.executable, "args": [SERVER, "stdio"]}}
CTX = ToolCallContext("vg_1", None, {}, "call_1", lambda text: False)


@asynccontextmanager
async def http_server() -> AsyncIterator[str]:
    """The market server over streamable HTTP, in its own process; yields its URL."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, SERVER, "http", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20.0)
        port = int(line.decode().split()[1])
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        await proc.wait()


async def tools_of(config: dict[str, Any]) -> tuple[McpServers, ToolRegistry]:
    servers = McpServers(parse_servers(json.dumps(config)))
    registry = ToolRegistry(await servers.start())
    return servers, registry


@asynccontextmanager
async def market(transport: str) -> AsyncIterator[dict[str, Any]]:
    if transport == "stdio":
        yield STDIO
        return
    async with http_server() as url:
        yield {"market": {"url": url}}


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_an_mcp_servers_tools_are_listed_and_called(transport: str) -> None:
    async with market(transport) as config:
        servers, registry = await tools_of(config)
        try:
            assert sorted(registry.names) == ["broken", "convert", "headline", "whoami"]
            spec = registry.get("convert")
            assert spec is not None
            assert spec.description == "Convert an amount at an exchange rate."
            assert spec.parameters["required"] == ["amount", "rate"]
            assert spec.source == "mcp:market"
            tools = registry.select(None)
            converted = await tools.call("convert", '{"amount": 10, "rate": 1.5}', CTX)
            assert json.loads(converted) == {"result": 15.0}
            news = await tools.call("headline", '{"symbol": "NVDA"}', CTX)
            assert json.loads(news) == {"result": "NVDA beats earnings expectations"}
            failed = json.loads(await tools.call("broken", "{}", CTX))
            assert failed["error"] == "tool_failed"
            assert failed["message"] == "Error executing tool broken"  # the server's words
            bad = json.loads(await tools.call("convert", '{"amount": "lots"}', CTX))
            assert bad["error"] == "tool_failed"
        finally:
            await servers.aclose()


async def test_allowlist_and_prefix_shape_the_tool_names() -> None:
    config = {"m": {**STDIO["market"], "tools": ["head*", "convert"], "prefix": True}}
    servers, registry = await tools_of(config)
    try:
        assert sorted(registry.names) == ["m__convert", "m__headline"]
        out = await registry.select(None).call("m__headline", '{"symbol": "AAPL"}', CTX)
        assert "AAPL" in out
    finally:
        await servers.aclose()


async def test_a_stdio_server_that_dies_is_started_again_on_a_later_call() -> None:
    servers, registry = await tools_of(STDIO)
    tools = registry.select(None)
    try:
        first = json.loads(await tools.call("whoami", "{}", CTX))["result"]
        os.kill(int(first.split()[1]), signal.SIGKILL)
        answers = [json.loads(await tools.call("whoami", "{}", CTX)) for _ in range(2)]
        assert answers[0].get("error") == "tool_failed" or "result" in answers[0]
        second = answers[-1]["result"]
        assert second.startswith("pid ")
        assert second != first
    finally:
        await servers.aclose()


async def test_bad_configurations_are_refused_with_a_sentence() -> None:
    with pytest.raises(ToolConfigError, match="not valid JSON"):
        parse_servers("{nope")
    with pytest.raises(ToolConfigError, match="exactly one of 'command' and 'url'"):
        parse_servers('{"x": {"command": "a", "url": "http://b"}}')
    with pytest.raises(ToolConfigError, match="cannot read"):
        parse_servers("/nonexistent/mcp.json")
    unreachable = McpServers(parse_servers('{"gone": {"url": "http://127.0.0.1:9/mcp"}}'))
    assert await unreachable.start() == []  # logged and skipped, voxgate still starts
    await unreachable.aclose()


def news_model(ctx: ResponseContext) -> Reply:
    last = ctx.items[-1] if ctx.items else {}
    if last.get("type") == "function_call_output":
        return [Say(f"News: {last['output']}")]
    return [CallTool("headline", '{"symbol": "TSLA"}')]


async def test_mcp_tools_are_server_tools_through_the_gateway() -> None:
    async with (
        http_server() as url,
        fake_with_tools(
            (), {"responder": news_model}, mcp_servers=json.dumps({"news": {"url": url}})
        ) as (fake, gw),
    ):
        client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await conn.conversation.item.create(item=user_text("any news on Tesla?"))
            await conn.response.create()
            await events.wait("response.done")
            await events.close()
        record = await fake.wait_for_connection()
        await client.close()
    assert events.of("response.output_text.done")[0].text == (
        'News: {"result":"TSLA beats earnings expectations"}'
    )
    assert not [e for e in events.seen if "function_call" in e.type]
    names = [t["name"] for t in record.client_events[0]["session"]["tools"]]
    assert sorted(names) == ["broken", "convert", "headline", "whoami"]
