"""Prometheus metrics: every name and label lives here. One registry per app (no globals).

Per-frame counters are plain integers on each session (no lock, no label lookup on the audio
path). They are folded in *live* (issue 17): at every scrape the counters of the sessions
running now are read (:meth:`Metrics.measure_live`) and what grew since the last scrape is
added, and the rest when a session ends; so counters move while calls run, stay monotonic, and
nothing is added per frame. Histograms of turn latency, upstream connect time and tool calls
are fed by :mod:`voxgate.observability.session_trace` as those things happen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from voxgate.observability.gc_pauses import GcPauses
from voxgate.observability.loop_lag import LoopLag


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
    reconnects: int


#: Per-session counters folded live: stats field -> (metric attribute, label value or None).
_FOLDED = (
    ("client_frames", "frames", "client_to_upstream"),
    ("upstream_frames", "frames", "upstream_to_client"),
    ("client_bytes", "bytes", "client_to_upstream"),
    ("upstream_bytes", "bytes", "upstream_to_client"),
    ("recycles", "recycles", None),
    ("detaches", "detaches", None),
    ("stalls", "stalls", None),
    ("paced_frames", "paced", None),
    ("replay_dropped_frames", "replay_dropped", None),
    ("reconnects", "reconnects", None),
)
LiveSessions = Callable[[], Iterable[tuple[_Stats, Mapping[str, int]]]]


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
        # live observability (issue 17)
        self.reconnects = Counter(
            "voxgate_upstream_reconnects_total", "Upstream reconnects started", registry=r
        )
        self.errors = Counter(
            "voxgate_errors_total", "Error events sent to clients, by code", ["code"], registry=r
        )
        self.turn_seconds = Histogram(
            "voxgate_turn_latency_seconds",
            "End of the user's turn (speech stopped, or commit) to the answer's first output",
            buckets=(0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10),
            registry=r,
        )
        self.connect_seconds = Histogram(
            "voxgate_upstream_connect_seconds",
            "Opening one upstream connection (every attempt, first or reconnect), by outcome",
            ["outcome"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.tool_calls = Counter(
            "voxgate_tool_calls_total",
            "Function calls, by who runs them (client, server) and outcome",
            ["runner", "outcome"],
            registry=r,
        )
        self.tool_seconds = Histogram(
            "voxgate_tool_call_seconds",
            "Function call arguments done to its output in the conversation",
            ["runner"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.proactive = Counter(
            "voxgate_proactive_messages_total",
            "Proactive messages, by mode and outcome (delivered, expired, dropped, failed)",
            ["mode", "outcome"],
            registry=r,
        )
        # several nodes (issue 17)
        self.snapshot_writes = Counter(
            "voxgate_snapshot_writes_total", "Session snapshots written to the store", registry=r
        )
        self.snapshot_bytes = Counter(
            "voxgate_snapshot_bytes_total", "Bytes of session snapshots written", registry=r
        )
        self.adoptions = Counter(
            "voxgate_sessions_adopted_total",
            "Sessions this node rebuilt from another node's snapshot, by why they moved",
            ["cause"],
            registry=r,
        )
        self.gc = GcPauses(r)
        self.loop_lag = LoopLag(r)
        self._live: LiveSessions | None = None
        #: what was folded in so far, per running session (keyed by its stats object)
        self._folded: dict[int, dict[str, int]] = {}

    def measure_live(self, fn: LiveSessions) -> None:
        """Read the running sessions' counters (and errors by code) at every scrape."""
        self._live = fn

    def _fold(self, stats: _Stats, errors: Mapping[str, int], *, final: bool) -> None:
        key = id(stats)
        seen = self._folded.pop(key, None) if final else self._folded.setdefault(key, {})
        seen = seen if seen is not None else {}
        for field, metric, label in _FOLDED:
            grown = getattr(stats, field) - seen.get(field, 0)
            if grown > 0:
                counter = getattr(self, metric)
                (counter.labels(direction=label) if label else counter).inc(grown)
                seen[field] = getattr(stats, field)
                if field == "reconnects":
                    for gap_ms in stats.reconnect_gaps_ms[-grown:]:
                        self.reconnect_seconds.observe(gap_ms / 1000)
        for code, count in errors.items():
            grown = count - seen.get("error:" + code, 0)
            if grown > 0:
                self.errors.labels(code=code).inc(grown)
                seen["error:" + code] = count

    def measure_buffers(self, fn: Callable[[], float]) -> None:
        """Read ``voxgate_session_buffer_bytes`` from ``fn`` at every scrape."""
        self.buffered.set_function(fn)

    def record_session(self, stats: _Stats, errors: Mapping[str, int] | None = None) -> None:
        """A session ended: fold in what its counters grew since the last scrape."""
        self._fold(stats, errors or {}, final=True)
        if stats.ready_at is not None:
            self.ready_seconds.observe(stats.ready_at - stats.started_at)
        self.prebuffer_peak.observe(stats.prebuffer_peak_bytes)

    def render(self) -> bytes:
        if self._live is not None:
            for stats, errors in self._live():
                self._fold(stats, errors, final=False)
        return generate_latest(self.registry)
