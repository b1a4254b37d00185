"""Relay benchmark: N concurrent real-time voice sessions through a relay pinned to one core.

For every session count N it measures, in one invocation and against the same echo upstream:

* ``direct``  -- the load generator talking straight to the echo upstream (the floor);
* ``pipe``    -- the minimal aiohttp pipe (``bench/pipe_baseline.py``);
* ``json``    -- the naive stdlib-json relay (``bench/json_relay_baseline.py``);
* ``voxgate`` -- ``python -m voxgate serve --backend openai`` with its defaults, relaying to
  the echo upstream (``voxgate-norecover``: the same with upstream recovery off).

Each relay runs as its own process pinned to the first allowed core (``taskset -c``); the load
generator (this process) and the echo upstream share the second. Every session sends one
20 ms PCM16 24 kHz frame (960 bytes) every 20 ms on a shared clock, staggered evenly across the
20 ms period, and gets it back as ``response.output_audio.delta``; it never commits, and the
echo announces ``turn_detection: null`` by default (push-to-talk), so a relay that mirrors the
session keeps the whole stretch of speech. voxgate relays get ``--clients mixed`` by default:
odd-indexed sessions are ``voxgate.v1`` clients sending binary frames and acknowledging events
once a second, the rest stock text clients; ``direct``, ``pipe`` and ``json`` always get text
clients. The first 18 bytes of each frame carry the session index, a sequence number and the
monotonic send time, so echoes are matched without parsing JSON.

Reported per relay and N: round-trip p50/p99, added p50/p99 (relay percentile minus the
direct percentile at the same N), frames lost, relay CPU % of one core and CPU µs per relayed
frame (both directions counted), RSS per session, and for voxgate (from its ``/metrics``) GC
pauses in the window (count, p99 from the histogram buckets, longest since start), what its
session buffers hold per session and RSS per session above those buffers. Sessions per core is
the largest passing N; the estimate 0.8 / (CPU per session) is printed beside it.

    .venv/bin/python bench/relay.py                      # full sweep, about 5 minutes
    .venv/bin/python bench/relay.py --quick              # 100 sessions, 3 s each, < 60 s
    .venv/bin/python bench/relay.py --relays pipe --sessions 5 --duration 2   # smoke
    .venv/bin/python bench/relay.py --json               # also write bench/results/*.json

Modules: ``relay_procs.py`` (processes, /proc, /metrics), ``relay_client.py`` (the RFC 6455
client), ``relay_load.py`` (one run), this file (orchestration and report). See
bench/README.md for the method and how to read the output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from relay_load import CLIENT_KINDS, RunResult, run_load
from relay_procs import (
    ALL_RELAYS,
    BENCH_DIR,
    RELAYS,
    Proc,
    RelaySpec,
    choose_cores,
    core_seconds,
    cpu_model,
    cpu_seconds,
    free_port,
    pinned,
    rss_kib,
    voxgate_available,
    wait_healthy,
)
from relay_report import fmt, nan_to_none, print_summary, print_table, print_versus, summarize

RESULTS_DIR = BENCH_DIR / "results"
P99_LIMIT_MS = 20.0
FULL_SESSIONS = (50, 100, 200, 250, 300)
TURN_DETECTION = ("none", "server_vad")


# --------------------------------------------------------------------------- orchestration


@dataclass
class Bench:
    args: argparse.Namespace
    relay_core: int | None
    load_core: int | None
    log_dir: Path
    echo: Proc | None = None
    echo_url: str = ""
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str], core: int | None) -> Proc:
        proc = Proc(name, pinned(argv, core), env, self.log_dir)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc)

    async def start_echo(self) -> None:
        port = free_port()
        argv = [sys.executable, str(BENCH_DIR / "echo_upstream.py"), "--port", str(port)]
        argv += ["--turn-detection", self.args.turn_detection]
        self.echo = self.start("echo", argv, dict(os.environ), self.load_core)
        await wait_healthy(f"http://127.0.0.1:{port}/healthz", self.echo)
        self.echo_url = f"ws://127.0.0.1:{port}/v1/realtime"

    def echo_pids(self) -> list[int]:
        assert self.echo is not None
        return self.echo.pids()

    async def quiet(self) -> float:
        """Wait (up to ``--quiet-wait`` s) for a second in which other processes used at most
        ``--quiet-pct`` of each core; returns how long it waited (0 when disabled)."""
        cores = [c for c in (self.relay_core, self.load_core) if c is not None]
        if not self.args.quiet_wait or not cores:
            return 0.0
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.args.quiet_wait:
            own0, cores0, w0 = self._own_cpu_s(), core_seconds(cores), time.monotonic()
            await asyncio.sleep(1.0)  # a measurement interval, not synchronisation
            own1, cores1, wall = self._own_cpu_s(), core_seconds(cores), time.monotonic() - w0
            foreign = [
                100 * (wall - (cores1[c][0] - cores0[c][0]) - (cores1[c][1] - cores0[c][1])) / wall
                - (100 * (own1 - own0) / wall if c == self.load_core else 0.0)
                for c in cores
            ]
            if max(foreign) <= self.args.quiet_pct:
                break
        return time.monotonic() - t0

    def _own_cpu_s(self) -> float:
        """CPU seconds of this process and the echo (both on the load core)."""
        return cpu_seconds([os.getpid(), *(self.echo.pids() if self.echo else [])])

    async def run_direct(self, n: int) -> RunResult:
        return await run_load(
            "direct",
            f"{self.echo_url}?model=gpt-realtime",
            n,
            self.args.duration,
            self.args.warmup,
            None,
            self.echo_pids,
            None,
            self.load_core,
            foreign_limit=self.args.foreign_limit,
        )

    async def run_relay(self, spec: RelaySpec, n: int) -> RunResult:
        port = free_port()
        argv, env = spec.command(port, self.echo_url)
        proc = self.start(spec.name, argv, env, self.relay_core)
        clients = self.args.clients if spec.v1 else "text"
        try:
            await wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, limit_s=60)
            url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
            # Warm up (imports, first-session code paths of both client kinds) before the
            # idle RSS reading.
            warm = await run_load(
                spec.name,
                url,
                2,
                0.4,
                0.1,
                proc.pids,
                self.echo_pids,
                self.relay_core,
                self.load_core,
                1.0,
                clients=clients,
            )
            if warm.connected == 0:
                res = RunResult(target=spec.name, sessions=n, duration_s=self.args.duration)
                res.connect_failed = n
                res.notes.append("warm-up session could not connect: " + "; ".join(warm.notes))
                res.notes.append(proc.log_tail(5))
                return res
            await asyncio.sleep(0.3)
            idle = rss_kib(proc.pids())
            res = await run_load(
                spec.name,
                url,
                n,
                self.args.duration,
                self.args.warmup,
                proc.pids,
                self.echo_pids,
                self.relay_core,
                self.load_core,
                foreign_limit=self.args.foreign_limit,
                clients=clients,
                metrics_url=f"http://127.0.0.1:{port}/metrics" if spec.v1 else None,
            )
            per_session(res, idle)
            if proc.popen.poll() is not None:
                res.notes.append(f"relay exited with {proc.popen.returncode}: {proc.log_tail(5)}")
            return res
        finally:
            self.stop(proc)


def per_session(res: RunResult, idle_kib: int) -> None:
    """RSS per session, buffers per session and RSS per session above the buffers' contents."""
    res.relay_idle_rss_kib = idle_kib
    if not res.connected:
        return
    grown = res.relay_rss_kib - idle_kib
    res.rss_per_session_kib = grown / res.connected
    if res.buffer_bytes == res.buffer_bytes:  # not NaN: the relay exports its buffers
        res.buffers_per_session_kib = res.buffer_bytes / 1024 / res.connected
        res.rss_above_buffers_kib = (grown - res.buffer_bytes / 1024) / res.connected


