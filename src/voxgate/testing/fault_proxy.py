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

This module owns sockets, tasks and records only; the decisions that need no I/O (how much of a
chunk a cut budget lets through, when a throttled write may go, whether to refuse a connection)
live in :mod:`voxgate.testing.fault_policy` (:class:`CutBudget`, :class:`Pacer`,
:class:`RefusePolicy`).

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
import contextlib
import fcntl
import math
import socket
import struct
import termios
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import structlog

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
_LINGER_RESET = struct.pack("ii", 1, 0)


# ---------------------------------------------------------------------------- records


@dataclass
class DirectionStats:
    """Byte counts for one direction of one connection.

    Attributes:
        received: bytes read from the sending peer.
        forwarded: bytes written to the receiving peer.
        peak_held_bytes: most bytes held inside the proxy at once (bounded, see module doc).
    """

    received: int = 0
    forwarded: int = 0
    peak_held_bytes: int = 0


class ProxyConnection(Waitable):
    """One proxied connection, filled by the proxy and read by tests.

    Attributes:
        conn_id: 1-based, in accept order (refused connections get no id).
        client_port: the connecting peer's local port.
        stats: :class:`DirectionStats` per direction.
        outcome: how it ended, set when ``closed`` is.
    """

    def __init__(self, conn_id: int, client_port: int) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.client_port = client_port
        self.stats: dict[Direction, DirectionStats] = {d: DirectionStats() for d in DIRECTIONS}
        self.outcome: Outcome | None = None
        self.closed = asyncio.Event()

    @property
    def bytes_to_target(self) -> int:
        return self.stats["to_target"].forwarded

    @property
    def bytes_to_client(self) -> int:
        return self.stats["to_client"].forwarded

    async def wait_for_bytes(
        self, n_bytes: int, direction: Direction, *, forwarded: bool = True, timeout_s: float = 5.0
    ) -> int:
        """Wait until ``n_bytes`` were forwarded (or, with ``forwarded=False``, received).

        Returns:
            the count at that moment.
        Raises:
            TimeoutError: not reached in ``timeout_s``.
        """

        def probe() -> int | None:
            stats = self.stats[direction]
            count = stats.forwarded if forwarded else stats.received
            return count if count >= n_bytes else None

        what = f"{n_bytes} bytes {direction} on connection #{self.conn_id}"
        return await self.wait_until(probe, timeout_s, what)

    async def wait_closed(self, *, timeout_s: float = 5.0) -> Outcome:
        """Wait for the connection to end; return its outcome."""
        await asyncio.wait_for(self.closed.wait(), timeout_s)
        return self.outcome or "shutdown"

    def _mark_closed(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.closed.set()
        self.notify()


# ---------------------------------------------------------------------------- fault state


class _DirectionFaults:
    """Live fault settings for one direction, shared by every connection."""

    def __init__(self) -> None:
        self.stalled = False
        self.delay_s = 0.0
        self.bytes_per_s: float | None = None


class _Faults:
    """Fault settings for both directions plus one wake-up for writers when any change."""

    def __init__(self) -> None:
        self.by_direction = {d: _DirectionFaults() for d in DIRECTIONS}
        self._changed = asyncio.Event()

    def changed(self) -> asyncio.Event:
        return self._changed

    def notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close abruptly: ``SO_LINGER`` 0 makes the kernel send RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


def _unsent_bytes(writer: asyncio.StreamWriter) -> int:
    """Bytes in the kernel send queue not yet acknowledged by the peer (0 if unknown)."""
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(termios, "TIOCOUTQ"):
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    except OSError:
        return 0
    return int(struct.unpack("i", raw)[0])


async def _wait_delivered(writer: asyncio.StreamWriter, timeout_s: float) -> None:
    """Wait until the peer's kernel has every byte written, or ``timeout_s`` passes.

    A reset discards whatever is still in our send queue, so a cut after N bytes first lets the
    queue empty (it does once the receiver reads). The kernel has no readiness event for
    "acknowledged", so this is the one place that polls: backing off from 1 ms to 50 ms, bounded.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pause_s = 0.001
    while _unsent_bytes(writer) > 0 and loop.time() < deadline:
        await asyncio.sleep(pause_s)
        pause_s = min(pause_s * 2, 0.05)


# ---------------------------------------------------------------------------- I/O


@dataclass(frozen=True)
class _Chunk:
    data: bytes
    arrived: float


_EOF = _Chunk(b"", -1.0)


class _Pipe:
    """One direction of one connection: reader → bounded queue → writer (with faults)."""

    def __init__(
        self,
        link: _Link,
        direction: Direction,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        queue_items: int,
    ) -> None:
        self.link = link
        self.direction = direction
        self.reader = reader
        self.writer = writer
        self.budget: CutBudget | None = None
        self._queue: asyncio.Queue[_Chunk] = asyncio.Queue(maxsize=queue_items)
        self._pacer = Pacer()
        self._held = 0
        self._stats = link.record.stats[direction]
        self._faults = link.proxy.faults
        self._sender_side: Outcome = (
            "reset_by_client" if direction == "to_target" else "reset_by_target"
        )
        self._receiver_side: Outcome = (
            "reset_by_target" if direction == "to_target" else "reset_by_client"
        )

    async def pump_in(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await self.reader.read(READ_BYTES)
            except OSError:
                self.link.end(self._sender_side)
                return
            if not data:
                await self._queue.put(_EOF)
                return
            self._stats.received += len(data)
            self._held += len(data)
            self._stats.peak_held_bytes = max(self._stats.peak_held_bytes, self._held)
            self.link.record.notify()
            await self._queue.put(_Chunk(data, loop.time()))

    async def pump_out(self) -> None:
        while True:
            chunk = await self._queue.get()
            if chunk is _EOF:
                if self.writer.can_write_eof():
                    with contextlib.suppress(OSError):
                        self.writer.write_eof()
                return
            if not await self._forward(chunk):
                return

    async def _forward(self, chunk: _Chunk) -> bool:
        """Write one chunk under the current faults; False once the connection is ending."""
        data = chunk.data
        while data:
            rate = await self._wait_until_due(chunk.arrived)
            size = Pacer.slice_bytes(rate) if rate is not None else len(data)
            piece, data = data[:size], data[size:]
            spent = False
            if self.budget is not None:
                piece, spent = self.budget.take(piece)
            self._held -= len(piece)
            if not await self._write(piece):
                return False
            if rate is not None:
                self._pacer.consume(len(piece), asyncio.get_running_loop().time(), rate)
            if spent:
                await _wait_delivered(self.writer, self.link.proxy.flush_timeout_s)
                self.link.end("cut")
                return False
        return True

    async def _wait_until_due(self, arrived: float) -> float | None:
        """Wait while stalled, until ``arrived + delay`` and the pacer allow; return the rate.

        Any fault change wakes this up, so a resume or a shorter delay applies at once.
        """
        loop = asyncio.get_running_loop()
        faults = self._faults.by_direction[self.direction]
        while True:
            now = loop.time()
            due = arrived + faults.delay_s
            if faults.bytes_per_s is not None:
                due = max(due, self._pacer.ready_at(now))
            wait_s = math.inf if faults.stalled else due - now
            if wait_s <= 0:
                return faults.bytes_per_s
            changed = self._faults.changed()
            timeout_s = None if math.isinf(wait_s) else wait_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout_s)

    async def _write(self, piece: bytes) -> bool:
        if piece:
            try:
                self.writer.write(piece)
                # Write-buffer limits are 0, so drain() returns once the kernel has it all:
                # counts are exact and a cut right after loses nothing already counted.
                await self.writer.drain()
            except OSError:
                self.link.end(self._receiver_side)
                return False
            self._stats.forwarded += len(piece)
            self.link.record.notify()
        return True


class _Link:
    """One accepted connection: connects to the target, runs both pipes, ends once."""

    def __init__(
        self,
        proxy: FaultProxy,
        record: ProxyConnection,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.record = record
        self.client_reader, self.client_writer = client
        self.target_writer: asyncio.StreamWriter | None = None
        self.pipes: dict[Direction, _Pipe] = {}
        self.pending_budgets: dict[Direction, int] = {}
        self.task: asyncio.Task[None] | None = None
        self._outcome: Outcome | None = None

    @property
    def ending(self) -> bool:
        return self._outcome is not None

    def arm_cut(self, direction: Direction, n_bytes: int) -> None:
        """Cut after ``n_bytes`` more in ``direction`` (0: now, or once the target answers)."""
        if not self.pipes:
            self.pending_budgets[direction] = n_bytes
        elif n_bytes == 0:
            self.end("cut")
        else:
            self.pipes[direction].budget = CutBudget(n_bytes)

    def end(self, outcome: Outcome) -> None:
        """Reset both sockets at once and stop the link's task; later calls do nothing."""
        if self._outcome is not None:
            return
        self._outcome = outcome
        for writer in (self.client_writer, self.target_writer):
            if writer is not None:
                _reset(writer)
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()

    async def run(self) -> None:
        try:
            if not self.ending and await self._connect():
                await self._pump()
                self._outcome = self._outcome or "closed"
                for writer in (self.client_writer, self.target_writer):
                    if writer is not None:
                        writer.close()
        finally:
            self.proxy._link_ended(self, self._outcome or "shutdown")

    async def _connect(self) -> bool:
        proxy = self.proxy
        try:
            async with asyncio.timeout(proxy.connect_timeout_s):
                reader, writer = await asyncio.open_connection(proxy.target_host, proxy.target_port)
        except (OSError, TimeoutError):
            self.end("unreachable")
            return False
        self.target_writer = writer
        for w in (self.client_writer, writer):
            w.transport.set_write_buffer_limits(high=0)
        ends: dict[Direction, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {
            "to_target": (self.client_reader, writer),
            "to_client": (reader, self.client_writer),
        }
        for direction, (src, dst) in ends.items():
            self.pipes[direction] = _Pipe(self, direction, src, dst, proxy.queue_items)
        pending, self.pending_budgets = self.pending_budgets, {}
        for direction, n_bytes in pending.items():
            self.arm_cut(direction, n_bytes)
        return True

    async def _pump(self) -> None:
        """Run both directions; returns when both peers have closed their sending side."""
        async with asyncio.TaskGroup() as group:
            for direction, pipe in self.pipes.items():
                name = f"fault-proxy#{self.record.conn_id}:{direction}"
                group.create_task(pipe.pump_in(), name=f"{name}:in")
                group.create_task(pipe.pump_out(), name=f"{name}:out")


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
        self.faults = _Faults()
        self._host, self._port = host, port
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._closing = False
        self._links: dict[int, _Link] = {}
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
                _reset(writer)
            else:
                writer.close()
            log.debug("fault_proxy.refused", mode=mode, refused=self.refused)
            self.notify()
            return
        self.accepted += 1
        peer = writer.get_extra_info("peername")
        record = ProxyConnection(self.accepted, int(peer[1]) if peer else 0)
        link = _Link(self, record, (reader, writer))
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

    def _link_ended(self, link: _Link, outcome: Outcome) -> None:
        self._links.pop(link.record.conn_id, None)
        self._history.append(link.record)
        if outcome == "cut":
            self.cuts += 1
        log.debug("fault_proxy.connection_ended", conn_id=link.record.conn_id, outcome=outcome)
        link.record._mark_closed(outcome)
        self.notify()

    def _select(self, conn_id: int | None) -> list[_Link]:
        links = [link for link in self._links.values() if not link.ending]
        return [link for link in links if conn_id is None or link.record.conn_id == conn_id]

    @staticmethod
    def _directions(direction: Direction | None) -> tuple[Direction, ...]:
        return DIRECTIONS if direction is None else (direction,)

    def _cancel_refuse_timer(self) -> None:
        if self._refuse_timer is not None:
            self._refuse_timer.cancel()
            self._refuse_timer = None
