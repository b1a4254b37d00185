"""The trading coach's ten micro-tools, and the alert feed that makes the coach speak up.

Loaded by voxgate with ``VOXGATE_TOOLS=examples.trading_coach.tools``. Each tool answers in a
few milliseconds from the in-memory :mod:`.desk`, for the account of the session's subject
(``ctx.subject``; ``demo`` without one), and returns a ``summary`` sentence to say plus the
numbers a model may use. ``voxgate_lifespan`` runs the alert feed while voxgate serves: the
prices move every ``COACH_TICK_S`` seconds (default 3) and a fired alert becomes a proactive
message in every live session of the alert's owner.

Symbols are said by name: the schema lists ``AAPL (Apple)`` etc., which a model reads and the
local engine's tool router uses to find "Apple" in what was heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

import structlog
from pydantic import Field

from examples.trading_coach.desk import NAMES, Alert, Desk, money
from voxgate.tools import ToolContext, tool
from voxgate.tools.knowledge import KnowledgeLibrary
from voxgate.tools.knowledge_tool import search

log = structlog.get_logger("trading_coach")
NOTES = Path(__file__).with_name("notes")
DESK = Desk()
_LIBRARY = KnowledgeLibrary(NOTES)

Symbol = Annotated[
    Literal["AAPL", "MSFT", "NVDA", "TSLA", "SPY"],
    Field(
        description=(
            "Ticker: AAPL (Apple), MSFT (Microsoft), NVDA (Nvidia), TSLA (Tesla), "
            "SPY (S&P 500, the market)"
        )
    ),
]


def _name(symbol: str) -> str:
    return NAMES.get(symbol, symbol)


@tool(timeout_s=1.0)
async def get_quote(symbol: Symbol) -> dict[str, Any]:
    """Get the latest price quote of a stock and its move today."""
    price, opening = DESK.prices[symbol], DESK.opening[symbol]
    change = (price - opening) / opening * 100
    trend = "up" if change >= 0 else "down"
    return {
        "summary": f"{_name(symbol)} is at {price:.2f}, {trend} {abs(change):.1f} percent today.",
        "symbol": symbol,
        "price": price,
        "change_percent": round(change, 2),
    }


@tool(timeout_s=1.0)
async def get_position(symbol: Symbol, ctx: ToolContext) -> dict[str, Any]:
    """My position in a stock: how many shares I hold and what they are worth."""
    held = DESK.account(ctx.subject).positions.get(symbol)
    if held is None:
        return {"summary": f"You hold no {_name(symbol)} shares.", "symbol": symbol, "quantity": 0}
    value = held.quantity * DESK.prices[symbol]
    side = "long" if held.quantity > 0 else "short"
    return {
        "summary": (
            f"You are {side} {abs(held.quantity)} {_name(symbol)} shares at an average of "
            f"{held.average_price:.2f}, worth {money(value)}."
        ),
        "symbol": symbol,
        "quantity": held.quantity,
        "average_price": held.average_price,
        "market_value": round(value, 2),
    }


@tool(timeout_s=1.0)
async def portfolio_risk(ctx: ToolContext) -> dict[str, Any]:
    """My portfolio risk: total exposure, the biggest position, and what a 5 percent drop costs."""
    account = DESK.account(ctx.subject)
    exposures = {s: p.quantity * DESK.prices[s] for s, p in account.positions.items()}
    gross = sum(abs(v) for v in exposures.values())
    net = sum(exposures.values())
    if not exposures:
        return {"summary": "You have no open positions, so no market risk.", "gross_exposure": 0}
    biggest = max(exposures, key=lambda s: abs(exposures[s]))
    share = abs(exposures[biggest]) / gross * 100
    return {
        "summary": (
            f"Gross exposure is {money(gross)}. {_name(biggest)} is your biggest position at "
            f"{share:.0f} percent. A 5 percent market drop would cost about {money(net * 0.05)}."
        ),
        "gross_exposure": round(gross, 2),
        "net_exposure": round(net, 2),
        "largest": biggest,
        "largest_share_percent": round(share, 1),
    }


@tool(timeout_s=1.0)
async def get_pnl(ctx: ToolContext) -> dict[str, Any]:
    """My profit and loss (P&L): today's, unrealized and realized."""
    account = DESK.account(ctx.subject)
    today, unrealized = DESK.today(account), DESK.unrealized(account)
    return {
        "summary": (
            f"Today you are at {money(today)}. Unrealized P and L is {money(unrealized)}, "
            f"realized {money(account.realized)}."
        ),
        "today": today,
        "unrealized": unrealized,
        "realized": account.realized,
    }


