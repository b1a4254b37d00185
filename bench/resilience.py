"""Resilience benchmarks (issues #6 and #7): reconnect, resume, mirror, memory, heartbeat.

    .venv/bin/python bench/resilience.py reconnect   # 20 upstream cuts: time to traffic again
    .venv/bin/python bench/resilience.py resume      # 20 client resumes: time to caught up
    .venv/bin/python bench/resilience.py mirror      # 60-minute simulated call: mirror size, CPU
    .venv/bin/python bench/resilience.py memory      # voxgate RSS per session; stalled client
    .venv/bin/python bench/resilience.py heartbeat   # ping->pong RTT under load; dropped sessions
    .venv/bin/python bench/resilience.py all --json  # everything, JSON in bench/results/

voxgate runs as ``python -m voxgate serve --backend openai`` pinned to the first allowed core
(``taskset``); this process (clients, ``FaultProxy``, ``FakeRealtimeServer``), the echo upstream
(``bench/echo_upstream.py``) and the probe process share the second. Each subcommand prints a
table; ``--json [PATH]`` also writes ``bench/results/resilience-<command>-<time>.json``.
See bench/README.md ("Resilience benchmarks") for the method and how to read the output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import relay_procs
from resilience_clients import (
    Inbox,
    Mic,
    now,
    open_stock,
    open_v1,
    resume_v1,
    text_item,
)
from resilience_common import UPSTREAM_KEY, Procs, Voxgate, dist, f, fgn, machine, measured, table
from resilience_common import write_json as _write_json
from resilience_load import cmd_heartbeat, cmd_memory, probe_main
from resilience_mirror import simulate
from voxgate.observability.logging import configure_logging
from voxgate.testing import ConnectionRecord, FakeRealtimeServer, FaultProxy

MIB = 1024 * 1024
TEXT_ONLY = {
    "type": "session.update",
    "session": {"type": "realtime", "output_modalities": ["text"]},
}


def status_of(event: Any) -> str:
    return str(event["response"]["status"] if isinstance(event, dict) else event.response.status)


def ms(a: float, b: float) -> float:
    return (b - a) * 1000


# --------------------------------------------------------------------------- reconnect


async def reconnect_run(
    args: argparse.Namespace, procs: Procs, kind: str, audio: bool
) -> dict[str, Any]:
    """One session, ``args.cuts`` upstream cuts, each followed at once by ``response.create``."""
    async with (
        FakeRealtimeServer(api_keys={UPSTREAM_KEY}, ping_interval_s=None) as fake,
        FaultProxy("127.0.0.1", fake.port) as proxy,
    ):
        vg = await procs.voxgate(proxy.url_for(fake.url), VOXGATE_LOG_LEVEL="info")
        cuts: list[dict[str, Any]] = []
        try:
            client = await (open_v1(vg.ws_url) if kind == "v1" else open_stock(vg.port))
            inbox: Inbox = client.inbox
            await inbox.wait_type("session.created")
            await client.send(TEXT_ONLY)
            await inbox.wait_type("session.updated")
            mic = Mic()
            mic_task = asyncio.create_task(mic.run(client.send)) if audio else None
            await asyncio.sleep(1.2 if audio else 0)  # the mirror holds its idle second of audio
            for i in range(args.cuts):
                mark = len(inbox.events)
                await client.send(text_item(f"turn {i}"))
                await inbox.wait_type("conversation.item.done", mark)
                mark = len(inbox.events)
                t_cut = now()
                proxy.cut()
                await client.send({"type": "response.create"})
                k, t_created, _ = await inbox.wait_type("response.created", mark)
                _, _, done = await inbox.wait_type("response.done", k)
                cut: dict[str, Any] = {
                    "created_ms": ms(t_cut, t_created),
                    "status": status_of(done),
                }
                if kind == "v1":
                    going = inbox.find("voxgate.upstream.reconnecting", mark)
                    back = inbox.find("voxgate.upstream.reconnected", mark)
                    cut["reconnecting_ms"] = ms(t_cut, going[0]) if going else None
                    if back:
                        cut["reconnected_ms"] = ms(t_cut, back[0])
                        cut["gap_ms"] = back[1]["gap_ms"]
                        cut["audio_resent_ms"] = back[1]["audio_resent_ms"]
                        cut["replayed_items"] = back[1]["replayed_items"]
                cuts.append(cut)
                await asyncio.sleep(args.pause)
            mic.stop.set()
            if mic_task is not None:
                await mic_task
            checked = await check_audio(bytes(mic.pcm), list(fake.connections)) if audio else {}
            errors = len(inbox.of("error"))
            await client.close()
        finally:
            log = vg.log()
            procs.stop(vg.proc)
    _merge_log(cuts, log)
    return {
        "client": kind,
        "audio": audio,
        "cuts": cuts,
        "errors": errors,
        "audio_check": checked,
        # Connections that carried the session; `voxgate serve` also opens one at start-up to
        # check the upstream is reachable (backends/probe.py: session.created, then close) and
        # sends nothing on it.
        "upstream_connections": sum(1 for rec in fake.connections if rec.client_events),
        "probe_connections": sum(1 for rec in fake.connections if not rec.client_events),
    }


async def check_audio(stream: bytes, records: list[ConnectionRecord]) -> dict[str, Any]:
    """What each upstream received, against what the client sent.

    Each upstream must hold one contiguous slice of the client's stream (no byte twice, none
    out of order), start no later than where the one before it ended (no gap) and the last
    must end where the stream ends. ``overlap_ms``: audio a new upstream got again.
    """

    def span(rec: ConnectionRecord) -> tuple[int, int] | None:
        got = rec.audio.all_bytes()
        at = stream.find(got) if got else -1
        return (at, at + len(got)) if at >= 0 else None

    last = records[-1]
    with contextlib.suppress(TimeoutError):
        await last.wait_until(
            lambda: True if (sp := span(last)) and sp[1] == len(stream) else None, 3.0, "tail"
        )
    spans = [span(r) for r in records if r.audio.total_appended]
    found = [sp for sp in spans if sp is not None]
    pairs = list(itertools.pairwise(found))
    return {
        "upstreams": len(spans),
        "not_a_slice": len(spans) - len(found),
        "gaps": sum(b[0] > a[1] for a, b in pairs),
        "overlap_ms": [(a[1] - b[0]) / 48 for a, b in pairs],
        "tail_ok": bool(found) and found[-1][1] == len(stream),
        "stream_ms": len(stream) / 48,
    }


def _merge_log(cuts: list[dict[str, Any]], log: list[dict[str, Any]]) -> None:
    """voxgate's own view of each reconnect, in order: gap, attempts, frames it held."""
    seen: list[dict[str, Any]] = []
    for rec in log:
        if rec.get("event") == "upstream.reconnected":
            seen.append(
                {
                    "log_gap_ms": rec.get("gap_ms"),
                    "attempt": rec.get("attempt"),
                    "audio_resent_bytes": rec.get("audio_resent_bytes"),
                    "held_events": 0,
                    "held_bytes": 0,
                }
            )
        elif rec.get("event") == "prebuffer.flushed" and seen:
            seen[-1]["held_events"], seen[-1]["held_bytes"] = rec.get("events"), rec.get("bytes")
    for cut, extra in zip(cuts, seen, strict=False):
        cut.update(extra)


