"""Server tools (issue 14): voxgate's own overhead per call; micro-tool turns, local engine.

Part 1, overhead. voxgate runs as a subprocess (``--backend openai``) in front of a scripted
upstream in this process, with one no-op server tool (``bench/bench_tools.py``). Each cycle the
upstream sends a whole function-call response in one burst (``response.created`` … the call's
``function_call_arguments.done`` … ``response.done``) and measures, with ``perf_counter``, from
just before writing ``function_call_arguments.done`` to reading voxgate's ``response.create``;
the ``function_call_output`` must have arrived before it (and is acknowledged with
``conversation.item.added``/``.done``, as the real server does). That is voxgate reading the events,
hiding them, running the call (the tool body is a no-op coroutine: microseconds), sending the
output and the follow-up, plus two loopback socket hops. Then it answers the follow-up with a
short text response and starts the next cycle. A raw client is attached throughout and reads
everything it is sent (it must see only the answers).

Part 2, end to end on the local engine. ``python -m voxgate serve --backend local`` with the
trading coach's tools and notes; questions synthesised by espeak-ng are streamed in real time
(20 ms chunks), and per turn the time from the end of speech to the first
``response.output_audio.delta`` of the answer that used the tool is measured (the turn goes:
VAD end of turn, ASR, a response that calls the tool, the call, voxgate's follow-up, the
response that speaks the result). The same for a knowledge question (``search_knowledge``),
and, for comparison, the knowledge question with the knowledge tool off (answered directly).

    .venv/bin/python bench/tool_latency.py                  # both parts
    .venv/bin/python bench/tool_latency.py --calls 1000 --turns 8 --no-pin
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from response_latency import Clip, cpu_s, free_port, make_clip, pct

ROOT = Path(__file__).resolve().parents[1]
KEY = "vk-bench-tools"
RATE_HZ = 24_000
CHUNK_MS = 20


# ---------------------------------------------------------------------- part 1: overhead


class ScriptedUpstream:
    """A minimal realtime server: session handshake, then function-call cycles on demand."""

    def __init__(self, calls: int) -> None:
        self.calls = calls
        self.overheads_ms: list[float] = []
        self.done = asyncio.Event()
        self._n = 0

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("realtime",), max_msg_size=0)
        await ws.prepare(request)
        session = {"type": "realtime", "object": "realtime.session", "id": "sess_1",
                   "model": "gpt-realtime", "tools": [], "output_modalities": ["text"]}  # fmt: skip
        await ws.send_str(json.dumps({"type": "session.created", "event_id": "e0",
                                      "session": session}))  # fmt: skip
        started: float | None = None
        saw_output = False
        async for msg in ws:
            event = json.loads(msg.data)
            kind = event["type"]
            if kind == "session.update":
                session = {**session, **event["session"]}
                await ws.send_str(json.dumps({"type": "session.updated", "event_id": "e1",
                                              "session": session}))  # fmt: skip
                if self._n == 0:
                    started = await self._call(ws)
            elif kind == "conversation.item.create":
                saw_output = saw_output or event["item"]["type"] == "function_call_output"
                item = {**event["item"], "object": "realtime.item", "status": "completed"}
                for i, ack in enumerate(("conversation.item.added", "conversation.item.done")):
                    frame = {"type": ack, "event_id": f"ack{i}", "previous_item_id": None}
                    await ws.send_str(json.dumps({**frame, "item": item}))
            elif kind == "response.create" and started is not None:
                if not saw_output:
                    raise RuntimeError("response.create before the function_call_output")
                self.overheads_ms.append((time.perf_counter() - started) * 1000)
                meta = event["response"].get("metadata")
                await self._answer(ws, meta)
                saw_output = False
                if len(self.overheads_ms) >= self.calls:
                    self.done.set()
                    started = None
                else:
                    started = await self._call(ws)
        return ws

    async def _call(self, ws: web.WebSocketResponse) -> float:
        self._n += 1
        n = self._n
        rid, item, call = f"resp_c{n}", f"item_c{n}", f"call_{n}"
        fc = {"id": item, "object": "realtime.item", "type": "function_call", "arguments": "",
              "status": "in_progress", "call_id": call, "name": "noop"}  # fmt: skip
        done_fc = {**fc, "status": "completed", "arguments": "{}"}
        body = {"object": "realtime.response", "id": rid, "status": "in_progress",
                "output": [], "metadata": None}  # fmt: skip
        where = {"response_id": rid, "item_id": item, "output_index": 0, "call_id": call}
        head = [
            {"type": "response.created", "response": body},
            {"type": "response.output_item.added", "response_id": rid, "output_index": 0,
             "item": fc},
            {"type": "conversation.item.added", "previous_item_id": None, "item": fc},
            {"type": "response.function_call_arguments.delta", **where, "delta": "{}"},
        ]  # fmt: skip
        tail = [
            {"type": "conversation.item.done", "previous_item_id": None, "item": done_fc},
            {"type": "response.output_item.done", "response_id": rid, "output_index": 0,
             "item": done_fc},
            {"type": "response.done", "response": {**body, "status": "completed",
                                                   "output": [done_fc]}},
        ]  # fmt: skip
        for i, event in enumerate(head):
            await ws.send_str(json.dumps({**event, "event_id": f"e{n}_{i}"}))
        args_done = {"type": "response.function_call_arguments.done", **where, "name": "noop",
                     "arguments": "{}", "event_id": f"e{n}_args"}  # fmt: skip
        started = time.perf_counter()
        await ws.send_str(json.dumps(args_done))
        for i, event in enumerate(tail):
            await ws.send_str(json.dumps({**event, "event_id": f"e{n}_t{i}"}))
        return started

    async def _answer(self, ws: web.WebSocketResponse, metadata: Any) -> None:
        n = self._n
        rid, item = f"resp_a{n}", f"item_a{n}"
        msg = {"id": item, "object": "realtime.item", "type": "message", "status": "completed",
               "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]}  # fmt: skip
        body = {"object": "realtime.response", "id": rid, "status": "in_progress", "output": [],
                "metadata": metadata}  # fmt: skip
        events = [
            {"type": "response.created", "response": body},
            {"type": "response.output_item.added", "response_id": rid, "output_index": 0,
             "item": {**msg, "status": "in_progress", "content": []}},
            {"type": "response.output_text.done", "response_id": rid, "item_id": item,
             "output_index": 0, "content_index": 0, "text": "ok"},
            {"type": "response.output_item.done", "response_id": rid, "output_index": 0,
             "item": msg},
            {"type": "response.done", "response": {**body, "status": "completed",
                                                   "output": [msg]}},
        ]  # fmt: skip
        for i, event in enumerate(events):
            await ws.send_str(json.dumps({**event, "event_id": f"e{n}_a{i}"}))


def start_voxgate(
    port: int, env: dict[str, str], backend: str, pin: bool
) -> subprocess.Popen[bytes]:
    full = {**os.environ, "VOXGATE_API_KEYS": KEY, "VOXGATE_LOG_LEVEL": "warning", **env}
    full["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "bench"), str(ROOT), full.get("PYTHONPATH", "")]
    )
    cmd = [sys.executable, "-m", "voxgate", "serve", "--backend", backend, "--port", str(port)]
    if pin and shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    return subprocess.Popen(cmd, env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_up(port: int, *, warm: bool, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    body = await resp.json()
                    if resp.status == 200 and (body.get("warm") or not warm):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)  # polling a starting process
    raise TimeoutError("voxgate did not become ready")


async def overhead(calls: int, pin: bool) -> dict[str, Any]:
    upstream = ScriptedUpstream(calls)
    app = web.Application()
    app.router.add_get("/v1/realtime", upstream.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    up_port = int(runner.addresses[0][1])
    port = free_port()
    env = {
        "VOXGATE_OPENAI_URL": f"ws://127.0.0.1:{up_port}/v1/realtime",
        "OPENAI_API_KEY": "sk-bench-upstream-key",
        "VOXGATE_TOOLS": "bench_tools",
        "VOXGATE_PING_INTERVAL_S": "0",
    }
    proc = start_voxgate(port, env, "openai", pin)
    seen: dict[str, int] = {}
    try:
        await wait_up(port, warm=False)
        cpu0 = cpu_s(proc.pid)
        wall0 = time.perf_counter()
        async with aiohttp.ClientSession() as http:
            url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
            ws = await http.ws_connect(url, headers={"Authorization": f"Bearer {KEY}"})

            async def read() -> None:
                async for msg in ws:
                    kind = json.loads(msg.data)["type"]
                    seen[kind] = seen.get(kind, 0) + 1

            reader = asyncio.create_task(read())
            await asyncio.wait_for(upstream.done.wait(), 300)
            wall = time.perf_counter() - wall0
            cpu = cpu_s(proc.pid) - cpu0
            await ws.close()
            reader.cancel()
    finally:
        proc.terminate()
        proc.wait()
        await runner.cleanup()
    values = upstream.overheads_ms[10:]  # the first calls warm imports and caches
    hidden = [k for k in seen if "function_call" in k]
    return {
        "calls": len(values),
        "p50_ms": round(pct(values, 50), 3),
        "p99_ms": round(pct(values, 99), 3),
        "max_ms": round(max(values), 3),
        "voxgate_cpu_ms_per_call": round(cpu / len(upstream.overheads_ms) * 1000, 3),
        "calls_per_s": round(len(upstream.overheads_ms) / wall, 1),
        "client_saw_function_call_events": hidden,
        "client_responses": seen.get("response.done", 0),
    }


# ---------------------------------------------------------------------- part 2: local engine

TOOL_QUESTIONS = [
    "What is the price of Apple?",
    "What is my position in Microsoft?",
    "What is the price of Tesla?",
    "What is my portfolio risk?",
]
KNOWLEDGE_QUESTION = "What is a trailing stop?"


async def turns(port: int, clips: list[Clip]) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    said: list[str] = []
    async with aiohttp.ClientSession() as http:
        url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
        async with http.ws_connect(url, headers={"Authorization": f"Bearer {KEY}"}) as ws:
            loop = asyncio.get_running_loop()
            for clip in clips:
                first: list[float] = []
                done = asyncio.Event()
                spoken: list[str] = []

                async def reader(first: list[float] = first, done: asyncio.Event = done,
                                 spoken: list[str] = spoken) -> None:  # fmt: skip
                    async for msg in ws:
                        event = json.loads(msg.data)
                        if event["type"] == "response.output_audio.delta" and not first:
                            first.append(loop.time())
                        elif event["type"] == "response.output_audio_transcript.done":
                            spoken.append(event["transcript"])
                        elif event["type"] == "response.done":
                            done.set()
                            return

                task = asyncio.create_task(reader())
                start = loop.time()
                step = RATE_HZ * 2 * CHUNK_MS // 1000
                for i in range(0, len(clip.pcm), step):
                    # a chunk is sent once its 20 ms have been "captured" (real-time pace)
                    await asyncio.sleep(max(0.0, start + (i + step) / (RATE_HZ * 2) - loop.time()))
                    if done.is_set():
                        break
                    chunk = base64.b64encode(clip.pcm[i : i + step]).decode()
                    await ws.send_str(
                        json.dumps({"type": "input_audio_buffer.append", "audio": chunk})
                    )
                async with asyncio.timeout(15):
                    await done.wait()
                task.cancel()
                if first:
                    latencies.append((first[0] - start) * 1000 - clip.speech_end_ms)
                said.append(spoken[0] if spoken else "")
    return latencies, said


async def local_engine(turn_count: int, pin: bool) -> dict[str, Any]:
    tools_env = {
        "VOXGATE_TOOLS": "examples.trading_coach.tools",
        "VOXGATE_KNOWLEDGE_PATH": str(ROOT / "examples" / "trading_coach" / "notes"),
        "COACH_TICK_S": "3600",
    }
    clips = [make_clip(q) for q in TOOL_QUESTIONS]
    knowledge = make_clip(KNOWLEDGE_QUESTION)
    report: dict[str, Any] = {}
    for label, env, questions in (
        ("micro_tool", tools_env, clips),
        ("knowledge_tool", tools_env, [knowledge]),
        ("knowledge_without_tool", {**tools_env, "VOXGATE_KNOWLEDGE_TOOL": "off",
                                    "VOXGATE_TOOLS": ""}, [knowledge]),
    ):  # fmt: skip
        port = free_port()
        proc = start_voxgate(port, env, "local", pin)
        try:
            await wait_up(port, warm=True)
            await turns(port, questions[:1])  # warm: first synthesis, first decode
            wanted = [questions[i % len(questions)] for i in range(turn_count)]
            latencies, said = await turns(port, wanted)
        finally:
            proc.terminate()
            proc.wait()
        report[label] = {
            "turns": len(latencies),
            "p50_ms": round(pct(latencies, 50)),
            "p95_ms": round(pct(latencies, 95)),
            "max_ms": round(max(latencies)) if latencies else None,
            "said": sorted(set(said)),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1010, help="tool calls in part 1")
    parser.add_argument("--turns", type=int, default=8, help="spoken turns per part-2 case")
    parser.add_argument("--no-pin", action="store_true", help="do not pin voxgate to core 0")
    parser.add_argument("--only", choices=["overhead", "local"], default=None)
    args = parser.parse_args()
    out: dict[str, Any] = {"machine_cores": len(os.sched_getaffinity(0))}
    if args.only in (None, "overhead"):
        out["overhead"] = asyncio.run(overhead(args.calls, not args.no_pin))
    if args.only in (None, "local"):
        out["local_engine"] = asyncio.run(local_engine(args.turns, not args.no_pin))
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    if np.isnan(out.get("overhead", {}).get("p99_ms", 0.0)):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
