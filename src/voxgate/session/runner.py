"""SessionRunner: the owner of one client session's I/O (DESIGN.md principle 4).

It connects the upstream, pumps frames client → machine → upstream and upstream → machine →
client, executes the machine's actions in order, and ends everything together. One TaskGroup per
session; no queue between the sockets: each pump awaits the other socket's ``send_str``, so a
peer that stops reading holds back the pump feeding it (aiohttp's writer drains past its 64 KiB
limit), and memory per session stays bounded by the transport buffers and the pre-ready buffer.

The hot loops call ``receive``/``send_str`` directly and ask the machine only for a sniffed
``type``; every frame that needs no change is forwarded as the original text.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from voxgate.backends.base import Backend, UpstreamConnectError, UpstreamConnection, UpstreamTarget
from voxgate.protocol.close import CloseCode
from voxgate.protocol.errors import InvalidState
from voxgate.session.actions import (
    FORWARD,
    EndSession,
    Outcome,
    SendClient,
    SendUpstream,
    StartFlush,
    _Forward,
)
from voxgate.session.machine import Phase, SessionMachine

_CLOSE_TYPES = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})


@dataclass
class SessionStats:
    """Counters of one session, logged at close and folded into metrics."""

    started_at: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    first_audio_at: float | None = None
    client_frames: int = 0
    client_bytes: int = 0
    upstream_frames: int = 0
    upstream_bytes: int = 0
    flushed_frames: int = 0
    flushed_bytes: int = 0


class _SessionOver(Exception):
    def __init__(self, end: EndSession) -> None:
        super().__init__(end.cause)
        self.end = end


class SessionRunner:
    """Runs one session to its end. Construct, then ``await run()``; it never raises."""

    def __init__(
        self,
        *,
        client: web.WebSocketResponse,
        backend: Backend,
        machine: SessionMachine,
        target: UpstreamTarget,
        ready_timeout_s: float,
        max_session_s: float,
        log: Any,
        ping_interval_s: float = 0.0,
        client_send_timeout_s: float = 10.0,
    ) -> None:
        self._client = client
        self._backend = backend
        self._machine = machine
        self._target = target
        self._ready_timeout_s = ready_timeout_s
        self._max_session_s = max_session_s
        self._ping_interval_s = ping_interval_s
        self._send_timeout_s = client_send_timeout_s
        self.client_sends_started = 0
        self.client_sends_done = 0
        self._stall_mark = -1
        self._stall_since = 0.0
        self.pongs_from_client = 0
        self.pongs_from_upstream = 0
        self._log = log
        self._upstream: UpstreamConnection | None = None
        self.stats = SessionStats()
        self.end: EndSession | None = None
        self._loop = asyncio.get_running_loop()

    async def run(self) -> EndSession:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._client_pump(), name="client_pump")
                tg.create_task(self._upstream_pump(), name="upstream_pump")
                tg.create_task(self._timers(), name="timers")
        except* _SessionOver as group:
            first = group.exceptions[0]
            self.end = first.end if isinstance(first, _SessionOver) else None
        except* Exception as group:  # a bug in voxgate: end this session, never the process
            self._log.error("session.internal_error", error=repr(group.exceptions[0]))
            self.end = EndSession(
                CloseCode.INTERNAL_ERROR, "server_error.voxgate_internal", None, "internal_error"
            )
        end = self.end or EndSession(CloseCode.NORMAL, "", None, "done")
        await self._shutdown(end)
        return end

    # ------------------------------------------------------------------ pumps

    async def _client_pump(self) -> None:
        machine = self._machine
        receive = self._client.receive
        stats = self.stats
        now = self._loop.time
        while True:
            msg = await receive()
            mtype = msg.type
            if mtype is WSMsgType.TEXT:
                text: str = msg.data
                stats.client_frames += 1
                stats.client_bytes += len(text)
                if stats.first_audio_at is None:
                    self._note_first_audio(text)
                outcome = machine.client_text(text, now())
                if outcome is FORWARD:
                    # FORWARD only comes in phase READY, when the upstream is connected.
                    await self._upstream.send_str(text)  # type: ignore[union-attr]
                elif outcome:
                    await self._execute(outcome)
            elif mtype is WSMsgType.BINARY:
                stats.client_frames += 1
                stats.client_bytes += len(msg.data)
                outcome = machine.client_binary(msg.data, now())
                if outcome:
                    await self._execute(outcome)
            elif mtype is WSMsgType.PING:
                self.pongs_from_client += 1  # a ping proves the peer is alive too
                await self._client.pong(msg.data)
            elif mtype is WSMsgType.PONG:
                self.pongs_from_client += 1
            elif mtype in _CLOSE_TYPES:
                raise _SessionOver(self._client_gone(msg))

    async def _upstream_send(self, text: str) -> None:
        upstream = self._upstream
        if upstream is None:  # only possible after the session ended
            return
        await upstream.send_str(text)

    def _note_first_audio(self, text: str) -> None:
        if text.find("input_audio_buffer.append", 0, 64) >= 0 or text.endswith(
            ('"input_audio_buffer.append"}', '"input_audio_buffer.append" }')
        ):
            self.stats.first_audio_at = time.monotonic()
            self._log.info(
                "session.first_audio",
                after_ms=round((self.stats.first_audio_at - self.stats.started_at) * 1000, 1),
                upstream_ready=self._machine.phase is Phase.READY,
            )

    async def _upstream_pump(self) -> None:
        await self._connect_and_gate()
        upstream = self._upstream
        if upstream is None or self._machine.phase is Phase.CLOSED:
            return
        machine = self._machine
        stats = self.stats
        send = self._client.send_str
        receive = upstream.receive
        now = self._loop.time
        while True:
            msg = await receive()
            if msg.type is WSMsgType.TEXT:
                text: str = msg.data
                stats.upstream_frames += 1
                stats.upstream_bytes += len(text)
                outcome = machine.upstream_text(text, now())
                if outcome is FORWARD:
                    self.client_sends_started += 1
                    await send(text)  # waits while the client's socket buffer is full
                    self.client_sends_done += 1
                elif outcome:
                    await self._execute(outcome)
            elif msg.type in _CLOSE_TYPES:
                await self._execute(self._upstream_gone(msg))
                return
            else:
                await self._upstream_control(upstream, msg)

    async def _upstream_control(self, upstream: UpstreamConnection, msg: aiohttp.WSMessage) -> None:
        """PING/PONG from the upstream (voxgate answers pings itself: see ``_heartbeat``)."""
        if msg.type is WSMsgType.PING:
            self.pongs_from_upstream += 1
            await upstream.pong(msg.data)
        elif msg.type is WSMsgType.PONG:
            self.pongs_from_upstream += 1

    async def _timers(self) -> None:
        """The session's clock: its maximum length, and heartbeats to both peers.

        One task for both (a task per timer would cost memory per session). Heartbeat: ping
        idle peers; a peer silent for two intervals is dead. aiohttp's own heartbeat
        reschedules a timer on every received frame (timer churn on every audio frame of every
        socket); this one costs nothing per frame: once per interval it compares frame
        counters, pings only a peer that sent nothing during the last interval, and declares it
        dead when the next interval also brings nothing (a pong counts). So a dead peer is
        found within two intervals, and a late pong under load still counts if it arrives
        within one.
        """
        loop = self._loop
        deadline = loop.time() + self._max_session_s
        interval = self._ping_interval_s or float("inf")
        next_beat = loop.time() + interval
        stall_check_s = self._send_timeout_s / 4 if self._send_timeout_s else float("inf")
        next_stall_check = loop.time() + stall_check_s
        last = (-1, -1)
        missed = [0, 0]
        while True:
            wake = min(deadline, next_beat, next_stall_check)
            await asyncio.sleep(max(0.0, wake - loop.time()))
            now = loop.time()
            if now >= deadline:
                await self._execute(self._machine.session_expired(self._max_session_s))
            if now >= next_stall_check:
                next_stall_check = now + stall_check_s
                self._check_stall(now)
            if now < next_beat:
                continue
            next_beat += interval
            seen = (
                self.stats.client_frames + self.pongs_from_client,
                self.stats.upstream_frames + self.pongs_from_upstream,
            )
            for side in (0, 1):
                missed[side] = missed[side] + 1 if seen[side] == last[side] else 0
            last = seen
            if missed[0] >= 2:
                raise _SessionOver(
                    EndSession(CloseCode.GOING_AWAY, "", None, "client_heartbeat_timeout")
                )
            if missed[1] >= 2 and self._upstream is not None:
                self._log.warning("upstream.heartbeat_timeout", interval_s=interval)
                await self._execute(self._machine.upstream_closed(None, "heartbeat timeout"))
            if missed[0] and self.client_sends_started == self.client_sends_done:
                await self._client.ping()  # (never behind a blocked send: see _check_stall)
            if missed[1] and self._upstream is not None:
                await self._upstream.ping()

    def _check_stall(self, now: float) -> None:
        """End the session if one send to the client has been blocked for the send timeout.

        A client that stops reading fills its socket buffer; the send then waits, the upstream
        pump stops reading the upstream, and nothing grows in voxgate. Past the timeout the
        client is treated as gone (its upstream is closed and every resource freed).
        """
        done = self.client_sends_done
        if self.client_sends_started == done:
            self._stall_mark = -1
            return
        if done != self._stall_mark:
            self._stall_mark, self._stall_since = done, now
            return
        if now - self._stall_since >= self._send_timeout_s:
            self._log.warning("session.client_stalled", blocked_s=round(now - self._stall_since, 1))
            raise _SessionOver(EndSession(CloseCode.POLICY, "", None, "client_stalled"))

    async def _connect_and_gate(self) -> None:
        """Connect, then read until the machine is past CONFIGURING, all within the deadline."""
        machine = self._machine
        log = self._log
        log.info("upstream.connecting", **self._backend.describe())
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._ready_timeout_s):
                try:
                    self._upstream = await self._backend.connect(self._target)
                except UpstreamConnectError as exc:
                    log.warning("upstream.unreachable", detail=exc.detail, status=exc.status)
                    await self._execute(machine.upstream_unreachable(exc.detail))
                    return
                log.info("upstream.connected", connect_ms=_ms(started))
                receive = self._upstream.receive
                while machine.phase in (Phase.CONNECTING, Phase.CONFIGURING):
                    msg = await receive()
                    if msg.type is WSMsgType.TEXT:
                        self.stats.upstream_frames += 1
                        self.stats.upstream_bytes += len(msg.data)
                        outcome = machine.upstream_text(msg.data, self._loop.time())
                        if outcome is FORWARD:
                            await self._client.send_str(msg.data)
                        elif outcome:
                            await self._execute(outcome)
                    elif msg.type in _CLOSE_TYPES:
                        await self._execute(self._upstream_gone(msg))
                        return
                    else:
                        await self._upstream_control(self._upstream, msg)
        except TimeoutError:
            log.warning("upstream.ready_timeout", timeout_s=self._ready_timeout_s)
            await self._execute(machine.ready_timeout(self._ready_timeout_s))

    async def _flush(self) -> None:
        machine = self._machine
        upstream = self._upstream
        if upstream is None:
            raise InvalidState("flush without an upstream")
        self.stats.ready_at = time.monotonic()
        self._log.info("upstream.ready", ready_ms=_ms(self.stats.started_at))
        frames = 0
        size = 0
        while (frame := machine.pop_buffered()) is not None:
            await upstream.send_str(frame)
            frames += 1
            size += len(frame)
        machine.flush_done()
        self.stats.flushed_frames, self.stats.flushed_bytes = frames, size
        if frames:
            self._log.info("prebuffer.flushed", events=frames, bytes=size)

    # ------------------------------------------------------------------ actions

    async def _execute(self, actions: Outcome) -> None:
        if isinstance(actions, _Forward):
            raise InvalidState("FORWARD is not an action list")
        for action in actions:
            if isinstance(action, SendClient):
                await self._client.send_str(action.text)
            elif isinstance(action, SendUpstream):
                await self._upstream_send(action.text)
            elif isinstance(action, StartFlush):
                await self._flush()
            elif isinstance(action, EndSession):
                if action.error_text is not None and not self._client.closed:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await self._client.send_str(action.error_text)
                raise _SessionOver(action)

    def _client_gone(self, msg: aiohttp.WSMessage) -> EndSession:
        self._machine.phase = Phase.CLOSED
        code = self._client.close_code or CloseCode.NO_STATUS
        if msg.type is WSMsgType.ERROR:
            return EndSession(int(code), "", None, f"client_error:{type(msg.data).__name__}")
        return EndSession(int(code), "", None, "client_closed")

    def _upstream_gone(self, msg: aiohttp.WSMessage) -> Outcome:
        upstream = self._upstream
        code = upstream.close_code if upstream is not None else None
        reason = ""
        if msg.type is WSMsgType.CLOSE:
            code = int(msg.data) if msg.data is not None else code
            reason = msg.extra or ""
        if msg.type is WSMsgType.ERROR:
            code = None
        self._log.info("upstream.closed", code=code, reason=reason)
        return self._machine.upstream_closed(code, reason)

    async def _shutdown(self, end: EndSession) -> None:
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            with contextlib.suppress(TimeoutError, ConnectionError, RuntimeError):
                await asyncio.wait_for(upstream.close(code=CloseCode.NORMAL), 2.0)
        if not self._client.closed:
            with contextlib.suppress(TimeoutError, ConnectionError, RuntimeError):
                await asyncio.wait_for(
                    self._client.close(code=end.close_code, message=end.reason.encode()[:120]),
                    2.0,
                )
        s = self.stats
        self._log.info(
            "session.closed",
            cause=end.cause,
            close_code=end.close_code,
            reason=end.reason,
            duration_s=round(time.monotonic() - s.started_at, 3),
            ready_ms=round((s.ready_at - s.started_at) * 1000, 1) if s.ready_at else None,
            client_frames=s.client_frames,
            client_bytes=s.client_bytes,
            upstream_frames=s.upstream_frames,
            upstream_bytes=s.upstream_bytes,
            flushed_frames=s.flushed_frames,
            errors_sent=self._machine.errors_sent,
            errors_suppressed=self._machine.errors.suppressed_total,
        )


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 1)