def _col(cuts: list[dict[str, Any]], key: str) -> list[float]:
    return [float(c[key]) for c in cuts if c.get(key) is not None]


async def cmd_reconnect(args: argparse.Namespace, procs: Procs) -> dict[str, Any]:
    runs = []
    for kind in args.clients.split(","):
        for audio in (False, True):
            res, res["contention"] = await measured(
                procs, args, reconnect_run(args, procs, kind, audio)
            )
            runs.append(res)
            bad = [c for c in res["cuts"] if c["status"] != "completed"]
            print(
                f"reconnect {kind:<5} audio={'on ' if audio else 'off'}: {len(res['cuts'])} cuts,"
                f" {len(bad)} responses not completed, {res['errors']} error events,"
                f" {sum((c.get('attempt') or 1) > 1 for c in res['cuts'])} needed >1 attempt;"
                f" {fgn(res['contention'])}"
            )
            if audio:
                print(f"   audio check: {res['audio_check']}")
    rows = []
    for res in runs:
        for key, label in (
            ("reconnecting_ms", "cut->reconnecting"),
            ("reconnected_ms", "cut->reconnected"),
            ("created_ms", "cut->response.created"),
            ("gap_ms", "gap_ms (event)"),
            ("log_gap_ms", "gap_ms (log)"),
        ):
            d = dist(_col(res["cuts"], key))
            if d["n"]:
                rows.append(
                    [
                        res["client"],
                        "on" if res["audio"] else "off",
                        label,
                        d["n"],
                        d["p50"],
                        d["p95"],
                        d["max"],
                    ]
                )
    table(
        "reconnect: ms from proxy.cut() (20 ms audio streaming: on/off)",
        ["client", "audio", "measure", "n", "p50", "p95", "max"],
        rows,
    )
    rows = []
    for res in runs:
        if res["audio"]:
            c = res["cuts"]
            rows.append(
                [
                    res["client"],
                    dist(_col(c, "held_events"))["p50"],
                    dist(_col(c, "held_bytes"))["max"],
                    dist(_col(c, "audio_resent_bytes"))["p50"] / 48,
                    max(_col(c, "attempt") or [0]),
                ]
            )
    table(
        "reconnect with audio: what voxgate held and re-sent per cut (from its log)",
        ["client", "held frames p50", "held bytes max", "audio resent ms p50", "max attempt"],
        rows,
    )
    return {"runs": runs}


