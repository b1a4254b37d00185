"""The HTTP server of ``voxgate serve``: aiohttp on sockets bound beforehand, behind a guard
against slow and silent clients.

Owns: :class:`SlowClientGuard`, which stands in front of aiohttp's protocol on each new
connection until the first request head is complete. A connection that has not sent a whole
request head within ``head_timeout_s`` (a silent socket, a never-finished upgrade request) is
closed; at most ``max_pending`` such half-open connections are kept, the oldest closed first,
so a flood of them cannot exhaust file descriptors or starve real clients. Once the head is
in, the guard hands the transport to aiohttp (``set_protocol``) and costs nothing per frame.
Later requests on a keep-alive connection are bounded by aiohttp's ``keepalive_timeout``, set
to the same timeout; request bodies by :mod:`voxgate.auth.requests`.

:func:`drain` is the orderly stop (SIGTERM, Ctrl+C) and says what it is waiting for.

Must not: know about routes, or about sessions beyond the endpoint's count and stop calls.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from voxgate.app import DRAIN_HOOKS, DRAINING, ENDPOINT
from voxgate.config import Settings

log = structlog.get_logger(__name__)

ProtocolFactory = Callable[[], asyncio.Protocol]
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")
#: While draining, say again what is left at least this often.
_DRAIN_REPORT_S = 5.0


class SlowClientGuard:
    """Deadline and cap for connections that have not sent a complete request head.

    Args:
        head_timeout_s: time from connect to the end of the first request head.
        max_pending: half-open connections kept at once; beyond it the oldest is closed.
    """

    def __init__(self, *, head_timeout_s: float, max_pending: int) -> None:
        self.head_timeout_s = head_timeout_s
        self.max_pending = max_pending
        self._pending: OrderedDict[_Guarded, None] = OrderedDict()
        #: connections closed for sending no complete head in time, and evicted by the cap
        self.timed_out = 0
        self.evicted = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def wrap(self, factory: ProtocolFactory) -> Callable[[], asyncio.Protocol]:
        """A protocol factory that puts the guard in front of ``factory``'s protocols."""
        return lambda: _Guarded(self, factory())

    def _admit(self, conn: _Guarded) -> None:
        self._pending[conn] = None
        while len(self._pending) > self.max_pending:
            oldest, _ = self._pending.popitem(last=False)
            self.evicted += 1
            oldest.drop("evicted")

    def _release(self, conn: _Guarded) -> None:
        self._pending.pop(conn, None)

    def _expired(self, conn: _Guarded) -> None:
        if conn in self._pending:
            self._pending.pop(conn)
            self.timed_out += 1
            conn.drop("head_timeout")


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, until its first request head is complete."""

    def __init__(self, guard: SlowClientGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream server: a Transport
        self._inner.connection_made(transport)
        self._timer = asyncio.get_running_loop().call_later(
            self._guard.head_timeout_s, self._guard._expired, self
        )
        self._guard._admit(self)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)
        seen = self._tail + data
        if any(end in seen for end in _HEAD_ENDS):
            self._hand_over()
        else:
            self._tail = seen[-3:]

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_guarding()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def drop(self, why: str) -> None:
        """Close a connection that is still sending its head (timeout or over the cap)."""
        self._stop_guarding()
        if self._transport is not None and not self._transport.is_closing():
            peer = self._transport.get_extra_info("peername")
            log.debug("http.half_open_closed", why=why, peer=str(peer[0]) if peer else None)
            self._transport.close()

    def _hand_over(self) -> None:
        self._stop_guarding()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.set_protocol(self._inner)

    def _stop_guarding(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._guard._release(self)


class GuardedSite(web.BaseSite):
    """An aiohttp site on a socket bound beforehand, with a :class:`SlowClientGuard`.

    With ``ssl_context`` it serves TLS: the handshake is bounded by the guard's head timeout
    (asyncio's ``ssl_handshake_timeout``), and the guard then sees the decrypted request head
    exactly as it does in plain HTTP (it sits under asyncio's TLS layer, in front of aiohttp).
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        guard: SlowClientGuard,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._sock = sock
        self._guard = guard
        host, port = sock.getsockname()[:2]
        self._name = f"{'https' if ssl_context else 'http'}://{host}:{port}"

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        if server is None:
            raise RuntimeError("runner.setup() must run before the site starts")
        self._server = await asyncio.get_running_loop().create_server(
            self._guard.wrap(server),
            sock=self._sock,
            ssl=self._ssl_context,
            ssl_handshake_timeout=self._guard.head_timeout_s if self._ssl_context else None,
        )


@dataclass
class Serving:
    """A running server: its runner, one site per bound socket, and the guard."""

    runner: web.AppRunner
    sites: list[GuardedSite]
    guard: SlowClientGuard
    port: int
    stopped: bool = field(default=False)

    async def stop_listening(self) -> None:
        """Close the listening sockets (open connections go on): a new process may bind."""
        if not self.stopped:
            self.stopped = True
            for site in self.sites:
                await site.stop()


async def serve(
    app: web.Application,
    settings: Settings,
    socks: list[socket.socket],
    *,
    shutdown_timeout_s: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
) -> Serving:
    """Start ``app`` on ``socks`` (from :func:`voxgate.startup.bind`), over TLS when
    ``ssl_context`` is given (:mod:`voxgate.tls`)."""
    runner = web.AppRunner(
        app,
        max_field_size=settings.max_header_bytes,
        access_log=None,
        shutdown_timeout=shutdown_timeout_s,
        keepalive_timeout=settings.http_request_timeout_s,
        # after a response, unread body bytes are drained for at most this long
        lingering_time=settings.http_request_timeout_s,
    )
    await runner.setup()
    guard = SlowClientGuard(
        head_timeout_s=settings.http_request_timeout_s,
        max_pending=settings.http_max_pending_connections,
    )
    sites = [GuardedSite(runner, sock, guard, ssl_context) for sock in socks]
    for site in sites:
        await site.start()
    port = int(socks[0].getsockname()[1])
    return Serving(runner=runner, sites=sites, guard=guard, port=port)


async def drain(
    app: web.Application,
    serving: Serving,
    timeout_s: float,
    *,
    report: Callable[[str, int], None],
    forced: asyncio.Event,
) -> bool:
    """Stop taking work and wait for open sessions to end (SIGTERM, Ctrl+C).

    ``/readyz`` says ``draining``, the listening sockets close (another process may take the
    port), the app's drain hooks run (they tell opted-in clients to reconnect elsewhere),
    detached sessions end, then this waits for the rest, reporting what it waits for
    (``report(sentence, open_sessions)``).

    Returns:
        True when every session ended; False on ``timeout_s`` or when ``forced`` was set (then
        every session has been asked to end with 1001).
    """
    app[DRAINING][0] = True
    await serving.stop_listening()
    for hook in app[DRAIN_HOOKS]:
        hook(timeout_s)
    endpoint = app[ENDPOINT]
    endpoint.end_detached()  # their clients would resume on another node
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    shown: int | None = None
    while (active := endpoint.active_sessions) > 0:
        left = deadline - loop.time()
        if forced.is_set() or left <= 0:
            endpoint.stop_all("server_shutdown")
            return False
        if active != shown:
            shown = active
            report(
                f"draining: port {serving.port} is closed to new connections; waiting up to "
                f"{left:.0f} s for {active} open session{'s' if active != 1 else ''} to end",
                active,
            )
        await _first(endpoint.wait_idle(min(left, _DRAIN_REPORT_S)), forced.wait())
    if shown is None:
        report("draining: no open sessions; stopping", 0)
    return True


async def _first(*aws: Coroutine[Any, Any, Any]) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
