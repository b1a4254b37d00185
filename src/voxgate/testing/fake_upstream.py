"""``FakeRealtimeServer``: a fake OpenAI Realtime server on a real socket, for tests.

This module is the I/O shell only: an aiohttp server on 127.0.0.1 (port 0 by default) that
serves ``/v1/realtime`` and ``/realtime``, runs the connect checks of
:mod:`voxgate.testing.handshake`, and pumps frames through one
:class:`~voxgate.testing.core.FakeSession` per connection. Protocol behaviour lives in the
sans-I/O core; this file owns sockets, timers, test hooks and records.

Per connection: a reader task feeds frames to the core, one writer task drains a bounded
outbox (so events go out exactly in the order the core produced them), and one pump task per
running response asks the core for its next batch. Nothing here sleeps to synchronise; the only
sleeps are the documented hooks (``session_created_delay_s``, ``response_pacing_s``).

Example::

    async with FakeRealtimeServer() as fake:
        client = AsyncOpenAI(api_key="sk-test", websocket_base_url=fake.ws_base_url)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            ...
        record = await fake.wait_for_connection()
        await record.wait_for("response.create")
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Collection
from types import TracebackType
from typing import Any, Literal

import orjson
import structlog
from aiohttp import WSMsgType, web

from voxgate.protocol import ids
from voxgate.protocol.close import CloseCode
from voxgate.protocol.errors import SERVER_ERROR, FatalSessionError, error_event
from voxgate.protocol.session_config import SessionType, default_session
from voxgate.testing.core import Action, Close, FakeSession, Send, StartResponse
from voxgate.testing.handshake import check_handshake, default_model_ok, parse_handshake
from voxgate.testing.records import ConnectionRecord, Waitable
from voxgate.testing.responder import (
    Responder,
    Transcriber,
    default_responder,
    default_transcriber,
)

log = structlog.get_logger(__name__)

RefuseMode = Literal["reset", "http_503"]
OUTBOX_MAX_EVENTS = 1024
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
CLOSE_TIMEOUT_S = 2.0


class FakeRealtimeServer(Waitable):
    """A fake ``wss://api.openai.com/v1/realtime`` (realtime-protocol.md), as an async CM.

    Args:
        api_keys: keys accepted; None accepts any non-empty key.
        models: model ids accepted, or a predicate; None = the realtime models of §1.1 and
            anything starting ``gpt-realtime`` / ``gpt-4o-realtime``.
        responder: what the model answers (see :mod:`voxgate.testing.responder`).
        transcriber: the transcript of a committed audio turn.
        ping_interval_s: WebSocket PING period (the real server: about 20 s); None disables.
        max_session_s: close each session with ``session_expired`` + 1001 after this long.
        session_created_delay_s: delay before ``session.created`` (client events wait).
        response_pacing_s: pause between a response's event batches (0 = just yield).
        audio_cap_bytes: recorded input audio history per connection.
        honour_item_ids: False makes ``conversation.item.create`` ignore a client-chosen
            ``item.id`` and mint one (OpenAI keeps client ids; this tests id mapping).
        host, port: where to listen (default 127.0.0.1, a free port).
    """

    def __init__(
        self,
        *,
        api_keys: Collection[str] | None = None,
        models: Collection[str] | Callable[[str], bool] | None = None,
        responder: Responder = default_responder,
        transcriber: Transcriber = default_transcriber,
        ping_interval_s: float | None = 20.0,
        max_session_s: float | None = None,
        session_created_delay_s: float = 0.0,
        response_pacing_s: float = 0.0,
        audio_cap_bytes: int = 64 * 1024 * 1024,
        honour_item_ids: bool = True,
        max_recorded_connections: int = 1000,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__()
        self.api_keys = frozenset(api_keys) if api_keys is not None else None
        if models is None:
            self._model_ok: Callable[[str], bool] = default_model_ok
        elif callable(models):
            self._model_ok = models
        else:
            allowed = frozenset(models)
            self._model_ok = allowed.__contains__
        self.responder = responder
        self.transcriber = transcriber
        self.ping_interval_s = ping_interval_s
        self.max_session_s = max_session_s
        self.session_created_delay_s = session_created_delay_s
        self.response_pacing_s = response_pacing_s
        self.audio_cap_bytes = audio_cap_bytes
        self.honour_item_ids = honour_item_ids
        self.connections: deque[ConnectionRecord] = deque(maxlen=max_recorded_connections)
        self.accepted_count = 0
        self.refused_count = 0
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self._live: dict[int, _Connection] = {}
        self._refuse_count: int | None = None
        self._refuse_until: float | None = None
        self._refuse_mode: RefuseMode = "reset"
        self._fail_next: list[FatalSessionError] = []
        self._responses_released = asyncio.Event()
        self._responses_released.set()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeRealtimeServer:
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
        app = web.Application()
        for path in ("/v1/realtime", "/realtime"):
            app.router.add_get(path, self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        log.info("fake_upstream.started", port=self._port)

    async def close(self) -> None:
        """Stop listening and end every live connection (close 1001)."""
        self._responses_released.set()
        closing = list(self._live.values())
        for conn in closing:
            conn.push([Close(CloseCode.GOING_AWAY, "server shutting down")])
        waits = [c.record.closed.wait() for c in closing]
        if waits:
            # The close handshake needs the client to read; a client that does not is cut off.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), CLOSE_TIMEOUT_S)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ addresses

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:P/v1/realtime`` (add ``?model=…`` for openai-agents)."""
        return f"ws://{self._host}:{self._port}/v1/realtime"

    @property
    def ws_base_url(self) -> str:
        """``ws://127.0.0.1:P/v1``: openai-python's ``websocket_base_url``."""
        return f"ws://{self._host}:{self._port}/v1"

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:P/v1``: an HTTP ``base_url``."""
        return f"http://{self._host}:{self._port}/v1"

    def agents_url(self, model: str = "gpt-realtime") -> str:
        """The ``model_config["url"]`` for openai-agents (which uses it verbatim)."""
        return f"{self.url}?model={model}"

    # ------------------------------------------------------------------ records

    @property
    def live_connections(self) -> list[ConnectionRecord]:
        return [c.record for c in self._live.values()]

    async def wait_for_connection(self, n: int = 1, *, timeout_s: float = 5.0) -> ConnectionRecord:
        """Wait until ``n`` connections have been accepted; return the ``n``-th record."""

        def probe() -> ConnectionRecord | None:
            return next((c for c in self.connections if c.conn_id == n), None)

        return await self.wait_until(probe, timeout_s, f"connection #{n}")

    # ------------------------------------------------------------------ hooks

    def refuse_connections(
        self,
        count: int | None = None,
        *,
        duration_s: float | None = None,
        mode: RefuseMode = "reset",
    ) -> None:
        """Refuse new connections before the upgrade.

        Args:
            count: refuse this many, then accept again (None: no count limit).
            duration_s: refuse for this long (None: no time limit). With neither, refuse
                until :meth:`accept_connections`.
            mode: ``"reset"`` closes the TCP connection without an HTTP answer;
                ``"http_503"`` answers ``503 Service Unavailable``.
        """
        loop = asyncio.get_running_loop()
        self._refuse_count = (
            count if count is not None else (None if duration_s is not None else -1)
        )
        self._refuse_until = loop.time() + duration_s if duration_s is not None else None
        self._refuse_mode = mode

    def accept_connections(self) -> None:
        """Undo :meth:`refuse_connections`."""
        self._refuse_count = None
        self._refuse_until = None

    def fail_next_connections(
        self,
        code: str = "insufficient_quota",
        *,
        count: int = 1,
        message: str | None = None,
        close_code: int = CloseCode.INTERNAL_ERROR,
        error_type: str | None = None,
    ) -> None:
        """Make the next ``count`` connections fail right after the upgrade: ``error`` + close.

        The close reason is ``<error_type>.<code>`` (§7). ``error_type`` defaults to
        ``server_error`` for ``server_error`` and ``invalid_request_error`` otherwise.
        """
        kind = error_type or ("server_error" if code == "server_error" else "invalid_request_error")
        text = message or {
            "insufficient_quota": "You exceeded your current quota, please check your plan "
            "and billing details.",
            "rate_limit_exceeded": "Rate limit reached for requests.",
        }.get(code, f"The server failed the session: {code}.")
        err = FatalSessionError(text, code=code, close_code=close_code, error_type=kind)
        self._fail_next.extend([err] * count)

    async def drop_all(self) -> int:
        """Abort every live connection's transport: no close frame (clients see 1006)."""
        conns = list(self._live.values())
        for conn in conns:
            conn.abort()
        return len(conns)

    def expire_session(self, record: ConnectionRecord | None = None) -> None:
        """Send ``session_expired`` then close 1001 to one connection (default: all live)."""
        for conn in self._select(record):
            conn.push(conn.core.expire())

    def send_raw(self, event: dict[str, Any], record: ConnectionRecord | None = None) -> None:
        """Send any server event as-is (after what is already queued), to one or all live
        connections. No ``event_id`` is added: the test controls the exact frame."""
        for conn in self._select(record):
            conn.push([Send(event)])

    def close_connection(
        self, code: int = CloseCode.NORMAL, reason: str = "", record: ConnectionRecord | None = None
    ) -> None:
        """Close one or all live connections with a close frame (no ``error`` event)."""
        for conn in self._select(record):
            conn.push([Close(int(code), reason)])

    def _select(self, record: ConnectionRecord | None) -> list[_Connection]:
        return [c for c in self._live.values() if record is None or c.record is record]

    def hold_responses(self) -> None:
        """Responses send ``response.created`` then wait until :meth:`release_responses`."""
        self._responses_released.clear()

    def release_responses(self) -> None:
        self._responses_released.set()

    # ------------------------------------------------------------------ HTTP handler

    def _refusing(self) -> bool:
        if self._refuse_until is not None:
            if asyncio.get_running_loop().time() < self._refuse_until:
                return True
            self._refuse_until = None
            if self._refuse_count is None:
                return False
        if self._refuse_count is None or self._refuse_count == 0:
            return False
        if self._refuse_count > 0:
            self._refuse_count -= 1
        return True

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self._refusing():
            self.refused_count += 1
            log.info("fake_upstream.refused", mode=self._refuse_mode)
            if self._refuse_mode == "http_503" or request.transport is None:
                return web.Response(status=503, text="Service Unavailable")
            request.transport.abort()
            return web.Response(status=503)  # never written: the transport is gone
        offered = [
            p.strip()
            for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()
        ]
        hs, key = parse_handshake(request.path, request.query, request.headers.items(), offered)
        ws = web.WebSocketResponse(
            protocols=("realtime",),
            timeout=CLOSE_TIMEOUT_S,
            heartbeat=self.ping_interval_s,
            max_msg_size=MAX_MESSAGE_BYTES,
        )
        await ws.prepare(request)
        self.accepted_count += 1
        record = ConnectionRecord(self.accepted_count, hs, selected_subprotocol=ws.ws_protocol)
        self.connections.append(record)
        self.notify()
        log.info(
            "fake_upstream.connected",
            conn_id=record.conn_id,
            path=hs.path,
            model=hs.model,
            key_source=hs.api_key_source,
        )
        failure = check_handshake(
            hs,
            key,
            key_ok=lambda k: self.api_keys is None or k in self.api_keys,
            model_ok=self._model_ok,
        )
        if failure is None and self._fail_next:
            failure = self._fail_next.pop(0)
        session_type: SessionType = "transcription" if hs.model is None else "realtime"
        core = FakeSession(
            default_session(
                session_type,
                session_id=ids.session_id(),
                model=hs.model or "gpt-realtime",
                now_s=int(time.time()),
            ),
            responder=self.responder,
            transcriber=self.transcriber,
            audio_cap_bytes=self.audio_cap_bytes,
        )
        core.honour_item_ids = self.honour_item_ids
        conn = _Connection(self, ws, request, record, core)
        if failure is not None:
            await conn.run_failed(failure)
        else:
            record.session_core = core
            self._live[record.conn_id] = conn
            try:
                await conn.run()
            finally:
                self._live.pop(record.conn_id, None)
        self.notify()
        return ws


