"""What the other ways in cost: beta translation and the HTTP/SSE fallback against plain GA.

Issue 15. One ``voxgate serve --backend openai`` process in front of the echo upstream
(``bench/echo_upstream.py``: one ``response.output_audio.delta`` back per
``input_audio_buffer.append``, carrying the same audio). In the same run, in interleaved
rounds, the same load goes through three ways in:

* ``ga``: a GA WebSocket client sending text appends (the baseline);
* ``beta``: the same client with ``OpenAI-Beta: realtime=v1`` (translated both ways; audio
  renamed at the head of each delta);
* ``sse``: the HTTP fallback as voxgate's JS client uses it: raw PCM frames POSTed to
  ``…/audio`` (one request per 20 ms frame, one in flight per client), deltas read from the
  ``text/event-stream``.

Each client streams 20 ms PCM16 frames at real time; the first bytes of each frame carry its
number, so the echo's delta tells the client which frame came back. Reported per way in: the
round-trip time per frame (client send → voxgate → echo → voxgate → client; p50/p90/p99), the
latency it adds over GA (p50 and p99 differences), and voxgate's CPU per frame (utime+stime of
the voxgate process over the round, divided by the frames that came back), with the ratio to
GA. Run: ``python bench/ways_in.py [--clients 20] [--seconds 8] [--rounds 3] [--json out]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from relay_procs import (
    BENCH_DIR,
    CLIENT_KEY,
    Proc,
    cpu_seconds,
    free_port,
    voxgate_command,
    wait_healthy,
)

FRAME_BYTES = 960  # 20 ms of PCM16 at 24 kHz
FRAME_S = 0.02
MODES = ("ga", "beta", "sse")
_DELTA_KEY = '"delta":"'


@dataclass
class Round:
    mode: str
    rtts_ms: list[float] = field(default_factory=list)
    sent: int = 0
    cpu_s: float = 0.0

    @property
    def frames(self) -> int:
        return len(self.rtts_ms)


def frame(client: int, seq: int) -> bytes:
    return struct.pack("<II", client, seq) + bytes(FRAME_BYTES - 8)


def frame_id(audio_b64: str) -> tuple[int, int]:
    head = base64.b64decode(audio_b64[:12])
    client, seq = struct.unpack("<II", head[:8])
    return client, seq


class Clock:
    """Send times per (client, frame); a returning delta becomes one RTT sample."""

    def __init__(self, result: Round) -> None:
        self.sent_at: dict[tuple[int, int], float] = {}
        self.result = result

    def sent(self, key: tuple[int, int]) -> None:
        self.sent_at[key] = time.perf_counter()
        self.result.sent += 1

    def back(self, text: str) -> None:
        i = text.find(_DELTA_KEY)
        if i < 0:
            return
        key = frame_id(text[i + len(_DELTA_KEY) : i + len(_DELTA_KEY) + 12])
        at = self.sent_at.pop(key, None)
        if at is not None:
            self.result.rtts_ms.append((time.perf_counter() - at) * 1000)


async def paced(seconds: float, send: Callable[[int], Awaitable[None]]) -> None:
    """Call ``send(seq)`` every 20 ms for ``seconds`` (the audio is real-time paced)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for seq in range(int(seconds / FRAME_S)):
        await asyncio.sleep(max(0.0, start + seq * FRAME_S - loop.time()))  # pacing, not sync
        await send(seq)


async def ws_client(base: str, n: int, seconds: float, clock: Clock, beta: bool) -> None:
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    if beta:
        headers["OpenAI-Beta"] = "realtime=v1"
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            f"{base.replace('http', 'ws')}/v1/realtime?model=gpt-realtime", headers=headers
        ) as ws,
    ):
        first = await ws.receive(timeout=10)
        assert '"session.created"' in first.data, first.data

        async def reader() -> None:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    clock.back(msg.data)

        task = asyncio.create_task(reader())

        async def send(seq: int) -> None:
            audio = base64.b64encode(frame(n, seq)).decode()
            clock.sent((n, seq))
            await ws.send_str('{"type":"input_audio_buffer.append","audio":"' + audio + '"}')

        await paced(seconds, send)
        await asyncio.sleep(0.5)  # let the last frames come back (a drain, not a sync)
        task.cancel()


async def sse_client(base: str, n: int, seconds: float, clock: Clock) -> None:
    async with aiohttp.ClientSession() as http:
        auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
        async with http.post(f"{base}/v1/realtime/sse?model=gpt-realtime", headers=auth) as r:
            s = await r.json()
        token = {"Authorization": f"Bearer {s['token']}"}
        created = asyncio.Event()

        async def reader() -> None:
            async with http.get(base + s["events"], headers=token, timeout=None) as events:
                async for raw in events.content:
                    line = raw.decode()
                    if line.startswith("data: "):
                        if '"session.created"' in line:
                            created.set()
                        clock.back(line)

        task = asyncio.create_task(reader())
        await asyncio.wait_for(created.wait(), 10)
        batch = 0

        async def send(seq: int) -> None:
            nonlocal batch
            batch += 1
            clock.sent((n, seq))
            headers = {**token, "X-Voxgate-Batch": str(batch)}
            async with http.post(base + s["audio"], data=frame(n, seq), headers=headers) as r:
                await r.read()

        await paced(seconds, send)
        await asyncio.sleep(0.5)
        task.cancel()
        async with http.delete(f"{base}/v1/realtime/sse/{s['id']}", headers=token) as r:
            await r.read()


