"""Response latency of the local engine through voxgate, at real-time pace, and its WER.

Starts ``python -m voxgate serve --backend local`` as a subprocess (pinned to one core with
``taskset -c 0`` unless ``--no-pin``), streams synthesised questions (voxgate's espeak-ng,
voice alloy at 0.8, like the tests) in 20 ms chunks paced by the clock, each chunk sent when
its 20 ms have "been captured", and measures, per turn, the time from the end of speech in
the stream to the first ``response.output_audio.delta``. End of speech is the end of the last
20 ms frame above -40 dBFS in the clip (espeak appends a few hundred ms of near-silence,
which does not count as speech). Word error rate comes from the engine's input transcripts.
Also reported: end of speech -> ``speech_stopped`` (the turn-end decision, which must wait
``silence_duration_ms`` = 200), split into where the engine put the end of speech
(``audio_end_ms`` of ``speech_stopped``, against the clip's) and how late the event came after
``audio_end_ms`` + 200 ms of stream time; ``speech_stopped`` -> first audio; the server's
CPU seconds per second of session audio; the machine's load average (1 min) before and
after each level (other processes share the cores).
espeak-ng is not bit-exact run to run, so the clips (and their tails) vary a little per run.

Then it runs 1, 2, 4, 8 sessions talking at once and reports p50/p95 for each, and how many
sessions one core carries before p95 doubles.

    .venv/bin/python bench/response_latency.py            # full run (~6 min)
    .venv/bin/python bench/response_latency.py --quick    # 1 and 2 sessions, 6 turns each
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from voxgate.backends.local.tts import get_tts

QUESTIONS = [
    "What is a stop loss order?",
    "What is a limit order?",
    "What is a market order?",
    "What is a stop limit order?",
    "What is a trailing stop?",
    "What is a take profit order?",
    "What is a margin call?",
    "What is margin?",
    "What is leverage?",
    "What is the spread?",
    "What is slippage?",
    "What is the bid and ask?",
    "What is liquidity?",
    "What is volatility?",
    "What is a long position?",
    "What is short selling?",
    "What is a dividend?",
    "What is a pip?",
    "What is a candlestick chart?",
    "What is the order book?",
]
RATE_HZ = 24_000
CHUNK_MS = 20
LEAD_MS = 400
TRAIL_MS = 1500
SILENCE_MS = 200  # the default server_vad silence_duration_ms
KEY = "vk-bench"


@dataclass
class Clip:
    text: str
    pcm: bytes
    speech_end_ms: float


@dataclass
class Results:
    latencies_ms: list[float] = field(default_factory=list)
    #: end of speech -> ``speech_stopped`` (the turn-end decision, silence window included)
    stopped_ms: list[float] = field(default_factory=list)
    #: the engine's end of speech (``audio_end_ms``) minus the clip's
    engine_end_ms: list[float] = field(default_factory=list)
    #: ``speech_stopped`` arrival minus the time its audio (``audio_end_ms`` + silence) was sent
    stopped_late_ms: list[float] = field(default_factory=list)
    #: ``speech_stopped`` -> first audio delta
    after_stopped_ms: list[float] = field(default_factory=list)
    transcripts: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    audio_s: float = 0.0


def make_clip(text: str) -> Clip:
    speech = get_tts().synthesize_pcm16(text, rate=RATE_HZ, voice="alloy", speed=0.8)
    samples = np.frombuffer(speech, dtype="<i2").astype(np.float64) / 32768
    frame = RATE_HZ * CHUNK_MS // 1000
    last = 0
    for i in range(0, len(samples) - frame + 1, frame):
        rms = float(np.sqrt(np.mean(samples[i : i + frame] ** 2)))
        if rms > 10 ** (-40 / 20):
            last = i + frame
    lead = b"\0\0" * (RATE_HZ * LEAD_MS // 1000)
    trail = b"\0\0" * (RATE_HZ * TRAIL_MS // 1000)
    return Clip(text, lead + speech + trail, LEAD_MS + last * 1000 / RATE_HZ)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def wer(pairs: list[tuple[str, str]]) -> float:
    errors = total = 0
    for ref, hyp in pairs:
        r, h = words(ref), words(hyp)
        d = list(range(len(h) + 1))
        for i in range(1, len(r) + 1):
            prev, d[0] = d[0], i
            for j in range(1, len(h) + 1):
                cur = min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
                prev, d[j] = d[j], cur
        errors += d[len(h)]
        total += len(r)
    return errors / max(1, total)


async def one_session(url: str, clips: list[Clip], results: Results) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
        update = {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {"input": {"transcription": {"model": "whisper-1"}}},
            },
        }
        await ws.send_str(json.dumps(update))
        loop = asyncio.get_running_loop()
        sent_ms = 0.0  # session audio time at the start of the clip
        for clip in clips:
            done = asyncio.Event()
            first_audio: list[float] = []
            stopped: list[float] = []
            audio_end: list[float] = []
            transcript: list[str] = []

            async def reader(
                done: asyncio.Event = done,
                first_audio: list[float] = first_audio,
                stopped: list[float] = stopped,
                audio_end: list[float] = audio_end,
                transcript: list[str] = transcript,
            ) -> None:
                async for msg in ws:
                    event = json.loads(msg.data)
                    kind = event["type"]
                    if kind == "response.output_audio.delta" and not first_audio:
                        first_audio.append(loop.time())
                    elif kind == "input_audio_buffer.speech_stopped" and not stopped:
                        stopped.append(loop.time())
                        audio_end.append(float(event["audio_end_ms"]))
                    elif kind == "conversation.item.input_audio_transcription.completed":
                        transcript.append(event["transcript"])
                    elif kind == "error":
                        results.errors.append(event["error"].get("code") or "error")
                    elif kind == "response.done":
                        done.set()
                        return

            task = asyncio.create_task(reader())
            start = loop.time()
            step = RATE_HZ * 2 * CHUNK_MS // 1000
            clip_sent_ms = 0.0
            for i in range(0, len(clip.pcm), step):
                # a chunk is sent once its 20 ms have been "captured" (real-time pace)
                await asyncio.sleep(max(0.0, start + (i + step) / (RATE_HZ * 2) - loop.time()))
                if done.is_set():
                    break
                chunk = base64.b64encode(clip.pcm[i : i + step]).decode()
                await ws.send_str(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
                results.audio_s += CHUNK_MS / 1000
                clip_sent_ms = (i + step) / (RATE_HZ * 2) * 1000
            try:
                async with asyncio.timeout(15):
                    await done.wait()
            except TimeoutError:
                results.errors.append("timeout")
            task.cancel()
            if first_audio:
                results.latencies_ms.append((first_audio[0] - start) * 1000 - clip.speech_end_ms)
            if stopped:
                results.stopped_ms.append((stopped[0] - start) * 1000 - clip.speech_end_ms)
                end_in_clip = audio_end[0] - sent_ms
                results.engine_end_ms.append(end_in_clip - clip.speech_end_ms)
                # the chunk that completed the silence was sent when its 20 ms had passed
                due = CHUNK_MS * -(-(end_in_clip + SILENCE_MS) // CHUNK_MS)
                results.stopped_late_ms.append((stopped[0] - start) * 1000 - due)
                if first_audio:
                    results.after_stopped_ms.append((first_audio[0] - stopped[0]) * 1000)
            sent_ms += clip_sent_ms
            results.transcripts.append((clip.text, transcript[0] if transcript else ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, *, pin: bool, final: str) -> subprocess.Popen[bytes]:
    """voxgate with the local engine; pinned, it must run on core 0 alone (taskset -c 0)."""
    env = dict(
        os.environ,
        VOXGATE_API_KEYS=KEY,
        VOXGATE_LOCAL_ASR_FINAL=final,
        VOXGATE_LOCAL_ASR_DECODERS="8",
        VOXGATE_LOG_LEVEL="warning",
    )
    cmd = [sys.executable, "-m", "voxgate", "serve", "--backend", "local", "--port", str(port)]
    if pin and shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_ready(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200 and (await resp.json()).get("warm"):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)  # polling a starting process
    raise TimeoutError("voxgate did not become ready")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds used by process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def run(args: argparse.Namespace) -> dict[str, object]:
    clips = [make_clip(q) for q in QUESTIONS]
    port = free_port()
    proc = start_server(port, pin=not args.no_pin, final=args.final)
    report: dict[str, object] = {"final_decode": args.final, "pinned": not args.no_pin}
    try:
        await wait_ready(port)
        url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
        levels = [1, 2] if args.quick else [int(n) for n in args.levels.split(",")]
        per_level = {}
        for n in levels:
            turns = clips[: 6 if args.quick else (20 if n == 1 else 8)] * args.rounds
            res = Results()
            load_before = os.getloadavg()[0]
            cpu_before = cpu_s(proc.pid)
            await asyncio.gather(*(one_session(url, turns, res) for _ in range(n)))
            cpu = cpu_s(proc.pid) - cpu_before
            lat = res.latencies_ms
            per_level[n] = {
                "turns": len(lat),
                "p50_ms": round(pct(lat, 50)),
                "p95_ms": round(pct(lat, 95)),
                "mean_ms": round(statistics.fmean(lat)) if lat else None,
                "speech_stopped_p50_ms": round(pct(res.stopped_ms, 50)),
                "speech_stopped_p95_ms": round(pct(res.stopped_ms, 95)),
                "engine_end_after_clip_end_p50_ms": round(pct(res.engine_end_ms, 50)),
                "speech_stopped_late_p50_ms": round(pct(res.stopped_late_ms, 50)),
                "speech_stopped_late_p95_ms": round(pct(res.stopped_late_ms, 95)),
                "first_audio_after_stopped_p50_ms": round(pct(res.after_stopped_ms, 50)),
                "first_audio_after_stopped_p95_ms": round(pct(res.after_stopped_ms, 95)),
                "cpu_s_per_session_s": round(cpu / max(res.audio_s, 1e-9), 3),
                "wer": round(wer(res.transcripts), 3),
                "errors": res.errors,
                "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                "per_turn_ms": {
                    "first_audio": [round(v) for v in lat],
                    "speech_stopped": [round(v) for v in res.stopped_ms],
                    "first_audio_after_stopped": [round(v) for v in res.after_stopped_ms],
                },
            }
            shown = {k: v for k, v in per_level[n].items() if k != "per_turn_ms"}
            print(f"sessions={n}: {shown}", flush=True)
        report["levels"] = per_level
        base = per_level[min(per_level)]["p95_ms"]
        carried = max((n for n in per_level if per_level[n]["p95_ms"] <= 2 * base), default=1)
        report["sessions_per_core_before_p95_doubles"] = carried
    finally:
        proc.terminate()
        proc.wait(10)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--levels", default="1,2,4,8", help="sessions at once, e.g. 1,4")
    parser.add_argument("--no-pin", action="store_true", help="do not pin voxgate to core 0")
    parser.add_argument("--final", choices=["stream", "batch"], default="stream")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    parser.add_argument(
        "--rounds", type=int, default=1, help="play each level's questions this many times"
    )
    args = parser.parse_args()
    report = asyncio.run(run(args))
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
