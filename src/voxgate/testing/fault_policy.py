"""Sans-I/O decisions of the fault proxy: cut budgets, pacing, refusals.

Nothing here touches sockets, tasks or the clock: callers pass ``now`` and act on the answer
(each class says what the caller must do next). The I/O layer owns everything else:
:mod:`voxgate.testing.fault_proxy` (listening, refusing, fault controls) and
:mod:`voxgate.testing.fault_link` (one connection's pipes).
"""

from __future__ import annotations

import math
from typing import Literal

Direction = Literal["to_target", "to_client"]
"""``to_target``: client → target (requests, client frames); ``to_client``: target → client."""
RefuseMode = Literal["reset", "close"]
"""``reset``: accept, then RST; ``close``: accept, then close at once (the peer reads EOF)."""
Outcome = Literal["closed", "cut", "reset_by_client", "reset_by_target", "unreachable", "shutdown"]
"""How a proxied connection ended (``unreachable``: the target refused or timed out)."""

DIRECTIONS: tuple[Direction, ...] = ("to_target", "to_client")
READ_BYTES = 64 * 1024
THROTTLE_SLICE_S = 0.02


class CutBudget:
    """How many more bytes a direction may forward before its connection is cut.

    Sans-I/O: :meth:`take` trims a chunk to the budget; when it reports the budget spent, the
    caller must write the returned bytes, flush them, then reset the connection.
    """

    def __init__(self, n_bytes: int) -> None:
        if n_bytes < 0:
            raise ValueError("n_bytes must be >= 0")
        self.remaining = n_bytes

    @property
    def spent(self) -> bool:
        return self.remaining == 0

    def take(self, data: bytes) -> tuple[bytes, bool]:
        """Return ``(bytes to forward, budget now spent)``; the rest of ``data`` is dropped."""
        forward = data[: self.remaining]
        self.remaining -= len(forward)
        return forward, self.remaining == 0


class Pacer:
    """Bandwidth pacing: each write of n bytes occupies the link for ``n / rate`` seconds.

    Sans-I/O: ask :meth:`ready_at` when the next write may go, wait until then, write, and
    call :meth:`consume` with the bytes written and the clock at that moment.
    """

    def __init__(self) -> None:
        self._next_free = -math.inf

    def ready_at(self, now: float) -> float:
        return max(now, self._next_free)

    def consume(self, n_bytes: int, now: float, bytes_per_s: float) -> None:
        self._next_free = max(now, self._next_free) + n_bytes / bytes_per_s

    @staticmethod
    def slice_bytes(bytes_per_s: float) -> int:
        """Largest write at this rate (about :data:`THROTTLE_SLICE_S` worth, at least 1)."""
        return max(1, min(READ_BYTES, int(bytes_per_s * THROTTLE_SLICE_S)))


class RefusePolicy:
    """Whether the next accepted connection is refused, and how.

    ``count=None`` refuses until :meth:`stop`; a count refuses that many, then stops.
    """

    def __init__(self) -> None:
        self.mode: RefuseMode | None = None
        self.remaining: int | None = None

    @property
    def active(self) -> bool:
        return self.mode is not None

    def start(self, mode: RefuseMode, count: int | None) -> None:
        if count is not None and count < 1:
            raise ValueError("count must be >= 1")
        self.mode, self.remaining = mode, count

    def stop(self) -> None:
        self.mode, self.remaining = None, None

    def take(self) -> RefuseMode | None:
        """Decide for one new connection; counts it against the budget when refusing."""
        mode = self.mode
        if mode is not None and self.remaining is not None:
            self.remaining -= 1
            if self.remaining == 0:
                self.stop()
        return mode
