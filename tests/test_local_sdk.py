"""The local engine through voxgate with stock clients: real models, real sockets, real time.

Speech is voxgate's own espeak-ng output (``tests/speech_fixtures.py``) streamed in 20 ms
chunks paced by the clock (the sleeps pace audio; every wait for a result is an event wait
with a timeout).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI

from speech_fixtures import chunks, synth_pcm24k
from voxgate.app import BACKEND
from voxgate.backends.local.backend import LocalBackend
from voxgate.backends.local.responder import KnowledgeResponder, ResponderError, TextPiece
from voxgate.backends.local.whisper_stream import WhisperRecognizer
from voxgate.config import Settings
from voxgate.testing.gateway import RunningGateway, run_gateway
from voxgate.tools.knowledge import KnowledgeBase, asr_phrases

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

QUESTION = "What is a stop loss order?"
EVENT_TIMEOUT_S = 20.0


def kb_answer(question: str) -> str:
    return " ".join(KnowledgeResponder(KnowledgeBase.example()).answer(question))


@contextlib.asynccontextmanager
async def local_gateway() -> AsyncIterator[RunningGateway]:
    async with run_gateway(Settings(backend="local", api_keys="vk-test")) as gw:
        backend = gw.app[BACKEND]
        assert isinstance(backend, LocalBackend)
        await asyncio.wait_for(backend.wait_warm(), 60)
        yield gw


class Events:
    """Events from a pump task, kept in order; waits are event-driven with timeouts."""

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


async def stream_realtime(conn: Any, pcm: bytes, chunk_ms: int = 20) -> None:
    """Append ``pcm`` in ``chunk_ms`` chunks at real-time pace (the clock paces the audio)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, chunk in enumerate(chunks(pcm, chunk_ms)):
        await asyncio.sleep(max(0.0, start + i * chunk_ms / 1000 - loop.time()))
        await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())


def rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples**2))) if len(samples) else 0.0


async def test_text_turn_answers_from_the_knowledge_base() -> None:
    async with local_gateway() as gw:
        client = AsyncOpenAI(api_key="vk-test", websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events()
            pump = asyncio.create_task(events.pump(conn))
            created = await events.wait_for("session.created")
            assert created.session.model == "gpt-realtime"
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": QUESTION}],
                }
            )
            await conn.response.create()
            done = await events.wait_for("response.done")
            pump.cancel()
    assert done.response.status == "completed"
    transcript = events.of("response.output_audio_transcript.done")[0].transcript
    assert transcript == kb_answer(QUESTION)
    assert done.response.usage is not None
    assert events.of("response.output_audio.delta")


async def test_manual_audio_turn_with_text_output() -> None:
    async with local_gateway() as gw:
        client = AsyncOpenAI(api_key="vk-test", websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events()
            pump = asyncio.create_task(events.pump(conn))
            await conn.session.update(
                session={
                    "type": "realtime",
                    "output_modalities": ["text"],
                    "audio": {
                        "input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}
                    },
                }
            )
            await events.wait_for("session.updated")
            pcm = synth_pcm24k(QUESTION, lead_ms=400, trail_ms=1200)
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm).decode())
            await conn.input_audio_buffer.commit()
            await conn.response.create()
            completed = await events.wait_for(
                "conversation.item.input_audio_transcription.completed"
            )
            done = await events.wait_for("response.done")
            pump.cancel()
    assert "stop loss" in completed.transcript
    assert completed.usage is not None
    assert done.response.status == "completed"
    assert not events.of("response.output_audio.delta")
    text = events.of("response.output_text.done")[0].text
    assert text == kb_answer(QUESTION)


