"""Backpressure and input limits (issues #6.5, #7.3), against real processes and sockets.

* A resumable client that stops reading: voxgate (its own process, so its RSS is its alone)
  detaches it after the send timeout and keeps only the bounded replay log for it, while the
  upstream pushes 64 MiB; a second session keeps completing turns meanwhile.
* A client flooding events or audio faster than real time is paced (voxgate stops reading it),
  and nothing it sent is lost.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from structlog.testing import capture_logs

from gateway_helpers import SERVER_KEY, UPSTREAM_KEY, fake_and_gateway, recv_until, text_item
from voxgate.testing import FakeRealtimeServer

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
MIB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1)) * 1024


async def start_voxgate(
    fake: FakeRealtimeServer, **env: str
) -> tuple[asyncio.subprocess.Process, int]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    environ.update(
        {
            "VOXGATE_OPENAI_URL": fake.url,
            "OPENAI_API_KEY": UPSTREAM_KEY,
            "VOXGATE_API_KEYS": SERVER_KEY,
            "VOXGATE_LOG_LEVEL": "warning",
            **env,
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
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(30):
        while True:
            assert proc.stdout is not None
            line = (await proc.stdout.readline()).decode()
            assert line, "voxgate exited before printing its banner"
            if m := re.search(r"on http://127\.0\.0\.1:(\d+)", line):
                return proc, int(m.group(1))


async def stalled_client(port: int) -> asyncio.StreamWriter:
    """A voxgate.v1 client that completes the upgrade and then never reads a byte."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: voxgate.v1\r\n"
        b"Authorization: Bearer " + SERVER_KEY.encode() + b"\r\n\r\n"
    )
    await writer.drain()
    return writer


@pytest.mark.slow
async def test_a_stalled_client_is_bounded_in_memory_and_its_neighbour_goes_on() -> None:
    replay_bytes = 1 * MIB
    async with FakeRealtimeServer(api_keys={UPSTREAM_KEY}, ping_interval_s=None) as fake:
        proc, port = await start_voxgate(
            fake, VOXGATE_CLIENT_SEND_TIMEOUT_S="0.5", VOXGATE_REPLAY_BYTES=str(replay_bytes)
        )
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(
                    f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime",
                    headers={"Authorization": f"Bearer {SERVER_KEY}"},
                ) as good,
            ):
                await recv_until(good, "session.created")
                await good.send_str(
                    orjson.dumps(
                        {
                            "type": "session.update",
                            "session": {"type": "realtime", "output_modalities": ["text"]},
                        }
                    ).decode()
                )
                await recv_until(good, "session.updated")

                async def turn(n: int) -> float:
                    started = time.perf_counter()
                    await good.send_str(orjson.dumps(text_item(f"turn {n}")).decode())
                    await good.send_str('{"type":"response.create"}')
                    events = await recv_until(good, "response.done")
                    texts = [e["text"] for e in events if e["type"] == "response.output_text.done"]
                    assert texts == [f"You said: turn {n}"]
                    assert not [e for e in events if e["type"] == "error"]
                    return (time.perf_counter() - started) * 1000

                quiet = [await turn(n) for n in range(10)]
                # `serve` may probe the upstream at start (/readyz): count, do not assume
                opened = len(fake.connections)
                writer = await stalled_client(port)
                stalled = await fake.wait_for_connection(opened + 1)
                baseline = rss_bytes(proc.pid)
                peak = baseline
                delta = {
                    "type": "response.output_audio.delta",
                    "event_id": "event_x",
                    "response_id": "resp_x",
                    "item_id": "item_x",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": "A" * (256 * 1024),
                }
                for _ in range(256):  # 64 MiB at a client that reads nothing
                    fake.send_raw(delta, stalled)
                during: list[float] = []
                async with asyncio.timeout(30):  # bound, not synchronisation: we wait on closed
                    while not stalled.closed.is_set():
                        during.append(await turn(100 + len(during)))
                        peak = max(peak, rss_bytes(proc.pid))
                assert stalled.closed.is_set(), "the stalled session was never ended"
                pulled = sum(
                    1 for e in stalled.sent_events if e["type"] == "response.output_audio.delta"
                )
                writer.close()
        finally:
            proc.terminate()
            await proc.wait()
    growth = peak - baseline
    # voxgate kept at most the replay log for it (1 MiB) plus frames in flight, not 64 MiB
    assert growth < 16 * MIB, growth
    assert pulled < 256
    assert max(during, default=0.0) < 2000  # liveness: the neighbour never waited on it
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "backpressure.json").write_text(
        json.dumps(
            {
                "rss_growth_bytes": growth,
                "upstream_deltas_pulled": pulled,
                "neighbour_turn_ms_quiet": sorted(quiet),
                "neighbour_turn_ms_during_stall": sorted(during),
            },
            indent=1,
        )
    )


async def test_an_event_flood_is_paced_and_nothing_is_lost() -> None:
    with capture_logs() as logs:
        await _flood()
    assert [e for e in logs if e["event"] == "client.paced"]


async def _flood() -> None:
    async with (
        fake_and_gateway(client_max_events_per_s=400.0, client_events_burst=50.0) as (
            fake,
            gw,
        ),
        aiohttp.ClientSession() as http,
        http.ws_connect(gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}) as ws,
    ):
        await recv_until(ws, "session.created")
        for n in range(400):
            await ws.send_str(
                orjson.dumps(
                    {
                        "type": "conversation.item.create",
                        "event_id": f"evt_{n}",
                        "item": text_item(str(n))["item"],
                    }
                ).decode()
            )
        record = await fake.wait_for_connection()
        creates = await record.wait_for("conversation.item.create", 400, timeout_s=20)
        assert [e["event_id"] for e in creates] == [f"evt_{n}" for n in range(400)]


async def test_audio_faster_than_real_time_is_paced_and_arrives_whole() -> None:
    with capture_logs() as logs:
        await _fast_audio()
    assert [e for e in logs if e["event"] == "client.paced"]


async def _fast_audio() -> None:
    pcm = bytes(range(256)) * 375  # 96 000 bytes = 2 s of 24 kHz PCM16
    async with (
        fake_and_gateway(client_max_audio_realtime=2.0, client_audio_burst_s=1.0) as (
            fake,
            gw,
        ),
        aiohttp.ClientSession() as http,
        http.ws_connect(gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}) as ws,
    ):
        await recv_until(ws, "session.created")
        await ws.send_str(
            orjson.dumps(
                {
                    "type": "session.update",
                    "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
                }
            ).decode()
        )
        await recv_until(ws, "session.updated")
        for _ in range(3):  # 6 s of audio sent at once: 1 s burst, then 2x real time
            for i in range(0, len(pcm), 960):
                await ws.send_str(
                    '{"type":"input_audio_buffer.append","audio":"'
                    + base64.b64encode(pcm[i : i + 960]).decode()
                    + '"}'
                )
        await ws.send_str('{"type":"input_audio_buffer.commit"}')
        committed = (await recv_until(ws, "input_audio_buffer.committed", timeout_s=20))[-1]
        record = await fake.wait_for_connection()
        assert record.audio.committed_audio(committed["item_id"]) == pcm * 3
