"""The session's clock: its length cap, heartbeats, stalls, resume grace and recycling. Pure.

One :class:`SessionClock` per session decides *when* something is due; the runner decides
nothing itself: it calls :meth:`SessionClock.tick` at :meth:`SessionClock.next_wake` (or when
woken), with what it observed (:class:`Observed`), and performs the returned actions in order.

Heartbeat: once per ``ping_interval_s`` compare what each peer sent (data and control frames),
ping only a peer that sent nothing during the last interval, and declare it unresponsive when
the interval after its ping also brings nothing. Beats keep their own phase, so a dead peer is
found two to three intervals after its last frame (never fewer than two, and always one
interval after a ping it did not answer); a late pong under load still counts if it comes
within one. No ping goes behind a blocked send (the stall check owns that client), and a
client is never declared unresponsive without a ping first. Nothing is done per frame.

Stall: a client whose socket accepted nothing for ``client_send_timeout_s`` while a send was
waiting. Grace: a detached resumable client that did not come back within ``resume_grace_s``.
Recycle: after ``recycle_after_s`` on one upstream, at a quiet point, move to a fresh one.

Caller's duty: call :meth:`tick` no later than :meth:`next_wake`, report detaches, attaches and
new upstreams as they happen; ``now`` is monotonic seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

_INF = float("inf")


@dataclass(frozen=True, slots=True)
class ClockConfig:
    max_session_s: float
    ping_interval_s: float = 0.0
    client_send_timeout_s: float = 0.0
    resume_grace_s: float = 0.0
    recycle_after_s: float | None = None


@dataclass(slots=True)
class Observed:
    """What the runner saw since the session began (counters only grow).

    Built at every wake (once a second per session with resume or recycling on), so not
    frozen: a frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``,
    ~4,000 instructions for these seven; this one costs a tenth of that. Treat it as read-only.
    """

    client_heard: int  # data + control frames received from the client
    upstream_heard: int  # data + control frames received from the upstream
    client_attached: bool
    client_sends_started: int
    client_sends_done: int
    upstream_ready: bool  # an upstream is open and the session is ready on it
    quiet: bool  # no response running, nobody speaking, nothing waiting for an ack


@dataclass(frozen=True, slots=True)
class MaxLengthReached:
    max_session_s: float


@dataclass(frozen=True, slots=True)
class PingClient:
    pass


@dataclass(frozen=True, slots=True)
class PingUpstream:
    pass


@dataclass(frozen=True, slots=True)
class ClientUnresponsive:
    """Two intervals without a frame from the client (detach a resumable one, else end)."""


@dataclass(frozen=True, slots=True)
class UpstreamUnresponsive:
    """Two intervals without a frame from the upstream (replace it, or end)."""

    interval_s: float


@dataclass(frozen=True, slots=True)
class ClientStalled:
    """The client's socket accepted nothing for ``blocked_s`` while a send waited."""

    blocked_s: float


@dataclass(frozen=True, slots=True)
class GraceExpired:
    grace_s: float


@dataclass(frozen=True, slots=True)
class Recycle:
    """Move to a fresh upstream now (quiet, and the current one is old)."""


TimerAction: TypeAlias = (
    MaxLengthReached
    | PingClient
    | PingUpstream
    | ClientUnresponsive
    | UpstreamUnresponsive
    | ClientStalled
    | GraceExpired
    | Recycle
)


