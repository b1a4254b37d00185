"""The local engine understands what it hears (issue 13), through voxgate with the stock SDK.

Real Whisper, real espeak-ng voices, real sockets: the console's example questions in
several voices are answered with their knowledge-base entries (or "did you mean" the right
one, never another entry), a μ-law phone session is understood, and noise produces no turn
at all. Audio is streamed at real-time pace (the sleeps pace audio; every wait for a result
is an event wait with a timeout).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI

from speech_sets import CONSOLE_QUESTIONS, ESPEAK_VOICES, EXPECTED_ENTRY, espeak_clip, ulaw_copy
from voxgate.backends.local.backend import LocalBackend
from voxgate.backends.local.responder import KnowledgeResponder
from voxgate.config import Settings
from voxgate.protocol.audio import pcm16_to_ulaw
from voxgate.testing.gateway import run_gateway
from voxgate.tools.knowledge import KnowledgeBase

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(180)]

EVENT_TIMEOUT_S = 30.0
KB = KnowledgeBase.example()
BODY = {e.heading: e.body for e in KB.entries}


class Events:
    """Events from a pump task, in order; waits are event-driven with timeouts."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = asyncio.Condition()

    async def pump(self, source: AsyncIterator[Any]) -> None:
        async for event in source:
            async with self._changed:
                self.items.append(event)
                self._changed.notify_all()

    def of(self, event_type: str) -> list[Any]:
        return [e for e in self.items if e.type == event_type]

    async def wait_for(self, event_type: str, *, count: int = 1) -> Any:
        async with asyncio.timeout(EVENT_TIMEOUT_S), self._changed:
            await self._changed.wait_for(lambda: len(self.of(event_type)) >= count)
        return self.of(event_type)[count - 1]


async def stream(conn: Any, wire: bytes, bytes_per_20ms: int) -> None:
    """Append ``wire`` audio in 20 ms chunks at real-time pace."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n, i in enumerate(range(0, len(wire), bytes_per_20ms)):
        await asyncio.sleep(max(0.0, start + n * 0.02 - loop.time()))
        chunk = wire[i : i + bytes_per_20ms]
        await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())


@asynccontextmanager
async def engine() -> AsyncIterator[AsyncOpenAI]:
    backend = LocalBackend(responder=KnowledgeResponder(KB))
    await asyncio.wait_for(backend.wait_warm(), 60)
    async with run_gateway(Settings(backend="local", api_keys="vk-test"), backend=backend) as gw:
        yield AsyncOpenAI(api_key="vk-test", websocket_base_url=gw.ws_base)


def spoken_reply(events: Events, index: int) -> str:
    return str(events.of("response.output_audio_transcript.done")[index].transcript)


async def test_console_questions_are_answered_with_their_entries_in_three_voices() -> None:
    voices = [ESPEAK_VOICES[i] for i in (0, 2, 4)]
    silence = b"\0\0" * 24_000  # 1 s at 24 kHz
    async with engine() as client, client.realtime.connect(model="gpt-realtime") as conn:
        events = Events()
        pump = asyncio.create_task(events.pump(conn))
        await conn.session.update(
            session={
                "type": "realtime",
                "output_modalities": ["audio"],
                "audio": {"input": {"transcription": {"model": "whisper-1"}}},
            }
        )
        await events.wait_for("session.updated")
        asked = []
        for voice in voices:
            for question in CONSOLE_QUESTIONS:
                clip = espeak_clip(question, voice)
                await stream(conn, silence[:24_000] + clip.pcm16 + silence, 960)
                await events.wait_for("response.done", count=len(asked) + 1)
                asked.append(question)
        pump.cancel()
    heard = [
        e.transcript for e in events.of("conversation.item.input_audio_transcription.completed")
    ]
    assert len(heard) == len(asked) == 9
    answered = 0
    other_bodies = set(BODY.values())
    for i, question in enumerate(asked):
        entry = EXPECTED_ENTRY[question]
        reply = spoken_reply(events, i)
        if reply == BODY[entry]:
            answered += 1
        # not sure enough: it asks (naming the entry) or says what it heard; it never reads
        # out another entry, which is what it did before Whisper (issue 13)
        assert reply not in other_bodies - {BODY[entry]}, (heard[i], reply)
    assert answered >= 6, list(zip(heard, asked, strict=True))


async def test_a_phone_session_in_ulaw_is_understood() -> None:
    clip = ulaw_copy(espeak_clip("What is a stop loss order?", ESPEAK_VOICES[0]))
    wire = pcm16_to_ulaw(b"\0\0" * 4000 + clip.pcm16 + b"\0\0" * 8000)
    async with engine() as client, client.realtime.connect(model="gpt-realtime") as conn:
        events = Events()
        pump = asyncio.create_task(events.pump(conn))
        await conn.session.update(
            session={
                "type": "realtime",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcmu"},
                        "transcription": {"model": "whisper-1"},
                    },
                    "output": {"format": {"type": "audio/pcmu"}},
                },
            }
        )
        await events.wait_for("session.updated")
        await stream(conn, wire, 160)
        done = await events.wait_for("conversation.item.input_audio_transcription.completed")
        await events.wait_for("response.done")
        pump.cancel()
    assert "stop" in done.transcript.lower()
    assert spoken_reply(events, 0) == BODY["Stop loss order"]


async def test_noise_makes_no_turn_and_the_next_question_is_answered() -> None:
    # a warbling hum at -20 dBFS: Silero takes it for a voice, Whisper hears no words in it
    t = np.arange(24_000) / 24_000
    hum = np.sin(2 * np.pi * 200 * t) * (1 + np.sin(2 * np.pi * 4 * t))
    hum += 0.3 * np.sin(2 * np.pi * 400 * t)
    hum *= 0.1 / np.sqrt(np.mean(hum**2))
    noise = (hum * 32767).astype("<i2").tobytes()
    silence = b"\0\0" * 12_000
    question = espeak_clip("What is a stop loss order?", ESPEAK_VOICES[0]).pcm16
    async with engine() as client, client.realtime.connect(model="gpt-realtime") as conn:
        events = Events()
        pump = asyncio.create_task(events.pump(conn))
        await conn.session.update(
            session={"type": "realtime", "audio": {"input": {"transcription": {"model": "x"}}}}
        )
        await events.wait_for("session.updated")
        await stream(conn, silence + noise + silence * 2 + noise + silence * 2, 960)
        await stream(conn, question + silence * 2, 960)
        done = await events.wait_for("response.done")
        pump.cancel()
    # exactly one turn was committed and answered: the question, not the noise
    heard = [
        e.transcript for e in events.of("conversation.item.input_audio_transcription.completed")
    ]
    assert len(events.of("input_audio_buffer.committed")) == 1, heard
    assert len(events.of("response.created")) == 1
    assert done.response.status == "completed"
    assert spoken_reply(events, 0) == BODY["Stop loss order"]
    # the noise did start turns (the VAD let it through); they were dropped, not answered
    assert len(events.of("input_audio_buffer.speech_started")) >= 2
    assert len(events.of("input_audio_buffer.speech_stopped")) == len(
        events.of("input_audio_buffer.speech_started")
    )
