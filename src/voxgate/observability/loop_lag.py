"""How late the event loop runs what is due: the one number every session's latency shares.

Everything a voxgate process relays waits for the same event loop, so anything that holds it
(a long callback, a collection, page faults, the process descheduled) delays every session's
audio at once. :class:`LoopLag` turns that into ``voxgate_event_loop_lag_seconds``
(histogram) and ``voxgate_event_loop_lag_max_seconds`` (the longest since start).

Its samples are the sessions' own clock wakes (heartbeats, stall and grace checks: about one per
session per second, at random phases): each reports how late it ran. So the metric costs no
timer of its own (a 25 ms process timer was tried first: invisible at 200 sessions, but 40
wakes a second were ~70 % more instructions per frame in ``bench/relay_instructions.py``'s
slow-motion run), and it samples in proportion to the sessions that can feel a stall: with N
sessions a hold of L seconds is seen with probability about 1 - exp(-N * L) (98 % for 20 ms at
200 sessions). An idle process records nothing, which is also what it has to report.

Read it beside the GC pauses (:mod:`voxgate.observability.gc_pauses`): lag with no pause is the
process's own work or the machine (``bench/relay.py`` reports both in its measurement window,
which is how a latency spike is told apart from one in the load generator).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram

_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class LoopLag:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.lag = Histogram(
            "voxgate_event_loop_lag_seconds",
            "How late the event loop ran the sessions' clock wakes",
            buckets=_BUCKETS,
            registry=registry,
        )
        self.longest = Gauge(
            "voxgate_event_loop_lag_max_seconds",
            "Longest event loop lag since the process started",
            registry=registry,
        )
        self.max_s = 0.0

    def record(self, late_s: float) -> None:
        """One wake ran ``late_s`` after it was due (clamped at 0: asyncio runs timers up to
        one clock resolution early)."""
        late_s = max(0.0, late_s)
        self.lag.observe(late_s)
        if late_s > self.max_s:
            self.max_s = late_s
            self.longest.set(late_s)