# --------------------------------------------------------------------------- resume


async def resume_trial(
    args: argparse.Namespace,
    vg: Voxgate,
    fake: FakeRealtimeServer,
    proxy: FaultProxy,
    streaming: bool,
) -> dict[str, Any]:
    """Open via the proxy, cut, wait ``gap``, resume straight to voxgate; check the events."""
    first_conn = fake.accepted_count + 1
    c = await open_v1(f"ws://127.0.0.1:{proxy.port}/v1/realtime?model=gpt-realtime")
    await c.inbox.wait_type("session.created")
    token = (await c.inbox.wait_type("voxgate.session.resumable"))[2]["resume_token"]
    record = await fake.wait_for_connection(first_conn)
    if streaming:
        words = " ".join(f"w{i}" for i in range(args.words))
        await c.send(text_item(words))
        await c.send({"type": "response.create"})
        await c.inbox.wait_type("response.output_audio.delta")
    proxy.cut()
    await asyncio.sleep(args.gap)  # the outage under test
    assert c.inbox.task is not None
    await c.inbox.task
    t0 = now()
    back, opened = await resume_v1(vg.ws_url, token, c.inbox.counted)
    _, t_first, first = await back.inbox.wait(lambda _t, _e: True)
    out: dict[str, Any] = {
        "streaming": streaming,
        "connect_ms": ms(t0, opened),
        "resumed_ms": ms(opened, t_first),
        "type": first["type"],
    }
    if first["type"] == "voxgate.session.resumed":
        k = int(first["replayed_events"])
        _, t_last, _ = await back.inbox.wait(lambda _t, _e: back.inbox.counted >= k)
        out.update(
            replayed=k, last_ms=ms(opened, t_last), replayed_bytes=sum(back.frame_bytes[1 : k + 1])
        )
        if streaming:
            await back.inbox.wait_type("response.done")
        with contextlib.suppress(TimeoutError):  # rate_limits.updated follows response.done
            await back.inbox.wait(
                lambda _t, _e: len(_ids(c.inbox, back.inbox)) >= len(record.sent_events),
                timeout_s=2.0,
            )
        got = _ids(c.inbox, back.inbox)
        sent = [e.get("event_id") for e in record.sent_events]
        out["exact"] = got == sent
        if got != sent:
            out["mismatch"] = {
                "got": len(got),
                "sent": len(sent),
                "dupes": len(got) - len(set(got)),
                "missing": len(set(sent) - set(got)),
            }
    await back.close()
    await c.close()
    return out


def _ids(*inboxes: Inbox) -> list[Any]:
    return [
        e.get("event_id")
        for ib in inboxes
        for _, t, e in ib.events
        if not t.startswith("voxgate.session.")
    ]


