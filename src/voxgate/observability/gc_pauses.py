"""How long the garbage collector stops the event loop: a histogram and the longest pause.

A full collection walks every container object the process holds; with many sessions a pause
delays every session's audio at once (issue 11). :class:`GcPauses` times each collection with
``gc.callbacks`` (two cheap calls per collection, nothing per frame) into
``voxgate_gc_pause_seconds{generation}`` and ``voxgate_gc_pause_max_seconds``. One per
process: :meth:`install` / :meth:`uninstall` add and remove the callback.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


class GcPauses:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.pause = Histogram(
            "voxgate_gc_pause_seconds",
            "Garbage collector pauses of the event loop, by generation",
            ["generation"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.longest = Gauge(
            "voxgate_gc_pause_max_seconds", "Longest garbage collector pause", registry=registry
        )
        self._children = [self.pause.labels(generation=str(g)) for g in range(3)]
        self._started = 0.0
        self.max_s = 0.0

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        elapsed = time.perf_counter() - self._started
        self._children[min(int(info.get("generation", 2)), 2)].observe(elapsed)
        if elapsed > self.max_s:
            self.max_s = elapsed
            self.longest.set(elapsed)
