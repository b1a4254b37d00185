"""SessionClock driven synchronously: observations in, exact timer actions out. No event loop.

``now`` is whatever the test says; a beat falls every ``ping_interval_s`` from the start, the
stall check every quarter of ``client_send_timeout_s``, grace and recycle checks every second.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from voxgate.session.clock import (
    ClientStalled,
    ClientUnresponsive,
    ClockConfig,
    GraceExpired,
    MaxLengthReached,
    Observed,
    PingClient,
    PingUpstream,
    Recycle,
    SessionClock,
    UpstreamUnresponsive,
)

HOUR = 3600.0
QUIET = Observed(
    client_heard=0,
    upstream_heard=0,
    client_attached=True,
    client_sends_started=0,
    client_sends_done=0,
    upstream_ready=True,
    quiet=True,
)


def seen(client: int = 0, upstream: int = 0, **kw: object) -> Observed:
    return replace(QUIET, client_heard=client, upstream_heard=upstream, **kw)  # type: ignore[arg-type]


def beating(interval_s: float = 10.0) -> SessionClock:
    return SessionClock(ClockConfig(max_session_s=HOUR, ping_interval_s=interval_s), now=0.0)


def run_until(clock: SessionClock, end: float, observe: object) -> list[tuple[float, object]]:
    """Tick at every ``next_wake()`` up to ``end`` (or the max length); ``observe(now)``."""
    out: list[tuple[float, object]] = []
    while (now := clock.next_wake()) <= end:
        actions = clock.tick(now, observe(now))  # type: ignore[operator]
        out += [(now, action) for action in actions]
        if any(isinstance(a, MaxLengthReached) for a in actions):
            break
    return out


# ---------------------------------------------------------------------------- heartbeat


def test_client_silent_for_two_intervals_is_unresponsive() -> None:
    clock = beating()
    assert clock.tick(10, seen(1, 1)) == []
    assert clock.tick(20, seen(2, 2)) == []  # its last frame, just before this beat
    assert clock.tick(30, seen(2, 3)) == [PingClient()]  # one silent interval: pinged, not dead
    assert clock.tick(40, seen(2, 4)) == [ClientUnresponsive()]


def test_upstream_silent_for_two_intervals_is_unresponsive() -> None:
    clock = beating()
    assert clock.tick(10, seen(1, 1)) == []
    assert clock.tick(20, seen(2, 2)) == []
    assert clock.tick(30, seen(3, 2)) == [PingUpstream()]
    assert clock.tick(40, seen(4, 2)) == [UpstreamUnresponsive(10.0)]


@given(last_frame_at=st.floats(min_value=0.0, max_value=29.9))
def test_silent_peer_is_never_declared_dead_before_two_silent_intervals(
    last_frame_at: float,
) -> None:
    clock = beating()
    found = run_until(clock, 200, lambda now: seen(1 if now > last_frame_at else 0, int(now)))
    dead_at = next(t for t, a in found if isinstance(a, ClientUnresponsive))
    assert (dead_at - 10, PingClient()) in found  # pinged one interval before
    assert dead_at >= last_frame_at + 20
    assert dead_at <= last_frame_at + 30  # what it does guarantee: three intervals at most


def test_only_an_idle_peer_is_pinged() -> None:
    clock = beating()
    clock.tick(10, seen(1, 1))
    # the client spoke during the interval, the upstream did not
    assert clock.tick(20, seen(5, 1)) == [PingUpstream()]
    assert clock.tick(30, seen(9, 2)) == []


def test_late_pong_within_one_interval_counts() -> None:
    clock = beating()
    clock.tick(10, seen(1, 1))
    clock.tick(20, seen(2, 2))
    assert clock.tick(30, seen(2, 3)) == [PingClient()]
    # the pong (a control frame, counted in client_heard) came just before the next beat
    assert clock.tick(40, seen(3, 4)) == []
    assert clock.tick(50, seen(3, 5)) == [PingClient()]  # silent again: the count restarted


def test_no_ping_behind_a_blocked_client_send() -> None:
    clock = beating()
    clock.tick(10, seen(1, 1))
    blocked = seen(1, 1, client_sends_started=3, client_sends_done=2)
    assert clock.tick(20, blocked) == [PingUpstream()]


def test_client_is_declared_unresponsive_only_after_an_unanswered_ping() -> None:
    clock = beating()
    clock.tick(10, seen(1, 1))
    blocked = seen(1, 2, client_sends_started=1, client_sends_done=0)
    assert clock.tick(20, blocked) == []  # idle, but a send is blocked: no ping
    # the blocked send went through (the client is reading), and it is still idle
    drained = seen(1, 3, client_sends_started=1, client_sends_done=1)
    assert clock.tick(30, drained) == [PingClient()]


def test_detached_client_and_unready_upstream_are_neither_pinged_nor_declared_dead() -> None:
    clock = beating()
    idle = seen(0, 0, client_attached=False, upstream_ready=False)
    assert run_until(clock, 100, lambda now: idle) == []


# ---------------------------------------------------------------------------- stall


def stalling(timeout_s: float = 8.0) -> SessionClock:
    return SessionClock(ClockConfig(max_session_s=HOUR, client_send_timeout_s=timeout_s), 0.0)


def test_stalled_only_after_send_timeout_while_a_send_is_blocked() -> None:
    clock = stalling()
    blocked = seen(client_sends_started=1, client_sends_done=0)
    found = run_until(clock, 10, lambda now: blocked if now > 1 else QUIET)
    # first seen blocked at the check at 2 s; 8 s later it is stalled, not one check before
    assert found == [(10.0, ClientStalled(8.0))]


def test_no_stall_while_sends_keep_completing() -> None:
    clock = stalling()
    # always one send in flight, but each check finds another one completed
    found = run_until(
        clock, 200, lambda now: seen(client_sends_started=int(now) + 1, client_sends_done=int(now))
    )
    assert found == []


def test_no_stall_without_a_waiting_send() -> None:
    clock = stalling()
    done = seen(client_sends_started=4, client_sends_done=4)
    assert run_until(clock, 200, lambda now: done) == []


# ---------------------------------------------------------------------------- grace


def test_grace_expires_only_while_detached() -> None:
    clock = SessionClock(ClockConfig(max_session_s=HOUR, resume_grace_s=30), now=0.0)
    away = seen(client_attached=False)
    assert run_until(clock, 4, lambda now: away) == []  # attached==False, never detached
    clock.client_detached(5.0)
    found = run_until(clock, 40, lambda now: away)
    assert found[0] == (35.0, GraceExpired(30))
    assert all(t >= 35 for t, _ in found)


def test_grace_does_not_expire_for_a_client_that_came_back() -> None:
    clock = SessionClock(ClockConfig(max_session_s=HOUR, resume_grace_s=30), now=0.0)
    clock.client_detached(5.0)
    assert run_until(clock, 20, lambda now: seen(client_attached=False)) == []
    clock.client_attached()
    assert clock.detached_at is None
    assert run_until(clock, 200, lambda now: QUIET) == []


def test_grace_does_not_expire_while_a_client_is_seen_attached() -> None:
    clock = SessionClock(ClockConfig(max_session_s=HOUR, resume_grace_s=30), now=0.0)
    clock.client_detached(5.0)  # a resume attached it before client_attached() was reported
    assert run_until(clock, 200, lambda now: QUIET) == []


# ---------------------------------------------------------------------------- recycle


def recycling() -> SessionClock:
    return SessionClock(ClockConfig(max_session_s=HOUR, recycle_after_s=60), now=0.0)


def test_recycle_only_when_quiet_and_old_enough() -> None:
    clock = recycling()
    assert run_until(clock, 59.9, lambda now: QUIET) == []
    busy = seen(quiet=False)
    assert run_until(clock, 70, lambda now: busy) == []
    assert clock.tick(clock.next_wake(), QUIET) == [Recycle()]


def test_recycle_needs_a_ready_upstream() -> None:
    clock = recycling()
    assert run_until(clock, 100, lambda now: seen(upstream_ready=False)) == []


def test_recycle_is_asked_once() -> None:
    clock = recycling()
    found = run_until(clock, 300, lambda now: QUIET)
    assert found == [(60.0, Recycle())]


def test_recycle_is_asked_again_after_it_was_declined() -> None:
    clock = recycling()
    assert run_until(clock, 60, lambda now: QUIET) == [(60.0, Recycle())]
    clock.recycle_declined()
    assert clock.tick(clock.next_wake(), QUIET) == [Recycle()]


def test_upstream_opened_rearms_recycle() -> None:
    clock = recycling()
    run_until(clock, 60, lambda now: QUIET)
    clock.upstream_opened(75.0)
    found = run_until(clock, 200, lambda now: QUIET)
    assert found == [(135.0, Recycle())]


# ---------------------------------------------------------------------------- max length, wake


EVERYTHING = ClockConfig(
    max_session_s=100,
    ping_interval_s=10,
    client_send_timeout_s=8,
    resume_grace_s=5,
    recycle_after_s=20,
)


def test_max_length_comes_first_and_alone() -> None:
    clock = SessionClock(EVERYTHING, now=0.0)
    clock.client_detached(1.0)
    everything_due = seen(client_attached=False, client_sends_started=1, upstream_ready=True)
    assert clock.tick(100, everything_due) == [MaxLengthReached(100)]


def test_max_length_is_reached_at_the_deadline_when_driven_by_next_wake() -> None:
    clock = SessionClock(EVERYTHING, now=50.0)
    found = run_until(clock, 1000, lambda now: seen(int(now), int(now), quiet=False))
    assert found[-1] == (150.0, MaxLengthReached(100))
    assert [a for _, a in found if isinstance(a, MaxLengthReached)] == [MaxLengthReached(100)]


periods = st.one_of(st.just(0.0), st.floats(min_value=0.5, max_value=60))


@given(
    ping=periods,
    send_timeout=periods,
    grace=periods,
    recycle=st.one_of(st.none(), st.floats(min_value=1, max_value=600)),
    max_s=st.floats(min_value=1, max_value=HOUR),
    early=st.lists(st.floats(min_value=0.0, max_value=0.99), min_size=1, max_size=40),
)
def test_next_wake_is_never_later_than_the_next_due_check(
    ping: float,
    send_timeout: float,
    grace: float,
    recycle: float | None,
    max_s: float,
    early: list[float],
) -> None:
    cfg = ClockConfig(max_s, ping, send_timeout, grace, recycle)
    clock = SessionClock(cfg, now=0.0)
    shortest = min(
        p for p in (ping, send_timeout / 4, 1.0 if (grace or recycle) else 0.0, max_s) if p
    )
    now = 0.0
    for fraction in early:
        wake = clock.next_wake()
        assert now < wake <= min(max_s, now + shortest) + 1e-9
        # nothing is due before the wake: a tick there does nothing and changes nothing
        early_at = now + (wake - now) * fraction
        if early_at < wake:  # (float rounding may land it on the wake itself)
            assert clock.tick(early_at, QUIET) == []
            assert clock.next_wake() == wake
        now = wake
        if clock.tick(now, QUIET) == [MaxLengthReached(max_s)]:
            break


def test_a_phase_spreads_the_first_wake_and_keeps_the_period_after() -> None:
    cfg = ClockConfig(max_session_s=HOUR, ping_interval_s=10, resume_grace_s=30)
    early = SessionClock(cfg, now=0.0, phase=0.5)
    assert early.next_wake() == 0.5  # the first check at half its 1 s period
    assert SessionClock(cfg, now=0.0).next_wake() == 1.0  # no phase: one period
    assert SessionClock(cfg, now=0.0, phase=0.0).next_wake() > 0  # never at once, never nan
    seen = Observed(0, 0, True, 0, 0, True, False)
    wakes = []
    now = 0.0
    for _ in range(25):
        now = early.next_wake()
        wakes.append(now)
        early.tick(now, seen)
    assert wakes[:3] == [0.5, 1.5, 2.5]  # then every period from the shifted start
    assert 5.0 in wakes  # the first ping beat at half its 10 s interval
