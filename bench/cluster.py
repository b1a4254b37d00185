"""Several nodes on Redis (issue 17): what a node death costs, what Redis carries, what it costs.

Three measurements, one run, real processes (redis-server, ``voxgate serve`` nodes, nginx; the
fake upstream and the clients run in this process, as in tests/test_cluster.py):

1. **Node death to audio flowing again** (``--kills``, default 20): a ``voxgate.v1`` client
   speaks (binary audio, server VAD), the answer starts streaming, the node holding the call is
   killed (``kill -9``); measured from the kill to the first output audio delta of the answer
   the rebuilt session asks for again, and to the ``voxgate.session.resumed`` event. The killed
   node is started again before the next round. p50/p95/max.
2. **Redis traffic per session-second** (``--sessions``, ``--seconds``): that many calls stream
   input audio in real time (20 ms frames) and take a text turn every 2 s; Redis's own
   ``INFO`` counters (commands, bytes in and out) over the window, divided by session-seconds.
3. **Relay CPU, Redis store against memory store, same run**: one node with
   ``VOXGATE_REDIS_URL`` and one without, same load as (2), rounds interleaved; CPU seconds of
   the node process (``/proc/<pid>/stat``) per session-second.

    .venv/bin/python bench/cluster.py                 # ~4 minutes
    .venv/bin/python bench/cluster.py --kills 5 --sessions 10 --seconds 8 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cluster_client import V1Client  # noqa: E402
from cluster_helpers import Cluster, cluster, mint_key, wait_for_owner  # noqa: E402
from gateway_helpers import UPSTREAM_KEY  # noqa: E402
from voxgate.session.snapshot import decode  # noqa: E402
from voxgate.testing import FakeRealtimeServer  # noqa: E402
from voxgate.testing.responder import ResponseContext, Say  # noqa: E402

SPEECH = (b"\x00\x10" * 480) * 40  # 0.8 s of a loud signal, 20 ms frames of 960 bytes
SILENCE = b"\x00\x00" * 480 * 60  # 1.2 s
FRAME = 960  # 20 ms of 24 kHz PCM16
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _answer(ctx: ResponseContext) -> list[Say]:
    return [Say("This answer is long enough to be cut in the middle by a dying node. " * 2)]


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def snapshot_running(c: Cluster, sid: str) -> None:
    async with asyncio.timeout(20):
        while True:
            stored = await c.store.load_snapshot(sid)
            if stored is not None and decode(stored.head, stored.items).running:
                return
            await asyncio.sleep(0.01)


async def one_kill(c: Cluster) -> dict[str, float]:
    key = await mint_key(c.http, "bench")
    client = V1Client(c.url, key)
    await client.start()
    try:
        await client.wait_for(lambda e: e.get("type") == "session.created")
        for audio in (SPEECH, SILENCE):
            for at in range(0, len(audio), FRAME):
                await client.send_audio(audio[at : at + FRAME])
        await client.wait_type("response.output_audio.delta")
        sid = client.session_id
        assert sid is not None
        owner = await wait_for_owner(c, sid)
        await snapshot_running(c, sid)
        victim = c.index_of(owner.node)
        mark = len(client.events)
        killed = time.monotonic()
        await c.kill(victim)
        resumed = await client.wait_resumes(1)
        delta = await client.wait_type("response.output_audio.delta", mark, timeout_s=30)
        flowing = time.monotonic()
        del delta
        await c.start_node(victim)
        return {
            "resumed_ms": (resumed.resumed_at - killed) * 1000,
            "audio_ms": (flowing - killed) * 1000,
        }
    finally:
        await client.close()


async def kills(n: int, tmp: Path) -> None:
    async with (
        FakeRealtimeServer(
            api_keys={UPSTREAM_KEY}, responder=_answer, ping_interval_s=None, response_pacing_s=0.02
        ) as fake,
        cluster(fake.url, tmp) as c,
    ):
        rows = [await one_kill(c) for _ in range(n)]
    for name in ("resumed_ms", "audio_ms"):
        values = [r[name] for r in rows]
        print(
            f"  kill -9 -> {name[:-3]:8s} n={len(values)} p50={pct(values, 0.5):7.1f} ms "
            f"p95={pct(values, 0.95):7.1f} ms max={max(values):7.1f} ms"
        )


async def _stream(client: V1Client, seconds: float) -> None:
    """Real-time input audio, a text turn every 2 s."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    frame = b"\x00\x00" * 480
    n = 0
    while (elapsed := loop.time() - start) < seconds:
        await client.send_audio(frame)
        n += 1
        if n % 100 == 0:
            await client.send(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": f"turn {n}"}],
                    },
                }
            )
            await client.send({"type": "response.create"})
        await asyncio.sleep(max(0.0, start + n * 0.02 - loop.time()))
    del elapsed