@tool(timeout_s=1.0)
async def place_order(
    side: Literal["buy", "sell"],
    symbol: Symbol,
    quantity: Annotated[int, Field(gt=0, le=100_000)],
    ctx: ToolContext,
    limit_price: float | None = None,
) -> dict[str, Any]:
    """Place a paper order to buy or sell shares (a market order unless a limit price is given).

    Args:
        side: buy or sell.
        quantity: how many shares.
        limit_price: the worst price accepted; none for a market order.
    """
    order = DESK.place(DESK.account(ctx.subject), side, symbol, quantity, limit_price)
    if order.status == "filled":
        said = (
            f"Done: {'bought' if side == 'buy' else 'sold'} {quantity} {_name(symbol)} at "
            f"{order.fill_price:.2f}."
        )
    else:
        said = f"Your {side} order for {quantity} {_name(symbol)} at {limit_price:.2f} is working."
    return {
        "summary": said,
        "order_id": order.id,
        "status": order.status,
        "price": order.fill_price,
    }


@tool(timeout_s=1.0)
async def cancel_order(ctx: ToolContext, symbol: Symbol | None = None) -> dict[str, Any]:
    """Cancel my open order: the most recent one, or the most recent for a stock."""
    account = DESK.account(ctx.subject)
    open_orders = [
        o for o in account.orders if o.status == "open" and (symbol is None or o.symbol == symbol)
    ]
    if not open_orders:
        return {"summary": "You have no open order to cancel.", "cancelled": None}
    order = open_orders[-1]
    order.status = "cancelled"
    return {
        "summary": f"Cancelled your {order.side} order for {order.quantity} {_name(order.symbol)}.",
        "cancelled": order.id,
    }


@tool(timeout_s=1.0)
async def set_alert(
    symbol: Symbol, price: Annotated[float, Field(gt=0)], ctx: ToolContext
) -> dict[str, Any]:
    """Set a price alert: tell me when a stock crosses a price.

    Args:
        price: the price that fires the alert (above or below today's price).
    """
    now = DESK.prices[symbol]
    direction: Literal["above", "below"] = "above" if price > now else "below"
    alert_id = DESK.next_id("alert")
    account = DESK.account(ctx.subject)
    account.alerts.append(Alert(alert_id, ctx.subject, symbol, price, direction))
    return {
        "summary": f"I will tell you when {_name(symbol)} goes {direction} {price:.2f}.",
        "alert_id": alert_id,
        "direction": direction,
    }


@tool(timeout_s=1.0)
async def list_alerts(ctx: ToolContext) -> dict[str, Any]:
    """List my price alerts that have not fired yet."""
    waiting = [a for a in DESK.account(ctx.subject).alerts if not a.fired]
    if not waiting:
        return {"summary": "You have no price alerts set.", "alerts": []}
    said = "; ".join(f"{_name(a.symbol)} {a.direction} {a.price:.2f}" for a in waiting)
    return {
        "summary": f"You have {len(waiting)} alerts: {said}.",
        "alerts": [{"id": a.id, "symbol": a.symbol, "price": a.price} for a in waiting],
    }


@tool(timeout_s=1.0)
async def journal_note(text: str, ctx: ToolContext) -> dict[str, Any]:
    """Write a note in my trading journal.

    Args:
        text: the note, in the trader's words.
    """
    journal = DESK.account(ctx.subject).journal
    journal.append(text.strip())
    return {"summary": "Noted in your journal.", "entries": len(journal)}


@tool(timeout_s=2.0)
async def search_postmortems(query: str) -> dict[str, Any]:
    """Search my trading post-mortems: past mistakes, what I learned, the lessons.

    Args:
        query: what to look for, in the trader's words.
    """
    found = await asyncio.to_thread(search, _LIBRARY, query, "postmortems", 2)
    results = found["results"]
    if not results:
        return {"summary": "I found nothing like that in your post-mortems.", "results": []}
    best = results[0]
    return {
        "summary": f"From your post-mortem {best['heading']}: {best['text']}",
        "results": results,
    }


# ---------------------------------------------------------------------- the alert feed


async def feed(messages: Any, *, tick_s: float) -> None:
    """Move prices every ``tick_s``; say each fired alert in its owner's live sessions."""
    while True:
        await asyncio.sleep(tick_s)  # the feed's own pace (a market data stand-in)
        for alert in DESK.tick():
            await announce(messages, alert)


async def announce(messages: Any, alert: Any) -> int:
    """Push one fired alert to every live session of its owner; returns how many."""
    price = DESK.prices[alert.symbol]
    text = (
        f"Heads up: {_name(alert.symbol)} is at {price:.2f}, {alert.direction} your alert at "
        f"{alert.price:.2f}."
    )
    sent = 0
    for session in await messages.sessions(alert.owner):
        if session["subject"] != alert.owner:
            continue
        await messages.send(
            session["id"], text, expires_in=60, idempotency_key=f"{alert.id}:{session['id']}"
        )
        sent += 1
    log.info("coach.alert", alert=alert.id, sessions=sent)
    return sent


async def voxgate_lifespan(messages: Any) -> AsyncIterator[None]:
    """voxgate runs this while it serves: the alert feed starts and stops with it."""
    tick_s = float(os.environ.get("COACH_TICK_S", "3"))
    task = asyncio.create_task(feed(messages, tick_s=tick_s), name="coach_alert_feed")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
