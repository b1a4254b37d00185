"""The real beta client (openai-python 1.x ``client.beta.realtime.connect()``, its own
virtualenv) through voxgate to the GA fake upstream and to the local engine (issue 15).

Each scenario is a text turn, an audio turn, a function call or a transcription session, run
by the beta SDK in a subprocess (tests/beta_sdk_client.py). What the SDK parsed is checked
here: beta event names, flat shapes, beta content types, and that it saw no GA-only event.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from beta_sdk import run_beta_client
from gateway_helpers import SERVER_KEY, fake_and_gateway
from speech_fixtures import synth_pcm24k
from test_local_llm import ChatCompletionsServer
from voxgate.app import BACKEND
from voxgate.backends.local.backend import LocalBackend
from voxgate.backends.local.responder import KnowledgeResponder
from voxgate.config import Settings
from voxgate.testing import tone
from voxgate.testing.gateway import RunningGateway, run_gateway
from voxgate.tools.knowledge import KnowledgeBase

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

QUESTION = "What is a stop loss order?"
GA_ONLY = {
    "conversation.item.added",
    "conversation.item.done",
    "response.output_audio.delta",
    "response.output_audio_transcript.done",
    "response.output_text.delta",
    "response.output_text.done",
}


def beta_only(result: dict[str, Any]) -> None:
    assert not set(result["types"]) & GA_ONLY
    # the SDK parsed every event into one of its own beta classes
    assert "BaseModel" not in result["classes"]


# ------------------------------------------------------------------------------ GA fake


async def test_beta_sdk_text_turn_via_the_fake() -> None:
    async with fake_and_gateway() as (fake, gw):
        result = await run_beta_client(
            "text", ws_base=gw.ws_base, key=SERVER_KEY, question="Hello there"
        )
        record = await fake.wait_for_connection()
        assert record.handshake.headers.get("OpenAI-Beta") is None
    beta_only(result)
    assert result["types"][:2] == ["session.created", "conversation.created"]
    assert result["created_modalities"] == ["audio", "text"]
    assert result["updated_modalities"] == ["text"]
    assert result["temperature"] == 0.7
    assert result["user_item_content"] == "input_text"
    assert result["text"] == result["text_done"] == "You said: Hello there"
    assert result["response_modalities"] == ["text"]
    assert result["output_content"] == ["text"]
    assert "ResponseTextDeltaEvent" in result["classes"]


async def test_beta_sdk_audio_turn_via_the_fake(tmp_path: Path) -> None:
    pcm = tone(600, {"type": "audio/pcm"})
    path = tmp_path / "in.pcm"
    path.write_bytes(pcm)
    async with fake_and_gateway() as (fake, gw):
        result = await run_beta_client(
            "audio", ws_base=gw.ws_base, key=SERVER_KEY, pcm_path=str(path)
        )
        record = await fake.wait_for_connection()
        assert record.audio.committed_audio(result["committed_item"]) == pcm
    beta_only(result)
    assert result["session_format"] == "pcm16"
    assert result["user_transcript"] == "600 ms of audio"
    assert result["audio_deltas"] > 0
    assert result["audio_out_bytes"] > 0
    assert result["transcript"] == "You said: 600 ms of audio"
    assert result["output_content"] == ["audio"]
    assert "ResponseAudioDeltaEvent" in result["classes"]
    assert "ResponseAudioTranscriptDoneEvent" in result["classes"]


async def test_beta_sdk_function_call_via_the_fake() -> None:
    async with fake_and_gateway() as (_, gw):
        result = await run_beta_client("function", ws_base=gw.ws_base, key=SERVER_KEY)
    beta_only(result)
    assert result["call_name"] == result["args_done_name"] == "get_weather"
    assert result["call_arguments"] == {"city": "test"}
    assert result["answer"] == 'The get_weather tool returned: {"sky": "sunny", "celsius": 21}'


async def test_beta_sdk_transcription_session_via_the_fake(tmp_path: Path) -> None:
    path = tmp_path / "in.pcm"
    path.write_bytes(tone(700, {"type": "audio/pcm"}))
    async with fake_and_gateway() as (_, gw):
        result = await run_beta_client(
            "transcription", ws_base=gw.ws_base, key=SERVER_KEY, pcm_path=str(path)
        )
    beta_only(result)
    assert result["types"][0] == "transcription_session.created"
    assert result["created_object"] == "realtime.transcription_session"
    assert result["updated_class"] == "TranscriptionSessionUpdatedEvent"
    assert result["updated_model"] == "whisper-1"
    assert result["transcript"] == "700 ms of audio"


async def test_beta_sessions_key_works_for_the_beta_sdk() -> None:
    async with fake_and_gateway() as (_, gw), aiohttp.ClientSession() as http:
        minted = await http.post(
            f"{gw.http_url}/v1/realtime/sessions",
            headers={"Authorization": f"Bearer {SERVER_KEY}"},
            json={"model": "gpt-realtime", "voice": "verse"},
        )
        key = (await minted.json())["client_secret"]["value"]
        assert key.startswith("ek_")
        result = await run_beta_client("text", ws_base=gw.ws_base, key=key, question="Hi")
    assert result["created_voice"] == "verse"
    assert result["text"] == "You said: Hi"


# ------------------------------------------------------------------------------ local engine


@contextlib.asynccontextmanager
async def local_gateway(**settings: Any) -> AsyncIterator[RunningGateway]:
    values: dict[str, Any] = {"backend": "local", "api_keys": "vk-beta", **settings}
    async with run_gateway(Settings(_env_file=None, **values)) as gw:
        backend = gw.app[BACKEND]
        assert isinstance(backend, LocalBackend)
        await asyncio.wait_for(backend.wait_warm(), 60)
        yield gw


def words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z ]", " ", text.lower()).split())


def kb_answer(question: str) -> str:
    return " ".join(KnowledgeResponder(KnowledgeBase.example()).answer(question))


async def test_beta_sdk_text_audio_and_transcription_via_the_local_engine(tmp_path: Path) -> None:
    path = tmp_path / "question.pcm"
    path.write_bytes(synth_pcm24k(QUESTION, lead_ms=400, trail_ms=1000))
    async with local_gateway() as gw:
        text = await run_beta_client("text", ws_base=gw.ws_base, key="vk-beta", question=QUESTION)
        audio = await run_beta_client(
            "audio", ws_base=gw.ws_base, key="vk-beta", pcm_path=str(path)
        )
        heard = await run_beta_client(
            "transcription", ws_base=gw.ws_base, key="vk-beta", pcm_path=str(path)
        )
    for result in (text, audio, heard):
        beta_only(result)
    assert text["text"] == text["text_done"] == kb_answer(QUESTION)
    assert text["output_content"] == ["text"]
    assert "stop loss" in words(audio["user_transcript"])
    assert audio["transcript"] == kb_answer(QUESTION)
    assert audio["audio_out_bytes"] > 48_000  # over a second of 24 kHz speech
    assert audio["output_content"] == ["audio"]
    assert heard["types"][0] == "transcription_session.created"
    assert "stop loss" in words(heard["transcript"])


async def test_beta_sdk_function_call_via_the_local_engine() -> None:
    llm = ChatCompletionsServer()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", llm.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with local_gateway(
            local_llm_url=f"http://127.0.0.1:{port}/v1", local_llm_model="test-model"
        ) as gw:
            result = await run_beta_client("function", ws_base=gw.ws_base, key="vk-beta")
    finally:
        await runner.cleanup()
    beta_only(result)
    assert result["call_name"] == "get_weather"
    assert result["call_arguments"] == {"city": "Oslo"}
    assert result["answer"] == "It is sunny in Oslo. Twenty one degrees."
    assert llm.requests[0]["tools"][0]["function"]["name"] == "get_weather"
