"""`resilience.py memory` and `resilience.py heartbeat`: voxgate under many sessions.

Both run voxgate pinned to one core against ``bench/echo_upstream.py`` (every append comes
back as an audio delta), with relay_client.py's cheap clients on the other core.

* memory: RSS per session idle and streaming, stock vs ``voxgate.v1`` clients, recovery on vs
  off (``VOXGATE_RECONNECT_ATTEMPTS=0``, no mirror), and the ceiling of one stalled client
  while the fake upstream pushes 64 MiB at it.
* heartbeat: ping->pong RTT of idle probe sessions (a separate process, ``_probe``) while N
  sessions stream, with an aggressive ``VOXGATE_PING_INTERVAL_S``; counts sessions voxgate
  declared dead (silent sessions that only answer its pings, and upstream heartbeats).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

import relay_client
import relay_load
import relay_procs
from relay_procs import BENCH_DIR
from resilience_clients import Probe, Silent, open_many, open_raw, stalled_client, stream
from resilience_common import (
    UPSTREAM_KEY,
    Procs,
    Snapshot,
    causes,
    dist,
    f,
    fgn,
    measured,
    pct,
    table,
)
from voxgate.testing import FakeRealtimeServer

# --------------------------------------------------------------------------- memory


async def memory_point(
    args: argparse.Namespace, procs: Procs, echo_url: str, kind: str, recovery: bool
) -> dict[str, Any]:
    env = {} if recovery else {"VOXGATE_RECONNECT_ATTEMPTS": "0"}
    vg = await procs.voxgate(echo_url, **env)
    proto = "voxgate.v1" if kind == "v1" else None
    try:
        warm, _ = await open_many(vg.ws_url, 2, proto)
        await stream(warm, 0.5, 1.0, lambda: None)
        await asyncio.gather(*(s.close() for s in warm))
        await asyncio.sleep(0.5)
        base = vg.rss_kib()
        sessions, failed = await open_many(vg.ws_url, args.sessions, proto)
        await asyncio.sleep(1.0)
        idle = vg.rss_kib()
        series: list[tuple[float, int]] = []
        t0 = time.monotonic()
        await stream(
            sessions,
            args.stream_s,
            1.0,
            lambda: series.append((time.monotonic() - t0, vg.rss_kib())),
        )
        await asyncio.sleep(0.5)
        closed = sum(s.closed_early for s in sessions)
        received = sum(s.received for s in sessions)
        await asyncio.gather(*(s.close() for s in sessions))
        await asyncio.sleep(1.0)
        after = vg.rss_kib()
    finally:
        procs.stop(vg.proc)
    n = max(1, len(sessions))
    return {
        "client": kind,
        "recovery": recovery,
        "sessions": len(sessions),
        "failed": len(failed),
        "closed_early": closed,
        "echoes": received,
        "rss_base_kib": base,
        "idle_kib_per_session": (idle - base) / n,
        "stream_kib_per_session": (max(r for _, r in series) - base) / n,
        "rss_series": series,
        "after_close_kib": after - base,
    }


async def stalled_point(procs: Procs, recovery: bool) -> dict[str, Any]:
    """One voxgate.v1 client that never reads while the upstream pushes 64 MiB at it."""
    env = {} if recovery else {"VOXGATE_RECONNECT_ATTEMPTS": "0"}
    async with FakeRealtimeServer(api_keys={UPSTREAM_KEY}, ping_interval_s=None) as fake:
        vg = await procs.voxgate(fake.url, **env)
        try:
            warm = await open_raw(vg.ws_url, 0)
            if isinstance(warm, relay_client.ClientWS):
                await warm.close()
            pre = vg.rss_kib()
            writer = await stalled_client(vg.port)
            record = await fake.wait_for_connection(fake.accepted_count + 1 if warm else 1)
            await asyncio.sleep(0.3)
            base = peak = vg.rss_kib()
            delta = {
                "type": "response.output_audio.delta",
                "event_id": "event_x",
                "response_id": "resp_x",
                "item_id": "item_x",
                "output_index": 0,
                "content_index": 0,
                "delta": "A" * (256 * 1024),
            }
            for _ in range(256):
                fake.send_raw(delta, record)
            t0 = time.monotonic()
            while not record.closed.is_set() and time.monotonic() - t0 < 60:
                peak = max(peak, vg.rss_kib())
                await asyncio.sleep(0.05)
            ended_s = time.monotonic() - t0 if record.closed.is_set() else None
            pulled = len(record.sent_of("response.output_audio.delta"))
            writer.close()
            await asyncio.sleep(0.5)
            after = vg.rss_kib()
            end_causes = causes(await vg.metrics())
        finally:
            procs.stop(vg.proc)
    return {
        "recovery": recovery,
        "rss_before_kib": pre,
        "rss_session_kib": base,
        "peak_growth_kib": peak - base,
        "after_end_kib": after - base,
        "session_ended_after_s": ended_s,
        "upstream_sent_of_256": pulled,
        "causes": end_causes,
    }


async def cmd_memory(args: argparse.Namespace, procs: Procs) -> dict[str, Any]:
    echo, echo_url = await procs.echo()
    points = []
    for recovery in (True, False):
        for kind in ("stock", "v1"):
            p, p["contention"] = await measured(
                procs, args, memory_point(args, procs, echo_url, kind, recovery)
            )
            points.append(p)
            print(
                f"memory {kind:<5} recovery={'on ' if recovery else 'off'}: {p['sessions']}"
                f" sessions ({p['failed']} failed, {p['closed_early']} closed early);"
                f" {fgn(p['contention'])}"
            )
    procs.stop(echo)
    by = {(p["client"], p["recovery"]): p for p in points}
    rows = []
    for kind in ("stock", "v1"):
        on, off = by[(kind, True)], by[(kind, False)]
        for key, label in (
            ("idle_kib_per_session", "idle"),
            ("stream_kib_per_session", f"streaming {args.stream_s:g} s"),
        ):
            rows.append(
                [
                    kind,
                    label,
                    on[key],
                    off[key],
                    on[key] - off[key],
                    on[key] / off[key] if off[key] > 0 else None,
                ]
            )
    table(
        f"memory: voxgate RSS KiB per session, {args.sessions} sessions"
        " (recovery on = default; off = VOXGATE_RECONNECT_ATTEMPTS=0, no mirror)",
        ["client", "state", "on", "off", "on-off", "on/off"],
        rows,
    )
    stalls = []
    for recovery in (True, False):
        st, st["contention"] = await measured(procs, args, stalled_point(procs, recovery))
        stalls.append(st)
        print(f"stalled client recovery={'on ' if recovery else 'off'}: {fgn(st['contention'])}")
    table(
        "memory: one stalled voxgate.v1 client, 64 MiB pushed (default VOXGATE_REPLAY_BYTES)",
        ["recovery", "peak growth KiB", "after end KiB", "ended after s", "upstream sent", "cause"],
        [
            [
                "on" if s["recovery"] else "off",
                s["peak_growth_kib"],
                s["after_end_kib"],
                s["session_ended_after_s"],
                s["upstream_sent_of_256"],
                ",".join(c for c in s["causes"] if c != "client_closed") or "-",
            ]
            for s in stalls
        ],
    )
    return {"points": points, "stalled": stalls}


# --------------------------------------------------------------------------- heartbeat


async def heartbeat_point(
    args: argparse.Namespace, procs: Procs, echo: relay_procs.Proc, echo_url: str, n: int
) -> dict[str, Any]:
    vg = await procs.voxgate(echo_url, VOXGATE_PING_INTERVAL_S=str(args.interval))
    # A noisy neighbour on demand: busy loops sharing voxgate's core (counted as foreign load).
    hog = [sys.executable, "-c", "while True: pass"]
    hogs = [procs.start(f"hog{i}", hog, {}, procs.relay_core) for i in range(args.hogs)]
    for h in hogs:
        procs.cores[h.pid] = -1  # not ours for the contention accounting
    try:
        silent, _ = await open_many(vg.ws_url, args.silent, cls=Silent)
        argv = [
            sys.executable,
            str(BENCH_DIR / "resilience.py"),
            "_probe",
            vg.ws_url,
            "--probes",
            str(args.probes),
            "--every",
            str(args.every),
        ]
        probe = await asyncio.create_subprocess_exec(
            *relay_procs.pinned(argv, procs.load_core),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=relay_procs.REPO_DIR,
        )
        assert probe.stdout is not None
        assert probe.stdin is not None
        procs.extra_load_pids[:] = [probe.pid]
        await probe.stdout.readline()  # "ready"
        t_call = time.monotonic_ns()
        snaps: list[Snapshot] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample(procs, snaps, stop))
        load = None
        if n:
            load = await relay_load.run_load(
                "voxgate",
                vg.ws_url,
                n,
                args.duration,
                1.0,
                vg.proc.pids,
                echo.pids,
                procs.relay_core,
                procs.load_core,
            )
            start = t_call + int((load.connect_s + 1.0) * 1e9)
            end = t_call + int((load.connect_s + args.duration) * 1e9)
        else:
            await asyncio.sleep(args.duration)
            start, end = t_call, time.monotonic_ns()
        stop.set()
        await sampler
        probe.stdin.write(b"stop\n")
        await probe.stdin.drain()
        report = json.loads(await probe.stdout.read())
        await probe.wait()
        dropped = sum(s.closed_early for s in silent)
        pinged = sum(s.pinged for s in silent)  # type: ignore[attr-defined]
        await asyncio.gather(*(s.close() for s in silent))
        await asyncio.sleep(0.3)
        end_causes = causes(await vg.metrics())
        up_timeouts = len(vg.log("upstream.heartbeat_timeout"))
    finally:
        procs.extra_load_pids.clear()
        for h in hogs:
            procs.stop(h)
        procs.stop(vg.proc)
    samples = [(sent, rtt / 1e6) for sent, rtt in report["samples"] if start <= sent <= end]
    rtts = [rtt for _, rtt in samples]
    window = [s for s in snaps if start / 1e9 <= s[0] <= end / 1e9]
    clean = procs.clean(window, args.quiet_pct)
    clean_rtts = [rtt for sent, rtt in samples if any(a <= sent / 1e9 < b for a, b in clean)]
    d = dist(rtts)
    return {
        "sessions": n,
        "probe_samples": len(rtts),
        "lost_pongs": report["lost"],
        "rtt_ms": {**d, "p99.9": pct(rtts, 99.9)},
        "clean_rtt_ms": {**dist(clean_rtts), "p99.9": pct(clean_rtts, 99.9)},
        "clean_slices": f"{len(clean)}/{max(0, len(window) - 1)}",
        "contention": procs.foreign(window[0], window[-1]) if len(window) > 1 else {},
        "silent_dropped": dropped,
        "silent_pinged": pinged,
        "streaming_closed": load.closed_early if load else 0,
        "upstream_heartbeat_timeouts": up_timeouts,
        "causes": end_causes,
        "load_rtt_p99_ms": load.rtt_p99_ms if load else None,
        "voxgate_cpu_pct": load.relay_cpu_pct if load else None,
        "lost_frames": load.lost if load else 0,
    }


async def _sample(procs: Procs, snaps: list[Snapshot], stop: asyncio.Event) -> None:
    """A /proc snapshot every 250 ms until ``stop`` (for the contention filter)."""
    while not stop.is_set():
        snaps.append(procs.snapshot())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)
    snaps.append(procs.snapshot())


async def cmd_heartbeat(args: argparse.Namespace, procs: Procs) -> dict[str, Any]:
    echo, echo_url = await procs.echo()
    points = []
    for n in [int(x) for x in args.sessions_list.split(",")]:
        if args.quiet_wait:
            await procs.quiet(args.quiet_pct, args.quiet_wait)
        p = await heartbeat_point(args, procs, echo, echo_url, n)
        points.append(p)
        print(
            f"heartbeat N={n}: pong p99 {f(p['rtt_ms']['p99'], '.2f')} ms,"
            f" max {f(p['rtt_ms']['max'], '.2f')} ms; silent sessions pinged by voxgate"
            f" {p['silent_pinged']} times, dropped {p['silent_dropped']}"
        )
    procs.stop(echo)
    table(
        f"heartbeat: ping->pong RTT ms of {args.probes} idle probes (one ping each per"
        f" {args.every:g} s; {args.hogs} busy loops on voxgate's core)"
        f", VOXGATE_PING_INTERVAL_S={args.interval:g}, {args.silent} silent"
        " sessions at risk",
        [
            "N",
            "clean",
            "fgn% vg/ld",
            "p50",
            "p99",
            "p99.9",
            "max",
            "clean p99",
            "clean max",
            "lost",
            "silent dropped",
            "up hb t/o",
            "load p99",
            "vg cpu%",
        ],
        [
            [
                p["sessions"],
                p["clean_slices"],
                "/".join(f(v, ".0f") for v in p["contention"].values()),
                p["rtt_ms"]["p50"],
                p["rtt_ms"]["p99"],
                p["rtt_ms"]["p99.9"],
                p["rtt_ms"]["max"],
                p["clean_rtt_ms"]["p99"],
                p["clean_rtt_ms"]["max"],
                p["lost_pongs"],
                p["silent_dropped"],
                p["upstream_heartbeat_timeouts"],
                p["load_rtt_p99_ms"],
                p["voxgate_cpu_pct"],
            ]
            for p in points
        ],
    )
    return {"points": points}


async def probe_main(args: argparse.Namespace) -> None:
    """``_probe``: idle sessions pinging every ``--every`` s (spread) until "stop" on stdin."""
    probes, _ = await open_many(args.url, args.probes, cls=Probe)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_stdin() -> None:
        loop.remove_reader(sys.stdin.fileno())
        stop.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    step, t0, j = args.every / max(1, len(probes)), time.monotonic(), 0
    while not stop.is_set() and probes:
        probes[j % len(probes)].ping()  # type: ignore[attr-defined]
        j += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, t0 + j * step - time.monotonic()))
    await asyncio.sleep(2.0)  # late pongs
    samples = [s for p in probes for s in p.samples]  # type: ignore[attr-defined]
    pings = sum(p.pings for p in probes)  # type: ignore[attr-defined]
    sys.stdout.write(json.dumps({"samples": samples, "lost": pings - len(samples)}))