class SessionClock:
    """See the module docstring."""

    def __init__(self, config: ClockConfig, now: float, *, phase: float = 1.0) -> None:
        """``phase`` (0-1] scales the first beat's and the first check's delay: sessions
        opened together (a deploy, a reconnect storm) would otherwise wake together every
        period, and hundreds of wakes (and pings) in one loop iteration are a latency spike
        for every session on the process. The runner passes a random phase."""
        self.config = config
        phase = min(max(phase, 0.01), 1.0)  # never 0: inf * 0 is nan
        self._deadline = now + config.max_session_s
        self._interval = config.ping_interval_s or _INF
        self._next_beat = now + self._interval * phase
        send_timeout = config.client_send_timeout_s
        self._stall_every = send_timeout / 4 if send_timeout else _INF
        self._slow_every = 1.0 if (config.resume_grace_s or config.recycle_after_s) else _INF
        self._check_every = min(self._stall_every, self._slow_every)
        self._next_check = now + self._check_every * phase
        self._last = (-1, -1)
        # per side (client, upstream), kept as tuples between beats: a tuple of ints or bools
        # is not tracked by the garbage collector, a list is (two objects per session)
        self._missed = (0, 0)
        self._pinged = (False, False)  # a ping went out at the last beat, unanswered so far
        self._stall_mark = -1
        self._stall_since = 0.0
        self._detached_at: float | None = None
        self._upstream_since = now
        self._recycle_asked = False

    # ------------------------------------------------------------------ events

    def client_detached(self, now: float) -> None:
        self._detached_at = now

    def client_attached(self) -> None:
        self._detached_at = None
        self._missed, self._pinged = (0, self._missed[1]), (False, self._pinged[1])

    def upstream_opened(self, now: float) -> None:
        self._upstream_since = now
        self._recycle_asked = False
        self._missed, self._pinged = (self._missed[0], 0), (self._pinged[0], False)

    def recycle_declined(self) -> None:
        """The session was no longer quiet when the recycle ran: ask again at the next check."""
        self._recycle_asked = False

    @property
    def detached_at(self) -> float | None:
        return self._detached_at

    # ------------------------------------------------------------------ ticking

    def next_wake(self) -> float:
        # the smallest of the three, compared in place: builtin min() costs ~850 instructions
        wake = self._deadline
        if self._next_beat < wake:
            wake = self._next_beat
        if self._next_check < wake:
            wake = self._next_check
        return wake

    def tick(self, now: float, seen: Observed) -> list[TimerAction]:
        """What is due at ``now``; perform the actions in order."""
        out: list[TimerAction] = []
        if now >= self._deadline:
            out.append(MaxLengthReached(self.config.max_session_s))
            return out
        if now >= self._next_check:
            self._next_check = now + self._check_every
            self._check_stall(now, seen, out)
            if self._detached_at is not None:  # (each check's own first test, without its call)
                self._check_grace(now, seen, out)
            if not self._recycle_asked and self.config.recycle_after_s is not None:
                self._check_recycle(now, seen, out)
        if now >= self._next_beat:
            self._next_beat += self._interval
            if self._next_beat <= now:  # the loop was late by more than an interval
                self._next_beat = now + self._interval
            self._beat(seen, out)
        return out

    def _beat(self, seen: Observed, out: list[TimerAction]) -> None:
        heard = (seen.client_heard, seen.upstream_heard)
        missed, pinged = list(self._missed), list(self._pinged)
        for side in (0, 1):
            if heard[side] == self._last[side]:
                missed[side] += 1
            else:
                missed[side], pinged[side] = 0, False
        self._last = heard
        if not seen.client_attached:
            missed[0], pinged[0] = 0, False
        elif missed[0] >= 2 and pinged[0]:
            out.append(ClientUnresponsive())
            missed[0], pinged[0] = 0, False
        elif missed[0] and seen.client_sends_started == seen.client_sends_done:
            out.append(PingClient())  # never behind a blocked send: the stall check owns it
            pinged[0] = True
        if not seen.upstream_ready:
            missed[1], pinged[1] = 0, False
        elif missed[1] >= 2 and pinged[1]:
            out.append(UpstreamUnresponsive(self._interval))
            missed[1], pinged[1] = 0, False
        elif missed[1]:
            out.append(PingUpstream())
            pinged[1] = True
        self._missed, self._pinged = (missed[0], missed[1]), (pinged[0], pinged[1])

    def _check_stall(self, now: float, seen: Observed, out: list[TimerAction]) -> None:
        timeout = self.config.client_send_timeout_s
        if not timeout:
            return
        done = seen.client_sends_done
        if seen.client_sends_started == done:
            self._stall_mark = -1
            return
        if done != self._stall_mark:
            self._stall_mark, self._stall_since = done, now
            return
        if now - self._stall_since >= timeout:
            out.append(ClientStalled(round(now - self._stall_since, 1)))
            self._stall_mark = -1

    def _check_grace(self, now: float, seen: Observed, out: list[TimerAction]) -> None:
        since = self._detached_at
        grace = self.config.resume_grace_s
        if not seen.client_attached and since is not None and now - since >= grace:
            out.append(GraceExpired(grace))

    def _check_recycle(self, now: float, seen: Observed, out: list[TimerAction]) -> None:
        after = self.config.recycle_after_s
        if after is None or self._recycle_asked or not seen.upstream_ready:
            return
        if now - self._upstream_since >= after and seen.quiet:
            self._recycle_asked = True
            out.append(Recycle())
