"""Phone calls over Twilio Media Streams: a peer that speaks Twilio's protocol in real time.

The peer (``tests/twilio_peer.py``) sends the caller's voice as μ-law 8 kHz in 20 ms frames and
plays what comes back in real time, echoing each ``mark`` once the audio before it has been
played. Behind voxgate: the fake upstream (energy VAD, scripted transcripts, a tone as the
voice) and, once, the local engine. What is checked: the call runs in ``audio/pcmu`` with the
audio passed through unchanged both ways, the line's settings apply, and on barge-in voxgate
sends ``clear`` and truncates the answer exactly at the last mark played before it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest

from gateway_helpers import SERVER_KEY, fake_and_gateway
from speech_fixtures import silence_pcm24k, synth_pcm24k
from twilio_peer import TwilioStream, ulaw_8k
from voxgate.app import BACKEND
from voxgate.backends.local.backend import LocalBackend
from voxgate.config import Settings
from voxgate.testing.gateway import RunningGateway, run_gateway
from voxgate.testing.responder import ResponseContext, Say

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

QUESTION = "What time do you open tomorrow?"
STORY_Q = "Tell me about stop loss orders."
STOP = "Stop, that is enough."
SHORT = "We open at nine."
LONG_ANSWER = " ".join(
    [
        "A stop loss order tells your broker to sell a security once its price falls to a "
        "level you choose, which limits how much you can lose on a position."
    ]
    * 3
)
LONG_ANSWER_MS = 100 * len(LONG_ANSWER.split())  # the fake's voice: 100 ms of tone per word
LINE = "+15550001111"
#: turn detection waits 600 ms of silence (the default 200 ms splits a question at its pauses)
VAD = {"type": "server_vad", "silence_duration_ms": 600}
LINES = {
    LINE: {
        "instructions": "You are the front desk of the Oslo branch.",
        "audio": {
            "input": {"turn_detection": VAD, "transcription": {"model": "gpt-4o-mini-transcribe"}}
        },
    },
    "*": {"instructions": "You are the switchboard."},
}


class Script:
    def __init__(self) -> None:
        self._said = itertools.chain([QUESTION, STORY_Q, STOP], itertools.repeat("(noise)"))

    def transcribe(self, audio: bytes, fmt: Mapping[str, Any]) -> str:
        return next(self._said)

    def respond(self, ctx: ResponseContext) -> list[Say]:
        text = ctx.latest_user_text()
        if text == QUESTION:
            return [Say(SHORT)]
        if text == STORY_Q:
            return [Say(LONG_ANSWER)]
        return [Say("Okay.")]


def speech(*parts: str | int) -> bytes:
    pcm = b"".join(silence_pcm24k(p) if isinstance(p, int) else synth_pcm24k(p) for p in parts)
    return ulaw_8k(pcm)


@contextlib.asynccontextmanager
async def phone_call(
    gw: RunningGateway, params: dict[str, str], *, call_sid: str = "CAtest"
) -> AsyncIterator[TwilioStream]:
    url = f"ws://{gw.host}:{gw.port}/v1/phone/twilio"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        peer = TwilioStream(ws)
        await peer.start(params, call_sid=call_sid)
        task = asyncio.create_task(peer.run())
        try:
            yield peer
        finally:
            if not task.done():
                await ws.close()
            with contextlib.suppress(Exception):
                await task


async def test_phone_conversation_with_barge_in_truncates_at_the_last_played_mark() -> None:
    script = Script()
    fake_kwargs = {"transcriber": script.transcribe, "responder": script.respond}
    async with (
        fake_and_gateway(fake_kwargs, phone_lines=LINES) as (fake, gw),
        phone_call(gw, {"key": SERVER_KEY, "to": LINE}) as peer,
    ):
        peer.say(speech(800, QUESTION, 3500, STORY_Q, 2500, STOP, 4000))
        record = await fake.wait_for_connection()
        await record.wait_for("session.update")
        session = record.session
        assert session is not None
        assert session["audio"]["input"]["format"]["type"] == "audio/pcmu"
        assert session["audio"]["output"]["format"]["type"] == "audio/pcmu"
        assert session["instructions"] == LINES[LINE]["instructions"]

        await peer.wait_until(lambda: peer.played.clears, timeout_s=40)
        (truncate,) = await record.wait_for("conversation.item.truncate")
        deltas = record.sent_of("response.output_audio.delta")
        cut_item = truncate["item_id"]
        first = next(i for i, d in enumerate(deltas) if d["item_id"] == cut_item)
        before_item = sum(len(base64.b64decode(d["delta"])) for d in deltas[:first])
        (last_played,) = peer.played.last_acked_at_clear
        assert last_played is not None
        heard_ms = (last_played.received_before - before_item) / 8  # μ-law: 8 bytes per ms
        assert truncate["audio_end_ms"] == int(heard_ms)
        assert 500 < truncate["audio_end_ms"] < LONG_ANSWER_MS
        assert truncate["content_index"] == 0

        # μ-law passed through unchanged both ways: Twilio's payloads are the upstream's.
        received_at_clear = peer.played.clears[0]
        got, size = [], 0
        for payload in peer.received_payloads:
            if size >= received_at_clear:
                break
            got.append(payload)
            size += len(base64.b64decode(payload))
        assert got == [d["delta"] for d in deltas[: len(got)]]
        upstream_got = record.audio.all_bytes()
        caller_sent = b"".join(base64.b64decode(p) for p in peer.sent_payloads)
        assert len(upstream_got) > 6 * 8000  # more than 6 s of the caller's μ-law
        assert upstream_got == caller_sent[: len(upstream_got)]
        # one append per Twilio frame: 160 bytes (20 ms) is 216 characters of base64
        assert {e["audio_len"] for e in record.events_of("input_audio_buffer.append")} == {216}

        # The conversation goes on: the reply to "Stop" is played to its last mark.
        await record.wait_for_sent("response.done", count=3, timeout_s=30)
        await peer.wait_until(
            lambda: peer.played.marks[-1].acked and not peer.played.marks[-1].cleared
        )
        await peer.stop()
        assert await record.wait_closed() is not None


async def test_phone_line_config_and_key_binding() -> None:
    async with fake_and_gateway(phone_lines=LINES) as (fake, gw):
        # A number without its own line gets "*".
        async with phone_call(gw, {"key": SERVER_KEY, "to": "+4799999999"}):
            record = await fake.wait_for_connection()
            await record.wait_for("session.update")
            assert record.session is not None
            assert record.session["instructions"] == LINES["*"]["instructions"]
        # An ek_ key minted for this call binds its own config (formats still μ-law).
        async with aiohttp.ClientSession() as http:
            resp = await http.post(
                gw.http_url + "/v1/realtime/client_secrets",
                json={"session": {"type": "realtime", "instructions": "Minted for this call."}},
                headers={"Authorization": f"Bearer {SERVER_KEY}"},
            )
            key = (await resp.json())["value"]
        async with phone_call(gw, {"key": key, "to": LINE}, call_sid="CAsecond"):
            record = await fake.wait_for_connection(2)
            await record.wait_for("session.update")
            assert record.session is not None
            assert record.session["instructions"] == "Minted for this call."
            assert record.session["audio"]["output"]["format"]["type"] == "audio/pcmu"


async def test_phone_stream_with_a_bad_key_is_closed_with_the_auth_code() -> None:
    async with fake_and_gateway() as (fake, gw):
        url = f"ws://{gw.host}:{gw.port}/v1/phone/twilio"
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            peer = TwilioStream(ws)
            await peer.start({"key": "vk-not-a-key"})
            msg = await ws.receive(timeout=10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == 3000
        assert fake.accepted_count == 0


async def test_phone_call_on_the_local_engine() -> None:
    """μ-law 8 kHz end to end on the offline engine: Silero, Whisper and espeak-ng on a phone."""
    settings = Settings(
        backend="local",
        api_keys=SERVER_KEY,
        ping_interval_s=0,
        phone_lines={
            "*": {
                "audio": {"input": {"turn_detection": VAD, "transcription": {"model": "whisper-1"}}}
            }
        },
    )
    async with run_gateway(settings) as gw:
        backend = gw.app[BACKEND]
        assert isinstance(backend, LocalBackend)
        await asyncio.wait_for(backend.wait_warm(), 60)
        transcripts: list[str] = []
        async with phone_call(gw, {"key": SERVER_KEY}, call_sid="CAlocal") as peer:
            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(
                    gw.realtime_url("call_id=CAlocal"),
                    headers={"Authorization": f"Bearer {SERVER_KEY}"},
                ) as side,
            ):  # a sideband watches the phone call's events
                peer.say(speech(800, "What is a stop loss order?", 6000))
                async with asyncio.timeout(40):
                    async for msg in side:
                        event = json.loads(msg.data)
                        if event["type"] == "conversation.item.input_audio_transcription.completed":
                            transcripts.append(event["transcript"])
                        if event["type"] == "output_audio_buffer.stopped":
                            break
        heard = re.findall(r"[a-z]+", transcripts[0].lower())  # Whisper over 8 kHz μ-law
        assert {"stop", "loss", "order"} <= set(heard)
        # The spoken answer reached the phone as μ-law and was played to its last mark.
        assert peer.received_bytes > 8000 * 2  # more than two seconds of speech
        assert peer.played.marks
        assert all(m.acked for m in peer.played.marks)
        assert not peer.played.clears
