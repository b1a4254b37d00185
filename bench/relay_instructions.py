"""Instructions per relayed frame, counted by valgrind (callgrind): a noise-free CPU comparison.

``bench/relay.py`` measures CPU time, which on a shared machine moves with whatever else runs
(a relay that falls behind batches frames and looks cheaper). This bench counts what does not
move: the user-space instructions a relay executes per frame, with valgrind's callgrind, for
the minimal aiohttp pipe and for voxgate with its defaults, in the same invocation.

Method: the echo upstream runs natively; the relay runs under ``valgrind --tool=callgrind
--instr-atstart=no``; N sessions connect; instrumentation is switched on
(``callgrind_control -i on``) only for the measured window, in which every session sends
``--frames`` 20 ms PCM16 appends slowly enough that the relay (slowed ~50x by valgrind) never
falls behind (so there is no batching to flatter anyone); every echo is awaited; then the
counters are dumped. The result is instructions per relayed frame (one append in, one delta
out = two frames), and the ratio voxgate / pipe. Kernel time (the syscalls, the same count for
both designs: one read and one write per frame) is not counted. Clients: text appends, or
``--clients mixed`` where voxgate gets half ``voxgate.v1`` binary clients (the pipe always gets
text).

    .venv/bin/python bench/relay_instructions.py              # 20 sessions x 40 frames, ~5 min
    .venv/bin/python bench/relay_instructions.py --sessions 10 --frames 20   # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from relay_procs import (  # noqa: E402 (bench scripts import their siblings)
    CLIENT_KEY,
    RELAYS,
    Proc,
    free_port,
    wait_healthy,
)

FRAME = base64.b64encode(bytes((i * 37) & 0xFF for i in range(960))).decode()
APPEND = '{"type":"input_audio_buffer.append","audio":"' + FRAME + '"}'


async def _open(http: aiohttp.ClientSession, url: str, v1: bool) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(
        url,
        headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        protocols=["voxgate.v1"] if v1 else (),
        max_msg_size=0,
        autoping=True,
    )
    while True:  # session.created (and, for voxgate.v1, voxgate.session.resumable)
        msg = await ws.receive(timeout=120)
        if msg.type is aiohttp.WSMsgType.TEXT and '"session.created"' in msg.data:
            return ws


async def _echoes(ws: aiohttp.ClientWebSocketResponse, want: int, v1: bool) -> int:
    got = numbered = 0
    while got < want:
        msg = await ws.receive(timeout=300)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"relay closed: {msg.type} {msg.data!r}")
        if '"response.output_audio.delta"' in msg.data:
            got += 1
        if not msg.data.startswith('{"type":"voxgate.session.'):
            numbered += 1
        if v1 and numbered % 50 == 0:  # like the console client: about once a second
            await ws.send_str(f'{{"type":"voxgate.session.ack","received_events":{numbered}}}')
    return got


def _callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=120)


def _total_instructions(out_file: Path) -> int:
    text = out_file.read_text(errors="replace")
    totals = [int(m.group(1)) for m in re.finditer(r"^(?:totals|summary): (\d+)", text, re.M)]
    return max(totals) if totals else 0


def _window_instructions(work: Path, relay: str) -> int:
    dumps = sorted(work.glob(f"{relay}.callgrind.*"))
    return max((_total_instructions(p) for p in dumps), default=0)


async def measure(
    relay: str, echo_url: str, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    port = free_port()
    argv, env = RELAYS[relay].command(port, echo_url)
    out = work / f"{relay}.callgrind"
    grind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    proc = Proc(relay, grind + argv, env, work)
    try:
        await wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, limit_s=600)
        url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            v1 = [
                args.clients == "mixed" and relay.startswith("voxgate") and i % 2 == 1
                for i in range(args.sessions)
            ]
            socks = [await _open(http, url, v1[i]) for i in range(args.sessions)]
            # one untimed round: first-frame code paths are not what we measure
            pairs = list(zip(socks, v1, strict=True))
            await asyncio.gather(*(_send(ws, 1, args.gap_s, v) for ws, v in pairs))
            await asyncio.gather(*(_echoes(ws, 1, v) for ws, v in pairs))
            pid = proc.popen.pid
            _callgrind_control("-i", "on", str(pid))
            started = time.monotonic()
            sends = [_send(ws, args.frames, args.gap_s, v) for ws, v in pairs]
            echoes = [_echoes(ws, args.frames, v) for ws, v in pairs]
            results = await asyncio.gather(*sends, *echoes)
            elapsed = time.monotonic() - started
            _callgrind_control("-i", "off", str(pid))
            _callgrind_control("-d", str(pid))
            for ws in socks:
                await ws.close()
        frames = 2 * sum(r for r in results[args.sessions :])
    finally:
        proc.stop()
    # ``callgrind_control -d`` wrote the window (counters start from zero when switched on)
    # to ``<out>.1``; the file written at exit holds only the shutdown.
    instructions = await asyncio.to_thread(_window_instructions, work, relay)
    return {
        "relay": relay,
        "frames": frames,
        "instructions": instructions,
        "per_frame": instructions / frames if frames else float("nan"),
        "window_s": round(elapsed, 1),
    }


async def _send(ws: aiohttp.ClientWebSocketResponse, n: int, gap_s: float, v1: bool) -> int:
    for _ in range(n):
        if v1:
            await ws.send_bytes(base64.b64decode(FRAME))
        else:
            await ws.send_str(APPEND)
        await asyncio.sleep(gap_s)  # pacing the load below what valgrind can relay
    return 0


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="voxgate-insn-"))
    echo_port = free_port()
    echo = Proc(
        "echo",
        [
            sys.executable,
            str(BENCH_DIR / "echo_upstream.py"),
            "--port",
            str(echo_port),
            "--turn-detection",
            args.turn_detection,
        ],
        dict(os.environ),
        work,
    )
    try:
        await wait_healthy(f"http://127.0.0.1:{echo_port}/healthz", echo)
        echo_url = f"ws://127.0.0.1:{echo_port}/v1/realtime"
        rows = [await measure(relay, echo_url, args, work) for relay in args.relays]
    finally:
        echo.stop()
        if args.keep:
            print(f"callgrind files kept in {work}")
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(work)
    base = next((r for r in rows if r["relay"] == "pipe"), None)
    print(
        f"\nuser-space instructions per relayed frame ({args.sessions} sessions x "
        f"{args.frames} frames, clients {args.clients}, turn detection {args.turn_detection})"
    )
    for row in rows:
        ratio = row["per_frame"] / base["per_frame"] if base else float("nan")
        row["ratio_vs_pipe"] = ratio
        print(
            f"  {row['relay']:<18} {row['per_frame']:>12,.0f}  x{ratio:.2f}  "
            f"({row['frames']} frames, window {row['window_s']} s)"
        )
    return {"rows": rows}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--frames", type=int, default=40, help="frames each session sends")
    p.add_argument("--gap-s", type=float, default=0.5, help="between one session's frames")
    p.add_argument("--relays", default="pipe,voxgate")
    p.add_argument("--clients", choices=("text", "mixed"), default="mixed")
    p.add_argument("--turn-detection", choices=("none", "server_vad"), default="none")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--keep", action="store_true", help="keep the callgrind files (annotate)")
    args = p.parse_args()
    args.relays = [r.strip() for r in args.relays.split(",") if r.strip()]
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print(
            "relay_instructions: valgrind (with callgrind_control) is not installed",
            file=sys.stderr,
        )
        return 2
    result = asyncio.run(amain(args))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
