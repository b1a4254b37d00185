"""`voxgate serve` as a user runs it: a real process, a printed key, SIGTERM drain."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway_helpers import SERVER_KEY, UPSTREAM_KEY, gateway_settings, recv_until, text_item
from serve_helpers import clean_env, voxgate_serve
from voxgate.app import DRAIN_HOOKS, create_app
from voxgate.server import drain, serve
from voxgate.startup import bind
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


# ------------------------------------------------------------------ Ctrl+C (issue 12 item 11)


def _reuse_port_bind(port: int) -> None:
    """Bind ``port`` as a second server would, SO_REUSEPORT and SO_REUSEADDR both set."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1)


async def test_ctrl_c_says_what_draining_waits_for_and_a_second_exits_at_once(
    tmp_path: Path,
) -> None:
    async with FakeRealtimeServer(api_keys={"sk-cli-test-upstream"}) as fake:
        env = clean_env(
            VOXGATE_OPENAI_URL=fake.url,
            OPENAI_API_KEY="sk-cli-test-upstream",
            VOXGATE_API_KEYS="vk-cli-ctrl-c",
            VOXGATE_LOG_LEVEL="error",
        )
        async with voxgate_serve(
            "--backend", "openai", "--port", "0", env=env, cwd=str(tmp_path)
        ) as proc:
            port = await proc.port()
            # while voxgate listens, nobody else can, not even with SO_REUSEPORT
            with pytest.raises(OSError, match="in use") as refused:
                _reuse_port_bind(port)
            assert refused.value.errno == errno.EADDRINUSE
            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(
                    f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime",
                    headers={"Authorization": "Bearer vk-cli-ctrl-c"},
                ) as ws,
            ):
                await recv_until(ws, "session.created")
                proc.signal(signal.SIGINT)
                line = await proc.out.wait_for(r"^draining: .*")
                assert line.group(0) == (
                    f"draining: port {port} is closed to new connections; waiting up to 30 s "
                    "for 1 open session to end; press Ctrl+C again to exit now"
                )
                with pytest.raises(ConnectionRefusedError):  # not listening: the port is free
                    await asyncio.open_connection("127.0.0.1", port)
                closing = asyncio.create_task(ws.receive(timeout=5))  # a client always reads
                proc.signal(signal.SIGINT)
                assert await proc.wait(timeout_s=5) == 130
                closed = await closing
                assert (closed.type, ws.close_code) == (aiohttp.WSMsgType.CLOSE, 1001)
    assert "exiting now" in proc.out.lines[-1]
    assert not [line for line in proc.err.lines if "Traceback" in line]


async def test_a_second_voxgate_on_the_same_port_exits_with_one_sentence(tmp_path: Path) -> None:
    env = clean_env(
        VOXGATE_OPENAI_URL="ws://127.0.0.1:9/v1/realtime",
        VOXGATE_API_KEYS="vk-cli-second",
        VOXGATE_LOG_LEVEL="error",
    )
    async with voxgate_serve(
        "--backend", "openai", "--port", "0", env=env, cwd=str(tmp_path)
    ) as first:
        port = await first.port()
        async with voxgate_serve(
            "--backend", "openai", "--port", str(port), env=env, cwd=str(tmp_path)
        ) as second:
            assert await second.wait() == 2
        assert second.err.text_lines() == [
            f"voxgate: port {port} on 127.0.0.1 is already in use (another voxgate or another "
            "program listens there); stop it, or choose another port with --port or "
            "VOXGATE_PORT."
        ]
        first.signal(signal.SIGTERM)
        assert await first.wait() == 0


async def test_drain_runs_the_hooks_that_tell_opted_in_clients() -> None:
    async with FakeRealtimeServer(api_keys={UPSTREAM_KEY}) as fake:
        settings = gateway_settings(fake.url, port=0)
        socks = bind("127.0.0.1", 0)
        app = create_app(settings)
        told: list[float] = []
        app[DRAIN_HOOKS].append(told.append)
        serving = await serve(app, settings, socks)
        reports: list[tuple[str, int]] = []
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(
                    f"ws://127.0.0.1:{serving.port}/v1/realtime?model=gpt-realtime",
                    protocols=["realtime", "voxgate.v1"],
                    headers={"Authorization": f"Bearer {SERVER_KEY}"},
                ) as ws,
            ):
                await recv_until(ws, "session.created")
                forced = asyncio.Event()
                draining = asyncio.create_task(
                    drain(
                        app,
                        serving,
                        20.0,
                        report=lambda m, n: reports.append((m, n)),
                        forced=forced,
                    )
                )
                await ws.close()
                assert await asyncio.wait_for(draining, 10) is True
        finally:
            await serving.runner.cleanup()
            for sock in socks:
                sock.close()
    assert told == [20.0]
    assert reports[0][1] == 1
    assert "1 open session" in reports[0][0]
