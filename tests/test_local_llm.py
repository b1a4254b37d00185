"""The chat-completions responder end to end: voxgate's local engine in front of a local
OpenAI-compatible SSE server, driven by the stock openai SDK.

The server below is a real aiohttp app on 127.0.0.1 that speaks ``/v1/chat/completions``
with ``stream: true`` the way Ollama, vLLM and llama.cpp do. It answers a weather question
with a sentence and a streamed tool call, and the tool's result with a spoken answer, so the
test covers settings (URL, model, key), instructions, tools in both shapes, history mapping,
function calls back to the client, and the answer coming back as audio plus transcript.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from openai import AsyncOpenAI

from voxgate.app import BACKEND
from voxgate.backends.local.backend import LocalBackend
from voxgate.config import Settings
from voxgate.testing.gateway import run_gateway

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

EVENT_TIMEOUT_S = 20.0
LLM_KEY = "sk-local-llm-test-0001"
INSTRUCTIONS = "You are a weather assistant. Use the tool."
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
ANSWER = "It is sunny in Oslo. Twenty one degrees."


def _sse(data: dict[str, Any] | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def _chunk(**delta: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }


class ChatCompletionsServer:
    """``POST /v1/chat/completions`` streaming a tool call, then an answer to its result."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str | None] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.auth.append(request.headers.get("Authorization"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if body["messages"][-1]["role"] == "tool":
            for piece in ["It is sunny", " in Oslo. Twenty", " one degrees."]:
                await resp.write(_sse(_chunk(content=piece)))
        else:
            await resp.write(_sse(_chunk(role="assistant", content="Let me check.")))
            for call in (
                {
                    "index": 0,
                    "id": "call_w1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                },
                {"index": 0, "function": {"arguments": '{"city": '}},
                {"index": 0, "function": {"arguments": '"Oslo"}'}},
            ):
                await resp.write(_sse(_chunk(tool_calls=[call])))
        await resp.write(_sse("[DONE]"))
        return resp


class Events:
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


async def test_chat_completions_answer_streams_back_as_audio_with_a_tool_round_trip() -> None:
    llm = ChatCompletionsServer()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", llm.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    settings = Settings(
        _env_file=None,
        backend="local",
        api_keys="vk-test",
        local_llm_url=f"http://127.0.0.1:{port}/v1",
        local_llm_model="test-model",
        local_llm_api_key=LLM_KEY,
    )
    try:
        async with run_gateway(settings) as gw:
            backend = gw.app[BACKEND]
            assert isinstance(backend, LocalBackend)
            assert backend.describe()["responder"] == "chat_completions"
            await asyncio.wait_for(backend.wait_warm(), 60)
            client = AsyncOpenAI(api_key="vk-test", websocket_base_url=gw.ws_base)
            async with client.realtime.connect(model="gpt-realtime") as conn:
                events = Events()
                pump = asyncio.create_task(events.pump(conn))
                await conn.session.update(
                    session={
                        "type": "realtime",
                        "instructions": INSTRUCTIONS,
                        "tools": [WEATHER_TOOL],
                    }
                )
                await events.wait_for("session.updated")
                await conn.conversation.item.create(
                    item={
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "What's the weather in Oslo?"}],
                    }
                )
                await conn.response.create()
                first = await events.wait_for("response.done")
                call = next(o for o in first.response.output if o.type == "function_call")
                await conn.conversation.item.create(
                    item={
                        "type": "function_call_output",
                        "call_id": call.call_id,
                        "output": json.dumps({"sky": "sunny", "celsius": 21}),
                    }
                )
                await conn.response.create()
                second = await events.wait_for("response.done", count=2)
                pump.cancel()
    finally:
        await runner.cleanup()

    # the first response: a spoken sentence, then the function call for the client to run
    assert first.response.status == "completed"
    assert (call.name, json.loads(call.arguments), call.call_id) == (
        "get_weather",
        {"city": "Oslo"},
        "call_w1",
    )
    transcripts = [e.transcript for e in events.of("response.output_audio_transcript.done")]
    assert transcripts == ["Let me check.", ANSWER]
    # the second: the model's answer to the tool result, as audio and transcript
    assert second.response.status == "completed"
    deltas = [
        e for e in events.of("response.output_audio.delta") if e.response_id == second.response.id
    ]
    audio = b"".join(base64.b64decode(e.delta) for e in deltas)
    assert len(audio) > 48_000  # more than a second of 24 kHz speech
    samples = np.frombuffer(audio, dtype="<i2").astype(np.float64)
    assert float(np.sqrt(np.mean(samples**2))) > 500
    assert not events.of("error")

    # what the chat-completions server was sent
    assert llm.auth == [f"Bearer {LLM_KEY}"] * 2
    one, two = llm.requests
    assert one["model"] == "test-model"
    assert one["stream"] is True
    assert one["messages"][0] == {"role": "system", "content": INSTRUCTIONS}
    assert one["messages"][-1] == {"role": "user", "content": "What's the weather in Oslo?"}
    # the client's tool, then the server's knowledge tool (on by default with the local
    # engine; voxgate runs it and the client never sees it)
    assert one["tools"][0] == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": WEATHER_TOOL["parameters"],
        },
    }
    assert [t["function"]["name"] for t in one["tools"]] == ["get_weather", "search_knowledge"]
    roles = [m["role"] for m in two["messages"]]
    assert roles == ["system", "user", "assistant", "assistant", "tool"]
    assert two["messages"][2] == {"role": "assistant", "content": "Let me check."}
    assert two["messages"][3]["tool_calls"][0]["id"] == "call_w1"
    assert two["messages"][3]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert two["messages"][4] == {
        "role": "tool",
        "tool_call_id": "call_w1",
        "content": json.dumps({"sky": "sunny", "celsius": 21}),
    }
