"""``FaultProxy``: an in-process TCP proxy on 127.0.0.1 that injects network faults for tests.

It forwards bytes both ways between whoever connects to it (voxgate, a client) and one target
(the fake upstream, voxgate), and lets a test, at any moment:

- **cut** live connections abruptly: both sockets are closed with ``SO_LINGER`` 0, so both
  peers see a TCP reset and never a close frame (WebSocket peers report 1006);
- **cut after** exactly N more bytes in one direction (mid-frame, mid-response);
- **stall** one or both directions without closing, then **resume** in order;
- **delay** every chunk by a fixed latency per direction, keeping order;
- **throttle** a direction to a bandwidth;
- **refuse** new connections (accept then reset, or accept then close) for a count or a time.

This module owns the listening socket, accepting and refusing connections, the fault controls
above (the live settings every connection reads), the table of live connections and the
history of ended ones. What happens inside one accepted connection (connecting to the target,
the two pipes, the reset, the :class:`ProxyConnection` record it fills) is
:mod:`voxgate.testing.fault_link`. The decisions that need no I/O (how much of a chunk a cut
budget lets through, when a throttled write may go, whether to refuse a connection) live in
:mod:`voxgate.testing.fault_policy` (:class:`CutBudget`, :class:`Pacer`, :class:`RefusePolicy`).

Ownership and bounds: one task per accepted connection, created synchronously in the accept
callback and kept by the proxy; it owns a :class:`asyncio.TaskGroup` with a reader and a writer
task per direction joined by a bounded queue. A stalled or delayed direction holds at most
``buffer_limit_bytes`` plus two reads (:data:`READ_BYTES` each, plus asyncio's own stream
buffer); beyond that the proxy stops reading and TCP flow control pushes back on the sender.
:meth:`FaultProxy.close` resets every live connection and awaits every task. Waits are timers
for delay and throttle and :class:`asyncio.Event` wake-ups for everything else, with one
exception: a cut-after waits (bounded, backing off) for the kernel to hand its last bytes to the
peer, because a reset discards unsent data and the kernel offers no event for that. A plain
:meth:`FaultProxy.cut` does not wait: bytes still in flight are lost, as on a real network.
Linux only for that wait (``TIOCOUTQ``); elsewhere a cut-after may deliver fewer bytes.

Example::

    async with FakeRealtimeServer() as fake, FaultProxy("127.0.0.1", fake.port) as proxy:
        url = proxy.url_for(fake.url) + "?model=gpt-realtime"
        ...  # connect through ``url``
        await proxy.wait_for_connections(1)
        proxy.cut()  # both ends see a reset
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import structlog

from voxgate.testing.fault_link import DirectionStats, Faults, Link, ProxyConnection, reset_abruptly
from voxgate.testing.fault_policy import (
    DIRECTIONS,
    READ_BYTES,
    CutBudget,
    Direction,
    Outcome,
    Pacer,
    RefuseMode,
    RefusePolicy,
)
from voxgate.testing.records import Waitable

__all__ = [
    "READ_BYTES",
    "CutBudget",
    "Direction",
    "DirectionStats",
    "FaultProxy",
    "Outcome",
    "Pacer",
    "ProxyConnection",
    "RefuseMode",
    "RefusePolicy",
]

log = structlog.get_logger(__name__)

MAX_DELAY_S = 60.0


class FaultProxy(Waitable):
    """A TCP proxy on 127.0.0.1 with fault injection; an async context manager.

    Args:
        target_host, target_port: where to forward each accepted connection.
        host, port: where to listen (default 127.0.0.1, a free port).
        buffer_limit_bytes: bytes held per direction per connection before back-pressure.
        connect_timeout_s: connecting to the target; on failure the client is reset.
        flush_timeout_s: how long a cut-after waits for its last bytes to reach the peer.
        max_connections: live connections; beyond it new ones are reset (and counted refused).
        history_limit: connection records kept after they end.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        buffer_limit_bytes: int = 1024 * 1024,
        connect_timeout_s: float = 5.0,
        flush_timeout_s: float = 5.0,
        max_connections: int = 1024,
        history_limit: int = 1024,
    ) -> None:
        super().__init__()
        self.target_host, self.target_port = target_host, target_port
        self.connect_timeout_s = connect_timeout_s
        self.flush_timeout_s = flush_timeout_s
        self.queue_items = max(1, buffer_limit_bytes // READ_BYTES)
        self.faults = Faults()
        self._host, self._port = host, port
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._closing = False
        self._links: dict[int, Link] = {}
        self._history: deque[ProxyConnection] = deque(maxlen=history_limit)
        self._refuse = RefusePolicy()
        self._refuse_timer: asyncio.TimerHandle | None = None
        self._next_budgets: list[tuple[Direction, int, int]] = []
        self.accepted = 0
        self.refused = 0
        self.cuts = 0

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start listening."""
        self._server = await asyncio.start_server(self._on_accept, self._host, self._port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        log.info("fault_proxy.started", port=self._port, target_port=self.target_port)

    async def close(self) -> None:
        """Stop listening, reset every live connection, and await every task it owns."""
        self._closing = True
        self._cancel_refuse_timer()
        if self._server is not None:
            self._server.close()
        links = list(self._links.values())
        for link in links:
            link.end("shutdown")
        tasks = [link.task for link in links if link.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        log.info("fault_proxy.closed", port=self._port, accepted=self.accepted)

    # ------------------------------------------------------------------ addresses

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's (scheme, path, query kept)."""
        parts = urlsplit(url)
        return urlunsplit(parts._replace(netloc=f"{self._host}:{self._port}"))

    # ------------------------------------------------------------------ faults

    def cut(self, conn_id: int | None = None) -> int:
        """Reset live connections now (all, or one); both peers see a reset. Returns how many."""
        links = self._select(conn_id)
        for link in links:
            link.end("cut")
        return len(links)

    def cut_after(
        self,
        n_bytes: int,
        direction: Direction = "to_client",
        *,
        conn_id: int | None = None,
        next_connections: int = 0,
    ) -> int:
        """Forward exactly ``n_bytes`` more in ``direction``, then reset the connection.

        Args:
            n_bytes: bytes still forwarded, counted from now (live connections) or from the
                connection's start (new ones); 0 cuts at once / right after connecting.
            direction: which way the bytes are counted.
            conn_id: only this live connection (default: every live connection).
            next_connections: also arm the next this-many connections accepted.

        Returns:
            how many live connections were armed.
        """
        CutBudget(n_bytes)  # validates
        if next_connections > 0:
            self._next_budgets.append((direction, n_bytes, next_connections))
        links = self._select(conn_id)
        for link in links:
            link.arm_cut(direction, n_bytes)
        return len(links)

    def stall(self, direction: Direction | None = None) -> None:
        """Stop forwarding (both directions by default) without closing; see :meth:`resume`."""
        for d in self._directions(direction):
            self.faults.by_direction[d].stalled = True
        self.faults.notify()

    def resume(self, direction: Direction | None = None) -> None:
        """Forward again; held bytes go out first, in order."""
        for d in self._directions(direction):
            self.faults.by_direction[d].stalled = False
        self.faults.notify()

    def set_delay(self, delay_s: float, direction: Direction | None = None) -> None:
        """Hold every chunk ``delay_s`` after it arrived before forwarding it (0 = off)."""
        if not 0 <= delay_s <= MAX_DELAY_S:
            raise ValueError(f"delay_s must be within [0, {MAX_DELAY_S}]")
        for d in self._directions(direction):
            self.faults.by_direction[d].delay_s = delay_s
        self.faults.notify()

    def set_throttle(self, bytes_per_s: float | None, direction: Direction | None = None) -> None:
        """Limit bandwidth per connection and direction (None = unlimited)."""
        if bytes_per_s is not None and bytes_per_s <= 0:
            raise ValueError("bytes_per_s must be > 0")
        for d in self._directions(direction):
            self.faults.by_direction[d].bytes_per_s = bytes_per_s
        self.faults.notify()

    def refuse(
        self,
        *,
        count: int | None = None,
        duration_s: float | None = None,
        mode: RefuseMode = "reset",
    ) -> None:
        """Refuse new connections: ``count`` of them, for ``duration_s``, or until :meth:`accept`.

        With both, refusing stops at whichever comes first. Live connections are untouched.
        """
        self._cancel_refuse_timer()
        self._refuse.start(mode, count)
        if duration_s is not None:
            loop = asyncio.get_running_loop()
            self._refuse_timer = loop.call_later(duration_s, self.accept)
        self.notify()

    def accept(self) -> None:
        """Stop refusing new connections."""
        self._cancel_refuse_timer()
        self._refuse.stop()
        self.notify()

    @property
    def refusing(self) -> bool:
        return self._refuse.active

    def heal(self) -> None:
        """Clear every fault: resume, no delay or throttle, accept, disarm pending cuts."""
        for faults in self.faults.by_direction.values():
            faults.stalled, faults.delay_s, faults.bytes_per_s = False, 0.0, None
        self._next_budgets.clear()
        for link in self._links.values():
            link.pending_budgets.clear()
            for pipe in link.pipes.values():
                pipe.budget = None
        self.faults.notify()
        self.accept()

    # ------------------------------------------------------------------ records

    @property
    def connections(self) -> list[ProxyConnection]:
        """Live and recent connection records, oldest first."""
        return sorted(
            [*self._history, *(link.record for link in self._links.values())],
            key=lambda record: record.conn_id,
        )

    @property
    def live(self) -> list[ProxyConnection]:
        return [link.record for link in self._links.values()]

    async def wait_for_connections(self, n: int = 1, *, timeout_s: float = 5.0) -> ProxyConnection:
        """Wait until ``n`` connections were accepted (not refused); return the ``n``-th."""

        def probe() -> ProxyConnection | None:
            if self.accepted < n:
                return None
            found = [r for r in self.connections if r.conn_id == n]
            if not found:
                raise LookupError(f"connection #{n} is no longer in the history")
            return found[0]

        return await self.wait_until(probe, timeout_s, f"{n} accepted connections")

    async def wait_for_refused(self, n: int = 1, *, timeout_s: float = 5.0) -> int:
        """Wait until ``n`` connections were refused in all; return the count."""
        return await self.wait_until(
            lambda: self.refused if self.refused >= n else None, timeout_s, f"{n} refused"
        )

    async def wait_for_cuts(self, n: int = 1, *, timeout_s: float = 5.0) -> int:
        """Wait until ``n`` connections ended by a cut have fully ended; return the count."""
        return await self.wait_until(
            lambda: self.cuts if self.cuts >= n else None, timeout_s, f"{n} cuts"
        )

    async def wait_accepting(self, *, timeout_s: float = 5.0) -> None:
        """Wait until the proxy accepts new connections again (a refusal ran out)."""
        await self.wait_until(
            lambda: True if not self._refuse.active else None, timeout_s, "accepting"
        )

    # ------------------------------------------------------------------ internals

    def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Accept callback (synchronous, so the link's task is owned from its first moment)."""
        mode = "reset" if self._closing else self._refuse.take()
        if mode is None and len(self._links) >= self._max_connections:
            mode = "reset"
        if mode is not None:
            self.refused += 1
            if mode == "reset":
                reset_abruptly(writer)
            else:
                writer.close()
            log.debug("fault_proxy.refused", mode=mode, refused=self.refused)
            self.notify()
            return
        self.accepted += 1
        peer = writer.get_extra_info("peername")
        record = ProxyConnection(self.accepted, int(peer[1]) if peer else 0)
        link = Link(self, record, (reader, writer))
        for direction, n_bytes in self._take_next_budgets():
            link.arm_cut(direction, n_bytes)
        self._links[record.conn_id] = link
        link.task = asyncio.get_running_loop().create_task(
            link.run(), name=f"fault-proxy#{record.conn_id}"
        )
        self.notify()

    def _take_next_budgets(self) -> Iterable[tuple[Direction, int]]:
        armed = [(d, n) for d, n, _ in self._next_budgets]
        self._next_budgets = [(d, n, k - 1) for d, n, k in self._next_budgets if k > 1]
        return armed

    def _link_ended(self, link: Link, outcome: Outcome) -> None:
        self._links.pop(link.record.conn_id, None)
        self._history.append(link.record)
        if outcome == "cut":
            self.cuts += 1
        log.debug("fault_proxy.connection_ended", conn_id=link.record.conn_id, outcome=outcome)
        link.record._mark_closed(outcome)
        self.notify()

    def _select(self, conn_id: int | None) -> list[Link]:
        links = [link for link in self._links.values() if not link.ending]
        return [link for link in links if conn_id is None or link.record.conn_id == conn_id]

    @staticmethod
    def _directions(direction: Direction | None) -> tuple[Direction, ...]:
        return DIRECTIONS if direction is None else (direction,)

    def _cancel_refuse_timer(self) -> None:
        if self._refuse_timer is not None:
            self._refuse_timer.cancel()
            self._refuse_timer = None