def judge(res: RunResult, direct: RunResult | None) -> None:
    """Added latencies against the direct floor, and whether the point passes.

    A floor measured under other load is no floor (its p99 can be seconds): the point is then
    judged on its raw round trip, and says so.
    """
    if direct is not None and contended(direct):
        res.notes.append("the direct floor was noisy: added latency unreliable, judged on rtt")
    if direct is not None and direct.samples and res.samples:
        res.added_p50_ms = res.rtt_p50_ms - direct.rtt_p50_ms
        res.added_p99_ms = res.rtt_p99_ms - direct.rtt_p99_ms
        added99 = res.rtt_p99_ms if contended(direct) else res.added_p99_ms
    else:
        added99 = res.rtt_p99_ms  # no floor measured: judge on the raw round trip
    res.passed = bool(
        res.connect_failed == 0
        and res.connected == res.sessions
        and res.sent > 0
        and res.lost == 0
        and res.closed_early == 0
        and res.samples > 0
        and added99 <= P99_LIMIT_MS
    )


def contended(res: RunResult) -> bool:
    """Was more than half of the window lost to other processes' load on the cores?"""
    return res.slices > 0 and res.clean_slices < 0.5 * res.slices


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Relay benchmark: voxgate vs a minimal aiohttp pipe vs a json relay.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sessions", default=None, help="comma-separated session counts")
    p.add_argument("--duration", type=float, default=None, help="seconds of audio per run")
    p.add_argument("--warmup", type=float, default=None, help="seconds before the window opens")
    p.add_argument(
        "--relays", default="pipe,json,voxgate", help=f"comma-separated subset of {ALL_RELAYS}"
    )
    p.add_argument("--quick", action="store_true", help="100 sessions, 3 s per run (< 60 s)")
    p.add_argument(
        "--clients",
        choices=CLIENT_KINDS,
        default="mixed",
        help="clients of voxgate relays: stock text, voxgate.v1 binary, or mixed (odd-indexed"
        " sessions binary); direct, pipe and json always get text clients",
    )
    p.add_argument(
        "--turn-detection",
        choices=TURN_DETECTION,
        default="none",
        help="what the echo's session.created announces: none (push-to-talk, the client"
        " never commits: a mirror keeps all pending audio) or server_vad",
    )
    p.add_argument("--ref-sessions", type=int, default=100, help="N for the summary row")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each point, wait up to this many s for a quiet second (0: don't)",
    )
    p.add_argument(
        "--quiet-pct",
        type=float,
        default=25.0,
        help="%% of a core used by other processes that still counts as quiet",
    )
    p.add_argument("--no-direct", action="store_true", help="skip the direct-to-echo floor")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument(
        "--keep-going",
        action="store_true",
        help="keep raising N for a relay after it fails a point that was not noisy",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=1,
        help="measure a failing point again when other processes loaded the cores",
    )
    p.add_argument(
        "--foreign-limit",
        type=float,
        default=20.0,
        help="%% of a core used by other processes that marks a 250 ms slice as contended",
    )
    p.add_argument(
        "--json",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="write results as JSON (default path: bench/results/relay-<time>.json)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.sessions = args.sessions or "100"
        args.duration = args.duration or 3.0
        args.warmup = args.warmup if args.warmup is not None else 1.0
    args.sessions = [
        int(x) for x in (args.sessions or ",".join(map(str, FULL_SESSIONS))).split(",")
    ]
    args.duration = args.duration or 8.0
    if args.warmup is None:
        args.warmup = min(2.0, args.duration / 4)
    args.relays = [r.strip() for r in args.relays.split(",") if r.strip()]
    unknown = set(args.relays) - set(ALL_RELAYS)
    if unknown:
        p.error(f"unknown relays: {sorted(unknown)}")
    return args


def _header(args: argparse.Namespace, relays: list[str], cores: tuple[Any, Any]) -> None:
    print(
        f"relay core {cores[0]}, load generator + echo core {cores[1]};"
        f" sessions {args.sessions}; {args.duration:g} s per run ({args.warmup:g} s warm-up);"
        f" relays {relays}"
    )
    kinds = {
        "text": "all text (stock clients, base64 appends)",
        "binary": "all binary (voxgate.v1: raw PCM16 frames, acks ~1/s)",
        "mixed": "mixed (odd-indexed sessions voxgate.v1 binary with acks ~1/s, the rest text)",
    }
    print(
        f"clients: voxgate relays {kinds[args.clients]}; direct, pipe and json always text."
        f" echo turn_detection: {args.turn_detection}"
        + (" (push-to-talk: nobody commits)" if args.turn_detection == "none" else "")
    )


async def _measure_direct(bench: Bench, args: argparse.Namespace, n: int) -> RunResult:
    direct = None
    for attempt in range(args.retries + 1):
        waited = await bench.quiet()
        direct = await bench.run_direct(n)
        direct.quiet_wait_s = waited
        judge(direct, None)
        if not contended(direct) or attempt == args.retries:
            break
        print(f"N={n:<4} direct   other load on the cores, measuring again")
    assert direct is not None
    line = f"N={n:<4} direct   rtt p50 {fmt(direct.rtt_p50_ms)} p99 {fmt(direct.rtt_p99_ms)} ms"
    print(
        f"{line}, lost {direct.lost}, load generator + echo"
        f" {fmt(direct.loadgen_cpu_pct + direct.echo_cpu_pct, '.0f')} % of a core"
    )
    if direct.lost or direct.connect_failed:
        print(f"warning: direct run lost frames at N={n}: the harness is saturated")
    return direct


async def _measure_relay(
    bench: Bench, args: argparse.Namespace, name: str, n: int, direct: RunResult | None
) -> RunResult:
    for attempt in range(args.retries + 1):
        waited = await bench.quiet()
        res = await bench.run_relay(RELAYS[name], n)
        res.quiet_wait_s = waited
        judge(res, direct)
        if res.passed or not contended(res):
            break
        if attempt < args.retries:
            print(f"N={n:<4} {name:<8} failed under other load, measuring again")
    if contended(res):
        res.notes.append("noisy point: other processes loaded the cores most of the time")
    gc_part = ""
    if res.gc_pauses is not None:
        gc_part = (
            f", gc {res.gc_pauses} pauses p99 {fmt(res.gc_p99_ms, '.1f')}"
            f" max {fmt(res.gc_max_ms, '.1f')} ms"
        )
    print(
        f"N={n:<4} {name:<8} add p50 {fmt(res.added_p50_ms)} p99 {fmt(res.added_p99_ms)} ms,"
        f" lost {res.lost}, cpu {fmt(res.relay_cpu_pct, '.1f')} %,"
        f" {fmt(res.relay_cpu_us_per_frame, '.1f')} µs/frame{gc_part}"
        f" -> {'pass' if res.passed else 'FAIL'}"
        f"; clean {res.clean_slices}/{res.slices}, waited {res.quiet_wait_s:.0f} s for quiet"
    )
    return res


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    relay_core, load_core = choose_cores(args.no_pin)
    if load_core is not None:
        os.sched_setaffinity(0, {load_core})
    else:
        print("warning: not pinning (need taskset and 2 allowed cores); numbers are noisier")
    relays = list(args.relays)
    skipped: dict[str, str] = {}
    if any(RELAYS[r].v1 for r in relays):
        ok, why = voxgate_available()
        if not ok:
            for r in [r for r in relays if RELAYS[r].v1]:
                relays.remove(r)
                skipped[r] = why
            print(f"note: voxgate skipped, `python -m voxgate serve --help` failed: {why}")

    log_dir = Path(tempfile.mkdtemp(prefix="voxgate-bench-"))
    bench = Bench(args, relay_core, load_core, log_dir)
    rows: dict[str, list[RunResult]] = {"direct": []} | {r: [] for r in relays}
    alive = set(relays)
    started = time.time()
    _header(args, relays, (relay_core, load_core))
    try:
        await bench.start_echo()
        for n in args.sessions:
            direct = None
            if not args.no_direct:
                direct = await _measure_direct(bench, args, n)
                rows["direct"].append(direct)
            for name in relays:
                if name not in alive:
                    continue
                res = await _measure_relay(bench, args, name, n, direct)
                rows[name].append(res)
                # A point lost to other people's load says nothing about the relay's capacity.
                if not res.passed and not contended(res) and not args.keep_going:
                    alive.discard(name)
    finally:
        bench.stop_all()
        shutil.rmtree(log_dir, ignore_errors=True)

    if not args.no_direct:
        print_table(
            "direct", "load generator straight to the echo upstream (the floor)", rows["direct"]
        )
    for name in relays:
        print_table(name, RELAYS[name].describe, rows[name])
    summary = {name: summarize(rows[name], args.ref_sessions) for name in relays}
    print_summary(summary, args.ref_sessions)
    print_versus(rows, relays)
    for name, why in skipped.items():
        print(f"\n{name}: not measured ({why})")
    print(f"\ntotal {time.time() - started:.0f} s")
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": {
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model(),
            "relay_core": relay_core,
            "load_core": load_core,
        },
        "args": {k: v for k, v in vars(args).items() if k != "json"},
        "clients": {name: args.clients if RELAYS[name].v1 else "text" for name in relays},
        "skipped": skipped,
        "runs": {name: [asdict(r) for r in rs] for name, rs in rows.items()},
        "summary": summary,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(amain(args))
    if args.json is not None:
        path = (
            Path(args.json)
            if args.json
            else RESULTS_DIR / time.strftime("relay-%Y%m%d-%H%M%S.json")
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(nan_to_none(report), indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
