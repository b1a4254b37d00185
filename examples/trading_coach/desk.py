"""A small in-memory trading desk: prices, paper accounts, orders, alerts and a journal.

Everything the coach's tools read and change lives here, per account (the subject a session's
key was minted for; ``demo`` without one). Prices move by a seeded random walk on each
:meth:`Desk.tick`; an alert fires once when its price is crossed. Not thread-safe on purpose:
the tools that change it are ``async`` and run on voxgate's event loop, one at a time.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Literal

NAMES = {
    "AAPL": "Apple",
    "MSFT": "Microsoft",
    "NVDA": "Nvidia",
    "TSLA": "Tesla",
    "SPY": "the S&P 500 fund",
}
START_PRICES = {"AAPL": 189.50, "MSFT": 402.25, "NVDA": 118.40, "TSLA": 251.00, "SPY": 512.10}
STARTING_CASH = 50_000.0
DEMO_POSITIONS = {"AAPL": (100, 180.00), "NVDA": (200, 105.20), "TSLA": (-20, 260.00)}
Side = Literal["buy", "sell"]


@dataclass
class Position:
    quantity: int
    average_price: float


@dataclass
class Order:
    id: str
    side: Side
    symbol: str
    quantity: int
    limit_price: float | None
    status: Literal["open", "filled", "cancelled"] = "open"
    fill_price: float | None = None


@dataclass
class Alert:
    id: str
    owner: str | None
    symbol: str
    price: float
    direction: Literal["above", "below"]
    fired: bool = False


@dataclass
class Account:
    cash: float = STARTING_CASH
    realized: float = 0.0
    positions: dict[str, Position] = field(default_factory=dict)
    orders: list[Order] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    journal: list[str] = field(default_factory=list)


class Desk:
    """Prices and accounts (see the module docstring)."""

    def __init__(self, *, seed: int = 7) -> None:
        self.prices = dict(START_PRICES)
        self.opening = dict(START_PRICES)
        self.accounts: dict[str, Account] = {}
        self._rng = random.Random(seed)  # noqa: S311 (a simulated market, not a secret)
        self._ids = itertools.count(1)

    def account(self, subject: str | None) -> Account:
        key = subject or "demo"
        found = self.accounts.get(key)
        if found is None:
            found = Account(positions={s: Position(q, p) for s, (q, p) in DEMO_POSITIONS.items()})
            self.accounts[key] = found
        return found

    def next_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    # ------------------------------------------------------------------ market

    def tick(self) -> list[Alert]:
        """Move every price a little; fill limit orders that became marketable; return the
        alerts that fired."""
        for symbol, price in self.prices.items():
            self.prices[symbol] = round(price * (1 + self._rng.gauss(0, 0.004)), 2)
        fired: list[Alert] = []
        for account in self.accounts.values():
            for order in account.orders:
                if order.status == "open" and self._marketable(order):
                    self._fill(account, order)
            for alert in account.alerts:
                price = self.prices[alert.symbol]
                crossed = (
                    price >= alert.price if alert.direction == "above" else price <= alert.price
                )
                if not alert.fired and crossed:
                    alert.fired = True
                    fired.append(alert)
        return fired

    def set_price(self, symbol: str, price: float) -> list[Alert]:
        """Put a price somewhere (tests and demos), then fire what it crossed."""
        self.prices[symbol] = price
        fired: list[Alert] = []
        for account in self.accounts.values():
            for alert in account.alerts:
                if alert.symbol != symbol or alert.fired:
                    continue
                if (alert.direction == "above" and price >= alert.price) or (
                    alert.direction == "below" and price <= alert.price
                ):
                    alert.fired = True
                    fired.append(alert)
        return fired

    # ------------------------------------------------------------------ orders

    def place(
        self, account: Account, side: Side, symbol: str, quantity: int, limit: float | None
    ) -> Order:
        order = Order(self.next_id("ord"), side, symbol, quantity, limit)
        account.orders.append(order)
        if self._marketable(order):
            self._fill(account, order)
        return order

    def _marketable(self, order: Order) -> bool:
        if order.limit_price is None:
            return True
        price = self.prices[order.symbol]
        return price <= order.limit_price if order.side == "buy" else price >= order.limit_price

    def _fill(self, account: Account, order: Order) -> None:
        price = self.prices[order.symbol]
        signed = order.quantity if order.side == "buy" else -order.quantity
        held = account.positions.get(order.symbol, Position(0, 0.0))
        if held.quantity and (held.quantity > 0) != (signed > 0):  # closing some or all
            closed = min(abs(signed), abs(held.quantity))
            direction = 1 if held.quantity > 0 else -1
            account.realized += round(direction * closed * (price - held.average_price), 2)
        total = held.quantity + signed
        if total == 0:
            account.positions.pop(order.symbol, None)
        elif held.quantity == 0 or (held.quantity > 0) == (signed > 0):
            cost = held.quantity * held.average_price + signed * price
            account.positions[order.symbol] = Position(total, round(cost / total, 4))
        else:
            account.positions[order.symbol] = Position(total, held.average_price)
        account.cash = round(account.cash - signed * price, 2)
        order.status, order.fill_price = "filled", price

    # ------------------------------------------------------------------ numbers

    def market_value(self, account: Account) -> float:
        return round(sum(p.quantity * self.prices[s] for s, p in account.positions.items()), 2)

    def unrealized(self, account: Account) -> float:
        return round(
            sum(
                p.quantity * (self.prices[s] - p.average_price)
                for s, p in account.positions.items()
            ),
            2,
        )

    def today(self, account: Account) -> float:
        return round(
            sum(
                p.quantity * (self.prices[s] - self.opening[s])
                for s, p in account.positions.items()
            ),
            2,
        )


def money(value: float) -> str:
    """Dollars as said aloud: "1,234.50 dollars", "minus 80.00 dollars"."""
    sign = "minus " if value < 0 else ""
    return f"{sign}{abs(value):,.2f} dollars"
