"""WebRTC calls: voice-to-voice latency against WebSocket, and CPU per call (issue 16).

**Latency** (same run, same server): voxgate with the local engine (``python -m voxgate serve
--backend local``, pinned to core 0 unless ``--no-pin``) takes the same synthesised questions
(espeak-ng, voice alloy at 0.8) from a WebSocket client and from a WebRTC caller (an aiortc
peer, tests/webrtc_peer.py), turn by turn, alternating. Both stream the clip in real time in
20 ms frames. Voice to voice is the time from the end of speech in the clip (last 20 ms frame
above -40 dBFS) to the first sound of the answer at the client:

* WebSocket: the arrival of the first ``response.output_audio.delta`` plus the audio before the
  first sample above -30 dBFS in the answer (a player starting at the first delta plays that
  sample then); the client's own playout buffer is not counted (the console's is 80 ms);
* WebRTC: the arrival of the first decoded frame above -30 dBFS from the remote track (Opus
  both ways with its 6.5 ms lookahead, RTP, voxgate's one-frame input buffer and real-time
  playout). The caller's receive buffer holds ``--client-jitter-frames`` (default 1, as
  voxgate's own input; aiortc's default is 4 = 80 ms); a browser's adaptive jitter buffer adds
  its own playout delay on top, typically 20-60 ms on a LAN.

After the first sound each turn is cut (``response.cancel``, and ``output_audio_buffer.clear``
over WebRTC) so the next question does not wait for a whole answer.

**CPU per call**: voxgate in front of bench/echo_upstream.py (every appended frame comes back
as the assistant's audio), pinned to core 0; N callers (bench/webrtc_peers.py) on core 1 stream
speech both ways all the time. Reported: voxgate's CPU seconds per second per call over a
measured window, for WebRTC and for WebSocket callers at the same N, the callers' received
audio frames per second and longest gap, and calls per core (0.8 core / CPU per call).

    .venv/bin/python bench/webrtc.py                 # both parts (~4 min)
    .venv/bin/python bench/webrtc.py --quick         # 4 turns each, N = 1, 4
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from response_latency import (  # noqa: E402
    KEY,
    QUESTIONS,
    Clip,
    cpu_s,
    free_port,
    make_clip,
    pct,
    wait_ready,
)
from webrtc_peer import Peer  # noqa: E402

LOUD = 1000  # int16 peak: about -30 dBFS
STEP = 960  # 20 ms of PCM16 24 kHz


# ------------------------------------------------------------------ processes


def _pinned(cmd: list[str], core: int | None) -> list[str]:
    if core is not None and shutil.which("taskset"):
        return ["taskset", "-c", str(core), *cmd]
    return cmd


def start_voxgate(port: int, core: int | None, **env: str) -> subprocess.Popen[bytes]:
    environ = dict(os.environ, VOXGATE_API_KEYS=KEY, VOXGATE_LOG_LEVEL="warning", **env)
    cmd = [sys.executable, "-m", "voxgate", "serve", "--port", str(port)]
    return subprocess.Popen(
        _pinned(cmd, core), env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)  # polling a starting process
    raise TimeoutError(url)


# ------------------------------------------------------------------ latency


def first_loud_offset_s(pcm: bytes) -> float | None:
    samples = np.frombuffer(pcm, dtype="<i2")
    loud = np.nonzero(np.abs(samples.astype(np.int32)) > LOUD)[0]
    return float(loud[0]) / 24_000 if loud.size else None


async def ws_turns(url: str, clips: list[Clip]) -> list[float]:
    out: list[float] = []
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
        loop = asyncio.get_running_loop()
        for clip in clips:
            first: list[float] = []
            done = asyncio.Event()

            async def reader(first: list[float] = first, done: asyncio.Event = done) -> None:
                before = b""
                t_first = 0.0
                async for msg in ws:
                    event = json.loads(msg.data)
                    kind = event["type"]
                    if kind == "response.output_audio.delta" and not first:
                        if not before:
                            t_first = loop.time()
                        before += base64.b64decode(event["delta"])
                        offset = first_loud_offset_s(before)
                        if offset is not None:
                            first.append(t_first + offset)
                            await ws.send_str('{"type":"response.cancel"}')
                    elif kind == "response.done":
                        done.set()
                        return

            task = asyncio.create_task(reader())
            start = loop.time()
            for i in range(0, len(clip.pcm), STEP):
                await asyncio.sleep(max(0.0, start + (i + STEP) / 48_000 - loop.time()))
                if done.is_set():
                    break
                chunk = base64.b64encode(clip.pcm[i : i + STEP]).decode()
                await ws.send_str('{"type":"input_audio_buffer.append","audio":"' + chunk + '"}')
            async with asyncio.timeout(20):
                await done.wait()
            task.cancel()
            if first:
                out.append((first[0] - start) * 1000 - clip.speech_end_ms)
    return out


async def webrtc_turns(url: str, clips: list[Clip], args_jitter_frames: int | None) -> list[float]:
    out: list[float] = []
    loop = asyncio.get_running_loop()
    async with Peer(keep_audio=False, jitter_frames=args_jitter_frames) as peer:
        mic = peer.mic
        assert mic is not None
        loud_at: list[float] = []
        peer.on_frame = lambda loud: loud_at.append(loop.time()) if loud else None
        await peer.call(url + "/v1/realtime/calls", KEY)
        await peer.wait_for("session.created")
        for n, clip in enumerate(clips, start=1):
            await mic.idle.wait()
            loud_at.clear()
            mic.say(clip.pcm)
            await peer.wait_for("response.created", count=n)
            await peer.wait_until(lambda: bool(loud_at), timeout_s=20)
            # The clip's first frame left the mic 20 ms after its capture began (as the
            # WebSocket client sends a chunk once its 20 ms are captured).
            captured_from = mic.said_at[-1] - 0.02
            out.append((loud_at[0] - captured_from) * 1000 - clip.speech_end_ms)
            peer.send({"type": "response.cancel"})
            peer.send({"type": "output_audio_buffer.clear"})
            await peer.wait_for("response.done", count=n)
            await mic.idle.wait()
    return out


async def latency(args: argparse.Namespace) -> dict[str, Any]:
    clips = [make_clip(q) for q in QUESTIONS[: 4 if args.quick else 12]]
    port = free_port()
    proc = start_voxgate(port, None if args.no_pin else 0, VOXGATE_BACKEND="local")
    try:
        await wait_ready(port, 90)
        base = f"http://127.0.0.1:{port}"
        ws_ms: list[float] = []
        rtc_ms: list[float] = []
        for clip in clips:  # alternate, so drift in the machine's load hits both alike
            ws_ms += await ws_turns(f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime", [clip])
            rtc_ms += await webrtc_turns(base, [clip], args.client_jitter_frames)
    finally:
        proc.terminate()
        proc.wait(10)

    def summary(values: list[float]) -> dict[str, Any]:
        return {
            "turns": len(values),
            "p50_ms": round(pct(values, 50)),
            "p95_ms": round(pct(values, 95)),
            "mean_ms": round(statistics.fmean(values)) if values else None,
        }

    report = {
        "websocket": summary(ws_ms),
        "webrtc": summary(rtc_ms),
        "client_jitter_frames": args.client_jitter_frames,
    }
    report["webrtc_minus_websocket_p50_ms"] = (
        report["webrtc"]["p50_ms"] - report["websocket"]["p50_ms"]
    )
    return report


# ------------------------------------------------------------------ CPU per call


def start_echo(port: int, core: int | None) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, str(REPO / "bench" / "echo_upstream.py"), "--port", str(port)]
    return subprocess.Popen(
        _pinned(cmd, core), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def cpu_level(mode: str, calls: int, window_s: float, pin: bool) -> dict[str, Any]:
    up_port, gw_port = free_port(), free_port()
    echo = start_echo(up_port, 1 if pin else None)
    gw = start_voxgate(
        gw_port,
        0 if pin else None,
        VOXGATE_BACKEND="openai",
        OPENAI_API_KEY="sk-bench",
        VOXGATE_OPENAI_URL=f"ws://127.0.0.1:{up_port}/v1/realtime",
        VOXGATE_PING_INTERVAL_S="0",
    )
    peers = None
    try:
        await wait_http(f"http://127.0.0.1:{up_port}/healthz")
        await wait_http(f"http://127.0.0.1:{gw_port}/healthz")
        cmd = [
            sys.executable,
            str(REPO / "bench" / "webrtc_peers.py"),
            "--mode",
            mode,
            "--calls",
            str(calls),
            "--url",
            f"http://127.0.0.1:{gw_port}",
            "--key",
            KEY,
        ]
        peers = await asyncio.create_subprocess_exec(
            *_pinned(cmd, 1 if pin else None),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert peers.stdout is not None
        assert peers.stdin is not None
        async with asyncio.timeout(60 + calls):
            while (line := await peers.stdout.readline()).strip() != b"ready":
                if not line:
                    raise RuntimeError("the callers' process ended before it was ready")
        cpu0, t0 = cpu_s(gw.pid), time.monotonic()
        await asyncio.sleep(window_s)  # the measured window
        cpu1, t1 = cpu_s(gw.pid), time.monotonic()
        peers.stdin.close()
        async with asyncio.timeout(30):
            while not (line := await peers.stdout.readline()).startswith(b"["):
                if not line:
                    raise RuntimeError("the callers' process ended without its report")
        result = json.loads(line)
        await peers.wait()
    finally:
        if peers is not None and peers.returncode is None:
            peers.kill()
        for proc in (gw, echo):
            proc.terminate()
            proc.wait(10)
    elapsed = t1 - t0
    per_call = (cpu1 - cpu0) / elapsed / calls
    fps = [r["frames_per_s"] for r in result]
    gaps = [r["max_gap_ms"] for r in result]
    return {
        "mode": mode,
        "calls": calls,
        "server_cpu_per_call": round(per_call, 4),
        "server_cpu_total": round(per_call * calls, 3),
        "frames_per_s_min": min(fps),
        "max_gap_ms": max(gaps),
    }


async def cpu(args: argparse.Namespace) -> dict[str, Any]:
    levels = [1, 4] if args.quick else [int(n) for n in args.levels.split(",")]
    rows = []
    for n in levels:
        for mode in ("webrtc", "websocket"):
            row = await cpu_level(mode, n, args.window, not args.no_pin)
            print(json.dumps(row), flush=True)
            rows.append(row)
    webrtc = [r for r in rows if r["mode"] == "webrtc"]
    per_call = statistics.median(r["server_cpu_per_call"] for r in webrtc)
    return {
        "rows": rows,
        "webrtc_cpu_per_call_median": round(per_call, 4),
        "webrtc_calls_per_core_at_80pct": int(0.8 / per_call) if per_call else None,
    }


def codec_cost() -> dict[str, Any]:
    """Opus alone, in this process: encode (voxgate's settings) and decode of 20 ms frames."""
    import fractions

    from av import AudioFrame, CodecContext, Packet

    from voxgate.transports.media.webrtc_audio import _opus_encoder

    speech = make_clip(QUESTIONS[0]).pcm
    up = np.frombuffer(speech, dtype="<i2").repeat(2)  # 48 kHz, crude but speech-like
    frames = [up[i : i + 960] for i in range(0, len(up) - 960, 960)]
    encoder = _opus_encoder()
    packets = []
    started = time.perf_counter()
    for n, samples in enumerate(frames):
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48_000, n * 960
        frame.time_base = fractions.Fraction(1, 48_000)
        packets += [bytes(p) for p in encoder.encode(frame)]
    encode_us = (time.perf_counter() - started) / len(frames) * 1e6
    decoder = CodecContext.create("libopus", "r")
    decoder.sample_rate, decoder.format, decoder.layout = 48_000, "s16", "stereo"  # as aiortc
    started = time.perf_counter()
    for data in packets:
        decoder.decode(Packet(data))
    decode_us = (time.perf_counter() - started) / len(packets) * 1e6
    return {
        "encode_us_per_frame": round(encode_us),
        "decode_us_per_frame": round(decode_us),
        "opus_cpu_per_call": round((encode_us + decode_us) * 50 / 1e6, 4),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"pinned": not args.no_pin, "codec": codec_cost()}
    print(json.dumps(report["codec"]), flush=True)
    if not args.cpu_only:
        report["latency"] = await latency(args)
        print(json.dumps(report["latency"]), flush=True)
    if not args.latency_only:
        report["cpu"] = await cpu(args)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--levels", default="1,4,8", help="concurrent calls per CPU point")
    parser.add_argument("--window", type=float, default=10.0, help="CPU window, seconds")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to cores 0 and 1")
    parser.add_argument(
        "--client-jitter-frames",
        type=int,
        default=1,
        help="frames the WebRTC caller's receive buffer holds (aiortc's default: 4 = 80 ms)",
    )
    parser.add_argument("--latency-only", action="store_true")
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