async def cmd_resume(args: argparse.Namespace, procs: Procs) -> dict[str, Any]:
    async with FakeRealtimeServer(api_keys={UPSTREAM_KEY}, ping_interval_s=None) as fake:
        vg = await procs.voxgate(fake.url)
        trials: list[dict[str, Any]] = []
        contention = {}
        try:
            async with FaultProxy("127.0.0.1", vg.port) as proxy:
                for streaming in (False, True):
                    fake.response_pacing_s = args.pacing if streaming else 0.0

                    async def variant(streaming: bool = streaming) -> list[dict[str, Any]]:
                        return [
                            await resume_trial(args, vg, fake, proxy, streaming)
                            for _ in range(args.resumes)
                        ]

                    done, contention[streaming] = await measured(procs, args, variant())
                    trials += done
            metrics = await vg.metrics()
        finally:
            procs.stop(vg.proc)
    rows = []
    for streaming in (False, True):
        ts = [t for t in trials if t["streaming"] == streaming]
        ok = [t for t in ts if t["type"] == "voxgate.session.resumed"]
        for key, label in (
            ("connect_ms", "connect (TCP+upgrade)"),
            ("resumed_ms", "open->resumed"),
            ("last_ms", "open->last replayed"),
        ):
            d = dist([t[key] for t in ok if t.get(key) is not None])
            rows.append(["yes" if streaming else "no", label, d["n"], d["p50"], d["p95"], d["max"]])
        replayed = [t["replayed"] for t in ok]
        kib = [t["replayed_bytes"] / 1024 for t in ok]
        print(
            f"resume streaming={'yes' if streaming else 'no '}: {len(ok)}/{len(ts)} resumed,"
            f" {sum(bool(t.get('exact')) for t in ok)} exact (events == upstream's, in order,"
            f" none twice); replayed events {f(dist(replayed)['p50'])} p50"
            f" (max {f(max(replayed, default=0))}), {f(dist(kib)['p50'])} KiB p50"
        )
        for t in ts:
            if t["type"] != "voxgate.session.resumed" or not t.get("exact"):
                print(f"   BUG? {t}")
    table(
        f"resume: ms after a {args.gap:g} s outage (response streaming during the gap: yes/no)",
        ["stream", "measure", "n", "p50", "p95", "max"],
        rows,
    )
    return {
        "trials": trials,
        "contention": {str(k): v for k, v in contention.items()},
        "resume_outcomes": {
            k: v for k, v in metrics.items() if k.startswith("voxgate_client_resumes")
        },
    }


# --------------------------------------------------------------------------- mirror


