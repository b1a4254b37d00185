"""How late the event loop runs what is due: the one number every session's latency shares.

Everything a voxgate process relays waits for the same event loop, so anything that holds it
(a long callback, a collection, page faults, the process descheduled) delays every session's
audio at once. :class:`LoopLag` measures that directly: a timer due every ``interval_s`` notes
how late it ran into ``voxgate_event_loop_lag_seconds`` (histogram) and
``voxgate_event_loop_lag_max_seconds`` (the longest since start). A hold longer than the interval
always shows, shortened by at most the interval; shorter ones show in proportion to their share
of the time. Cost: one timer callback per interval (40 per second by default), nothing per frame.

Read it beside the GC pauses (:mod:`voxgate.observability.gc_pauses`): lag with no pause is the
process's own work or the machine (``bench/relay.py`` reports both in its measurement window,
which is how a latency spike is told apart from one in the load generator).
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Gauge, Histogram

#: Seconds between two measurements.
INTERVAL_S = 0.025
_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class LoopLag:
    def __init__(self, registry: CollectorRegistry, interval_s: float = INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.lag = Histogram(
            "voxgate_event_loop_lag_seconds",
            f"How late the event loop ran a timer due every {interval_s * 1000:g} ms",
            buckets=_BUCKETS,
            registry=registry,
        )
        self.longest = Gauge(
            "voxgate_event_loop_lag_max_seconds",
            "Longest event loop lag since the process started",
            registry=registry,
        )
        self.max_s = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start measuring on ``loop`` (default: the running one); again after :meth:`stop`;
        a no-op while running."""
        if self._handle is not None:
            return
        loop = self._loop = loop or asyncio.get_running_loop()
        self._due = loop.time() + self.interval_s
        self._handle = loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()

    def record(self, late_s: float) -> None:
        """One measurement: the timer ran ``late_s`` after it was due (clamped at 0)."""
        late_s = max(0.0, late_s)
        self.lag.observe(late_s)
        if late_s > self.max_s:
            self.max_s = late_s
            self.longest.set(late_s)

    def _tick(self) -> None:
        loop = self._loop
        if loop is None:  # never started: nothing to measure
            return
        now = loop.time()
        self.record(now - self._due)
        self._due = now + self.interval_s  # from now: a long hold is one late tick, not many
        self._handle = loop.call_at(self._due, self._tick)
