"""backends/local/responder.py: knowledge answers and a real SSE chat-completions server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from voxgate.backends.local.responder import (
    NO_ANSWER,
    ChatCompletionsResponder,
    FunctionCall,
    FunctionCallOutput,
    KnowledgeResponder,
    Message,
    ReplyPiece,
    ResponderError,
    ResponderHTTPError,
    ResponderTimeoutError,
    TextPiece,
    Tool,
    chat_messages,
    collect,
)
from voxgate.config import Settings
from voxgate.tools.knowledge import KnowledgeBase

WEATHER_TOOL = Tool.from_realtime(
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
)


async def _reply(responder: Any, user_text: str | None, **kw: Any) -> list[ReplyPiece]:
    pieces = responder.respond(
        instructions=kw.get("instructions", "Be brief."),
        history=kw.get("history", []),
        tools=kw.get("tools", []),
        user_text=user_text,
    )
    return await collect(pieces, timeout_s=10)


# --------------------------------------------------------------------------- knowledge


async def test_knowledge_responder_speaks_the_matching_entry() -> None:
    kb = KnowledgeBase.example()
    pieces = await _reply(KnowledgeResponder(kb), "what is a stop lost order")
    assert all(isinstance(p, TextPiece) for p in pieces)
    text = " ".join(p.text for p in pieces if isinstance(p, TextPiece))
    assert text == next(e.body for e in kb.entries if e.heading == "Stop loss order")
    assert len(pieces) == 2  # one piece per sentence


async def test_knowledge_responder_says_what_it_heard_when_it_has_no_answer() -> None:
    pieces = await _reply(KnowledgeResponder(KnowledgeBase.example()), "what's the weather on mars")
    text = " ".join(p.text for p in pieces if isinstance(p, TextPiece))
    assert text == NO_ANSWER.format(heard="what's the weather on mars")


CALIBRATION = Path(__file__).parent / "data" / "kb_calibration.json"


def test_calibrated_thresholds_never_read_out_a_different_entry() -> None:
    """Whisper transcripts of 160 questions and 124 off-topic clips (bench/kb_threshold.py)."""
    rows = json.loads(CALIBRATION.read_text())
    responder = KnowledgeResponder(KnowledgeBase.example())
    verdicts = [(responder.judge(r["heard"]), r["expected"]) for r in rows]
    wrong = [(v.heading, want) for v, want in verdicts if v.kind == "answer" and v.heading != want]
    right = [v for v, want in verdicts if v.kind == "answer" and v.heading == want]
    on_topic = [want for _, want in verdicts if want]
    off_topic_answered = [v for v, want in verdicts if want is None and v.kind == "answer"]
    assert wrong == []
    assert not off_topic_answered
    assert len(right) >= 0.7 * len(on_topic)


async def test_a_contested_match_asks_which_entry_was_meant() -> None:
    pieces = await _reply(KnowledgeResponder(KnowledgeBase.example()), "what is a stop order")
    assert [p.text for p in pieces if isinstance(p, TextPiece)] == [
        "Did you mean stop limit order or stop loss order?"
    ]


async def test_a_weak_match_asks_and_a_yes_gets_the_entry() -> None:
    responder = KnowledgeResponder(KnowledgeBase.example(), answer_score=2.0)
    first = await _reply(responder, "what is slippage")
    question = first[0]
    assert isinstance(question, TextPiece)
    assert question.text == "Did you mean slippage?"
    history = [Message("user", "what is slippage"), Message("assistant", question.text)]
    pieces = await _reply(responder, "Yes.", history=[*history, Message("user", "Yes.")])
    assert isinstance(pieces[0], TextPiece)
    assert pieces[0].text.startswith("Slippage is")


def test_a_heading_named_exactly_is_answered_even_with_a_close_runner_up() -> None:
    verdict = KnowledgeResponder(KnowledgeBase.example()).judge("What is margin?")
    assert (verdict.kind, verdict.heading) == ("answer", "Margin")


async def test_knowledge_responder_falls_back_to_the_last_user_message() -> None:
    history = [Message("user", "what is slippage"), Message("assistant", "…")]
    pieces = await _reply(KnowledgeResponder(KnowledgeBase.example()), None, history=history)
    assert isinstance(pieces[0], TextPiece)
    assert pieces[0].text.startswith("Slippage is")


async def test_knowledge_prepare_names_the_first_piece_the_reply_will_have() -> None:
    responder = KnowledgeResponder(KnowledgeBase.example())
    prepared = responder.prepare("what is a stop lost order")
    pieces = await _reply(responder, "what is a stop lost order")
    assert prepared == pieces[0]
    assert isinstance(prepared, TextPiece)
    assert prepared.static  # a stored answer: its audio may be cached
    assert all(isinstance(p, TextPiece) and p.static for p in pieces)


async def test_the_i_heard_fallback_is_not_static() -> None:
    responder = KnowledgeResponder(KnowledgeBase.example(), memo_size=1)
    prepared = responder.prepare("what's the weather on mars")
    assert prepared is not None
    assert not prepared.static
    # the memo is bounded; answers stay right after eviction
    responder.prepare("what is slippage")
    pieces = await _reply(responder, "what's the weather on mars")
    assert pieces[0] == prepared


# --------------------------------------------------------------------------- chat completions


def _sse(chunk: dict[str, Any] | str) -> bytes:
    data = chunk if isinstance(chunk, str) else json.dumps(chunk)
    return f"data: {data}\n\n".encode()


def _delta(**delta: Any) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}


class ChatServer:
    """A real chat-completions server on 127.0.0.1 with scripted streams per path."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.release = asyncio.Event()
        self.url = ""

    async def answer(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        self.auth.append(request.headers.get("Authorization"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for piece in ["A stop loss", " order sells automatically. It li", "mits losses", "."]:
            await resp.write(_sse(_delta(content=piece)))
        calls = [
            {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            },
            {"index": 0, "function": {"arguments": '{"city":'}},
            {"index": 0, "function": {"arguments": ' "Paris"}'}},
        ]
        for call in calls:
            await resp.write(_sse(_delta(tool_calls=[call])))
        await resp.write(_sse("[DONE]"))
        return resp

    async def fail(self, request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "boom"}}, status=500)

    async def stall(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(_sse(_delta(content="Thinking")))
        await self.release.wait()  # never set during the test: the client must time out
        return resp

    async def inline_error(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(_sse({"error": {"message": "model crashed"}}))
        return resp


@pytest.fixture
async def chat_server() -> AsyncIterator[ChatServer]:
    server = ChatServer()
    app = web.Application()
    app.router.add_post("/ok/v1/chat/completions", server.answer)
    app.router.add_post("/fail/v1/chat/completions", server.fail)
    app.router.add_post("/stall/v1/chat/completions", server.stall)
    app.router.add_post("/inline/v1/chat/completions", server.inline_error)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}"
    yield server
    server.release.set()
    await runner.cleanup()


async def test_streams_sentences_then_tool_calls(chat_server: ChatServer) -> None:
    responder = ChatCompletionsResponder(f"{chat_server.url}/ok/v1", model="m", api_key="sk-test")
    history = [
        Message("user", "weather?"),
        FunctionCall("call_0", "get_weather", '{"city":"Rome"}'),
        FunctionCallOutput("call_0", '{"temp":20}'),
    ]
    pieces = await _reply(responder, "What is a stop loss?", history=history, tools=[WEATHER_TOOL])
    assert pieces == [
        TextPiece("A stop loss order sells automatically."),
        TextPiece("It limits losses."),
        FunctionCall("call_1", "get_weather", '{"city": "Paris"}'),
    ]
    body = chat_server.requests[0]
    assert body["stream"] is True
    assert body["model"] == "m"
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "tool", "user"]
    assert chat_server.auth == ["Bearer sk-test"]


async def test_http_error_raises_typed_error(chat_server: ChatServer) -> None:
    responder = ChatCompletionsResponder(f"{chat_server.url}/fail/v1")
    with pytest.raises(ResponderHTTPError) as info:
        await _reply(responder, "hi")
    assert info.value.status == 500
    assert info.value.retryable


async def test_stalled_stream_raises_timeout_instead_of_hanging(chat_server: ChatServer) -> None:
    responder = ChatCompletionsResponder(f"{chat_server.url}/stall/v1", read_timeout_s=0.3)
    with pytest.raises(ResponderTimeoutError):
        await _reply(responder, "hi")


async def test_error_inside_the_stream_raises(chat_server: ChatServer) -> None:
    with pytest.raises(ResponderError):
        await _reply(ChatCompletionsResponder(f"{chat_server.url}/inline/v1"), "hi")


async def test_unreachable_server_raises_responder_error(chat_server: ChatServer) -> None:
    # a port from a server that has just been closed refuses connections
    probe = web.AppRunner(web.Application())
    await probe.setup()
    site = web.TCPSite(probe, "127.0.0.1", 0)
    await site.start()
    port = probe.addresses[0][1]
    await probe.cleanup()
    with pytest.raises(ResponderError):
        await _reply(ChatCompletionsResponder(f"http://127.0.0.1:{port}/v1"), "hi")


def test_from_settings_needs_the_url_and_reads_the_key_from_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ChatCompletionsResponder.from_settings(Settings(_env_file=None)) is None
    monkeypatch.setenv("VOXGATE_LOCAL_LLM_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("VOXGATE_LOCAL_LLM_MODEL", "llama3")
    monkeypatch.setenv("VOXGATE_LOCAL_LLM_API_KEY", "sk-local-test-0001")
    responder = ChatCompletionsResponder.from_settings(Settings(_env_file=None))
    assert responder is not None
    assert responder.url == "http://127.0.0.1:11434/v1/chat/completions"
    assert responder.model == "llama3"
    assert responder.request_body("", [], [], "hi")["model"] == "llama3"
    assert "sk-local-test-0001" not in repr(Settings(_env_file=None))


def test_consecutive_function_calls_share_one_assistant_message() -> None:
    messages = chat_messages(
        "",
        [FunctionCall("a", "f", "{}"), FunctionCall("b", "g", "{}"), Message("user", "hi")],
        "hi",
    )
    assert [m["role"] for m in messages] == ["assistant", "user"]
    assert [c["id"] for c in messages[0]["tool_calls"]] == ["a", "b"]
