"""The trading coach example (issue 14): its ten tools, and the coach on the local engine.

The example is what ``python -m examples.trading_coach`` serves: voxgate with
``VOXGATE_TOOLS=examples.trading_coach.tools`` and the coach's notes. Here it runs in process
(same settings) and a stock SDK client talks to it in text; the alert feed's :func:`announce`
is driven by moving a price past an alert the client set by voice command.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the examples live next to src/, not in the package
    sys.path.insert(0, str(ROOT))

from examples.trading_coach import tools as coach  # noqa: E402
from examples.trading_coach.desk import Desk  # noqa: E402

from tool_helpers import Events, user_text  # noqa: E402
from voxgate.app import BACKEND, MESSAGES  # noqa: E402
from voxgate.backends.local.backend import LocalBackend  # noqa: E402
from voxgate.config import Settings  # noqa: E402
from voxgate.session.server_side import ToolCallContext  # noqa: E402
from voxgate.testing.gateway import run_gateway  # noqa: E402
from voxgate.tools.registry import ToolRegistry, load_modules  # noqa: E402

pytestmark = [pytest.mark.timeout(120)]
KEY = "vk-coach-test-0001"
CTX = ToolCallContext("vg_1", "trader-1", {}, "call_1", lambda text: False)


@pytest.fixture(autouse=True)
def fresh_desk(monkeypatch: pytest.MonkeyPatch) -> Desk:
    desk = Desk(seed=1)
    monkeypatch.setattr(coach, "DESK", desk)
    return desk


async def call(name: str, **arguments: Any) -> dict[str, Any]:
    import json

    tools = ToolRegistry(load_modules("examples.trading_coach.tools")).select(None)
    out: dict[str, Any] = json.loads(await tools.call(name, json.dumps(arguments), CTX))
    return out


async def test_the_ten_micro_tools(fresh_desk: Desk) -> None:
    assert len(load_modules("examples.trading_coach.tools")) == 10
    words = ToolRegistry(load_modules("examples.trading_coach.tools")).vocabulary()
    assert {"Apple", "Nvidia", "Tesla", "quote", "journal"} <= set(words)  # for the ASR prompt
    assert "above or below today's price" not in words  # only the names enums are said by
    quote = await call("get_quote", symbol="AAPL")
    assert quote["summary"] == "Apple is at 189.50, up 0.0 percent today."
    position = await call("get_position", symbol="NVDA")
    assert position["quantity"] == 200
    risk = await call("portfolio_risk")
    assert risk["largest"] == "NVDA"
    bought = await call("place_order", side="buy", symbol="TSLA", quantity=10)
    assert bought["summary"] == "Done: bought 10 Tesla at 251.00."
    resting = await call("place_order", side="buy", symbol="MSFT", quantity=5, limit_price=300)
    assert resting["status"] == "open"
    cancelled = await call("cancel_order")
    assert cancelled["cancelled"] == resting["order_id"]
    assert (await call("cancel_order"))["cancelled"] is None
    alert = await call("set_alert", symbol="TSLA", price=260)
    assert alert["direction"] == "above"
    assert (await call("list_alerts"))["alerts"][0]["price"] == 260
    assert (await call("journal_note", text="Chased the open again."))["entries"] == 1
    lesson = await call("search_postmortems", query="what was my lesson about earnings")
    assert "Halve the position before earnings" in lesson["summary"]
    pnl = await call("get_pnl")
    assert set(pnl) == {"summary", "today", "unrealized", "realized"}
    [fired] = fresh_desk.set_price("TSLA", 262.0)
    assert fired.id == alert["alert_id"]
    bad = await call("place_order", side="buy", symbol="XYZ", quantity=1)
    assert bad["error"] == "invalid_arguments"


async def test_the_coach_on_the_local_engine_answers_trades_and_speaks_up() -> None:
    settings = Settings(
        backend="local",
        api_keys=KEY,
        tools="examples.trading_coach.tools",
        knowledge_path=str(ROOT / "examples" / "trading_coach" / "notes"),
    )
    async with run_gateway(settings) as gw:
        backend = gw.app[BACKEND]
        assert isinstance(backend, LocalBackend)
        await asyncio.wait_for(backend.wait_warm(), 60)
        client = AsyncOpenAI(api_key=KEY, websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events(conn)
            said: list[str] = []
            for question in (
                "What is the price of Tesla?",
                "Buy 10 shares of Tesla.",
                "What is a trailing stop?",
                "Set an alert on Tesla at 255.",
            ):
                before = len(events.of("response.done"))
                await conn.conversation.item.create(item=user_text(question))
                await conn.response.create()
                await events.wait("response.done", before + 1, 30)
                said.append(events.of("response.output_audio_transcript.done")[-1].transcript)
            coach.DESK.set_price("TSLA", 256.0)
            [alert] = [a for a in coach.DESK.account(None).alerts if a.fired]
            assert await coach.announce(gw.app[MESSAGES], alert) == 1
            await events.wait("response.done", 5, 30)
            said.append(events.of("response.output_audio_transcript.done")[-1].transcript)
            await events.close()
        await client.close()
    assert said[0] == "Tesla is at 251.00, up 0.0 percent today."
    assert said[1] == "Done: bought 10 Tesla at 251.00."
    assert said[2].startswith("A trailing stop follows the price")
    assert said[3] == "I will tell you when Tesla goes above 255.00."
    assert said[4] == "Heads up: Tesla is at 256.00, above your alert at 255.00."
    assert not events.of("error")
    assert not [e for e in events.seen if "function_call" in e.type]
