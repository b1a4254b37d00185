"""The relay benchmark's load generator: open N sessions, stream in real time, measure a window.

Owns one run (:func:`run_load`): connect N clients (text, binary or both, ``relay_client.py``),
drive one 20 ms frame per session every 20 ms on a shared clock, snapshot CPU and core
accounting every 250 ms through the window, scrape voxgate's ``/metrics`` at the window's
start and end, drain, and turn it all into a :class:`RunResult` from the slices free of other
load. Does not start relays or print reports (``relay_procs.py``, ``relay.py``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import itertools
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np

from relay_client import (
    FRAME_NS,
    HEADER,
    V1,
    ClientWS,
    Meter,
    binary_frame_parts,
    connect,
    frame_parts,
)
from relay_procs import (
    Metrics,
    buffer_bytes,
    core_seconds,
    cpu_seconds,
    gc_window,
    lag_window,
    rss_kib,
    scrape,
)

SLICE_NS = 250_000_000  # the measurement window is judged in 250 ms slices
ACK_EVERY_FRAMES = 50  # a binary client acks once a second (every 50th frame it sends)
CLIENT_KINDS = ("text", "binary", "mixed")
NAN = float("nan")


@dataclass
class RunResult:
    target: str
    sessions: int
    duration_s: float
    clients: str = "text"
    binary_sessions: int = 0
    connected: int = 0
    connect_failed: int = 0
    connect_s: float = 0.0
    sent: int = 0
    received: int = 0
    lost: int = 0
    out_of_order: int = 0
    misrouted: int = 0
    error_events: int = 0
    other_events: int = 0
    gateway_events: int = 0
    acks_sent: int = 0
    closed_early: int = 0
    samples: int = 0
    rtt_p50_ms: float = NAN
    rtt_p99_ms: float = NAN
    rtt_max_ms: float = NAN
    added_p50_ms: float = NAN
    added_p99_ms: float = NAN
    send_lag_p99_ms: float = NAN
    window_s: float = 0.0
    frames_in_window: int = 0
    relay_cpu_pct: float = NAN
    relay_cpu_us_per_frame: float = NAN
    relay_idle_rss_kib: int = 0
    relay_rss_kib: int = 0
    rss_per_session_kib: float = NAN
    # voxgate's /metrics (None / NaN for relays without it)
    gc_window_s: float = NAN
    gc_pauses: int | None = None
    gc_full_pauses: int | None = None
    gc_p99_ms: float = NAN
    gc_max_ms: float = NAN  # the max gauge: longest pause since voxgate started
    gc_window_max_ms: float = NAN  # longest in the window: exact, or a bucket edge (bound)
    gc_window_max_exact: bool = False
    # ... from before the sessions were opened to the end of the window (connects included)
    gc_run_pauses: int | None = None
    gc_run_p99_ms: float = NAN
    gc_run_max_ms: float = NAN
    gc_run_max_exact: bool = False
    # the relay's event loop in the window (voxgate_event_loop_lag_*): a latency spike the relay
    # caused shows here; one with none here came from the load generator's side
    lag_p99_ms: float = NAN
    lag_window_max_ms: float = NAN
    lag_window_max_exact: bool = False
    lag_over_5ms: int | None = None
    buffer_bytes: float = NAN
    buffers_per_session_kib: float = NAN
    rss_above_buffers_kib: float = NAN
    echo_cpu_pct: float = NAN
    loadgen_cpu_pct: float = NAN
    relay_core_busy_pct: float = NAN
    relay_core_irq_pct: float = NAN
    relay_core_foreign_pct: float = NAN
    load_core_busy_pct: float = NAN
    load_core_irq_pct: float = NAN
    load_core_foreign_pct: float = NAN
    quiet_wait_s: float = 0.0  # waited for a quiet second before the point (--quiet-wait)
    slices: int = 0
    clean_slices: int = 0
    estimate_sessions: float = NAN
    passed: bool = False
    notes: list[str] = field(default_factory=list)


def is_binary(clients: str, i: int) -> bool:
    """Whether session i is a binary (voxgate.v1) client: all, none, or the odd-indexed ones."""
    return clients == "binary" or (clients == "mixed" and i % 2 == 1)


async def _open(url: str, n: int, clients: str, meter: Meter, res: RunResult) -> list[ClientWS]:
    """Connect n sessions, 32 handshakes in flight (a relay's accept backlog is not measured)."""
    sem = asyncio.Semaphore(32)
    t_conn = time.monotonic()

    async def one(i: int) -> ClientWS | str:
        async with sem:
            sub = V1 if is_binary(clients, i) else None
            return await connect(url, i, meter, wait_s=15.0, subprotocol=sub)

    outcomes = await asyncio.gather(*(one(i) for i in range(n)))
    res.connect_s = time.monotonic() - t_conn
    sessions = [o for o in outcomes if isinstance(o, ClientWS)]
    failures = [o for o in outcomes if isinstance(o, str)]
    res.connected, res.connect_failed = len(sessions), len(failures)
    res.binary_sessions = sum(1 for s in sessions if s.binary)
    if failures:
        res.notes.append(f"{len(failures)} sessions failed to connect, e.g. {failures[0]}")
    for i, s in enumerate(sessions):
        s.idx = i
    return sessions


async def run_load(
    target: str,
    url: str,
    n: int,
    duration: float,
    warmup: float,
    relay_pids: Callable[[], list[int]] | None,
    echo_pids: Callable[[], list[int]],
    relay_core: int | None,
    load_core: int | None,
    drain_timeout: float = 3.0,
    foreign_limit: float = 20.0,
    *,
    clients: str = "text",
    metrics_url: str | None = None,
) -> RunResult:
    """Open n sessions to url, stream for ``duration`` seconds, and measure.

    ``clients``: ``text``, ``binary`` (``voxgate.v1``) or ``mixed`` (odd-indexed sessions
    binary). ``metrics_url``: voxgate's ``/metrics``, scraped before the sessions open, one
    slice before the window opens and when sending stops (then RSS is read at once, beside
    the buffer gauge).
    """
    res = RunResult(target=target, sessions=n, duration_s=duration, clients=clients)
    meter = Meter()
    run = _Run(relay_pids, echo_pids, relay_core, load_core)
    async with contextlib.AsyncExitStack() as stack:
        if metrics_url:
            http = await stack.enter_async_context(aiohttp.ClientSession())
            run.scrape = lambda: scrape(http, metrics_url)
        before_open = await run.scrape() if run.scrape else None
        sessions = await _open(url, n, clients, meter, res)
        if not sessions:
            return res
        gc.collect()
        gc.freeze()
        try:
            snaps, lags, window_m = await _drive(run, sessions, meter, duration, warmup)
            end_m = await run.scrape() if run.scrape else None
            res.relay_rss_kib = rss_kib(relay_pids()) if relay_pids else 0
            if run.scrape:
                _metrics_stats(res, window_m, end_m, run.scrape_times, before_open)
            # ---- drain: wait for the echoes still in flight
            deadline = time.monotonic() + drain_timeout
            while time.monotonic() < deadline:
                if all(s.received >= s.sent or s.closed_early for s in sessions):
                    break
                await asyncio.sleep(0.02)
        finally:
            gc.unfreeze()
        _totals(res, sessions)
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
    if lags:
        res.send_lag_p99_ms = float(np.percentile(np.asarray(lags) / 1e6, 99))
    if len(snaps) >= 2:
        _window_stats(
            res,
            snaps,
            meter,
            len(sessions),
            relay_pids is not None,
            relay_core,
            load_core,
            foreign_limit,
        )
    return res


@dataclass
class _Run:
    """What a run reads besides its own sessions: processes, cores, voxgate's /metrics."""

    relay_pids: Callable[[], list[int]] | None
    echo_pids: Callable[[], list[int]]
    relay_core: int | None
    load_core: int | None
    scrape: Callable[[], Awaitable[Metrics | None]] | None = None
    scrape_times: list[float] = field(default_factory=list)

    def snapshot(self, sessions: list[ClientWS]) -> dict[str, Any]:
        relay_pids = self.relay_pids
        return {
            "t": time.monotonic(),
            "t_ns": time.monotonic_ns(),
            "relay": cpu_seconds(relay_pids()) if relay_pids else 0.0,
            "echo": cpu_seconds(self.echo_pids()),
            "self": cpu_seconds([os.getpid()]),
            "cores": core_seconds([c for c in (self.relay_core, self.load_core) if c is not None]),
            "sent": sum(s.sent for s in sessions),
            "received": sum(s.received for s in sessions),
        }

    def start_scrape(self) -> asyncio.Task[Metrics | None] | None:
        if self.scrape is None:
            return None
        self.scrape_times.append(time.monotonic())
        return asyncio.ensure_future(self.scrape())


async def _drive(
    run: _Run, sessions: list[ClientWS], meter: Meter, duration: float, warmup: float
) -> tuple[list[dict[str, Any]], list[int], Metrics | None]:
    """Send until ``duration`` is over: (window snapshots, send lags ns, /metrics at window open).

    The j-th send overall goes to session j % m, due at t0 + j * period / m. Long because it
    is the load generator's hot loop: everything it touches is bound to a local first.
    """
    m = len(sessions)
    lags: list[int] = []
    head, suffix = frame_parts()
    bhead, brest = binary_frame_parts()
    binary = [s.binary for s in sessions]
    hdr = bytearray(HEADER.size)
    pack_into = HEADER.pack_into
    b64encode = base64.b64encode
    clock = time.monotonic_ns
    writers = [s.transport.write for s in sessions if s.transport is not None]
    step = FRAME_NS / m
    t0 = clock() + 50_000_000
    win_open_ns = t0 + int(warmup * 1e9)
    scrape_ns = win_open_ns - SLICE_NS  # the scrape is done before the window opens
    end_ns = t0 + int(duration * 1e9)
    scraping: asyncio.Task[Metrics | None] | None = None
    snaps: list[dict[str, Any]] = []  # one every SLICE_NS through the window
    next_snap_ns = win_open_ns
    j = 0
    while True:
        now = clock()
        if now >= end_ns:
            break
        if now >= scrape_ns and scraping is None and run.scrape is not None:
            scraping = run.start_scrape()
        if now >= next_snap_ns:
            if not snaps:
                meter.win_start_ns = now
            snaps.append(run.snapshot(sessions))
            next_snap_ns += SLICE_NS
        due = t0 + int(j * step)
        if due > now:
            await asyncio.sleep((due - now) / 1e9)
            continue
        lags.append(now - due)
        while due <= now:
            k = j % m
            s = sessions[k]
            if not s.closed_early:
                pack_into(hdr, 0, k, s.sent, clock())
                if binary[k]:
                    writers[k](bhead + hdr + brest)
                    if (s.sent + k) % ACK_EVERY_FRAMES == 0:
                        s.ack()
                else:
                    writers[k](head + b64encode(hdr) + suffix)
                s.sent += 1
            j += 1
            due = t0 + int(j * step)
    snaps.append(run.snapshot(sessions))
    if run.scrape is not None:
        run.scrape_times.append(time.monotonic())  # the end scrape follows at once
    return snaps, lags, await scraping if scraping is not None else None


def _metrics_stats(
    res: RunResult,
    start: Metrics | None,
    end: Metrics | None,
    times: list[float],
    before_open: Metrics | None,
) -> None:
    """GC pauses between the two scrapes, the buffer gauge at the end (read beside RSS), and
    the pauses from before the sessions were opened to the end (connects included)."""
    if start is None or end is None or len(times) < 2:
        res.notes.append("could not read /metrics at the start and end of the window")
        return
    if before_open is not None:
        run = gc_window(before_open, end)
        res.gc_run_pauses, res.gc_run_p99_ms = run["count"], run["p99_ms"]
        res.gc_run_max_ms = run["window_max_ms"]
        res.gc_run_max_exact = run["window_max_exact"]
    gcw = gc_window(start, end)
    res.gc_window_s = times[1] - times[0]
    res.gc_pauses, res.gc_full_pauses = gcw["count"], gcw["gen2"]
    res.gc_p99_ms, res.gc_max_ms = gcw["p99_ms"], gcw["max_ms"]
    res.gc_window_max_ms, res.gc_window_max_exact = gcw["window_max_ms"], gcw["window_max_exact"]
    lag = lag_window(start, end)
    if lag["count"]:
        res.lag_p99_ms, res.lag_over_5ms = lag["p99_ms"], lag["over"]
        res.lag_window_max_ms = lag["window_max_ms"]
        res.lag_window_max_exact = lag["window_max_exact"]
    res.buffer_bytes = buffer_bytes(end)
    if math.isnan(res.buffer_bytes):
        res.notes.append("/metrics has no voxgate_session_buffer_bytes")
    if gcw["count"] == 0 and not any(k[0].startswith("voxgate_gc_pause_") for k in end):
        res.notes.append("/metrics has no voxgate_gc_pause_* series")


def _totals(res: RunResult, sessions: list[ClientWS]) -> None:
    res.sent = sum(s.sent for s in sessions)
    res.received = sum(s.received for s in sessions)
    res.lost = res.sent - res.received
    res.out_of_order = sum(s.out_of_order for s in sessions)
    res.misrouted = sum(s.misrouted for s in sessions)
    res.error_events = sum(s.errors for s in sessions)
    res.other_events = sum(s.other_events for s in sessions)
    res.gateway_events = sum(s.gateway_events for s in sessions)
    res.acks_sent = sum(s.acks for s in sessions)
    res.closed_early = sum(1 for s in sessions if s.closed_early)
    first_error = next((s.first_error for s in sessions if s.first_error), "")
    if first_error:
        res.notes.append(f"{res.error_events} error events, e.g. {first_error}")
    if res.closed_early:
        res.notes.append(f"{res.closed_early} sessions closed by the server during the run")


def _window_stats(
    res: RunResult,
    snaps: list[dict[str, Any]],
    meter: Meter,
    m: int,
    has_relay: bool,
    relay_core: int | None,
    load_core: int | None,
    foreign_limit: float,
) -> None:
    """Everything measured over the window, from the clean slices only.

    The window is cut into SLICE_NS slices. A slice in which other processes used more than
    foreign_limit % of either core, and the slice after it (backlog), is contended; latency,
    CPU and frame counts come from the other slices, so a burst of someone else's work on a
    shared machine does not decide the result. Frames lost are counted over the whole run.
    """
    slices = list(itertools.pairwise(snaps))
    clean: list[bool] = []
    foreign_r: list[float] = []
    foreign_l: list[float] = []
    for a, b in slices:
        dt = b["t"] - a["t"]
        fr = fl = 0.0
        if has_relay and relay_core is not None:
            busy, irq = _busy(a, b, relay_core, dt)
            fr = max(0.0, 100 * (busy - irq - (b["relay"] - a["relay"])) / dt)
        if load_core is not None:
            busy, irq = _busy(a, b, load_core, dt)
            own = (b["echo"] - a["echo"]) + (b["self"] - a["self"])
            fl = max(0.0, 100 * (busy - irq - own) / dt)
        foreign_r.append(fr)
        foreign_l.append(fl)
        clean.append(fr <= foreign_limit and fl <= foreign_limit)
    # A contended slice leaves a backlog behind it: drop the slice after it too.
    ok = [c and (i == 0 or clean[i - 1]) for i, c in enumerate(clean)]
    res.slices = len(ok)
    res.clean_slices = sum(ok)
    if res.clean_slices == 0:  # nothing clean: report everything, judged as noisy
        ok = [True] * len(ok)
        res.notes.append("no slice of the window was free of other load")

    def total(key: str) -> float:
        return sum(b[key] - a[key] for (a, b), use in zip(slices, ok, strict=True) if use)

    window = total("t")
    res.window_s = window
    res.frames_in_window = int(total("sent") + total("received"))
    res.echo_cpu_pct = 100 * total("echo") / window
    res.loadgen_cpu_pct = 100 * total("self") / window
    res.relay_core_foreign_pct = float(np.mean(foreign_r)) if has_relay else NAN
    res.load_core_foreign_pct = float(np.mean(foreign_l))
    if load_core is not None:
        busy, irq = _busy_total(slices, ok, load_core)
        res.load_core_busy_pct = 100 * busy / window
        res.load_core_irq_pct = 100 * irq / window
    if meter.lats:
        lats = np.asarray(meter.lats, dtype=np.float64) / 1e6
        edges = np.asarray([snap["t_ns"] for snap in snaps], dtype=np.int64)
        idx = np.searchsorted(edges, np.asarray(meter.sent_at, dtype=np.int64), "right") - 1
        idx = np.clip(idx, 0, len(ok) - 1)
        lats = lats[np.asarray(ok, dtype=bool)[idx]]
        if lats.size:
            res.samples = int(lats.size)
            res.rtt_p50_ms, res.rtt_p99_ms = (float(x) for x in np.percentile(lats, [50, 99]))
            res.rtt_max_ms = float(lats.max())
    if not has_relay:
        return
    relay_cpu = total("relay")
    res.relay_cpu_pct = 100 * relay_cpu / window
    if res.frames_in_window:
        res.relay_cpu_us_per_frame = 1e6 * relay_cpu / res.frames_in_window
    if res.relay_cpu_pct > 0:
        res.estimate_sessions = 0.8 / (res.relay_cpu_pct / 100 / m)
    if relay_core is not None:
        busy, irq = _busy_total(slices, ok, relay_core)
        res.relay_core_busy_pct = 100 * busy / window
        res.relay_core_irq_pct = 100 * irq / window


def _busy_total(
    slices: list[tuple[dict[str, Any], dict[str, Any]]], ok: list[bool], core: int
) -> tuple[float, float]:
    busy = irq = 0.0
    for (a, b), use in zip(slices, ok, strict=True):
        if use:
            bu, ir = _busy(a, b, core, b["t"] - a["t"])
            busy += bu
            irq += ir
    return busy, irq


def _busy(
    snap0: dict[str, Any], snap1: dict[str, Any], core: int, window: float
) -> tuple[float, float]:
    """(busy, irq) seconds of one core over the window; busy = window - idle - iowait."""
    idle = snap1["cores"][core][0] - snap0["cores"][core][0]
    irq = snap1["cores"][core][1] - snap0["cores"][core][1]
    return max(0.0, window - idle), irq
