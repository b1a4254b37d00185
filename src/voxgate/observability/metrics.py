"""Prometheus metrics: every name and label lives here. One registry per app (no globals).

Per-frame counters are plain integers on each session (no lock, no label lookup on the audio
path) and are folded in here when the session ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from voxgate.observability.gc_pauses import GcPauses


class _Stats(Protocol):
    started_at: float
    ready_at: float | None
    client_frames: int
    client_bytes: int
    upstream_frames: int
    upstream_bytes: int
    prebuffer_peak_bytes: int
    reconnect_gaps_ms: list[float]
    recycles: int
    detaches: int
    resumes: int
    stalls: int
    paced_frames: int
    replay_dropped_frames: int


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sessions_active = Gauge("voxgate_sessions_active", "Sessions open now", registry=r)
        self.sessions_total = Counter(
            "voxgate_sessions_total", "Sessions ended, by cause", ["cause"], registry=r
        )
        self.sessions_refused = Counter(
            "voxgate_sessions_refused_total",
            "Connections refused, by error code",
            ["reason"],
            registry=r,
        )
        self.frames = Counter(
            "voxgate_frames_total", "Frames relayed, by direction", ["direction"], registry=r
        )
        self.bytes = Counter(
            "voxgate_bytes_total", "Frame bytes relayed, by direction", ["direction"], registry=r
        )
        self.ready_seconds = Histogram(
            "voxgate_upstream_ready_seconds",
            "Time from client connect to upstream ready",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.reconnect_seconds = Histogram(
            "voxgate_upstream_reconnect_seconds",
            "Upstream lost → rebuilt and traffic flowing again",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.recycles = Counter(
            "voxgate_upstream_recycles_total", "Planned moves to a fresh upstream", registry=r
        )
        self.resumes = Counter(
            "voxgate_client_resumes_total", "Resume attempts, by outcome", ["outcome"], registry=r
        )
        self.detaches = Counter(
            "voxgate_client_detached_total", "Resumable clients that vanished", registry=r
        )
        self.stalls = Counter(
            "voxgate_client_stalls_total", "Clients that stopped reading", registry=r
        )
        self.paced = Counter(
            "voxgate_client_paced_frames_total",
            "Client frames after which reading paused (over the rate limits)",
            registry=r,
        )
        self.replay_dropped = Counter(
            "voxgate_replay_log_dropped_frames_total",
            "Oldest events dropped from replay logs at their byte bound",
            registry=r,
        )
        self.prebuffer_peak = Histogram(
            "voxgate_prebuffer_peak_bytes",
            "Largest pre-ready / reconnect buffer per flush, per session",
            buckets=(0, 1024, 16384, 65536, 262144, 1048576, 4194304),
            registry=r,
        )
        self.keys_minted = Counter(
            "voxgate_client_keys_minted_total", "ek_ keys minted", ["shape"], registry=r
        )
        self.buffered = Gauge(
            "voxgate_session_buffer_bytes",
            "What the live sessions' bounded buffers hold now (mirror, replay logs, pre-ready)",
            registry=r,
        )
        # several nodes (issue 17)
        self.adoptions = Counter(
            "voxgate_sessions_adopted_total",
            "Sessions this node rebuilt from another node's snapshot, by why they moved",
            ["cause"],
            registry=r,
        )
        self.gc = GcPauses(r)

    def measure_buffers(self, fn: Callable[[], float]) -> None:
        """Read ``voxgate_session_buffer_bytes`` from ``fn`` at every scrape."""
        self.buffered.set_function(fn)

    def record_session(self, stats: _Stats) -> None:
        self.frames.labels(direction="client_to_upstream").inc(stats.client_frames)
        self.frames.labels(direction="upstream_to_client").inc(stats.upstream_frames)
        self.bytes.labels(direction="client_to_upstream").inc(stats.client_bytes)
        self.bytes.labels(direction="upstream_to_client").inc(stats.upstream_bytes)
        if stats.ready_at is not None:
            self.ready_seconds.observe(stats.ready_at - stats.started_at)
        for gap_ms in stats.reconnect_gaps_ms:
            self.reconnect_seconds.observe(gap_ms / 1000)
        self.recycles.inc(stats.recycles)
        self.detaches.inc(stats.detaches)
        self.stalls.inc(stats.stalls)
        self.paced.inc(stats.paced_frames)
        self.replay_dropped.inc(stats.replay_dropped_frames)
        self.prebuffer_peak.observe(stats.prebuffer_peak_bytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)
