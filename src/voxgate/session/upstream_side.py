"""The upstream half of a session's I/O: connect, gate, pump, reconnect (issues #3, #6).

A mixin of :class:`~voxgate.session.runner.SessionRunner`, kept in its own module because it
is a concept of its own: the upstream pump reads the upstream and feeds the machine; a loss
becomes, per the machine, the end of the session or a reconnect: backoff, a fresh upstream,
the mirror replayed by :class:`~voxgate.session.recovery.ReplayDriver`, then the client's held
frames flushed. It owns no state of its own: the attributes below are the runner's, declared
here so each half type-checks alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import WSMsgType

from voxgate.backends.base import Backend, UpstreamConnectError, UpstreamConnection, UpstreamTarget
from voxgate.protocol.close import CloseCode
from voxgate.protocol.errors import InvalidState
from voxgate.session.actions import FORWARD, Outcome, StartReconnect
from voxgate.session.machine import Phase, SessionMachine
from voxgate.session.recovery import ReplayDriver, ReplayStats

if TYPE_CHECKING:
    from voxgate.session.runner import RunnerConfig, SessionStats

CLOSE_TYPES = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})
#: Handshake statuses that no retry will fix (bad URL, bad key).
_FATAL_HTTP = frozenset({400, 401, 403, 404})


class _AttemptFailed(Exception):
    def __init__(self, reason: str, fatal_code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fatal_code = fatal_code


class UpstreamSide:
    """The upstream pump and reconnect logic; mixed into the session runner."""

    _machine: SessionMachine
    _backend: Backend
    _target: UpstreamTarget
    _cfg: RunnerConfig
    _log: Any
    _upstream: UpstreamConnection | None
    _tg: asyncio.TaskGroup | None
    _loop: asyncio.AbstractEventLoop
    stats: SessionStats
    pongs_from_upstream: int
    _recycle_requested: bool
    _upstream_since: float

    async def _execute(self, actions: Outcome) -> StartReconnect | None:
        raise NotImplementedError  # the runner's

    async def _send_client(self, text: str) -> None:
        raise NotImplementedError  # the runner's

    async def _upstream_send(self, text: str) -> None:
        upstream = self._upstream
        if upstream is None:  # reconnecting: the frame is in the mirror / pending acks
            return
        try:  # noqa: SIM105 (hot path: a bare try costs nothing, suppress() allocates)
            await upstream.send_str(text)
        except (ConnectionError, RuntimeError):
            pass  # the upstream pump sees the loss; recovery re-sends what was recorded

    async def _upstream_pump(self) -> None:
        if not await self._open_initial():
            return
        machine = self._machine
        stats = self.stats
        now = self._loop.time
        while True:
            upstream = self._upstream
            assert upstream is not None  # noqa: S101 (set by _open_initial / _reconnect)
            receive = upstream.receive
            send = self._send_client
            while True:
                msg = await receive()
                if msg.type is WSMsgType.TEXT:
                    text: str = msg.data
                    stats.upstream_frames += 1
                    stats.upstream_bytes += len(text)
                    outcome = machine.upstream_text(text, now())
                    if outcome is FORWARD:
                        await send(text)  # waits while the client's socket buffer is full
                    elif outcome:
                        await self._execute(outcome)
                elif msg.type in CLOSE_TYPES:
                    break
                else:
                    await self._upstream_control(upstream, msg)
                if self._recycle_requested:
                    break
            if self._recycle_requested:
                self._recycle_requested = False
                outcome = machine.start_recycle(now())
                if not outcome:
                    continue  # no longer quiet: try again at the next check
                self.stats.recycles += 1
            else:
                outcome = self._upstream_gone(msg)
            reconnect = await self._execute(outcome)
            if reconnect is None:
                return
            await self._reconnect(reconnect)

    async def _upstream_control(self, upstream: UpstreamConnection, msg: aiohttp.WSMessage) -> None:
        """PING/PONG from the upstream (voxgate answers pings itself: see ``_timers``)."""
        if msg.type is WSMsgType.PING:
            self.pongs_from_upstream += 1
            await upstream.pong(msg.data)
        elif msg.type is WSMsgType.PONG:
            self.pongs_from_upstream += 1

    async def _open_initial(self) -> bool:
        """Connect and gate, retrying a lost or refused upstream until the ready deadline."""
        machine = self._machine
        log = self._log
        log.info("upstream.connecting", **self._backend.describe())
        policy = self._cfg.reconnect
        deadline = self._loop.time() + self._cfg.ready_timeout_s
        attempt = 0
        last_unreachable: str | None = None
        while True:
            if attempt and policy is not None:
                delay = policy.delay_s(attempt, random.random())  # noqa: S311 (jitter)
                if self._loop.time() + delay >= deadline:
                    break
                await asyncio.sleep(delay)  # backoff, not synchronisation
            attempt += 1
            try:
                async with asyncio.timeout_at(deadline):
                    started = time.monotonic()
                    try:
                        self._upstream = await self._backend.connect(self._target)
                    except UpstreamConnectError as exc:
                        log.warning("upstream.unreachable", detail=exc.detail, status=exc.status)
                        last_unreachable = exc.detail
                        if policy is None or exc.status in _FATAL_HTTP:
                            await self._execute(machine.upstream_unreachable(exc.detail))
                            return False
                        continue
                    log.info("upstream.connected", connect_ms=_ms(started), attempt=attempt)
                    last_unreachable = None
                    self._upstream_since = self._loop.time()
                    if await self._gate(self._upstream):
                        return True
            except TimeoutError:
                break
            if policy is None:
                return False
        if last_unreachable is not None and machine.phase is Phase.CONNECTING:
            await self._execute(machine.upstream_unreachable(last_unreachable))
        log.warning("upstream.ready_timeout", timeout_s=self._cfg.ready_timeout_s)
        await self._execute(machine.ready_timeout(self._cfg.ready_timeout_s))
        return False

    async def _gate(self, upstream: UpstreamConnection) -> bool:
        """Read until the machine is past CONFIGURING. False: lost, retry (raises if over)."""
        machine = self._machine
        receive = upstream.receive
        while machine.phase in (Phase.CONNECTING, Phase.CONFIGURING):
            msg = await receive()
            if msg.type is WSMsgType.TEXT:
                self.stats.upstream_frames += 1
                self.stats.upstream_bytes += len(msg.data)
                outcome = machine.upstream_text(msg.data, self._loop.time())
                if outcome is FORWARD:
                    await self._send_client(msg.data)
                elif outcome:
                    await self._execute(outcome)
            elif msg.type in CLOSE_TYPES:
                again = await self._execute(self._upstream_gone(msg))
                self._upstream = None
                if again is None or not again.before_ready:
                    raise InvalidState("a loss before ready must retry or end the session")
                return False
            else:
                await self._upstream_control(upstream, msg)
        return True

    async def _reconnect(self, action: StartReconnect) -> None:
        """Open a fresh upstream and rebuild the session on it, with backoff (issue #6)."""
        policy = self._cfg.reconnect
        if policy is None:
            raise InvalidState("reconnect without a policy")
        old, self._upstream = self._upstream, None
        if old is not None:
            self._close_in_background(old, CloseCode.NORMAL)
        if action.before_ready:
            if not await self._open_initial():
                raise InvalidState("initial open ended without ending the session")
            return
        machine = self._machine
        log = self._log
        started = self._loop.time()
        self.stats.reconnects += 1
        log.info("upstream.reconnecting", cause=action.cause)
        reason = "no attempt"
        for attempt in range(policy.attempts):
            delay = policy.delay_s(attempt, random.random())  # noqa: S311 (jitter)
            if delay:
                await asyncio.sleep(delay)  # backoff, not synchronisation
            conn: UpstreamConnection | None = None
            try:
                async with asyncio.timeout(policy.connect_timeout_s):
                    conn = await self._backend.connect(self._target)
                    driver = machine.replay(action.retry_response)
                    stats = await self._rebuild(conn, driver)
            except UpstreamConnectError as exc:
                reason = exc.detail
                if exc.status in _FATAL_HTTP:
                    break
                continue
            except TimeoutError:
                reason = "timeout"
            except _AttemptFailed as exc:
                reason = exc.reason
                if exc.fatal_code is not None:
                    if conn is not None:
                        self._close_in_background(conn, CloseCode.NORMAL)
                    await self._execute(machine.reconnect_failed(reason, fatal_code=exc.fatal_code))
                    return
            else:
                gap_ms = (self._loop.time() - started) * 1000
                self.stats.reconnect_gaps_ms.append(round(gap_ms, 1))
                if len(self.stats.reconnect_gaps_ms) > 64:
                    del self.stats.reconnect_gaps_ms[0]
                self._upstream = conn
                self._upstream_since = self._loop.time()
                log.info(
                    "upstream.reconnected",
                    cause=action.cause,
                    attempt=attempt + 1,
                    gap_ms=round(gap_ms, 1),
                    replayed_items=stats.replayed_items,
                    resent_events=stats.resent_events,
                    audio_resent_bytes=stats.audio_resent_bytes,
                    state_restored=stats.state_restored,
                )
                await self._execute(machine.reconnected(stats, gap_ms))
                return
            if conn is not None:
                self._close_in_background(conn, CloseCode.NORMAL)
            log.info("upstream.reconnect_attempt_failed", attempt=attempt + 1, reason=reason)
        log.warning("upstream.lost", reason=reason)
        await self._execute(machine.reconnect_failed(reason))

    async def _rebuild(self, conn: UpstreamConnection, driver: ReplayDriver) -> ReplayStats:
        """Drive the replay over ``conn`` until done (a close fails the attempt)."""
        receive = conn.receive
        while not driver.done:
            msg = await receive()
            if msg.type is WSMsgType.TEXT:
                sends = driver.on_text(msg.data)
                if driver.fatal is not None:
                    raise _AttemptFailed(driver.fatal[1][:120], fatal_code=driver.fatal[0])
                for text in sends:
                    await conn.send_str(text)
            elif msg.type in CLOSE_TYPES:
                raise _AttemptFailed(f"closed during replay ({conn.close_code})")
            elif msg.type is WSMsgType.PING:
                await conn.pong(msg.data)
        return driver.stats

    def _close_in_background(self, conn: UpstreamConnection, code: int) -> None:
        async def close() -> None:
            with contextlib.suppress(TimeoutError, ConnectionError, RuntimeError):
                await asyncio.wait_for(conn.close(code=code), 2.0)

        if self._tg is not None:
            self._tg.create_task(close(), name="upstream_close")

    def _upstream_gone(self, msg: aiohttp.WSMessage) -> Outcome:
        upstream = self._upstream
        code = upstream.close_code if upstream is not None else None
        reason = ""
        if msg.type is WSMsgType.CLOSE:
            code = int(msg.data) if msg.data is not None else code
            reason = msg.extra or ""
        if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSING):
            code = None
        if code == CloseCode.ABNORMAL:
            code = None
        self._log.info("upstream.closed", code=code, reason=reason)
        return self._machine.upstream_closed(code, reason)


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 1)
