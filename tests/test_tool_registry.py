"""tools/registry.py: Python tools from typed functions, and the registry a session draws on."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from voxgate.session.server_side import ToolCallContext
from voxgate.tools.registry import (
    ToolConfigError,
    ToolContext,
    ToolRegistry,
    load_modules,
    to_output,
    tool,
)

said: list[str] = []
CTX = ToolCallContext(
    "vg_1", "trader-7", {"account": "A-1"}, "call_1", lambda t: bool(said.append(t) or True)
)


class Order(BaseModel):
    id: str
    filled: bool


@tool(timeout_s=2.5)
def place_order(
    side: Literal["buy", "sell"],
    symbol: Annotated[str, Field(description="Ticker, e.g. AAPL.")],
    quantity: int,
    limit_price: float | None = None,
) -> Order:
    """Place a paper order.

    Longer text that is not the summary.

    Args:
        side: buy or sell.
        symbol: ignored here: the Field description wins.
        quantity: how many shares,
            whole shares only.
    """
    return Order(id=f"{side}-{symbol}-{quantity}", filled=limit_price is None)


@tool
async def whoami(ctx: ToolContext) -> dict[str, Any]:
    """Who is asking."""
    assert await ctx.say("Checking.")
    return {"session": ctx.session_id, "subject": ctx.subject, "meta": dict(ctx.metadata)}


def test_the_schema_comes_from_the_type_hints_and_the_docstring() -> None:
    spec = place_order.spec()
    assert spec["type"] == "function"
    assert spec["name"] == "place_order"
    assert spec["description"] == "Place a paper order."
    params = spec["parameters"]
    assert params["type"] == "object"
    assert params["required"] == ["side", "symbol", "quantity"]
    assert params["additionalProperties"] is False
    props = params["properties"]
    assert props["side"]["enum"] == ["buy", "sell"]
    assert props["side"]["description"] == "buy or sell."
    assert props["symbol"]["description"] == "Ticker, e.g. AAPL."
    assert props["quantity"] == {
        "type": "integer",
        "description": "how many shares, whole shares only.",
    }
    assert "title" not in json.dumps(params)
    assert place_order.timeout_s == 2.5
    assert whoami.spec()["parameters"]["properties"] == {}  # the context is not a parameter
    assert place_order("buy", "AAPL", 1).id == "buy-AAPL-1"  # still callable as a function


async def test_calls_validate_arguments_and_turn_results_into_outputs() -> None:
    tools = ToolRegistry([place_order, whoami]).select(None)
    out = await tools.call("place_order", '{"side": "buy", "symbol": "AAPL", "quantity": 5}', CTX)
    assert json.loads(out) == {"id": "buy-AAPL-5", "filled": True}
    bad = json.loads(await tools.call("place_order", '{"side": "hold", "symbol": "X"}', CTX))
    assert bad["error"] == "invalid_arguments"
    assert "side" in bad["message"]
    assert "quantity" in bad["message"]
    extra = await tools.call("place_order", '{"side":"buy","symbol":"A","quantity":1,"x":1}', CTX)
    assert json.loads(extra)["error"] == "invalid_arguments"
    assert json.loads(await tools.call("place_order", "[1]", CTX))["error"] == "invalid_arguments"
    assert json.loads(await tools.call("place_order", "{nope", CTX))["error"] == "invalid_arguments"
    assert json.loads(await tools.call("nope", "{}", CTX))["error"] == "unknown_tool"
    said.clear()
    who = json.loads(await tools.call("whoami", "", CTX))
    assert who == {"session": "vg_1", "subject": "trader-7", "meta": {"account": "A-1"}}
    assert said == ["Checking."]


async def test_sync_tools_run_in_a_worker_thread_async_ones_on_the_loop() -> None:
    seen: dict[str, Any] = {}

    @tool
    def blocking() -> str:
        """Blocks."""
        seen["sync"] = threading.current_thread() is threading.main_thread()
        return "ok"

    @tool
    async def awaiting() -> str:
        """Awaits."""
        seen["async"] = asyncio.get_running_loop() is not None
        return "ok"

    tools = ToolRegistry([blocking, awaiting]).select(None)
    assert await tools.call("blocking", "{}", CTX) == "ok"
    assert await tools.call("awaiting", "{}", CTX) == "ok"
    assert seen == {"sync": False, "async": True}


def test_outputs_of_every_kind_of_return_value() -> None:
    assert to_output("plain") == "plain"
    assert to_output(None) == '{"ok":true}'
    assert to_output({"a": 1}) == '{"a":1}'
    assert to_output([1, 2]) == "[1,2]"
    assert to_output(Order(id="x", filled=False)) == '{"id":"x","filled":false}'


def test_the_registry_refuses_clashes_and_selects_per_key() -> None:
    registry = ToolRegistry([place_order, whoami], default_timeout_s=7.0)
    with pytest.raises(ToolConfigError, match="two tools are named 'whoami'"):
        registry.add(whoami)
    assert registry.select(["who*"]).names == ["whoami"]
    assert registry.select([]).names == []
    assert registry.select(None).names == ["place_order", "whoami"]
    assert registry.unknown(["who*", "get_quote"]) == ["get_quote"]
    chosen = registry.select(None)
    assert chosen.timeout_s("place_order") == 2.5
    assert chosen.timeout_s("whoami") == 7.0


def test_bad_tools_and_modules_are_refused_with_a_sentence() -> None:
    with pytest.raises(ToolConfigError, match="needs a type hint"):

        @tool
        def untyped(x) -> str:  # type: ignore[no-untyped-def]
            return str(x)

    with pytest.raises(ToolConfigError, match="must match"):
        tool(name="bad name!")(lambda: "x")
    with pytest.raises(ToolConfigError, match="cannot import"):
        load_modules("no_such_module_here")
    with pytest.raises(ToolConfigError, match="defines no @tool"):
        load_modules("json")
    loaded = load_modules("test_tool_registry")
    assert sorted(t.name for t in loaded) == ["place_order", "whoami"]
