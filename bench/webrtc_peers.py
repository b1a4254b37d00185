"""Load generator for bench/webrtc.py: N callers in one process, WebRTC or WebSocket.

Each caller streams speech (voxgate's espeak-ng, looped) in real time, 20 ms at a time: a
WebRTC caller as Opus over RTP from an aiortc peer (tests/webrtc_peer.py), a WebSocket caller
as ``input_audio_buffer.append`` of PCM16 24 kHz. Against bench/echo_upstream.py every frame
comes back as the assistant's audio, so the server carries audio both ways all the time (a
WebRTC call: Opus decode, resample, relay, resample, Opus encode, paced). Prints ``ready`` once
every caller is connected, then runs until stdin closes and prints one JSON line per caller:
audio frames received per second (50 when nothing is lost) and the longest gap between them.

    python bench/webrtc_peers.py --mode webrtc --calls 8 --url http://127.0.0.1:8000 --key K
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from speech_fixtures import synth_pcm24k  # noqa: E402
from webrtc_peer import Peer  # noqa: E402

SPEECH = "What is a stop loss order? It limits how much you can lose on a position."
FRAME_BYTES = 960  # 20 ms of PCM16 24 kHz


class Gaps:
    """Arrival times of audio frames: count and the longest gap (playback would stutter)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.last: float | None = None
        self.frames = 0
        self.max_gap_ms = 0.0
        self.counting = False
        self.since = 0.0

    def frame(self) -> None:
        now = self.loop.time()
        if self.counting and self.last is not None:
            self.max_gap_ms = max(self.max_gap_ms, (now - self.last) * 1000)
        if self.counting:
            self.frames += 1
        self.last = now


async def webrtc_caller(url: str, key: str, speech: bytes, gaps: Gaps, up: asyncio.Event) -> None:
    async with Peer(keep_audio=False) as peer:
        assert peer.mic is not None
        peer.on_frame = lambda loud: gaps.frame()
        await peer.call(url + "/v1/realtime/calls", key)
        await peer.wait_for("session.created")
        up.set()
        while True:
            peer.mic.say(speech)
            await peer.mic.idle.wait()
            await asyncio.sleep(0)


async def ws_caller(url: str, key: str, speech: bytes, gaps: Gaps, up: asyncio.Event) -> None:
    ws_url = url.replace("http", "ws", 1) + "/v1/realtime?model=gpt-realtime"
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, headers=headers) as ws:

        async def reader() -> None:
            async for msg in ws:
                if '"response.output_audio.delta"' in msg.data[:64]:
                    gaps.frame()

        task = asyncio.create_task(reader())
        loop = asyncio.get_running_loop()
        up.set()
        start, n = loop.time(), 0
        while True:
            i = (n * FRAME_BYTES) % (len(speech) - FRAME_BYTES)
            chunk = base64.b64encode(speech[i : i + FRAME_BYTES]).decode()
            await ws.send_str('{"type":"input_audio_buffer.append","audio":"' + chunk + '"}')
            n += 1
            await asyncio.sleep(max(0.0, start + n * 0.02 - loop.time()))  # a real-time mic
        task.cancel()


async def main(args: argparse.Namespace) -> None:
    speech = synth_pcm24k(SPEECH, trail_ms=300)
    caller = webrtc_caller if args.mode == "webrtc" else ws_caller
    gaps = [Gaps() for _ in range(args.calls)]
    ups = [asyncio.Event() for _ in range(args.calls)]
    tasks = []
    for g, up in zip(gaps, ups, strict=True):
        tasks.append(asyncio.create_task(caller(args.url, args.key, speech, g, up)))
        await asyncio.sleep(0.05)  # stagger the offers a little, as real callers arrive
    await asyncio.gather(*(up.wait() for up in ups))
    await asyncio.sleep(1.0)  # let playout reach its steady state before counting
    loop = asyncio.get_running_loop()
    for g in gaps:
        g.counting, g.since = True, loop.time()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    counted_s = loop.time() - gaps[0].since
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    report = [
        {"frames_per_s": round(g.frames / counted_s, 1), "max_gap_ms": round(g.max_gap_ms, 1)}
        for g in gaps
    ]
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["webrtc", "websocket"], default="webrtc")
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    asyncio.run(main(parser.parse_args()))
