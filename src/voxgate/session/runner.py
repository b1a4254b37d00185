"""SessionRunner: the owner of one session's I/O (DESIGN.md principle 4).

It connects the upstream, pumps frames client → machine → upstream and upstream → machine →
client, executes the machine's actions in order, and ends everything together: one TaskGroup
per session holds the upstream pump, the timers, and the pump of whichever client connection is
attached. There is no queue between the sockets: each pump awaits the other socket's
``send_str``, so a peer that stops reading holds back the pump feeding it and memory stays
bounded by the transport buffers, the pre-ready buffer and (for resumable clients) the replay log.

The session outlives its connections on both sides:

* **upstream** (issue #6): a retryable loss, the upstream's own ``session_expired``, a missed
  heartbeat or a planned recycle becomes a reconnect: backoff, a fresh upstream, the mirror
  replayed by :class:`~voxgate.session.recovery.ReplayDriver`, then the client's held frames
  flushed. Client frames wait in the same ordered, bounded buffer as before readiness.
* **client** (issue #7): a ``voxgate.v1`` client that vanishes (no close frame, a missed
  heartbeat, a socket that stopped draining) is *detached*: the session and its upstream stay,
  events go to the replay log, and :meth:`resume` attaches a new connection within the grace
  period, replaying what it missed. A stock client that drops ends the session.

The hot loops call ``receive``/``send_str`` directly and ask the machine only for a sniffed
``type``; every frame that needs no change is forwarded as the original text.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType, web

from voxgate.auth.resume import ResumeState
from voxgate.backends.base import Backend, UpstreamConnection, UpstreamTarget
from voxgate.protocol.close import CloseCode
from voxgate.protocol.errors import SERVER_ERROR, InvalidState, error_event
from voxgate.protocol.extensions import gateway_event
from voxgate.session.actions import (
    FORWARD,
    AckReplay,
    EndSession,
    Outcome,
    SendClient,
    SendUpstream,
    StartFlush,
    StartReconnect,
    _Forward,
)
from voxgate.session.machine import Phase, SessionMachine
from voxgate.session.ratelimit import ClientPacer
from voxgate.session.reconnect import ReconnectPolicy
from voxgate.session.replay import ReplayLog
from voxgate.session.upstream_side import CLOSE_TYPES, UpstreamSide

#: Characters of base64 audio per second of 24 kHz PCM16 (what the audio budget counts).
_B64_CHARS_PER_S = 64_000
_INTERNAL_ERROR_TEXT = orjson.dumps(
    error_event(
        "voxgate hit an internal error and ended this session; it has been logged.",
        code="voxgate_internal",
        error_type=SERVER_ERROR,
    )
).decode()


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    ready_timeout_s: float
    max_session_s: float
    ping_interval_s: float = 0.0
    client_send_timeout_s: float = 10.0
    #: None: the backend cannot be reconnected (the in-process local engine)
    reconnect: ReconnectPolicy | None = None
    #: move to a fresh upstream at a quiet point after this long (None: never)
    recycle_after_s: float | None = None
    #: how long a detached resumable client may take to come back (0: no resume)
    resume_grace_s: float = 0.0
    replay_bytes: int = 2 * 1024 * 1024
    client_events_per_s: float = 0.0
    client_events_burst: float = 0.0
    client_audio_multiple: float = 0.0
    client_audio_burst_s: float = 0.0


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
    prebuffer_peak_bytes: int = 0
    reconnects: int = 0
    reconnect_gaps_ms: list[float] = field(default_factory=list)
    recycles: int = 0
    detaches: int = 0
    resumes: int = 0
    stalls: int = 0
    paced_frames: int = 0
    replay_dropped_frames: int = 0
    client_audio_bytes: int = 0  # raw audio received in binary frames (voxgate.v1)


@dataclass(eq=False)
class ClientLink:
    """One client connection attached to a session."""

    ws: web.WebSocketResponse
    abort: Callable[[], None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class _SessionOver(Exception):
    def __init__(self, end: EndSession) -> None:
        super().__init__(end.cause)
        self.end = end


class SessionRunner(UpstreamSide):
    """Runs one session to its end. Construct, then ``await run()``; it never raises."""

    def __init__(
        self,
        *,
        client: ClientLink,
        backend: Backend,
        machine: SessionMachine,
        target: UpstreamTarget,
        config: RunnerConfig,
        log: Any,
        resume: ResumeState | None = None,
    ) -> None:
        self._link: ClientLink | None = client
        self._backend = backend
        self._machine = machine
        self._target = target
        self._cfg = config
        self._log = log
        self._resume = resume
        self._replay = ReplayLog(config.replay_bytes) if resume is not None else None
        self._upstream: UpstreamConnection | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._loop = asyncio.get_running_loop()
        self.stats = SessionStats()
        self.end: EndSession | None = None
        self.client_sends_started = 0
        self.client_sends_done = 0
        self._stall_mark = -1
        self._stall_since = 0.0
        self.pongs_from_client = 0
        self.pongs_from_upstream = 0
        self._detached_at: float | None = None
        self._upstream_since = 0.0
        self._recycle_requested = False
        self._stop: EndSession | None = None
        self._wake = asyncio.Event()

    @property
    def session_id(self) -> str:
        return self._target.session_id

    @property
    def attached(self) -> bool:
        return self._link is not None

    def stop(self, cause: str, close_code: int = CloseCode.GOING_AWAY) -> None:
        """End the session soon from outside (shutdown, drain): its timers task raises."""
        if self._stop is None:
            self._stop = EndSession(close_code, "", None, cause)
            self._wake.set()

    async def run(self) -> EndSession:
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                assert self._link is not None  # noqa: S101 (a session starts attached)
                tg.create_task(self._client_pump(self._link), name="client_pump")
                tg.create_task(self._upstream_pump(), name="upstream_pump")
                tg.create_task(self._timers(), name="timers")
        except* _SessionOver as group:
            first = group.exceptions[0]
            self.end = first.end if isinstance(first, _SessionOver) else None
        except* Exception as group:  # a bug in voxgate: end this session, never the process
            self._log.error("session.internal_error", error=repr(group.exceptions[0]))
            self.end = EndSession(
                CloseCode.INTERNAL_ERROR,
                "server_error.voxgate_internal",
                _INTERNAL_ERROR_TEXT,
                "internal_error",
            )
        end = self.end or EndSession(CloseCode.NORMAL, "", None, "done")
        self.end = end
        await self._shutdown(end)
        return end

    # ------------------------------------------------------------------ client side

    async def _client_pump(self, link: ClientLink) -> None:
        machine = self._machine
        receive = link.ws.receive
        stats = self.stats
        now = self._loop.time
        cfg = self._cfg
        pacer = (
            ClientPacer(
                rate_hz=cfg.client_events_per_s,
                burst=cfg.client_events_burst,
                realtime_multiple=cfg.client_audio_multiple,
                burst_s=cfg.client_audio_burst_s,
                now=now(),
            )
            if cfg.client_events_per_s or cfg.client_audio_multiple
            else None
        )
        try:
            while True:
                msg = await receive()
                if link is not self._link:
                    return  # detached or superseded by a resumed connection
                mtype = msg.type
                if mtype is WSMsgType.TEXT:
                    text: str = msg.data
                    stats.client_frames += 1
                    stats.client_bytes += len(text)
                    if stats.first_audio_at is None:
                        self._note_first_audio(text)
                    outcome = machine.client_text(text, now())
                    if outcome is FORWARD:
                        await self._upstream_send(text)
                    elif outcome:
                        await self._execute(outcome)
                    if pacer is not None:
                        await self._pace(pacer, len(text))
                elif mtype is WSMsgType.BINARY:
                    stats.client_frames += 1
                    stats.client_bytes += len(msg.data)
                    stats.client_audio_bytes += len(msg.data)
                    outcome = machine.client_binary(msg.data, now())
                    if outcome:
                        await self._execute(outcome)
                    if pacer is not None:
                        await self._pace(pacer, len(msg.data) * 4 // 3)
                elif mtype is WSMsgType.PING:
                    self.pongs_from_client += 1  # a ping proves the peer is alive too
                    await link.ws.pong(msg.data)
                elif mtype is WSMsgType.PONG:
                    self.pongs_from_client += 1
                elif mtype in CLOSE_TYPES:
                    self._client_closed(link, msg)
                    return
        finally:
            if link is not self._link:
                link.done.set()

    async def _pace(self, pacer: ClientPacer, chars: int) -> None:
        """Stop reading a client that is over its budget (issue #6.5): pace, never drop."""
        wait = pacer.charge(chars / _B64_CHARS_PER_S, self._loop.time())
        if wait > 0:
            self.stats.paced_frames += 1
            if pacer.paced == 1:
                self._log.info("client.paced", wait_ms=round(wait * 1000, 1))
            await asyncio.sleep(wait)  # rate limiting, not synchronisation

    def _client_closed(self, link: ClientLink, msg: aiohttp.WSMessage) -> None:
        """The client's socket ended: detach a resumable client that vanished, else end."""
        clean = msg.type is WSMsgType.CLOSE
        if not clean and self._resume is not None:
            self._detach(link, f"client_lost:{msg.type.name.lower()}")
            return
        self._machine.phase = Phase.CLOSED
        code = link.ws.close_code or CloseCode.NO_STATUS
        if msg.type is WSMsgType.ERROR:
            raise _SessionOver(
                EndSession(int(code), "", None, f"client_error:{type(msg.data).__name__}")
            )
        raise _SessionOver(EndSession(int(code), "", None, "client_closed"))

    def _detach(self, link: ClientLink, cause: str) -> None:
        """Keep the session without this client: events go to the replay log meanwhile."""
        if link is not self._link or self._replay is None:
            return
        self._link = None
        self._replay.detach()
        self._detached_at = self._loop.time()
        self.stats.detaches += 1
        self._log.info("client.detached", cause=cause, logged_events=self._replay.last_seq)
        if link.abort is not None:
            link.abort()  # a blocked send fails at once; the socket is gone either way
        link.done.set()

    async def _send_client(self, text: str) -> None:
        """Send one numbered frame to the client (and log it for a resume)."""
        replay = self._replay
        if replay is not None and not replay.append(text):
            raise _SessionOver(EndSession(CloseCode.GOING_AWAY, "", None, "resume_window_overflow"))
        link = self._link
        if link is None:
            return
        self.client_sends_started += 1
        try:
            await link.ws.send_str(text)
        except (ConnectionError, RuntimeError):
            if self._resume is None:
                raise _SessionOver(
                    EndSession(CloseCode.ABNORMAL, "", None, "client_send_failed")
                ) from None
            self._detach(link, "client_send_failed")
        finally:
            self.client_sends_done += 1

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

    # ------------------------------------------------------------------ resume

    async def resume(self, link: ClientLink, received_events: int) -> str | None:
        """Attach ``link`` (the caller checked its token) and replay what it missed.

        Returns None on success, else a refusal reason; on success the link's pump runs in this
        session's task group until it detaches or the session ends (``link.done``).
        """
        replay, resume, tg = self._replay, self._resume, self._tg
        if replay is None or resume is None or tg is None or self.end is not None:
            return "not_resumable"
        if not replay.can_resume_from(received_events):
            return "events_lost"
        token = resume.consume()
        if self._link is not None:
            self._detach(self._link, "superseded")  # a half-open socket the client left behind
        self._detached_at = None  # no grace expiry while catching up
        started = self._loop.time()
        missed = replay.last_seq - received_events
        try:
            await link.ws.send_str(
                gateway_event(
                    "voxgate.session.resumed",
                    resume_token=token,
                    replayed_events=missed,
                    session_id=self.session_id,
                    # binary audio received so far: a client re-sends what was lost in flight
                    input_audio_bytes=self.stats.client_audio_bytes,
                )
            )
            seq = received_events
            while seq < replay.last_seq:  # the log may grow while we send; catch up fully
                seq += 1
                await link.ws.send_str(replay.frame(seq))
        except (ConnectionError, RuntimeError, IndexError):
            self._detached_at = self._loop.time()
            return "send_failed"
        replay.attach()
        self._link = link
        self.stats.resumes += 1
        self._log.info(
            "client.resumed",
            replayed_events=seq - received_events,
            resume_ms=round((self._loop.time() - started) * 1000, 1),
            generation=resume.generation,
        )
        tg.create_task(self._client_pump(link), name="client_pump")
        return None

    # ------------------------------------------------------------------ timers

    async def _timers(self) -> None:
        """The session's clock: its maximum length, heartbeats, stalls, grace, recycling.

        One task for all of them (a task per timer would cost memory per session). Heartbeat:
        once per interval compare frame counters, ping only a peer that sent nothing during the
        last interval, and declare it dead when the next interval also brings nothing (a pong
        counts). So a dead peer is found within two intervals, and a late pong under load still
        counts if it arrives within one. aiohttp's own heartbeat reschedules a timer on every
        received frame; this one costs nothing per frame.
        """
        loop = self._loop
        cfg = self._cfg
        deadline = loop.time() + cfg.max_session_s
        interval = cfg.ping_interval_s or float("inf")
        next_beat = loop.time() + interval
        stall_check_s = cfg.client_send_timeout_s / 4 if cfg.client_send_timeout_s else float("inf")
        slow_check_s = 1.0 if (cfg.resume_grace_s or cfg.recycle_after_s) else float("inf")
        next_check = loop.time() + min(stall_check_s, slow_check_s)
        last = (-1, -1)
        missed = [0, 0]
        while True:
            wake = min(deadline, next_beat, next_check)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, wake - loop.time()))
            if self._stop is not None:
                self._machine.phase = Phase.CLOSED
                raise _SessionOver(self._stop)
            now = loop.time()
            if now >= deadline:
                await self._execute(self._machine.session_expired(cfg.max_session_s))
            if now >= next_check:
                next_check = now + min(stall_check_s, slow_check_s)
                self._check_stall(now)
                self._check_grace(now)
                await self._check_recycle(now)
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
            link, upstream = self._link, self._upstream
            if link is None:
                missed[0] = 0
            elif missed[0] >= 2:
                if self._resume is None:
                    raise _SessionOver(
                        EndSession(CloseCode.GOING_AWAY, "", None, "client_heartbeat_timeout")
                    )
                self._detach(link, "client_heartbeat_timeout")
                missed[0] = 0
            if upstream is None or self._machine.phase is not Phase.READY:
                missed[1] = 0
            elif missed[1] >= 2:
                self._log.warning("upstream.heartbeat_timeout", interval_s=interval)
                missed[1] = 0
                if self._cfg.reconnect is None:
                    await self._execute(self._machine.upstream_closed(None, "heartbeat timeout"))
                self._close_in_background(upstream, CloseCode.GOING_AWAY)  # the pump reconnects
            link = self._link
            if (
                missed[0]
                and link is not None
                and self.client_sends_started == self.client_sends_done
            ):
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await link.ws.ping()  # (never behind a blocked send: see _check_stall)
            if missed[1] and upstream is not None and upstream is self._upstream:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await upstream.ping()

    def _check_stall(self, now: float) -> None:
        """Treat a client whose socket accepted nothing for the send timeout as gone.

        A client that stops reading fills its socket buffer; the send then waits, the upstream
        pump stops reading the upstream, and nothing grows in voxgate. Past the timeout a
        resumable client is detached (its events go to the bounded replay log); any other
        client's session ends and every resource is freed.
        """
        if not self._cfg.client_send_timeout_s:
            return
        done = self.client_sends_done
        if self.client_sends_started == done:
            self._stall_mark = -1
            return
        if done != self._stall_mark:
            self._stall_mark, self._stall_since = done, now
            return
        if now - self._stall_since >= self._cfg.client_send_timeout_s:
            self.stats.stalls += 1
            self._log.warning("session.client_stalled", blocked_s=round(now - self._stall_since, 1))
            self._stall_mark = -1
            link = self._link
            if self._resume is not None and link is not None:
                self._detach(link, "client_stalled")
                return
            raise _SessionOver(EndSession(CloseCode.POLICY, "", None, "client_stalled"))

    def _check_grace(self, now: float) -> None:
        since = self._detached_at
        if self._link is None and since is not None and now - since >= self._cfg.resume_grace_s:
            self._log.info("client.grace_expired", grace_s=self._cfg.resume_grace_s)
            raise _SessionOver(EndSession(CloseCode.GOING_AWAY, "", None, "resume_grace_expired"))

    async def _check_recycle(self, now: float) -> None:
        """Before the upstream's own cap, ask the pump to move at a quiet point."""
        after = self._cfg.recycle_after_s
        upstream = self._upstream
        if after is None or upstream is None or self._recycle_requested:
            return
        if now - self._upstream_since < after or self._machine.phase is not Phase.READY:
            return
        if self._machine.recovery is None or not self._machine.recovery.is_quiet(now):
            return
        self._recycle_requested = True
        with contextlib.suppress(ConnectionError, RuntimeError):
            await upstream.ping()  # its pong wakes the pump, which moves between two frames

    # ------------------------------------------------------------------ actions

    async def _execute(self, actions: Outcome) -> StartReconnect | None:
        """Run actions in order; return a :class:`StartReconnect` for the upstream pump."""
        if isinstance(actions, _Forward):
            raise InvalidState("FORWARD is not an action list")
        reconnect: StartReconnect | None = None
        for action in actions:
            if isinstance(action, SendClient):
                await self._send_client(action.text)
            elif isinstance(action, SendUpstream):
                await self._upstream_send(action.text)
            elif isinstance(action, StartFlush):
                await self._flush()
            elif isinstance(action, StartReconnect):
                reconnect = action
            elif isinstance(action, AckReplay):
                if self._replay is not None:
                    self._replay.ack(action.received_events)
            elif isinstance(action, EndSession):
                link = self._link
                if action.error_text is not None and link is not None and not link.ws.closed:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await link.ws.send_str(action.error_text)
                raise _SessionOver(action)
        return reconnect

    async def _flush(self) -> None:
        machine = self._machine
        upstream = self._upstream
        if upstream is None:
            raise InvalidState("flush without an upstream")
        if self.stats.ready_at is None:
            self.stats.ready_at = time.monotonic()
            self._log.info("upstream.ready", ready_ms=_ms(self.stats.started_at))
            if self._resume is not None:
                await self._send_unnumbered(
                    gateway_event(
                        "voxgate.session.resumable",
                        resume_token=self._resume.issue(),
                        grace_s=self._cfg.resume_grace_s,
                        session_id=self.session_id,
                    )
                )
        peak = machine.prebuffer.size_bytes
        frames = 0
        size = 0
        now = self._loop.time
        while (frame := machine.pop_buffered(now())) is not None:
            try:
                await upstream.send_str(frame)
            except (ConnectionError, RuntimeError):
                return  # lost mid-flush: the pump reconnects; the rest stays buffered
            frames += 1
            size += len(frame)
            for reply in machine.flush_replies:
                await self._send_client(reply)
            machine.flush_replies.clear()
        machine.flush_done()
        self.stats.flushed_frames += frames
        self.stats.flushed_bytes += size
        self.stats.prebuffer_peak_bytes = max(self.stats.prebuffer_peak_bytes, peak)
        if frames:
            self._log.info("prebuffer.flushed", events=frames, bytes=size)

    async def _send_unnumbered(self, text: str) -> None:
        """A ``voxgate.session.*`` event: not numbered, not logged for replay."""
        link = self._link
        if link is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await link.ws.send_str(text)

    async def _shutdown(self, end: EndSession) -> None:
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            with contextlib.suppress(TimeoutError, ConnectionError, RuntimeError):
                await asyncio.wait_for(upstream.close(code=CloseCode.NORMAL), 2.0)
        link, self._link = self._link, None
        if link is not None:
            if end.cause == "internal_error" and end.error_text and not link.ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await link.ws.send_str(end.error_text)
            if not link.ws.closed:
                with contextlib.suppress(TimeoutError, ConnectionError, RuntimeError):
                    await asyncio.wait_for(
                        link.ws.close(code=end.close_code, message=end.reason.encode()[:120]),
                        2.0,
                    )
            link.done.set()
        s = self.stats
        if self._replay is not None:
            s.replay_dropped_frames = self._replay.dropped_frames
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
            reconnects=s.reconnects,
            detaches=s.detaches,
            resumes=s.resumes,
            paced_frames=s.paced_frames,
            errors_sent=self._machine.errors_sent,
            errors_suppressed=self._machine.errors.suppressed_total,
        )


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 1)