async def test_openai_sdk_speech_in_real_time_gets_spoken_answer() -> None:
    async with local_gateway() as gw:
        client = AsyncOpenAI(api_key="vk-test", websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events()
            pump = asyncio.create_task(events.pump(conn))
            await conn.session.update(
                session={
                    "type": "realtime",
                    "audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}},
                }
            )
            await events.wait_for("session.updated")
            await stream_realtime(conn, synth_pcm24k(QUESTION, lead_ms=400, trail_ms=1200))
            await events.wait_for("input_audio_buffer.speech_started")
            await events.wait_for("input_audio_buffer.speech_stopped")
            completed = await events.wait_for(
                "conversation.item.input_audio_transcription.completed"
            )
            done = await events.wait_for("response.done")
            pump.cancel()
    assert "stop loss" in completed.transcript
    assert done.response.status == "completed", done.response.status_details
    transcript = events.of("response.output_audio_transcript.done")[0].transcript
    assert transcript == kb_answer(QUESTION)
    audio = b"".join(base64.b64decode(e.delta) for e in events.of("response.output_audio.delta"))
    assert len(audio) > 48_000  # more than a second of speech
    assert rms(audio) > 500
    assert not events.of("error")


class GatedRecognizer:
    """Whisper whose pause-time snapshot decodes wait for ``gate`` (the test opens it once
    it has seen ``speech_stopped``): the stop cannot have waited for the transcript."""

    name = "whisper"

    def __init__(self) -> None:
        self.inner = WhisperRecognizer(prompt_words=asr_phrases(KnowledgeBase.example().entries))
        self.gate = threading.Event()

    def stream(self, **kwargs: Any) -> Any:
        return _GatedStream(self.inner.stream(**kwargs), self.gate)

    def warm(self, speech_16k: bytes) -> None:
        self.inner.warm(speech_16k)

    def close(self) -> None:
        self.inner.close()


class _GatedStream:
    def __init__(self, inner: Any, gate: threading.Event) -> None:
        self._inner, self._gate = inner, gate

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def begin_snapshot(self) -> Any:
        return _GatedJob(self._inner.begin_snapshot(), self._gate)

    def accept_snapshot(self, job: _GatedJob, rec: Any) -> Any:
        return self._inner.accept_snapshot(job.inner, rec)


class _GatedJob:
    def __init__(self, inner: Any, gate: threading.Event) -> None:
        self.inner, self._gate = inner, gate

    def run(self) -> Any:
        if not self._gate.wait(EVENT_TIMEOUT_S):
            raise RuntimeError("the test never opened the gate")
        return self.inner.run()

    def abandon(self) -> None:
        self.inner.abandon()


async def test_speech_stopped_does_not_wait_for_the_transcript() -> None:
    """``speech_stopped`` goes out when the VAD decides; committed, the item and its
    transcript follow once the decode is done, in the order the SDK expects (§6.2)."""
    asr = GatedRecognizer()
    backend = LocalBackend(responder=KnowledgeResponder(KnowledgeBase.example()), asr=asr)
    await asyncio.wait_for(backend.wait_warm(), 60)
    async with run_gateway(Settings(backend="local", api_keys="vk-test"), backend=backend) as gw:
        client = AsyncOpenAI(api_key="vk-test", websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events()
            pump = asyncio.create_task(events.pump(conn))
            await conn.session.update(
                session={
                    "type": "realtime",
                    "audio": {"input": {"transcription": {"model": "whisper-1"}}},
                }
            )
            await events.wait_for("session.updated")
            await stream_realtime(conn, synth_pcm24k(QUESTION, lead_ms=400, trail_ms=600))
            stopped = await events.wait_for("input_audio_buffer.speech_stopped")
            assert not events.of("input_audio_buffer.committed")  # no transcript yet
            asr.gate.set()
            completed = await events.wait_for(
                "conversation.item.input_audio_transcription.completed"
            )
            done = await events.wait_for("response.done")
            pump.cancel()
    assert "stop loss" in completed.transcript
    assert done.response.status == "completed", done.response.status_details
    kinds = [e.type for e in events.items]
    order = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "response.output_audio.delta",
    ]
    assert [kinds.index(k) for k in order] == sorted(kinds.index(k) for k in order), kinds
    committed = events.of("input_audio_buffer.committed")[0]
    assert committed.item_id == stopped.item_id == completed.item_id
    assert not events.of("error")


class HoldingResponder:
    """Says one sentence, then holds the response open until the test ends."""

    async def respond(self, **_: Any) -> AsyncIterator[TextPiece]:
        yield TextPiece("Let me think about that for a while.")
        await asyncio.Event().wait()


class FailingResponder:
    async def respond(self, **_: Any) -> AsyncIterator[TextPiece]:
        yield TextPiece("Let me check.")
        raise ResponderError("the model server went away", code="voxgate_responder_error")


async def test_barge_in_cancels_the_response_with_turn_detected() -> None:
    backend = LocalBackend(responder=HoldingResponder())
    await asyncio.wait_for(backend.wait_warm(), 60)
    async with run_gateway(Settings(backend="local", api_keys="vk-test"), backend=backend) as gw:
        client = AsyncOpenAI(api_key="vk-test", websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events()
            pump = asyncio.create_task(events.pump(conn))
            await events.wait_for("session.created")
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Tell me a long story."}],
                }
            )
            await conn.response.create()
            await events.wait_for("response.output_audio.delta")
            await stream_realtime(conn, synth_pcm24k(QUESTION, lead_ms=200, trail_ms=800))
            first_done = await events.wait_for("response.done")
            started = await events.wait_for("input_audio_buffer.speech_started")
            pump.cancel()
    assert first_done.response.status == "cancelled"
    assert first_done.response.status_details.reason == "turn_detected"
    assert events.items.index(started) < events.items.index(first_done)


