"""SessionRunner: the owner of one session's I/O (DESIGN.md principle 4).

It holds the session's parts and ends them together: one TaskGroup per session runs the
upstream pump (:class:`~voxgate.session.upstream.UpstreamSide`, an object the runner owns), the
clock task and the pump of whichever client connection is attached. It talks to the client
through a :class:`~voxgate.session.ports.ClientConnection` and to the backend through an
:class:`~voxgate.session.ports.UpstreamConnection`; no transport type appears here.

Hot path: while both sides are ready and idle, audio frames never wake a task. Each
connection hands an arriving frame to the runner's sink from its own transport callback
(:meth:`_client_sink`, :meth:`upstream_sink`); the sink asks the machine one cheap question
(an ``append`` / ``output_audio.delta`` to forward unchanged?), records it, and writes it to
the other side synchronously. Anything else, or a congested peer, goes through the pumps
(the slow path), in order. No queue sits between the sockets: a pump that must wait for a
peer's buffer to drain stops reading its own side, so memory is bounded by the transport
buffers, the pre-ready buffer, the mirror and (for resumable clients) the replay log.

The session outlives its connections on both sides: a retryable upstream loss, its own
``session_expired``, a missed heartbeat or a planned recycle becomes a reconnect; a
``voxgate.v1`` client that vanishes is *detached* and may :meth:`resume` within the grace
period. Timers are decided by the pure :class:`~voxgate.session.clock.SessionClock`.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
from collections.abc import Callable
from typing import Any

import orjson

from voxgate.protocol import b64
from voxgate.protocol.close import CloseCode
from voxgate.protocol.errors import SERVER_ERROR, InvalidState, error_event
from voxgate.protocol.extensions import append_b64, gateway_event
from voxgate.protocol.sniff import append_audio_start
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
from voxgate.session.clock import (
    ClientStalled,
    ClientUnresponsive,
    GraceExpired,
    MaxLengthReached,
    Observed,
    PingClient,
    PingUpstream,
    Recycle,
    SessionClock,
    TimerAction,
    UpstreamUnresponsive,
)
from voxgate.session.machine import AUDIO_DELTA_ENCODED_HEADS, Phase, SessionMachine
from voxgate.session.ports import (
    Backend,
    PeerGone,
    ResumeIssuer,
    UpstreamTarget,
)
from voxgate.session.ratelimit import ClientPacer
from voxgate.session.replay import ReplayLog
from voxgate.session.runner_types import ClientLink, Restored, RunnerConfig, SessionStats
from voxgate.session.server_side import ServerSide
from voxgate.session.upstream import UpstreamSide

_INTERNAL_ERROR_TEXT = orjson.dumps(
    error_event(
        "voxgate hit an internal error and ended this session; it has been logged.",
        code="voxgate_internal",
        error_type=SERVER_ERROR,
    )
).decode()
_APPEND_HEAD = '"input_audio_buffer.append"'
#: :func:`~voxgate.protocol.extensions.append_b64` around the base64, without its call
_APPEND_OPEN, _APPEND_CLOSE = append_b64("\x00").split("\x00")
_b64encode = b64.encode
_READY = Phase.READY
#: the clock timer's callback (:func:`_resolve`) reads no context variable: one shared empty
#: context instead of a copy of the task's per wake (one object fewer per session)
_TIMER_CONTEXT = contextvars.Context()
_monotonic = time.monotonic  # what asyncio's loop.time() reads
#: audio deltas travel as base64 inside JSON with ids: frame text per base64 character
_REPLAY_ENVELOPE = 1.1


class _SessionOver(Exception):
    def __init__(self, end: EndSession) -> None:
        super().__init__(end.cause)
        self.end = end


class SessionRunner:
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
        resume: ResumeIssuer | None = None,
        side: ServerSide | None = None,
        restored: Restored | None = None,
    ) -> None:
        self._link: ClientLink | None = client
        #: rebuilt from another node's snapshot (issue 17): replay, then rebuild the upstream
        self._restored = restored
        #: called with every upstream frame on the slow path (never on the audio hot path):
        #: snapshot writers, live metrics and spans watch the conversation through it
        self.upstream_observers: list[Callable[[str], None]] = []
        #: server tools and proactive turns (issue 14): slow-path hooks, never audio
        self.side = side
        #: told how late each clock wake ran (seconds): the process's event-loop lag metric
        self.timer_lateness: Callable[[float], None] | None = None
        self._machine = machine
        self._target = target
        self._cfg = config
        self._log = log
        self._resume = resume
        self._replay = ReplayLog(self._replay_limit()) if resume is not None else None
        self._formats_seen = machine.formats_seen
        self._loop = asyncio.get_running_loop()
        # a random phase spreads the periodic wakes of sessions opened together (see clock)
        self._clock = SessionClock(
            config.clock(),
            self._loop.time(),
            phase=0.5 + 0.5 * random.random(),  # noqa: S311
        )
        self._up = UpstreamSide(
            hooks=self,
            backend=backend,
            target=target,
            machine=machine,
            clock=self._clock,
            policy=config.reconnect,
            ready_timeout_s=config.ready_timeout_s,
            log=log,
        )
        self._pacer = (
            ClientPacer(
                rate_hz=config.client_events_per_s,
                burst=config.client_events_burst,
                realtime_multiple=config.client_audio_multiple,
                burst_s=config.client_audio_burst_s,
                now=self._loop.time(),
            )
            if config.client_events_per_s or config.client_audio_multiple
            else None
        )
        self._paced_until = 0.0  # the client pump reads nothing before this (pacing)
        self._record_b64, self._record_pcm = machine.audio_recorders
        self._tg: asyncio.TaskGroup | None = None
        self.stats = SessionStats()
        self.end: EndSession | None = None
        self.client_sends_started = 0
        self.client_sends_done = 0
        self._stop: EndSession | None = None
        self._wake: asyncio.Future[bool] | None = None

    @property
    def session_id(self) -> str:
        return self._target.session_id

    @property
    def target(self) -> UpstreamTarget:
        return self._target

    @property
    def max_session_s(self) -> float:
        return self._cfg.max_session_s

    @property
    def attached(self) -> bool:
        return self._link is not None

    @property
    def machine(self) -> SessionMachine:
        return self._machine

    def _replay_limit(self) -> int:
        cfg = self._cfg
        if cfg.replay_bytes:
            return cfg.replay_bytes
        return int(cfg.replay_s * self._machine.output_b64_chars_per_s * _REPLAY_ENVELOPE)

    def buffered_bytes(self) -> int:
        """What this session's bounded buffers hold now: mirror, replay log, pre-ready buffer."""
        machine = self._machine
        held = machine.prebuffer.size_bytes
        if machine.recovery is not None:
            held += machine.recovery.mirror.memory_bytes()
        if self._replay is not None:
            held += self._replay.size_bytes
        return held

    def stop(self, cause: str, close_code: int = CloseCode.GOING_AWAY) -> None:
        """End the session soon from outside (shutdown, drain): its clock task raises."""
        if self._stop is None:
            self._stop = EndSession(close_code, "", None, cause)
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(False)  # the timer has not fired: its handle is cancelled

    async def run(self) -> EndSession:
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                link = self._link
                if link is None:
                    raise InvalidState("a session starts attached")
                if self._restored is not None:
                    tg.create_task(self._start_restored(link, self._restored), name="restore")
                else:
                    tg.create_task(self._client_pump(link), name="client_pump")
                    tg.create_task(self._up.pump(), name="upstream_pump")
                tg.create_task(self._timers(), name="timers")
                if self.side is not None:
                    tg.create_task(self.side.run(self), name="server_side")
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

    # ------------------------------------------------------------------ hot paths

    def _client_sink(self, frame: str | bytes) -> bool:
        """A client frame while the client pump is idle: forward audio synchronously.

        The machine's question has no side effect, so a frame the upstream cannot take right
        now (congested) is simply declined and queued for the pump; what was written is then
        recorded for recovery.
        """
        up = self._up.conn
        if up is None:
            return False
        machine = self._machine
        stats = self.stats
        # The machine's question (client_audio_start, its slow path's too) asked inline, and
        # the binary one (READY and the voxgate.v1 extensions) only here: one Python call
        # fewer per frame on the hottest path
        if type(frame) is str:
            if machine.phase is not _READY:
                return False
            start = append_audio_start(frame)  # one bounded check: a plain append
            if start < 0 or not up.write_text(frame):
                return False
            if self._record_b64 is not None:
                self._record_b64(frame[start:-2])
            audio_bytes = (len(frame) - start) * 3 // 4
        else:
            data: bytes = frame  # type: ignore[assignment,unused-ignore]
            if machine.phase is not _READY or not machine.extensions:
                return False
            if up.accepts_audio_bytes:
                if not up.write_audio(data):
                    return False
            elif not up.write_text(_APPEND_OPEN + _b64encode(data) + _APPEND_CLOSE):
                return False
            if self._record_pcm is not None:
                self._record_pcm(data)
            stats.client_audio_bytes += len(data)
            audio_bytes = len(data)
        stats.client_frames += 1
        stats.client_bytes += len(frame)
        if stats.first_audio_at is None:
            self._note_first_audio(True)
        pacer = self._pacer
        if pacer is not None:
            now = _monotonic()  # the loop's clock, without the method call
            wait = pacer.charge(audio_bytes / machine.input_bytes_per_s, now)
            if wait:
                self._pace(wait, now)
        return True

    def upstream_sink(self, frame: str | bytes) -> bool:
        """An upstream frame while the upstream pump is idle: forward audio synchronously."""
        link = self._link
        if link is None or type(frame) is not str:
            return False
        text: str = frame
        if not self._machine.upstream_audio_text(text) or not link.conn.write_text(text):
            return False
        replay = self._replay
        if replay is not None:
            replay.append(text)  # attached: never refused; numbered in the order written
        stats = self.stats
        stats.upstream_frames += 1
        stats.upstream_bytes += len(text)
        return True

    def upstream_encoded_sink(self, frame: bytes, payload: bytes) -> bool:
        """An upstream text frame still encoded (:class:`~voxgate.session.ports.
        EncodedTextSource`) while the upstream pump is idle: an audio delta goes to a client
        connection that writes encoded frames as it came, with no decode, no encode and no
        copy; anything else is declined, decoded, and offered to :meth:`upstream_sink`."""
        link = self._link
        if link is None:
            return False
        write = link.write_encoded
        if (
            write is None
            or self._machine.phase is not _READY  # machine.upstream_audio_text, encoded
            or not payload.startswith(AUDIO_DELTA_ENCODED_HEADS)
            or not write(frame)
        ):
            return False
        replay = self._replay
        if replay is not None:
            replay.append_encoded(payload)  # attached: never refused; numbered as written
        stats = self.stats
        stats.upstream_frames += 1
        stats.upstream_bytes += len(payload)
        return True

    def _pace(self, wait: float, now: float) -> None:
        """Over budget: read nothing more from this client for ``wait`` s (pace, never drop)."""
        self.stats.paced_frames += 1
        if self._pacer is not None and self._pacer.paced == 1:
            self._log.info("client.paced", wait_ms=round(wait * 1000, 1))
        self._paced_until = now + wait
        link = self._link
        if link is not None:
            link.conn.set_sink(None)  # frames queue in the transport; the pump sleeps first

    # ------------------------------------------------------------------ client side

    async def _client_pump(self, link: ClientLink) -> None:
        conn = link.conn
        sink = self._client_sink
        loop = self._loop
        try:
            while True:
                if self._paced_until:
                    wait = self._paced_until - loop.time()
                    self._paced_until = 0.0
                    if wait > 0:
                        await asyncio.sleep(wait)  # rate limiting, not synchronisation
                conn.set_sink(sink)
                frame = await conn.receive()  # (no bound method kept while parked)
                if link is not self._link:
                    return  # detached or superseded by a resumed connection
                await self._client_frame(frame)
        except PeerGone as gone:
            if link is self._link:
                self._client_gone(link, gone)
        finally:
            conn.set_sink(None)
            if link is not self._link:
                link.done.set()

    async def _client_frame(self, frame: str | bytes) -> None:
        """The slow path for one client frame: the machine decides, actions run in order."""
        machine = self._machine
        stats = self.stats
        now = self._loop.time()
        stats.client_frames += 1
        stats.client_bytes += len(frame)
        if isinstance(frame, str):
            if stats.first_audio_at is None:
                self._note_first_audio(_APPEND_HEAD in frame[:64])
            side = self.side
            if side is not None and _APPEND_HEAD not in frame[:64]:
                passed = side.from_client(frame)
                if passed is None:
                    return  # waits for voxgate's own turn to finish; the side sends it later
                frame = passed
            outcome = machine.client_text(frame, now)
            if outcome is FORWARD:
                await self._up.send(frame)
            elif outcome:
                await self.execute(outcome)
            audio_bytes = len(frame) * 3 // 4 if _APPEND_HEAD in frame[:64] else 0
        else:
            stats.client_audio_bytes += len(frame)
            outcome = machine.client_binary(frame, now)
            if outcome:
                await self._send_binary_audio(frame, outcome)
            audio_bytes = len(frame)
        pacer = self._pacer
        if pacer is not None:
            wait = pacer.charge(audio_bytes / machine.input_bytes_per_s, now)
            if wait:
                self._pace(wait, now)

    async def _send_binary_audio(self, data: bytes, outcome: Outcome) -> None:
        """Raw audio goes to an upstream that takes bytes without its base64 round trip."""
        up = self._up.conn
        if (
            up is not None
            and up.accepts_audio_bytes
            and isinstance(outcome, tuple | list)
            and len(outcome) == 1
            and isinstance(outcome[0], SendUpstream)
        ):
            if not up.write_audio(data):
                await self._up.send(outcome[0].text)  # congested: the (rare) text route
            return
        await self.execute(outcome)

    def _client_gone(self, link: ClientLink, gone: PeerGone) -> None:
        """The client's connection ended: detach a resumable client that vanished, else end."""
        if not gone.clean and self._resume is not None:
            self._detach(link, "client_lost")
            return
        code = gone.code or CloseCode.NO_STATUS
        cause = "client_closed" if gone.clean else "client_lost"
        raise _SessionOver(self._machine.end(code, cause))

    def _detach(self, link: ClientLink, cause: str) -> None:
        """Keep the session without this client: events go to the replay log meanwhile."""
        if link is not self._link or self._replay is None:
            return
        self._link = None
        link.conn.set_sink(None)
        self._replay.detach()
        self._clock.client_detached(self._loop.time())
        self.stats.detaches += 1
        self._log.info("client.detached", cause=cause, logged_events=self._replay.last_seq)
        link.conn.abort()  # a blocked send fails at once; the socket is gone either way
        link.done.set()

    async def send_client(self, text: str) -> None:
        """Send one numbered frame to the client (and log it for a resume).

        With a server side, what the client sees is its verdict (server tools hidden).
        """
        side = self.side
        if side is None:
            await self._deliver(text)
            return
        for shown in side.to_client(text):
            await self._deliver(shown)

    async def send_upstream(self, text: str) -> None:
        """A control event of voxgate's own (server tools, proactive turns): recorded for
        recovery and held before ready exactly like a client's."""
        outcome = self._machine.client_text(text, self._loop.time())
        if outcome is FORWARD:
            await self._up.send(text)
        elif outcome:
            await self.execute(outcome)

    async def _deliver(self, text: str) -> None:
        replay = self._replay
        if replay is not None and not replay.append(text):
            raise _SessionOver(self._machine.end(CloseCode.GOING_AWAY, "resume_window_overflow"))
        link = self._link
        if link is None:
            return
        conn = link.conn
        if conn.write_text(text):
            return
        self.client_sends_started += 1
        try:
            await conn.send_text(text)
        except PeerGone:
            if self._resume is None:
                raise _SessionOver(
                    self._machine.end(CloseCode.ABNORMAL, "client_send_failed")
                ) from None
            self._detach(link, "client_send_failed")
        finally:
            self.client_sends_done += 1

    def _note_first_audio(self, is_audio: bool) -> None:
        if not is_audio:
            return
        self.stats.first_audio_at = time.monotonic()
        self._log.info(
            "session.first_audio",
            after_ms=round((self.stats.first_audio_at - self.stats.started_at) * 1000, 1),
            upstream_ready=self._machine.phase is Phase.READY,
        )

    # ------------------------------------------------------------------ upstream side (hooks)

    async def on_upstream_text(self, text: str) -> None:
        """The slow path for one upstream frame (the pump calls it)."""
        stats = self.stats
        stats.upstream_frames += 1
        stats.upstream_bytes += len(text)
        machine = self._machine
        outcome = machine.upstream_text(text, self._loop.time())
        if machine.formats_seen != self._formats_seen:  # session.created/updated: rare
            self._formats_seen = machine.formats_seen
            if self._replay is not None:
                self._replay.set_limit(self._replay_limit())
        for observe in self.upstream_observers:  # snapshots, metrics, spans (issue 17)
            observe(text)
        if outcome is FORWARD:
            await self.send_client(text)  # waits while the client's socket buffer is full
        elif outcome:
            await self.execute(outcome)

    # ------------------------------------------------------------------ resume

    def can_resume(self, received_events: int) -> bool:
        """Whether a client that has the first ``received_events`` events may come back now."""
        replay = self._replay
        return (
            replay is not None
            and self._tg is not None
            and self.end is None
            and replay.can_resume_from(received_events)
        )

    async def resume(self, link: ClientLink, received_events: int, token: str) -> str | None:
        """Attach ``link`` (the caller checked and consumed its token) and replay what it missed.

        ``token`` is the next resume token, already issued. Returns None on success, else a
        refusal reason; on success the link's pump runs in this session's task group until it
        detaches or the session ends (``link.done``).
        """
        replay, tg = self._replay, self._tg
        if replay is None or tg is None or self.end is not None:
            return "not_resumable"
        if not replay.can_resume_from(received_events):
            return "events_lost"
        if self._link is not None:
            self._detach(self._link, "superseded")  # a half-open socket the client left behind
        self._clock.client_attached()  # no grace expiry while catching up
        started = self._loop.time()
        missed = replay.last_seq - received_events
        conn = link.conn
        seq = received_events
        try:
            await conn.send_text(
                gateway_event(
                    "voxgate.session.resumed",
                    resume_token=token,
                    replayed_events=missed,
                    session_id=self.session_id,
                    # binary audio received so far: a client re-sends what was lost in flight
                    input_audio_bytes=self.stats.client_audio_bytes,
                )
            )
            while seq < replay.last_seq:  # the log may grow while we send; catch up fully
                seq += 1
                await conn.send_text(replay.frame(seq))
        except (PeerGone, IndexError):
            self._clock.client_detached(self._loop.time())
            return "send_failed"
        replay.attach()
        self._link = link
        self.stats.resumes += 1
        self._log.info(
            "client.resumed",
            replayed_events=seq - received_events,
            resume_ms=round((self._loop.time() - started) * 1000, 1),
        )
        tg.create_task(self._client_pump(link), name="client_pump")
        return None

    async def _start_restored(self, link: ClientLink, restored: Restored) -> None:
        """A session rebuilt from a snapshot (issue 17): the client first gets
        ``voxgate.session.resumed`` and the events it missed that the snapshot still has,
        numbered on from what it has; then the upstream is rebuilt through the ordinary
        reconnect path (:meth:`SessionMachine.rebuild`)."""
        replay = self._replay
        if replay is None:
            raise InvalidState("a restored session is resumable")
        replay.continue_from(restored.received)
        self.stats.client_audio_bytes = restored.input_audio_bytes
        self.stats.ready_at = time.monotonic()  # the client has its token: no second one
        self.stats.resumes += 1
        for text in restored.missed:
            replay.append(text)
        conn = link.conn
        try:
            await conn.send_text(
                gateway_event(
                    "voxgate.session.resumed",
                    resume_token=restored.token,
                    replayed_events=len(restored.missed),
                    lost_events=restored.lost,
                    session_id=self.session_id,
                    input_audio_bytes=restored.input_audio_bytes,
                    moved=restored.cause,
                )
            )
            for text in restored.missed:
                await conn.send_text(text)
        except PeerGone:
            self._detach(link, "client_lost")  # it may come back again, here
        self._log.info(
            "client.resumed",
            replayed_events=len(restored.missed),
            lost_events=restored.lost,
            moved=restored.cause,
        )
        tg = self._tg
        if tg is None:
            raise InvalidState("restore outside the task group")
        if self._link is link:
            tg.create_task(self._client_pump(link), name="client_pump")
        tg.create_task(self._up.pump(self._machine.rebuild(restored.cause)), name="upstream_pump")

    async def send_control(self, text: str) -> None:
        """Send an unnumbered ``voxgate.session.*`` event to the attached client now (the
        drain's ``voxgate.session.migrate``); nothing happens when no client is attached."""
        await self._send_unnumbered(text)

    @property
    def replay_log(self) -> ReplayLog | None:
        """The resume log (None: not resumable); read by snapshots, never written outside."""
        return self._replay

    def live_stats(self) -> SessionStats:
        """:attr:`stats` with the upstream's reconnect counters brought up to date (metrics
        read it at scrape time, so counters move while the session runs)."""
        counters = self._up.counters
        stats = self.stats
        stats.reconnects, stats.recycles = counters.reconnects, counters.recycles
        stats.reconnect_gaps_ms = counters.gaps_ms  # read only (the newest 64)
        if self._replay is not None:
            stats.replay_dropped_frames = self._replay.dropped_frames
        return stats

    # ------------------------------------------------------------------ clock

    async def _timers(self) -> None:
        """Sleep until the clock is due (or :meth:`stop`), then perform what it says."""
        loop = self._loop
        clock = self._clock
        while True:
            wake: asyncio.Future[bool] = loop.create_future()
            self._wake = wake
            due = clock.next_wake()
            handle = loop.call_at(due, _resolve, wake, context=_TIMER_CONTEXT)
            fired = False
            try:
                if self._stop is None:
                    fired = await wake
            finally:
                if not fired:  # a fired handle needs no cancel (four Python calls per wake)
                    handle.cancel()
                self._wake = None
            if self._stop is not None:
                stop = self._stop
                raise _SessionOver(self._machine.end(stop.close_code, stop.cause, stop.reason))
            now = _monotonic()
            lateness = self.timer_lateness
            if lateness is not None:
                lateness(now - due)
            for action in clock.tick(now, self._observe(now)):
                await self._on_timer(action, now)

    def _observe(self, now: float) -> Observed:
        link, machine, recovery = self._link, self._machine, self._machine.recovery
        up = self._up.conn
        return Observed(
            client_heard=self.stats.client_frames + (link.conn.heard if link else 0),
            upstream_heard=self.stats.upstream_frames + (up.heard if up is not None else 0),
            client_attached=link is not None,
            client_sends_started=self.client_sends_started,
            client_sends_done=self.client_sends_done,
            upstream_ready=up is not None and machine.phase is Phase.READY,
            quiet=recovery is not None and recovery.is_quiet(now),
        )

    async def _on_timer(self, action: TimerAction, now: float) -> None:
        link = self._link
        if isinstance(action, MaxLengthReached):
            await self.execute(self._machine.session_expired(action.max_session_s))
        elif isinstance(action, PingClient):
            if link is not None:
                await link.conn.ping()
        elif isinstance(action, PingUpstream):
            conn = self._up.conn
            if conn is not None:
                await conn.ping()
        elif isinstance(action, ClientUnresponsive):
            self._client_lost(link, "client_heartbeat_timeout", CloseCode.GOING_AWAY)
        elif isinstance(action, ClientStalled):
            self.stats.stalls += 1
            self._log.warning("session.client_stalled", blocked_s=action.blocked_s)
            self._client_lost(link, "client_stalled", CloseCode.POLICY)
        elif isinstance(action, GraceExpired):
            self._log.info("client.grace_expired", grace_s=action.grace_s)
            raise _SessionOver(self._machine.end(CloseCode.GOING_AWAY, "resume_grace_expired"))
        elif isinstance(action, UpstreamUnresponsive):
            await self._upstream_unresponsive(action)
        elif isinstance(action, Recycle):
            await self._up.recycle(now)

    def _client_lost(self, link: ClientLink | None, cause: str, close_code: int) -> None:
        """A client that stopped answering or reading: detach it if resumable, else end."""
        if link is not None and self._resume is not None:
            self._detach(link, cause)
            return
        raise _SessionOver(self._machine.end(close_code, cause))

    async def _upstream_unresponsive(self, action: UpstreamUnresponsive) -> None:
        self._log.warning("upstream.heartbeat_timeout", interval_s=action.interval_s)
        conn = self._up.conn
        if self._cfg.reconnect is None:
            await self.execute(self._machine.upstream_closed(None, "heartbeat timeout"))
        if conn is not None:
            self._up.close_in_background(conn, CloseCode.GOING_AWAY)  # the pump reconnects

    # ------------------------------------------------------------------ actions

    async def execute(self, actions: Outcome) -> StartReconnect | None:
        """Run actions in order; return a :class:`StartReconnect` for the upstream side."""
        if isinstance(actions, _Forward):
            raise InvalidState("FORWARD is not an action list")
        reconnect: StartReconnect | None = None
        for action in actions:
            if isinstance(action, SendClient):
                await self.send_client(action.text)
            elif isinstance(action, SendUpstream):
                await self._up.send(action.text)
            elif isinstance(action, StartFlush):
                await self._flush()
            elif isinstance(action, StartReconnect):
                reconnect = action
            elif isinstance(action, AckReplay):
                if self._replay is not None:
                    self._replay.ack(action.received_events)
            elif isinstance(action, EndSession):
                link = self._link
                if action.error_text is not None and link is not None:
                    try:  # noqa: SIM105
                        await link.conn.send_text(action.error_text)
                    except PeerGone:
                        pass
                raise _SessionOver(action)
        return reconnect

    async def _flush(self) -> None:
        machine = self._machine
        up = self._up
        if up.conn is None:
            raise InvalidState("flush without an upstream")
        if self.stats.ready_at is None:
            self.stats.ready_at = time.monotonic()
            self._log.info("upstream.ready", ready_ms=_ms(self.stats.started_at))
            if self._resume is not None:
                await self._send_unnumbered(
                    gateway_event(
                        "voxgate.session.resumable",
                        resume_token=await self._resume.issue(),
                        grace_s=self._cfg.resume_grace_s,
                        session_id=self.session_id,
                    )
                )
        peak = machine.prebuffer.size_bytes
        frames = 0
        size = 0
        now = self._loop.time
        while (frame := machine.pop_buffered(now())) is not None:
            conn = up.conn
            if conn is None:
                return
            if not conn.write_text(frame):
                try:
                    await conn.send_text(frame)
                except PeerGone:
                    return  # lost mid-flush: the pump reconnects; the rest stays buffered
            frames += 1
            size += len(frame)
            for reply in machine.flush_replies:
                await self.send_client(reply)
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
            try:  # noqa: SIM105
                await link.conn.send_text(text)
            except PeerGone:
                pass

    async def _shutdown(self, end: EndSession) -> None:
        await self._up.close()
        link, self._link = self._link, None
        if link is not None:
            conn = link.conn
            conn.set_sink(None)
            if end.cause == "internal_error" and end.error_text:
                try:  # noqa: SIM105
                    await conn.send_text(end.error_text)
                except PeerGone:
                    pass
            await conn.close(end.close_code, end.reason)
            link.done.set()
        self._log_closed(end)

    def _log_closed(self, end: EndSession) -> None:
        s = self.stats
        counters = self._up.counters
        s.reconnects, s.recycles = counters.reconnects, counters.recycles
        s.reconnect_gaps_ms = list(counters.gaps_ms)
        if self._replay is not None:
            s.replay_dropped_frames = self._replay.dropped_frames
        self._log.info(
            "session.closed",
            cause=end.cause,
            close_code=int(end.close_code),
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


def _resolve(future: asyncio.Future[bool]) -> None:
    """The clock's timer fired (True: its handle is spent)."""
    if not future.done():
        future.set_result(True)


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 1)