def cmd_mirror(args: argparse.Namespace) -> dict[str, Any]:
    res = simulate(args.minutes)
    table(
        f"mirror: {args.minutes:g}-minute simulated call ({res.frames} appends,"
        f" {res.server_events} server events)",
        ["minute", "memory_bytes", "items", "dropped"],
        [
            [round(s["minute"]), int(s["memory_bytes"]), int(s["items"]), int(s["dropped_items"])]
            for s in res.samples[:: max(1, len(res.samples) // 12)] + res.samples[-1:]
        ],
    )
    kib = 1024
    table(
        "mirror: totals",
        ["measure", "value"],
        [
            ["memory_bytes() max KiB", res.memory_max_bytes / kib],
            [f"memory_bytes() at {args.minutes:g} min KiB", res.memory_end_bytes / kib],
            ["items kept / dropped", f"{res.items_kept} / {res.items_dropped}"],
            ["turn audio KiB (bound 1024)", res.turn_audio_bytes / kib],
            [
                "pending audio KiB / dropped",
                f"{res.pending_audio_bytes / kib:.1f} / {res.dropped_audio_bytes}",
            ],
            ["tracemalloc peak KiB", res.tracemalloc_peak_bytes / kib],
            ["tracemalloc at end KiB", res.tracemalloc_end_bytes / kib],
        ],
    )
    table(
        "mirror: CPU per 20 ms append (this thread's CPU time, interleaved blocks)",
        ["path", "ns/frame", "x plain loop"],
        [
            ["plain loop (no-op call)", res.plain_ns, 1.0],
            ["Recovery.sent_append", res.sent_append_ns, res.sent_append_ns / res.plain_ns],
            [
                "machine.client_text, no recovery",
                res.machine_plain_ns,
                res.machine_plain_ns / res.plain_ns,
            ],
            [
                "machine.client_text, recovery",
                res.machine_recovery_ns,
                res.machine_recovery_ns / res.plain_ns,
            ],
        ],
    )
    print(f"   on_server: {res.on_server_us:.1f} µs per server event (non-audio)")
    return dataclasses.asdict(res)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "command", choices=("reconnect", "resume", "mirror", "memory", "heartbeat", "all", "_probe")
    )
    p.add_argument("url", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--json", nargs="?", const="", default=None, metavar="PATH")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    g = p.add_argument_group("reconnect")
    g.add_argument("--cuts", type=int, default=20)
    g.add_argument("--pause", type=float, default=0.3, help="s between a response and next cut")
    g.add_argument("--clients", default="v1,stock", help="v1 (raw, voxgate.v1), stock (openai)")
    g = p.add_argument_group("resume")
    g.add_argument("--resumes", type=int, default=20, help="per variant")
    g.add_argument("--gap", type=float, default=1.0, help="outage before the resume, s")
    g.add_argument("--words", type=int, default=120, help="words in the streaming response")
    g.add_argument("--pacing", type=float, default=0.02, help="fake upstream s per word")
    g = p.add_argument_group("mirror")
    g.add_argument("--minutes", type=float, default=60.0)
    g = p.add_argument_group("memory")
    g.add_argument("--sessions", type=int, default=100)
    g.add_argument("--stream-s", type=float, default=10.0)
    g = p.add_argument_group("heartbeat")
    g.add_argument("--sessions-list", default="0,100,200,300")
    g.add_argument("--duration", type=float, default=15.0, help="s of load per point")
    g.add_argument("--interval", type=float, default=1.0, help="VOXGATE_PING_INTERVAL_S")
    g.add_argument("--probes", type=int, default=10)
    g.add_argument("--every", type=float, default=0.1, help="s between one probe's pings")
    g.add_argument("--silent", type=int, default=20, help="sessions that send nothing")
    g.add_argument("--hogs", type=int, default=0, help="busy loops sharing voxgate's core")
    p.add_argument("--quiet-pct", type=float, default=25.0, help="other load that counts as quiet")
    p.add_argument("--quiet-wait", type=float, default=30.0, help="s to wait for quiet (0: don't)")
    return p.parse_args(argv)


RUNNERS: dict[str, Callable[[argparse.Namespace, Procs], Awaitable[dict[str, Any]]]] = {
    "reconnect": cmd_reconnect,
    "resume": cmd_resume,
    "memory": cmd_memory,
    "heartbeat": cmd_heartbeat,
}


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    relay_core, load_core = relay_procs.choose_cores(args.no_pin)
    if load_core is not None:
        os.sched_setaffinity(0, {load_core})
    else:
        print("warning: not pinning (need taskset and 2 allowed cores); numbers are noisier")
    log_dir = Path(tempfile.mkdtemp(prefix="voxgate-resilience-"))
    procs = Procs(log_dir, relay_core, load_core)
    commands = ["reconnect", "resume", "mirror", "memory", "heartbeat"]
    report: dict[str, Any] = {
        "machine": machine(),
        "args": vars(args),
        "cores": {"voxgate": relay_core, "load": load_core},
    }
    try:
        for cmd in commands if args.command == "all" else [args.command]:
            t0 = time.monotonic()
            if cmd == "mirror":
                report[cmd] = cmd_mirror(args)
            else:
                report[cmd] = await RUNNERS[cmd](args, procs)
            print(f"({cmd}: {time.monotonic() - t0:.0f} s)")
    finally:
        procs.stop_all()
        shutil.rmtree(log_dir, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("warning")  # the fake upstream and the proxy log through structlog
    if args.command == "_probe":
        asyncio.run(probe_main(args))
        return 0
    report = asyncio.run(amain(args))
    if args.json is not None:
        print(f"wrote {_write_json(report, args.json, args.command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