async def one_round(mode: str, base: str, voxgate: Proc, clients: int, seconds: float) -> Round:
    result = Round(mode)
    clock = Clock(result)
    if mode == "sse":
        runs = [sse_client(base, n, seconds, clock) for n in range(clients)]
    else:
        runs = [ws_client(base, n, seconds, clock, mode == "beta") for n in range(clients)]
    cpu0 = cpu_seconds(voxgate.pids())
    await asyncio.gather(*runs)
    result.cpu_s = cpu_seconds(voxgate.pids()) - cpu0
    return result


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def report(rounds: list[Round], clients: int, seconds: float) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for mode in MODES:
        mine = [r for r in rounds if r.mode == mode]
        rtts = [x for r in mine for x in r.rtts_ms]
        frames = sum(r.frames for r in mine)
        out[mode] = {
            "frames": frames,
            "lost": sum(r.sent for r in mine) - frames,
            "rtt_p50_ms": pct(rtts, 0.5),
            "rtt_p90_ms": pct(rtts, 0.9),
            "rtt_p99_ms": pct(rtts, 0.99),
            "cpu_us_per_frame": statistics.median(r.cpu_s / max(r.frames, 1) for r in mine) * 1e6,
        }
    ga = out["ga"]
    for mode in MODES:
        row = out[mode]
        row["added_p50_ms"] = row["rtt_p50_ms"] - ga["rtt_p50_ms"]
        row["added_p99_ms"] = row["rtt_p99_ms"] - ga["rtt_p99_ms"]
        row["cpu_ratio_vs_ga"] = row["cpu_us_per_frame"] / ga["cpu_us_per_frame"]
    print(f"\n{clients} clients x {seconds:g} s of 20 ms frames per round; voxgate CPU per frame")
    print("is one round trip (append in, delta out). Medians over rounds for CPU.\n")
    head = f"{'way in':<6} {'frames':>7} {'lost':>5} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7}"
    print(head + f" {'+p50':>6} {'+p99':>6} {'CPU us/frame':>13} {'x GA':>5}")
    for mode in MODES:
        r = out[mode]
        print(
            f"{mode:<6} {r['frames']:>7.0f} {r['lost']:>5.0f} {r['rtt_p50_ms']:>7.2f} "
            f"{r['rtt_p90_ms']:>7.2f} {r['rtt_p99_ms']:>7.2f} {r['added_p50_ms']:>+6.2f} "
            f"{r['added_p99_ms']:>+6.2f} {r['cpu_us_per_frame']:>13.1f} "
            f"{r['cpu_ratio_vs_ga']:>5.2f}"
        )
    return out


def micro() -> dict[str, float]:
    """The translation work per frame alone, in process (no sockets): microseconds per call."""
    from voxgate.protocol.beta import BetaTranslator
    from voxgate.transports.sse_leg import sse_event

    audio = base64.b64encode(frame(0, 0)).decode()
    append = '{"type":"input_audio_buffer.append","audio":"' + audio + '"}'
    delta = (
        '{"type":"response.output_audio.delta","event_id":"event_1x1","response_id":"resp_1",'
        '"item_id":"item_1","output_index":0,"content_index":0,"delta":"' + audio + '"}'
    )
    t = BetaTranslator()
    cases = {
        "beta client_to_ga(append)": lambda: t.client_to_ga(append),
        "beta server_to_beta(audio delta)": lambda: t.server_to_beta(delta),
        "sse_event(audio delta)": lambda: sse_event(1, delta).encode(),
    }
    out = {}
    for name, call in cases.items():
        n = 200_000
        start = time.perf_counter()
        for _ in range(n):
            call()
        out[name] = (time.perf_counter() - start) / n * 1e6
    print("\nper-frame work alone (in process, 20 ms PCM16 frame):")
    for name, us in out.items():
        print(f"  {name:<34} {us:6.2f} us")
    return out


async def main(args: argparse.Namespace) -> None:
    logs = Path(tempfile.mkdtemp(prefix="ways-in-"))
    echo_port, port = free_port(), free_port()
    echo = Proc(
        "echo",
        [sys.executable, str(BENCH_DIR / "echo_upstream.py"), "--port", str(echo_port)],
        {},
        logs,
    )
    argv, env = voxgate_command(port, f"ws://127.0.0.1:{echo_port}/v1/realtime")
    voxgate = Proc("voxgate", argv, env, logs)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(f"http://127.0.0.1:{echo_port}/healthz", echo)
        await wait_healthy(f"{base}/healthz", voxgate)
        await one_round("ga", base, voxgate, 2, 1.0)  # warm up every path once
        await one_round("beta", base, voxgate, 2, 1.0)
        await one_round("sse", base, voxgate, 2, 1.0)
        rounds = []
        for _ in range(args.rounds):
            for mode in MODES:
                rounds.append(await one_round(mode, base, voxgate, args.clients, args.seconds))
        result: dict[str, object] = {**report(rounds, args.clients, args.seconds)}
        result["micro_us"] = micro()
        if args.json:
            data = orjson.dumps(result, option=orjson.OPT_INDENT_2)
            await asyncio.to_thread(Path(args.json).write_bytes, data)
    finally:
        voxgate.stop()
        echo.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="write the numbers here too")
    asyncio.run(main(parser.parse_args()))
