"""Pacing charges audio by its real format (issue 11.4): G.711 is 8 bytes per millisecond.

voxgate paces a client that sends audio faster than ``VOXGATE_CLIENT_MAX_AUDIO_REALTIME`` times
real time (past a burst): it stops reading it, so nothing is dropped. The charge must come from
the session's input format; before issue 11 every append was charged as 24 kHz PCM16, so a
G.711 client got six times its budget.
"""

from __future__ import annotations

import base64
import re

import aiohttp
import orjson
import pytest

from gateway_helpers import SERVER_KEY, fake_and_gateway, recv_until
from voxgate.app import ENDPOINT


async def _paced_frames(http: aiohttp.ClientSession, base: str) -> float:
    async with http.get(f"{base}/metrics") as resp:
        text = await resp.text()
    match = re.search(r"^voxgate_client_paced_frames_total ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize(("fmt", "bytes_per_s"), [("audio/pcmu", 8_000), ("audio/pcm", 48_000)])
async def test_audio_past_the_budget_is_paced_in_its_own_format(fmt: str, bytes_per_s: int) -> None:
    async with (
        fake_and_gateway(client_max_audio_realtime=2.0, client_audio_burst_s=1.0) as (fake, gw),
        aiohttp.ClientSession() as http,
    ):
        async with http.ws_connect(
            gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}
        ) as ws:
            await recv_until(ws, "session.created")
            session = {"type": "realtime", "audio": {"input": {"format": {"type": fmt}}}}
            if fmt == "audio/pcm":
                session["audio"]["input"]["format"]["rate"] = 24000  # type: ignore[index]
            await ws.send_str(orjson.dumps({"type": "session.update", "session": session}).decode())
            await recv_until(ws, "session.updated")
            frame = bytes(bytes_per_s // 50)  # 20 ms of silence in the session's format
            append = orjson.dumps(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(frame).decode()}
            ).decode()
            for _ in range(150):  # 3 s of audio at once: past the 1 s burst in any format
                await ws.send_str(append)
            await ws.send_str('{"type":"input_audio_buffer.clear"}')
            await recv_until(ws, "input_audio_buffer.cleared", timeout_s=20)
            record = await fake.wait_for_connection(1)
            assert record.audio.total_appended == 150 * len(frame)  # paced, never dropped
        assert await gw.app[ENDPOINT].wait_idle(10)  # the session's counters are folded in
        assert await _paced_frames(http, gw.http_url) > 0, "3 s of audio at once was not paced"
