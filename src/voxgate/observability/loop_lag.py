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

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


class LoopLag:
    """A Prometheus collector: :meth:`record` only counts (a bisect and two additions, no
    lock: called on the event loop), the histogram is built when ``/metrics`` is read."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._counts = [0] * (len(_BUCKETS) + 1)  # per bucket, not cumulative; last: > 2 s
        self._sum = 0.0
        self.max_s = 0.0
        registry.register(self)

    def record(self, late_s: float) -> None:
        """One wake ran ``late_s`` after it was due (clamped at 0: asyncio runs timers up to
        one clock resolution early)."""
        if late_s < 0.0:
            late_s = 0.0
        self._counts[bisect_left(_BUCKETS, late_s)] += 1
        self._sum += late_s
        if late_s > self.max_s:
            self.max_s = late_s

    def collect(self) -> Iterator[Metric]:
        cumulative: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*_BUCKETS, float("inf")), self._counts, strict=True):
            total += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), total))
        yield HistogramMetricFamily(
            "voxgate_event_loop_lag_seconds",
            "How late the event loop ran the sessions' clock wakes",
            buckets=cumulative,
            sum_value=self._sum,
        )
        yield GaugeMetricFamily(
            "voxgate_event_loop_lag_max_seconds",
            "Longest event loop lag since the process started",
            value=self.max_s,
        )
