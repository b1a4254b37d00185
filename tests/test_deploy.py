"""deploy/run-local.sh works as documented (issue 17): redis-server, three voxgate nodes and nginx
as plain processes; a call through nginx; every process stops when the script is stopped."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from cluster_helpers import free_port, nginx_binary
from gateway_helpers import SERVER_KEY, UPSTREAM_KEY, recv_until
from redis_helpers import require_redis
from serve_helpers import Stream, clean_env
from voxgate.testing import FakeRealtimeServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parent.parent


async def test_run_local_serves_a_call_through_nginx_and_stops_everything(tmp_path: Path) -> None:
    nginx_binary()
    require_redis()
    lb = free_port()
    nodes = [free_port() for _ in range(3)]
    async with FakeRealtimeServer(api_keys={UPSTREAM_KEY}, ping_interval_s=None) as fake:
        env = clean_env(
            VOXGATE=str(Path(sys.executable).parent / "voxgate"),
            VOXGATE_LB_PORT=str(lb),
            VOXGATE_NODE_PORTS=" ".join(map(str, nodes)),
            REDIS_PORT=str(free_port()),
            WORK=str(tmp_path),
            VOXGATE_OPENAI_URL=fake.url,
            OPENAI_API_KEY=UPSTREAM_KEY,
            VOXGATE_API_KEYS=SERVER_KEY,
        )
        proc = await asyncio.create_subprocess_exec(
            str(ROOT / "deploy" / "run-local.sh"),
            "--backend",
            "openai",
            env=env,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        assert proc.stdout is not None
        out = Stream()
        pump = asyncio.create_task(out.pump(proc.stdout))
        try:
            await out.wait_for(r"3 nodes behind nginx", timeout_s=90)
            await out.wait_for(r"console login \(node 0\): http://")
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(
                    f"ws://127.0.0.1:{lb}/v1/realtime?model=gpt-realtime",
                    headers={"Authorization": f"Bearer {SERVER_KEY}"},
                )
                await recv_until(ws, "session.created", timeout_s=20)
                await ws.send_str('{"type":"response.create"}')
                events = await recv_until(ws, "response.done", timeout_s=20)
                assert events[-1]["response"]["status"] == "completed"
                await ws.close()
                async with http.get(
                    f"http://127.0.0.1:{lb}/v1/sessions",
                    headers={"Authorization": f"Bearer {SERVER_KEY}"},
                ) as listed:
                    assert listed.status == 200
            for port in nodes:  # every node answers on its own port too
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"http://127.0.0.1:{port}/healthz") as resp,
                ):
                    assert resp.status == 200
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(60):
                await proc.wait()
            await pump
            for port in [lb, *nodes]:  # nothing is left listening
                with pytest.raises(ConnectionRefusedError):
                    await asyncio.open_connection("127.0.0.1", port)
        finally:
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
            pump.cancel()
