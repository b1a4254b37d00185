"""The event-loop lag monitor (voxgate_event_loop_lag_*): pure timing logic on a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from prometheus_client import CollectorRegistry

from voxgate.observability.loop_lag import LoopLag


class FakeHandle:
    def cancel(self) -> None:
        pass


class FakeLoop:
    """Just what LoopLag uses: ``time`` and ``call_at``, with the clock set by the test."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> FakeHandle:
        self.timers.append((when, callback))
        return FakeHandle()

    def run_next(self, late_s: float) -> None:
        """Run the newest timer ``late_s`` after it was due."""
        when, callback = self.timers[-1]
        self.now = when + late_s
        callback()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels or None)
    assert value is not None, name
    return value


def test_a_hold_shows_as_one_late_tick_and_sets_the_max() -> None:
    registry = CollectorRegistry()
    lag = LoopLag(registry, interval_s=0.025)
    loop = FakeLoop()
    lag.start(cast(Any, loop))
    assert loop.timers[-1][0] == 100.025
    loop.run_next(0.0005)  # an ordinary wake
    loop.run_next(0.080)  # the loop was held for ~80 ms
    loop.run_next(0.001)
    assert sample(registry, "voxgate_event_loop_lag_seconds_count") == 3
    assert sample(registry, "voxgate_event_loop_lag_seconds_bucket", le="0.05") == 2
    assert sample(registry, "voxgate_event_loop_lag_seconds_bucket", le="0.1") == 3
    assert abs(sample(registry, "voxgate_event_loop_lag_max_seconds") - 0.080) < 1e-9
    # the next tick is due an interval after the late one ran, not at the missed times
    assert abs(loop.timers[-1][0] - (loop.now + 0.025)) < 1e-9


def test_early_wakes_count_as_no_lag_and_stop_ends_the_timer() -> None:
    registry = CollectorRegistry()
    lag = LoopLag(registry, interval_s=0.025)
    loop = FakeLoop()
    lag.start(cast(Any, loop))
    lag.start(cast(Any, loop))  # already running: no second timer
    assert len(loop.timers) == 1
    loop.run_next(-0.0004)  # asyncio runs timers up to one clock resolution early
    assert sample(registry, "voxgate_event_loop_lag_seconds_sum") == 0.0
    assert lag.running
    lag.stop()
    assert not lag.running


async def test_it_measures_the_running_loop() -> None:
    """On a real loop: started, it records ticks; stopped, it records no more."""
    registry = CollectorRegistry()
    lag = LoopLag(registry, interval_s=0.001)
    ticks = asyncio.Event()
    recorded = lag.record

    def record(late_s: float) -> None:
        recorded(late_s)
        if sample(registry, "voxgate_event_loop_lag_seconds_count") >= 3:
            ticks.set()

    lag.record = record  # type: ignore[method-assign]
    lag.start()
    await asyncio.wait_for(ticks.wait(), 5)
    lag.stop()
    assert not lag.running
