"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 (real socket, SSE).

Not a test module. The local engine's model when a test needs one that calls tools
(``VOXGATE_LOCAL_LLM_URL``): ``reply(messages)`` decides each answer, either text (streamed in
a few chunks, as Ollama and vLLM do) or one tool call.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


Reply = str | ToolCall


def _sse(data: dict[str, Any] | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


def _chunk(**delta: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "model": "stub",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }


class ChatStub:
    def __init__(self, reply: Callable[[list[dict[str, Any]]], Reply]) -> None:
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        answer = self.reply(body["messages"])
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if isinstance(answer, ToolCall):
            call = {
                "index": 0,
                "id": f"call_{len(self.requests)}",
                "type": "function",
                "function": {"name": answer.name, "arguments": json.dumps(answer.arguments)},
            }
            await resp.write(_sse(_chunk(role="assistant", tool_calls=[call])))
        else:
            words = answer.split(" ")
            for i in range(0, len(words), 4):
                piece = " ".join(words[i : i + 4]) + (" " if i + 4 < len(words) else "")
                await resp.write(_sse(_chunk(content=piece)))
        await resp.write(_sse("[DONE]"))
        return resp

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ChatStub]:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{int(runner.addresses[0][1])}/v1"
        try:
            yield self
        finally:
            await runner.cleanup()
