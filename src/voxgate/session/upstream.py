"""The upstream half of a session's I/O: connect, gate, pump, reconnect (issues #3, #6).

:class:`UpstreamSide` is owned by the session runner and talks back to it only through
:class:`RunnerHooks`. It opens the backend's connection and reads it until the machine is
ready (gating); then it pumps frames to the runner (the hot path goes through the runner's
sink instead: see :mod:`voxgate.session.ports`). A loss becomes, per the machine, the end of
the session or a reconnect: backoff, a fresh upstream, the mirror replayed by a
:class:`~voxgate.session.replay_driver.ReplayDriver`, then the client's held frames flushed.
A recycle (a planned move at a quiet point) takes the same road from the timer task; only one
reconnect runs at a time, and the pump waits for it when its connection was replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any, Protocol

from voxgate.protocol.close import CloseCode
from voxgate.protocol.errors import InvalidState
from voxgate.session.actions import Outcome, StartReconnect
from voxgate.session.clock import SessionClock
from voxgate.session.machine import Phase, SessionMachine
from voxgate.session.ports import (
    Backend,
    EncodedFrameSink,
    EncodedTextSource,
    FrameSink,
    PeerGone,
    UpstreamConnectError,
    UpstreamConnection,
    UpstreamTarget,
)
from voxgate.session.reconnect import ReconnectPolicy
from voxgate.session.replay_driver import ReplayDriver, ReplayStats

#: Handshake statuses that no retry will fix (bad URL, bad key).
_FATAL_HTTP = frozenset({400, 401, 403, 404})
_AUTH_HTTP = frozenset({401, 403})


class RunnerHooks(Protocol):
    """What the upstream side needs from the runner that owns it."""

    async def execute(self, actions: Outcome) -> StartReconnect | None: ...

    async def on_upstream_text(self, text: str) -> None: ...

    def upstream_sink(self, frame: str | bytes) -> bool: ...

    def upstream_encoded_sink(self, frame: bytes, payload: bytes) -> bool: ...


class UpstreamCounters:
    """Reconnect bookkeeping (frames are counted by the runner, on both paths)."""

    __slots__ = ("gaps_ms", "reconnects", "recycles")

    def __init__(self) -> None:
        self.reconnects = 0
        self.recycles = 0
        self.gaps_ms: list[float] = []


class _AttemptFailed(Exception):
    def __init__(self, reason: str, fatal_code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fatal_code = fatal_code


class UpstreamSide:
    """One session's upstream connection over its lifetime (see the module docstring)."""

    def __init__(
        self,
        *,
        hooks: RunnerHooks,
        backend: Backend,
        target: UpstreamTarget,
        machine: SessionMachine,
        clock: SessionClock,
        policy: ReconnectPolicy | None,
        ready_timeout_s: float,
        log: Any,
    ) -> None:
        self._hooks = hooks
        self._backend = backend
        self._target = target
        self._machine = machine
        self._clock = clock
        self._policy = policy
        self._ready_timeout_s = ready_timeout_s
        self._log = log
        self._loop = asyncio.get_running_loop()
        self._sink: FrameSink = hooks.upstream_sink
        self._encoded_sink: EncodedFrameSink = hooks.upstream_encoded_sink
        self.conn: UpstreamConnection | None = None
        self.counters = UpstreamCounters()
        self._rebuilding = False
        self._rebuilt = asyncio.Event()
        self._closing: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ sending

    async def send(self, text: str) -> None:
        """Send one frame (slow path); while reconnecting it is recorded, not lost."""
        conn = self.conn
        if conn is None:  # reconnecting: the frame is in the mirror / pending acks
            return
        if conn.write_text(text):
            return
        try:  # noqa: SIM105 (a bare try costs nothing on this path, suppress() allocates)
            await conn.send_text(text)
        except PeerGone:
            pass  # the pump sees the loss; recovery re-sends what was recorded

    # ------------------------------------------------------------------ the pump

    async def pump(self, rebuild: Outcome | None = None) -> None:
        """Open, gate, then read until the session ends (one task for the session's life).

        ``rebuild``: the session comes from a snapshot (issue 17): run these actions (the
        machine's :meth:`~voxgate.session.machine.SessionMachine.rebuild`) and reconnect,
        instead of opening a first upstream.
        """
        if rebuild is not None:
            reconnect = await self._hooks.execute(rebuild)
            if reconnect is None:
                raise InvalidState("a rebuild must reconnect")
            await self.reconnect(reconnect)
        elif not await self._open_initial():
            return
        machine = self._machine
        while True:
            conn = self.conn
            if conn is None:
                await self._wait_rebuilt()
                continue
            conn.set_sink(self._sink)
            if isinstance(conn, EncodedTextSource):
                conn.set_encoded_sink(self._encoded_sink)
            try:
                while True:
                    frame = await conn.receive()  # (no bound method kept while parked)
                    if isinstance(frame, str):
                        await self._hooks.on_upstream_text(frame)
            except PeerGone as gone:
                if conn is not self.conn or self._rebuilding:
                    await self._wait_rebuilt()  # replaced under us (recycle) or being replaced
                    continue
                outcome = self._gone(conn, gone)
            reconnect = await self._hooks.execute(outcome)
            if reconnect is None:
                if machine.phase is not Phase.CLOSED:
                    raise InvalidState("an upstream loss must reconnect or end the session")
                return
            await self.reconnect(reconnect)

    async def _wait_rebuilt(self) -> None:
        while self._rebuilding or self.conn is None:
            self._rebuilt.clear()
            await self._rebuilt.wait()

    def _gone(self, conn: UpstreamConnection, gone: PeerGone) -> Outcome:
        code = gone.code if gone.clean else None
        if code == CloseCode.ABNORMAL:
            code = None
        self._log.info("upstream.closed", code=code, reason=gone.reason)
        return self._machine.upstream_closed(code, gone.reason)

    # ------------------------------------------------------------------ opening

    async def _open_initial(self) -> bool:
        """Connect and gate, retrying a lost or refused upstream until the ready deadline."""
        machine = self._machine
        log = self._log
        log.info("upstream.connecting", **self._backend.describe())
        policy = self._policy
        deadline = self._loop.time() + self._ready_timeout_s
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
                        conn = await self._backend.connect(self._target)
                    except UpstreamConnectError as exc:
                        log.warning("upstream.unreachable", detail=exc.detail, status=exc.status)
                        last_unreachable = exc.detail
                        if exc.status in _AUTH_HTTP:
                            await self._hooks.execute(machine.upstream_auth_refused())
                            return False
                        if policy is None or exc.status in _FATAL_HTTP:
                            await self._hooks.execute(machine.upstream_unreachable(exc.detail))
                            return False
                        continue
                    log.info("upstream.connected", connect_ms=_ms(started), attempt=attempt)
                    last_unreachable = None
                    self.conn = conn
                    self._clock.upstream_opened(self._loop.time())
                    if await self._gate(conn):
                        return True
            except TimeoutError:
                break
            if policy is None:
                return False
        if last_unreachable is not None and machine.phase is Phase.CONNECTING:
            await self._hooks.execute(machine.upstream_unreachable(last_unreachable))
        log.warning("upstream.ready_timeout", timeout_s=self._ready_timeout_s)
        await self._hooks.execute(machine.ready_timeout(self._ready_timeout_s))
        return False

    async def _gate(self, conn: UpstreamConnection) -> bool:
        """Read until the machine is past CONFIGURING. False: lost, retry (raises if over)."""
        machine = self._machine
        try:
            while machine.phase in (Phase.CONNECTING, Phase.CONFIGURING):
                frame = await conn.receive()
                if isinstance(frame, str):
                    await self._hooks.on_upstream_text(frame)
        except PeerGone as gone:
            again = await self._hooks.execute(self._gone(conn, gone))
            self.conn = None
            if again is None or not again.before_ready:
                raise InvalidState("a loss before ready must retry or end the session") from None
            return False
        return True

    # ------------------------------------------------------------------ reconnecting

    async def recycle(self, now: float) -> None:
        """Move to a fresh upstream now, if the session is still quiet (from the timer task)."""
        if self._rebuilding or self.conn is None:
            return
        outcome = self._machine.start_recycle(now)
        if not outcome:
            self._clock.recycle_declined()
            return
        self.counters.recycles += 1
        reconnect = await self._hooks.execute(outcome)
        if reconnect is not None:
            await self.reconnect(reconnect)

    async def reconnect(self, action: StartReconnect) -> None:
        """Open a fresh upstream and rebuild the session on it, with backoff (issue #6)."""
        policy = self._policy
        if policy is None:
            raise InvalidState("reconnect without a policy")
        old, self.conn = self.conn, None
        if old is not None:
            _unsink(old)
            self.close_in_background(old, CloseCode.NORMAL)
        self._rebuilding = True
        try:
            if action.before_ready:
                if not await self._open_initial():
                    raise InvalidState("initial open ended without ending the session")
                return
            await self._rebuild_with_retries(action, policy)
        finally:
            self._rebuilding = False
            self._rebuilt.set()

    async def _rebuild_with_retries(self, action: StartReconnect, policy: ReconnectPolicy) -> None:
        machine = self._machine
        log = self._log
        started = self._loop.time()
        self.counters.reconnects += 1
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
                if exc.status in _AUTH_HTTP:
                    await self._hooks.execute(
                        machine.reconnect_failed(reason, fatal_code="invalid_api_key")
                    )
                    return
                if exc.status in _FATAL_HTTP:
                    break
                continue
            except TimeoutError:
                reason = "timeout"
            except _AttemptFailed as exc:
                reason = exc.reason
                if exc.fatal_code is not None:
                    if conn is not None:
                        self.close_in_background(conn, CloseCode.NORMAL)
                    await self._hooks.execute(
                        machine.reconnect_failed(reason, fatal_code=exc.fatal_code)
                    )
                    return
            else:
                gap_ms = (self._loop.time() - started) * 1000
                self._installed(conn, action, attempt, gap_ms, stats)
                await self._hooks.execute(machine.reconnected(stats, gap_ms))
                return
            if conn is not None:
                self.close_in_background(conn, CloseCode.NORMAL)
            log.info("upstream.reconnect_attempt_failed", attempt=attempt + 1, reason=reason)
        log.warning("upstream.lost", reason=reason)
        await self._hooks.execute(machine.reconnect_failed(reason))

    def _installed(
        self,
        conn: UpstreamConnection,
        action: StartReconnect,
        attempt: int,
        gap_ms: float,
        stats: ReplayStats,
    ) -> None:
        gaps = self.counters.gaps_ms
        gaps.append(round(gap_ms, 1))
        if len(gaps) > 64:
            del gaps[0]
        self.conn = conn
        self._clock.upstream_opened(self._loop.time())
        self._log.info(
            "upstream.reconnected",
            cause=action.cause,
            attempt=attempt + 1,
            gap_ms=round(gap_ms, 1),
            replayed_items=stats.replayed_items,
            resent_events=stats.resent_events,
            audio_resent_bytes=stats.audio_resent_bytes,
            state_restored=stats.state_restored,
        )

    async def _rebuild(self, conn: UpstreamConnection, driver: ReplayDriver) -> ReplayStats:
        """Drive the replay over ``conn`` until done; any ending of ``conn`` fails the attempt.

        A second cut in the middle of a replay is one :class:`PeerGone` like any other: this
        attempt fails and the next one starts (issue #12.8).
        """
        try:
            while not driver.done:
                frame = await conn.receive()
                if not isinstance(frame, str):
                    continue
                sends = driver.on_text(frame)
                if driver.fatal is not None:
                    raise _AttemptFailed(driver.fatal[1], fatal_code=driver.fatal[0])
                for text in sends:
                    if not conn.write_text(text):
                        await conn.send_text(text)
        except PeerGone as gone:
            raise _AttemptFailed(f"closed during replay ({gone.code})") from None
        return driver.stats

    def close_in_background(self, conn: UpstreamConnection, code: int) -> None:
        """Close ``conn`` without waiting (a dead or replaced upstream)."""

        async def close() -> None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await conn.close(code)

        task = self._loop.create_task(close(), name="upstream_close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """End the current upstream (session over) and wait for replaced ones to finish."""
        conn, self.conn = self.conn, None
        if conn is not None:
            _unsink(conn)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await conn.close(CloseCode.NORMAL)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def _unsink(conn: UpstreamConnection) -> None:
    conn.set_sink(None)
    if isinstance(conn, EncodedTextSource):
        conn.set_encoded_sink(None)


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 1)
