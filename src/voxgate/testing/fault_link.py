"""One proxied connection of :class:`~voxgate.testing.fault_proxy.FaultProxy`: its I/O and record.

This module owns what happens to a connection once it is accepted: :class:`Link` connects to
the target and runs two pipes (one per direction: reader → bounded queue → writer, applying the
live :class:`Faults`), ends both sockets at once with a reset, and fills the connection's
:class:`ProxyConnection` record (byte counts, outcome) that tests read. It also holds the socket
helpers a cut needs (``SO_LINGER`` 0 resets, the kernel send-queue probe behind a cut-after).

It does not listen, accept, refuse or keep connection tables, and it exposes no fault controls:
that is :mod:`voxgate.testing.fault_proxy`, which a link sees only through :class:`LinkOwner`.
The decisions that need no I/O (cut budgets, pacing) come from
:mod:`voxgate.testing.fault_policy`. Bounds and waits are described in the proxy's module
docstring; the one poll (waiting for the kernel to deliver a cut-after's last bytes) is
:func:`_wait_delivered`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import math
import socket
import struct
import termios
from dataclasses import dataclass
from typing import Protocol

from voxgate.testing.fault_policy import (
    DIRECTIONS,
    READ_BYTES,
    CutBudget,
    Direction,
    Outcome,
    Pacer,
)
from voxgate.testing.records import Waitable

__all__ = [
    "DirectionFaults",
    "DirectionStats",
    "Faults",
    "Link",
    "LinkOwner",
    "ProxyConnection",
    "reset_abruptly",
]

_LINGER_RESET = struct.pack("ii", 1, 0)


# ---------------------------------------------------------------------------- records


@dataclass
class DirectionStats:
    """Byte counts for one direction of one connection.

    Attributes:
        received: bytes read from the sending peer.
        forwarded: bytes written to the receiving peer.
        peak_held_bytes: most bytes held inside the proxy at once (bounded: see
            :mod:`voxgate.testing.fault_proxy`).
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


class DirectionFaults:
    """Live fault settings for one direction, shared by every connection."""

    def __init__(self) -> None:
        self.stalled = False
        self.delay_s = 0.0
        self.bytes_per_s: float | None = None


class Faults:
    """Fault settings for both directions plus one wake-up for writers when any change."""

    def __init__(self) -> None:
        self.by_direction = {d: DirectionFaults() for d in DIRECTIONS}
        self._changed = asyncio.Event()

    def changed(self) -> asyncio.Event:
        return self._changed

    def notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


class LinkOwner(Protocol):
    """What a :class:`Link` reads from the proxy that accepted it (live, not copied)."""

    faults: Faults
    target_host: str
    target_port: int
    connect_timeout_s: float
    flush_timeout_s: float
    queue_items: int

    def _link_ended(self, link: Link, outcome: Outcome) -> None:
        """Called once, from the link's task, when the link has fully ended."""


# ---------------------------------------------------------------------------- sockets


def reset_abruptly(writer: asyncio.StreamWriter) -> None:
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
        link: Link,
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


class Link:
    """One accepted connection: connects to the target, runs both pipes, ends once."""

    def __init__(
        self,
        proxy: LinkOwner,
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
                reset_abruptly(writer)
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