async def load(url: str, sessions: int, seconds: float, http: str) -> None:
    keys = await asyncio.gather(*(mint_key(http, f"load-{i}") for i in range(sessions)))
    clients = [V1Client(url, key) for key in keys]
    await asyncio.gather(*(c.start() for c in clients))
    await asyncio.gather(*(c.wait_type("session.created") for c in clients))
    try:
        await asyncio.gather(*(_stream(c, seconds) for c in clients))
    finally:
        await asyncio.gather(*(c.close() for c in clients))


def redis_info(c: Cluster) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in c.redis.cli("INFO", "stats").splitlines():
        key, _, value = line.partition(":")
        if key in ("total_commands_processed", "total_net_input_bytes", "total_net_output_bytes"):
            out[key] = float(value)
    out["scripts"] = 0.0  # script calls (snapshot writes, slots, resume state, heartbeats)
    for line in c.redis.cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_evalsha:"):
            stats = dict(part.split("=") for part in line.split(":", 1)[1].split(","))
            out["scripts"] = float(stats["calls"])
    return out


async def traffic_and_cpu(sessions: int, seconds: float, rounds: int, tmp: Path) -> None:
    async with (
        FakeRealtimeServer(api_keys={UPSTREAM_KEY}, ping_interval_s=None) as fake,
        cluster(fake.url, tmp, n=1) as redis_node,
        cluster(fake.url, tmp / "mem", n=1, VOXGATE_REDIS_URL="") as memory_node,
    ):
        results: dict[str, list[float]] = {"redis": [], "memory": []}
        traffic: list[dict[str, float]] = []
        for _ in range(rounds):
            for name, c in (("memory", memory_node), ("redis", redis_node)):
                proc = c.nodes[0].proc
                assert proc is not None
                pid = proc.proc.pid
                before_cpu, before_redis = cpu_s(pid), redis_info(redis_node)
                await load(c.node_url(0), sessions, seconds, c.node_http(0))
                used = cpu_s(pid) - before_cpu
                results[name].append(used / (sessions * seconds))
                if name == "redis":
                    after = redis_info(redis_node)
                    traffic.append(
                        {k: (after[k] - before_redis[k]) / (sessions * seconds) for k in after}
                    )
        for name, values in results.items():
            print(
                f"  node CPU per session-second, {name:6s} store: "
                f"{statistics.mean(values) * 1000:6.2f} ms (rounds: "
                + ", ".join(f"{v * 1000:.2f}" for v in values)
                + ")"
            )
        ratio = statistics.mean(results["redis"]) / statistics.mean(results["memory"])
        print(f"  redis / memory CPU: {ratio:.3f}")
        t: dict[str, Any] = {k: statistics.mean(r[k] for r in traffic) for k in traffic[0]}
        print(
            f"  Redis per session-second: {t['scripts']:.2f} script calls, "
            f"{t['total_commands_processed']:.2f} commands (those inside scripts included), "
            f"{t['total_net_input_bytes']:.0f} B in, {t['total_net_output_bytes']:.0f} B out"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vg-bench-cluster-") as tmp:
        if args.kills:
            print(f"node death (kill -9) to audio, {args.kills} kills, 3 nodes behind nginx:")
            await kills(args.kills, Path(tmp) / "kills")
        print(f"Redis traffic and relay CPU, {args.sessions} sessions x {args.seconds:g} s:")
        await traffic_and_cpu(args.sessions, args.seconds, args.rounds, Path(tmp) / "load")


if __name__ == "__main__":
    asyncio.run(main())
