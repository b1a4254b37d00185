"""Turn ends through voxgate with the stock openai SDK: honest ``speech_stopped``, no leaks.

The engine prepares an answer while a turn's silence window runs (backends/local/turns.py);
these tests hold it to the protocol: ``speech_stopped`` comes only once the client has sent
``audio_end_ms + silence_duration_ms`` of audio, a pause that is not the end of the turn
leaves no event behind, and the first audio delta is short. Speech is streamed at real-time
pace (the sleeps pace audio; every wait for a result is an event wait with a timeout).
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

from speech_fixtures import chunks, silence_pcm24k, synth_pcm24k
from voxgate.backends.local.backend import LocalBackend
from voxgate.backends.local.engine import EngineLimits
from voxgate.backends.local.responder import KnowledgeResponder
from voxgate.config import Settings
from voxgate.testing.gateway import run_gateway
from voxgate.tools.knowledge import KnowledgeBase

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

EVENT_TIMEOUT_S = 20.0
RATE_HZ = 24_000


class Recorder:
    """Events in order, each with how much audio (ms) the client had sent when it arrived."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, float]] = []
        self.sent_ms = 0.0
        self._changed = asyncio.Condition()

    async def pump(self, source: AsyncIterator[Any]) -> None:
        async for event in source:
            async with self._changed:
                self.items.append((event, self.sent_ms))
                self._changed.notify_all()

    def of(self, event_type: str) -> list[Any]:
        return [e for e, _ in self.items if e.type == event_type]

    def sent_when(self, event: Any) -> float:
        return next(ms for e, ms in self.items if e is event)

    def types(self) -> list[str]:
        return [e.type for e, _ in self.items]

    async def wait_for(self, event_type: str, *, count: int = 1) -> Any:
        async with asyncio.timeout(EVENT_TIMEOUT_S), self._changed:
            await self._changed.wait_for(lambda: len(self.of(event_type)) >= count)
        return self.of(event_type)[count - 1]

    async def stream(self, conn: Any, pcm: bytes) -> None:
        """Append ``pcm`` in 20 ms chunks at real-time pace, counting what was sent."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, chunk in enumerate(chunks(pcm)):
            await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))
            await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
            self.sent_ms += len(chunk) / (2 * RATE_HZ / 1000)


def trimmed(text: str) -> bytes:
    """``text`` spoken, without espeak's own leading and trailing fade (samples under
    -30 dBFS: the VAD counts a tail that far below the words as silence, RELATIVE_FLOOR_DB)."""
    pcm = synth_pcm24k(text)
    samples = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
    loud = np.nonzero(samples > 1036)[0]
    return pcm[2 * int(loud[0]) : 2 * (int(loud[-1]) + 1)]


@asynccontextmanager
async def engine(limits: EngineLimits | None = None) -> AsyncIterator[AsyncOpenAI]:
    backend = LocalBackend(responder=KnowledgeResponder(KnowledgeBase.example()), limits=limits)
    await asyncio.wait_for(backend.wait_warm(), 60)
    async with run_gateway(Settings(backend="local", api_keys="vk-test"), backend=backend) as gw:
        yield AsyncOpenAI(api_key="vk-test", websocket_base_url=gw.ws_base)


async def test_speech_stopped_waits_for_the_whole_silence_window() -> None:
    speech = trimmed("What is a stop loss order?")
    async with engine() as client, client.realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder()
        pump = asyncio.create_task(rec.pump(conn))
        await rec.wait_for("session.created")
        await rec.stream(conn, silence_pcm24k(500) + speech + silence_pcm24k(1000))
        stopped = await rec.wait_for("input_audio_buffer.speech_stopped")
        await rec.wait_for("response.done")
        pump.cancel()
    speech_end_ms = 500 + len(speech) / 48
    # audio_end_ms is where the speech ended (to within the VAD's 8 ms frames and Silero)
    assert speech_end_ms - 40 <= stopped.audio_end_ms <= speech_end_ms + 16
    # ... and the event could only be decided once the silence after it had been sent
    assert rec.sent_when(stopped) >= stopped.audio_end_ms + 200
    first_response_event = rec.types().index("response.created")
    assert rec.types().index("input_audio_buffer.speech_stopped") < first_response_event


async def test_a_pause_that_does_not_end_the_turn_leaves_no_trace() -> None:
    # Prepare 500 ms before the end of an 800 ms window: a 450 ms gap is a pause, not a turn.
    limits = EngineLimits(prepare_lead_ms=500)
    pcm = (
        silence_pcm24k(400)
        + trimmed("What is a trailing stop?")
        + silence_pcm24k(450)
        + trimmed("And what is a stop loss order?")
        + silence_pcm24k(1500)
    )
    async with engine(limits) as client, client.realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder()
        pump = asyncio.create_task(rec.pump(conn))
        await conn.session.update(
            session={
                "type": "realtime",
                "audio": {
                    "input": {
                        "transcription": {"model": "whisper-1"},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 800},
                    }
                },
            }
        )
        await rec.wait_for("session.updated")
        await rec.stream(conn, pcm)
        completed = await rec.wait_for("conversation.item.input_audio_transcription.completed")
        done = await rec.wait_for("response.done")
        pump.cancel()
    types = rec.types()
    assert types.count("input_audio_buffer.speech_started") == 1
    assert types.count("input_audio_buffer.speech_stopped") == 1
    assert types.count("input_audio_buffer.committed") == 1
    assert types.count("response.created") == 1
    assert types.index("input_audio_buffer.speech_stopped") < types.index("response.created")
    assert "error" not in types
    stopped = rec.of("input_audio_buffer.speech_stopped")[0]
    assert stopped.audio_end_ms > 400 + 450 + 2000  # the second phrase's end, not the first's
    assert rec.sent_when(stopped) >= stopped.audio_end_ms + 800
    assert len(completed.transcript.split()) >= 6  # both phrases
    assert done.response.status == "completed"


async def test_the_first_audio_delta_is_short_and_later_ones_are_200_ms() -> None:
    async with engine() as client, client.realtime.connect(model="gpt-realtime") as conn:
        rec = Recorder()
        pump = asyncio.create_task(rec.pump(conn))
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "What is a stop loss order?"}],
            }
        )
        await conn.response.create()
        await rec.wait_for("response.done")
        pump.cancel()
    sizes = [len(base64.b64decode(e.delta)) for e in rec.of("response.output_audio.delta")]
    assert sizes[0] == 40 * 48
    assert max(sizes) == 200 * 48
    assert sizes[1] == 200 * 48