class _Outbox:
    """Bounded FIFO of actions between the core and the writer task."""

    def __init__(self, max_items: int) -> None:
        self._items: deque[Send | Close] = deque()
        self._max = max_items
        self._nonempty = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def push(self, action: Send | Close) -> None:
        # May overshoot by one core batch: callers wait for room before asking the core.
        self._items.append(action)
        self._nonempty.set()
        if len(self._items) >= self._max:
            self._room.clear()

    async def wait_room(self) -> None:
        await self._room.wait()

    async def get(self) -> Send | Close:
        while not self._items:
            self._nonempty.clear()
            await self._nonempty.wait()
        item = self._items.popleft()
        if len(self._items) < self._max:
            self._room.set()
        return item


class _Connection:
    """The I/O around one :class:`FakeSession`: reader, writer, response pumps, timers."""

    def __init__(
        self,
        server: FakeRealtimeServer,
        ws: web.WebSocketResponse,
        request: web.Request,
        record: ConnectionRecord,
        core: FakeSession,
    ) -> None:
        self.server = server
        self.ws = ws
        self.transport = request.transport
        self.record = record
        self.core = core
        self.outbox = _Outbox(OUTBOX_MAX_EVENTS)
        self.closing = False
        self.aborted = False
        self._tasks: set[asyncio.Task[None]] = set()

    def push(self, actions: list[Action]) -> None:
        """Queue the core's actions in order; start pumps for new responses."""
        for action in actions:
            if self.closing:
                return
            if isinstance(action, StartResponse):
                self._spawn(self._pump(action.response_id))
            else:
                self.outbox.push(action)
                if isinstance(action, Close):
                    self.closing = True

    def abort(self) -> None:
        self.aborted = True
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run_failed(self, failure: FatalSessionError) -> None:
        """Fatal connect error: the ``error`` event and the close frame go out together."""
        log.info("fake_upstream.connect_failed", conn_id=self.record.conn_id, code=failure.code)
        self.push(
            self.core.fatal(
                failure.code,
                failure.message,
                close_code=failure.close_code,
                error_type=failure.error_type,
            )
        )
        await self._writer()
        self.record._mark_closed(failure.close_code, failure.reason, "server")

    async def run(self) -> None:
        writer = asyncio.create_task(self._writer())
        timer = None
        try:
            if self.server.session_created_delay_s > 0:
                await asyncio.sleep(self.server.session_created_delay_s)
            self.push(self.core.open())
            if self.server.max_session_s is not None:
                loop = asyncio.get_running_loop()
                limit_s = self.server.max_session_s
                timer = loop.call_later(limit_s, lambda: self.push(self.core.expire(limit_s / 60)))
            await self._reader()
        finally:
            if timer is not None:
                timer.cancel()
            for task in list(self._tasks):
                task.cancel()
            if not writer.done():
                if self.aborted or self.ws.closed:
                    writer.cancel()
                else:
                    self.push([Close(CloseCode.NORMAL, "")])
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await writer
            self._mark_closed()

    def _mark_closed(self) -> None:
        if self.aborted:
            self.record._mark_closed(None, None, "abort")
        elif self.record.closed_by is None:
            by = "server" if self.closing else "client"
            reason = self.ws.close_reason if hasattr(self.ws, "close_reason") else None
            self.record._mark_closed(self.ws.close_code, reason, by)

    async def _reader(self) -> None:
        async for msg in self.ws:
            if self.closing:
                break
            await self.outbox.wait_room()
            try:
                if msg.type == WSMsgType.TEXT:
                    self.push(self.core.receive_text(msg.data))
                elif msg.type == WSMsgType.BINARY:
                    self.push(self.core.receive_binary())
            except Exception:  # a bug in the fake: answer like the real server, keep going
                log.exception("fake_upstream.core_failed", conn_id=self.record.conn_id)
                self.push(
                    [
                        Send(
                            error_event(
                                "The server had an error.", code=None, error_type=SERVER_ERROR
                            )
                        )
                    ]
                )
            self.record.notify()

    async def _writer(self) -> None:
        while True:
            action = await self.outbox.get()
            if isinstance(action, Send):
                try:
                    await self.ws.send_str(orjson.dumps(action.event).decode())
                except ConnectionError:
                    return
                self.record.sent_events.append(action.event)
                self.record.notify()
            else:
                try:
                    await self.ws.close(code=action.code, message=action.reason.encode())
                finally:
                    self.record._mark_closed(action.code, action.reason, "server")
                return

    async def _pump(self, response_id: str) -> None:
        done = False
        while not done and not self.closing:
            await self.server._responses_released.wait()
            await self.outbox.wait_room()
            if self.closing:
                return
            actions, done = self.core.advance(response_id)
            self.push(actions)
            await asyncio.sleep(self.server.response_pacing_s)
