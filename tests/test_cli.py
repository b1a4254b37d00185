"""`voxgate serve` as a user runs it: a real process, a printed key, SIGTERM drain."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import aiohttp
import orjson

from gateway_helpers import recv_until, text_item
from voxgate.testing import FakeRealtimeServer


async def _read_banner(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    port = key = None
    async with asyncio.timeout(30):
        while port is None or key is None:
            assert proc.stdout is not None
            line = (await proc.stdout.readline()).decode()
            assert line, "voxgate exited before printing its banner"
            if m := re.search(r"serving backend 'openai' on http://127\.0\.0\.1:(\d+)", line):
                port = int(m.group(1))
            if m := re.search(r"server key \(generated.*\): (\S+)", line):
                key = m.group(1)
    return port, key


async def test_serve_prints_a_key_relays_and_drains_on_sigterm() -> None:
    async with FakeRealtimeServer() as fake:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
        env.update(
            {
                "VOXGATE_OPENAI_URL": fake.url,
                "OPENAI_API_KEY": "sk-cli-test-upstream",
                "VOXGATE_LOG_LEVEL": "warning",
            }
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "voxgate",
            "serve",
            "--backend",
            "openai",
            "--port",
            "0",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            port, key = await _read_banner(proc)
            assert key.startswith("vk-")
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                assert (await http.get(base + "/healthz")).status == 200
                async with http.ws_connect(
                    f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime",
                    headers={"Authorization": f"Bearer {key}"},
                ) as ws:
                    await recv_until(ws, "session.created")
                    proc.send_signal(signal.SIGTERM)
                    # draining: the open session carries on until its client ends it
                    await ws.send_str(
                        orjson.dumps(
                            {
                                "type": "session.update",
                                "session": {"type": "realtime", "output_modalities": ["text"]},
                            }
                        ).decode()
                    )
                    await ws.send_str(orjson.dumps(text_item("still talking")).decode())
                    await ws.send_str('{"type":"response.create"}')
                    done = (await recv_until(ws, "response.done"))[-1]
                    assert done["response"]["status"] == "completed"
            async with asyncio.timeout(10):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