async def test_failing_responder_ends_the_response_as_failed() -> None:
    backend = LocalBackend(responder=FailingResponder(), warm=False)
    async with run_gateway(Settings(backend="local", api_keys="vk-test"), backend=backend) as gw:
        client = AsyncOpenAI(api_key="vk-test", websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events()
            pump = asyncio.create_task(events.pump(conn))
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": QUESTION}],
                }
            )
            await conn.response.create()
            done = await events.wait_for("response.done")
            error = await events.wait_for("error")
            # the session goes on: a second request is answered (and fails the same way)
            await conn.response.create()
            await events.wait_for("response.done", count=2)
            pump.cancel()
    assert done.response.status == "failed"
    assert done.response.status_details.type == "failed"
    assert done.response.status_details.error.code == "voxgate_responder_error"
    assert error.error.code == "voxgate_responder_error"


async def test_transcription_session_transcribes_without_responses() -> None:
    async with local_gateway() as gw:
        client = AsyncOpenAI(api_key="vk-test", websocket_base_url=gw.ws_base)
        async with client.realtime.connect(
            model=None, extra_query={"intent": "transcription"}
        ) as conn:  # type: ignore[arg-type]
            events = Events()
            pump = asyncio.create_task(events.pump(conn))
            created = await events.wait_for("session.created")
            assert created.session.type == "transcription"
            await stream_realtime(conn, synth_pcm24k(QUESTION, lead_ms=400, trail_ms=1200))
            completed = await events.wait_for(
                "conversation.item.input_audio_transcription.completed"
            )
            await conn.input_audio_buffer.clear()
            await events.wait_for("input_audio_buffer.cleared")
            pump.cancel()
    # pocketsphinx on synthetic speech is fragile; the openai test above pins the words
    assert completed.transcript.strip()
    stopped = events.of("input_audio_buffer.speech_stopped")
    assert stopped
    assert completed.item_id == stopped[0].item_id
    assert not [e for e in events.items if e.type.startswith("response.")]


@pytest.mark.parametrize(
    ("audio", "fragment"),
    [
        ("not base64 at all!", "base64"),
        (base64.b64encode(b"\x01\x02\x03").decode(), "odd"),
        (base64.b64encode(b"hello there, this is text and not audio").decode(), "text"),
        (base64.b64encode(b"RIFF\x24\x08\x00\x00WAVEfmt " + bytes(32)).decode(), "WAV"),
    ],
)
async def test_bad_audio_is_an_error_and_the_session_goes_on(audio: str, fragment: str) -> None:
    backend = LocalBackend(responder=KnowledgeResponder(KnowledgeBase.example()), warm=False)
    async with run_gateway(Settings(backend="local", api_keys="vk-test"), backend=backend) as gw:
        client = AsyncOpenAI(api_key="vk-test", websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events()
            pump = asyncio.create_task(events.pump(conn))
            await conn.session.update(
                session={"type": "realtime", "audio": {"input": {"turn_detection": None}}}
            )
            await conn.send(
                {"type": "input_audio_buffer.append", "audio": audio, "event_id": "bad_1"}
            )
            error = await events.wait_for("error")
            await conn.input_audio_buffer.commit()  # nothing was buffered
            empty = await events.wait_for("error", count=2)
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            await events.wait_for("session.updated", count=2)
            pump.cancel()
    assert error.error.event_id == "bad_1"
    assert error.error.param == "audio"
    assert fragment in error.error.message
    assert empty.error.code == "input_audio_buffer_commit_empty"


async def test_openai_agents_speech_turn_without_errors() -> None:
    from agents.realtime import RealtimeAgent, RealtimeRunner

    async with local_gateway() as gw:
        agent = RealtimeAgent(name="Assistant", instructions="Answer from the notes.")
        runner = RealtimeRunner(agent)
        session = await runner.run(model_config={"url": gw.realtime_url(), "api_key": "vk-test"})
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=10_000)
        seen: list[Any] = []

        async def pump() -> None:
            async for event in session:
                await queue.put(event)

        async def until(kind: str) -> Any:
            async with asyncio.timeout(EVENT_TIMEOUT_S):
                while True:
                    event = await queue.get()
                    seen.append(event)
                    if event.type == kind:
                        return event

        async with session:
            task = asyncio.create_task(pump())
            pcm = synth_pcm24k(QUESTION, lead_ms=400, trail_ms=1200)
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i, chunk in enumerate(chunks(pcm)):
                await asyncio.sleep(max(0.0, start + i * 0.02 - loop.time()))
                await session.send_audio(chunk)
            await until("audio_end")
            task.cancel()
    kinds = [e.type for e in seen]
    assert "error" not in kinds, [e for e in seen if e.type == "error"]
    audio = b"".join(e.audio.data for e in seen if e.type == "audio")
    assert rms(audio) > 500
    raw_types = [e.data.type for e in seen if e.type == "raw_model_event"]
    assert "input_audio_transcription_completed" in raw_types or "transcript_delta" in raw_types


async def test_audio_in_a_created_item_is_transcribed_and_answered() -> None:
    async with local_gateway() as gw:
        client = AsyncOpenAI(api_key="vk-test", websocket_base_url=gw.ws_base)
        async with client.realtime.connect(model="gpt-realtime") as conn:
            events = Events()
            pump = asyncio.create_task(events.pump(conn))
            await conn.session.update(
                session={
                    "type": "realtime",
                    "output_modalities": ["text"],
                    "audio": {
                        "input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}
                    },
                }
            )
            await events.wait_for("session.updated")
            pcm = synth_pcm24k(QUESTION, lead_ms=300, trail_ms=600)
            await conn.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_audio", "audio": base64.b64encode(pcm).decode()}],
                }
            )
            await conn.response.create()
            completed = await events.wait_for(
                "conversation.item.input_audio_transcription.completed"
            )
            done = await events.wait_for("response.done")
            added = events.of("conversation.item.added")[0]
            await conn.conversation.item.retrieve(item_id=added.item.id)
            retrieved = await events.wait_for("conversation.item.retrieved")
            pump.cancel()
    assert completed.item_id == added.item.id
    assert completed.content_index == 0
    assert "stop loss" in completed.transcript
    assert retrieved.item.content[0].transcript == completed.transcript
    assert done.response.status == "completed"
    # the transcript was there before the response was made: it answers the question
    assert events.of("response.output_text.done")[0].text == kb_answer(QUESTION)
