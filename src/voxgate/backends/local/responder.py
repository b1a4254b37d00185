"""What the local engine says: the :class:`Responder` interface and two implementations.

Owns: the typed conversation pieces a responder reads (:class:`Message`, :class:`FunctionCall`,
:class:`FunctionCallOutput`, :class:`Tool`) and yields (:class:`TextPiece` sentences and
:class:`FunctionCall` requests); :class:`KnowledgeResponder`, the offline default that answers
from the knowledge base; :class:`ChatCompletionsResponder`, which streams any
OpenAI-compatible chat-completions server (Ollama, vLLM, llama.cpp) over SSE and yields its
answer sentence by sentence, with Realtime's flat function tools mapped to the nested
chat-completions shape and streamed ``tool_calls`` mapped back.

Tools (issue 14): when the session has function tools, :class:`KnowledgeResponder` calls them
like a model would: a transcript that names a tool (:mod:`.tool_router`) calls it, any other
question calls ``search_knowledge`` when the session has it (the server tool voxgate runs), and
the response after a tool's output speaks that output (a knowledge result through the same
"did you mean" verdict as before). A response whose instructions start with voxgate's
``SAY_PREFIX`` (a proactive ``speak`` turn) says that text word for word.

Errors: a failing or slow server raises a :class:`ResponderError` subclass (an
``UpstreamError``), never hangs: every wait is bounded by a timeout parameter. Must not: log
prompts or keys, keep state between calls, or touch audio.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import aiohttp
import structlog

from voxgate.backends.local.tool_output import hits_from_results, json_or_none, spoken_text
from voxgate.backends.local.tts import SentenceSplitter, split_sentences
from voxgate.backends.local.verdict import (
    DEFAULT_ANSWER_SCORE,
    DEFAULT_MARGIN,
    Verdict,
    judge,
    judge_hits,
    suggested_heading,
    suggestion,
)
from voxgate.config import Settings
from voxgate.protocol.errors import UpstreamError
from voxgate.protocol.ids import call_id as new_call_id
from voxgate.session.injector import SAY_PREFIX
from voxgate.tools.knowledge import Entry, KnowledgeBase, KnowledgeLibrary

log = structlog.get_logger(__name__)

NO_ANSWER: Final = "I heard: '{heard}'. I don't have an answer for that in my notes."
NOTHING_HEARD: Final = "Sorry, I didn't catch that. Could you say it again?"
MAX_TOOL_ARGUMENT_CHARS: Final = 64_000
#: The server tool the knowledge responder asks when no other tool fits (tools/knowledge_tool).
KNOWLEDGE_TOOL: Final = "search_knowledge"


# --------------------------------------------------------------------------- pieces


@dataclass(frozen=True, slots=True)
class Message:
    """A user, assistant or system text turn."""

    role: Literal["user", "assistant", "system"]
    text: str
    type: Literal["message"] = field(default="message", init=False)


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """A function call: in history (one the model made) or yielded (one it wants made)."""

    call_id: str
    name: str
    arguments: str
    type: Literal["function_call"] = field(default="function_call", init=False)


@dataclass(frozen=True, slots=True)
class FunctionCallOutput:
    """The result of a function call, sent back to the model."""

    call_id: str
    output: str
    type: Literal["function_call_output"] = field(default="function_call_output", init=False)


@dataclass(frozen=True, slots=True)
class TextPiece:
    """One speakable sentence of the reply.

    ``static`` marks text that is the same every time (a stored answer, not generated): its
    audio may be cached and reused.
    """

    text: str
    static: bool = False
    type: Literal["text"] = field(default="text", init=False)


@dataclass(frozen=True, slots=True)
class Tool:
    """A function tool (Realtime's flat shape: name, description, JSON-schema parameters)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_realtime(cls, tool: Mapping[str, Any]) -> Tool:
        """Build from a session ``tools[]`` entry ``{"type":"function","name":…}``."""
        return cls(
            name=str(tool["name"]),
            description=str(tool.get("description") or ""),
            parameters=dict(tool.get("parameters") or {}),
        )

    def to_chat_completions(self) -> dict[str, Any]:
        """The nested chat-completions form ``{"type":"function","function":{…}}``."""
        function: dict[str, Any] = {"name": self.name, "parameters": dict(self.parameters)}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


HistoryItem = Message | FunctionCall | FunctionCallOutput
ReplyPiece = TextPiece | FunctionCall


class PreparingResponder(Protocol):
    """A responder that can tell, ahead of the response, how its reply will start.

    The engine calls :meth:`prepare` while the end of a turn is still being decided, to have
    the first sentence's audio ready when the response starts. It must be cheap, pure and
    thread-safe (it runs in a worker thread), with no side effect a user could notice.
    """

    def prepare(self, user_text: str) -> TextPiece | None:
        """The first piece :meth:`Responder.respond` will yield for ``user_text``, if known."""
        ...


class Responder(Protocol):
    """Produces the assistant's reply for one response."""

    def respond(
        self,
        *,
        instructions: str,
        history: Sequence[HistoryItem],
        tools: Sequence[Tool],
        user_text: str | None,
    ) -> AsyncIterator[ReplyPiece]:
        """Yield reply pieces in speaking order.

        Args:
            instructions: the session's system prompt.
            history: earlier conversation items, oldest first (may end with ``user_text``).
            tools: function tools the model may call.
            user_text: the latest user transcript, or None if the response was requested
                without new user input (e.g. after a function call output).
        """
        ...


# --------------------------------------------------------------------------- errors


class ResponderError(UpstreamError):
    """The responder's backend failed; the response should end with an error."""

    def __init__(
        self, message: str, *, code: str = "voxgate_responder_error", retryable: bool = False
    ) -> None:
        super().__init__(message, code=code, retryable=retryable)


class ResponderTimeoutError(ResponderError):
    """The backend did not connect, start or continue its answer within the timeouts."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="voxgate_responder_timeout", retryable=True)


class ResponderHTTPError(ResponderError):
    """The backend answered with an HTTP error status."""

    def __init__(self, status: int) -> None:
        super().__init__(
            f"chat completions server answered HTTP {status}",
            code="voxgate_responder_http_error",
            retryable=status >= 500 or status == 429,
        )
        self.status = status


# --------------------------------------------------------------------------- knowledge


class KnowledgeResponder:
    """Offline default: speak the best knowledge-base entry when it is a clear match.

    A weak or contested best match is not read out: the reply asks "Did you mean …?"
    (and a following "yes" gets that entry), and nothing close enough gets "I don't have
    an answer" (:mod:`.verdict`; thresholds calibrated by ``bench/kb_threshold.py``).

    The answer to a transcript is remembered (bounded LRU of ``memo_size`` transcripts,
    thread-safe), so :meth:`prepare` in a worker thread does the search and the response on
    the event loop finds it done. Entry answers and questions are ``static`` pieces; the
    "I heard …" fallback is not (it repeats the transcript).
    """

    def __init__(
        self,
        knowledge: KnowledgeBase | KnowledgeLibrary,
        *,
        memo_size: int = 256,
        answer_score: float = DEFAULT_ANSWER_SCORE,
        margin: float = DEFAULT_MARGIN,
    ) -> None:
        self._source = knowledge
        self._memo_kb: KnowledgeBase | None = None
        self._memo: OrderedDict[str, tuple[bool, list[str]]] = OrderedDict()
        self._memo_size = memo_size
        self._answer_score = answer_score
        self._margin = margin
        self._lock = threading.Lock()

    @property
    def knowledge(self) -> KnowledgeBase:
        """The notes answered from (their headings also prompt the speech recogniser)."""
        source = self._source
        return source.current() if isinstance(source, KnowledgeLibrary) else source

    @property
    def _kb(self) -> KnowledgeBase:
        return self.knowledge

    def judge(self, heard: str) -> Verdict:
        """How this responder would reply to ``heard`` (answer, did you mean, don't know)."""
        return judge(self._kb, heard, answer_score=self._answer_score, margin=self._margin)

    def answer(self, user_text: str | None) -> list[str]:
        """The reply sentences for ``user_text`` (synchronous; a search costs ~5-20 ms)."""
        return self._answer(user_text)[1]

    def prepare(self, user_text: str) -> TextPiece | None:
        """The reply's first sentence (see :class:`PreparingResponder`)."""
        static, sentences = self._answer(user_text)
        return TextPiece(sentences[0], static=static) if sentences else None

    def _answer(self, user_text: str | None) -> tuple[bool, list[str]]:
        heard = " ".join((user_text or "").split())
        if not heard:
            return True, [NOTHING_HEARD]
        kb = self._kb
        with self._lock:
            if self._memo_kb is not kb:  # the notes were reloaded: answers may differ
                self._memo.clear()
                self._memo_kb = kb
            found = self._memo.get(heard)
            if found is not None:
                self._memo.move_to_end(heard)
                return found
        result = _verdict_sentences(self.judge(heard), heard)
        with self._lock:
            self._memo[heard] = result
            while len(self._memo) > self._memo_size:
                self._memo.popitem(last=False)
        return result

    def _confirmed_entry(self, history: Sequence[HistoryItem], user_text: str) -> Entry | None:
        """The suggested entry when the user says "yes" to "Did you mean …?"."""
        earlier = [h for h in history if isinstance(h, Message)]
        if earlier and earlier[-1].role == "user" and earlier[-1].text == user_text:
            earlier = earlier[:-1]
        if not earlier or earlier[-1].role != "assistant":
            return None
        return suggested_heading(self._kb, earlier[-1].text, user_text)

    def _confirmed(self, history: Sequence[HistoryItem], user_text: str) -> list[str] | None:
        entry = self._confirmed_entry(history, user_text)
        return split_sentences(entry.body) if entry is not None else None

    def _tool_call(
        self, history: Sequence[HistoryItem], tools: Sequence[Tool], user_text: str
    ) -> FunctionCall | None:
        """The call a model would make for ``user_text`` with these tools (or None)."""
        from voxgate.backends.local.tool_router import route

        names = {t.name for t in tools}
        if KNOWLEDGE_TOOL in names:
            entry = self._confirmed_entry(history, user_text)
            if entry is not None:
                query = json.dumps({"query": entry.heading})
                return FunctionCall(new_call_id(), KNOWLEDGE_TOOL, query)
        routed = route(user_text, [t for t in tools if t.name != KNOWLEDGE_TOOL])
        if routed is not None:
            return FunctionCall(new_call_id(), routed.name, routed.arguments)
        if KNOWLEDGE_TOOL in names:
            return FunctionCall(new_call_id(), KNOWLEDGE_TOOL, json.dumps({"query": user_text}))
        return None

    def _spoken_output(
        self, history: Sequence[HistoryItem], output: FunctionCallOutput
    ) -> tuple[bool, list[str]]:
        """What to say about a tool's output: knowledge through the verdict, else its text."""
        call = next(
            (h for h in history if isinstance(h, FunctionCall) and h.call_id == output.call_id),
            None,
        )
        parsed = json_or_none(output.output)
        knowledge = call is not None and call.name == KNOWLEDGE_TOOL
        if knowledge and isinstance(parsed, dict) and "results" in parsed:
            query = str(parsed.get("query") or "")
            verdict = judge_hits(
                hits_from_results(parsed["results"]),
                query,
                answer_score=self._answer_score,
                margin=self._margin,
            )
            return _verdict_sentences(verdict, query)
        return False, split_sentences(spoken_text(output.output, parsed))

    async def respond(
        self,
        *,
        instructions: str,
        history: Sequence[HistoryItem],
        tools: Sequence[Tool],
        user_text: str | None,
    ) -> AsyncIterator[ReplyPiece]:
        """Yield the answer sentence by sentence (see :class:`Responder`)."""
        if instructions.startswith(SAY_PREFIX):
            for sentence in split_sentences(instructions[len(SAY_PREFIX) :]):
                yield TextPiece(sentence)
            return
        last = history[-1] if history else None
        if isinstance(last, FunctionCallOutput):
            static, spoken = self._spoken_output(history, last)
            for sentence in spoken:
                yield TextPiece(sentence, static=static)
            return
        if tools and user_text and " ".join(user_text.split()):
            call = self._tool_call(history, tools, " ".join(user_text.split()))
            if call is not None:
                yield call
                return
        if user_text is None:
            user_text = next(
                (h.text for h in reversed(history) if isinstance(h, Message) and h.role == "user"),
                None,
            )
        confirmed = self._confirmed(history, user_text) if user_text else None
        static, sentences = (True, confirmed) if confirmed else self._answer(user_text)
        for sentence in sentences:
            yield TextPiece(sentence, static=static)


def _verdict_sentences(verdict: Verdict, heard: str) -> tuple[bool, list[str]]:
    """``(static, sentences)`` for a verdict: the entry, "Did you mean …?", or "I heard …"."""
    log.debug("responder.knowledge", verdict=verdict.kind, score=round(verdict.score, 3))
    if verdict.kind == "answer" and verdict.entry is not None:
        return True, split_sentences(verdict.entry.body)
    if verdict.kind == "did_you_mean":
        return True, [suggestion(verdict.candidates)]
    return False, split_sentences(NO_ANSWER.format(heard=heard))


# --------------------------------------------------------------------------- chat completions


def chat_messages(
    instructions: str, history: Sequence[HistoryItem], user_text: str | None
) -> list[dict[str, Any]]:
    """Map instructions, history and the latest user text to chat-completions ``messages``.

    Consecutive function calls become one assistant message with several ``tool_calls``;
    ``user_text`` is appended unless history already ends with that user message.
    """
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in history:
        if isinstance(item, Message):
            messages.append({"role": item.role, "content": item.text})
        elif isinstance(item, FunctionCall):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
    last_is_same = (
        bool(history)
        and isinstance(history[-1], Message)
        and history[-1].role == "user"
        and history[-1].text == user_text
    )
    if user_text and not last_is_same:
        messages.append({"role": "user", "content": user_text})
    return messages


@dataclass(slots=True)
class _ToolCallBuffer:
    call_id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    size: int = 0


class ChatCompletionsResponder:
    """Streams an OpenAI-compatible ``/chat/completions`` endpoint (SSE, ``stream: true``).

    Args:
        base_url: server root such as ``http://127.0.0.1:11434/v1`` (``/chat/completions``
            is appended unless already present).
        model: model name sent in the request.
        api_key: optional bearer token (never logged).
        connect_timeout_s: to open the connection.
        read_timeout_s: longest wait for the next bytes (first token included).
        total_timeout_s: cap on the whole response.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str = "default",
        api_key: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        total_timeout_s: float = 120.0,
    ) -> None:
        base = base_url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model = model
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(
            total=total_timeout_s, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ChatCompletionsResponder | None:
        """Build from ``local_llm_url``, ``local_llm_model`` and ``local_llm_api_key``
        (``VOXGATE_LOCAL_LLM_*`` in the environment); None when no URL is set."""
        url = (settings.local_llm_url or "").strip()
        if not url:
            return None
        key = settings.local_llm_api_key
        return cls(
            url,
            model=settings.local_llm_model,
            api_key=key.get_secret_value() if key is not None else None,
        )

    def request_body(
        self,
        instructions: str,
        history: Sequence[HistoryItem],
        tools: Sequence[Tool],
        user_text: str | None,
    ) -> dict[str, Any]:
        """The JSON body of the request (pure; exposed for tests and logging by shape)."""
        body: dict[str, Any] = {
            "model": self.model,
            "stream": True,
            "messages": chat_messages(instructions, history, user_text),
        }
        if tools:
            body["tools"] = [t.to_chat_completions() for t in tools]
        return body

    async def respond(
        self,
        *,
        instructions: str,
        history: Sequence[HistoryItem],
        tools: Sequence[Tool],
        user_text: str | None,
    ) -> AsyncIterator[ReplyPiece]:
        """Yield sentences as they complete, then any function calls (see :class:`Responder`).

        Raises:
            ResponderTimeoutError: connect, read or total timeout.
            ResponderHTTPError: the server answered 4xx/5xx.
            ResponderError: the connection failed or the stream was malformed or reported
                an error.
        """
        body = self.request_body(instructions, history, tools, user_text)
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as http,
                http.post(self.url, json=body, headers=headers) as resp,
            ):
                if resp.status >= 400:
                    raise ResponderHTTPError(resp.status)
                async for piece in _pieces(resp):
                    yield piece
        except TimeoutError as exc:
            raise ResponderTimeoutError("chat completions server timed out") from exc
        except aiohttp.ClientError as exc:
            raise ResponderError(f"chat completions request failed: {type(exc).__name__}") from exc


async def _pieces(resp: aiohttp.ClientResponse) -> AsyncIterator[ReplyPiece]:
    splitter = SentenceSplitter()
    calls: dict[int, _ToolCallBuffer] = {}
    async for data in _sse_data(resp):
        if data == "[DONE]":
            break
        chunk = _parse_chunk(data)
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str) and content:
                for sentence in splitter.feed(content):
                    yield TextPiece(sentence)
            for call in delta.get("tool_calls") or []:
                _merge_tool_call(calls, call)
    for sentence in splitter.flush():
        yield TextPiece(sentence)
    for index in sorted(calls):
        buf = calls[index]
        if not buf.name:
            raise ResponderError("tool call without a function name")
        yield FunctionCall(buf.call_id or f"call_{index}", buf.name, "".join(buf.arguments))


async def _sse_data(resp: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The ``data:`` payloads of an SSE stream (multi-line data joined with newlines)."""
    lines: list[str] = []
    try:
        async for raw in resp.content:
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line:
                if lines:
                    yield "\n".join(lines)
                    lines = []
            elif line.startswith("data:"):
                lines.append(line[5:].lstrip(" "))
    except ValueError as exc:  # aiohttp's "Line is too long", or bad UTF-8
        raise ResponderError("malformed event stream") from exc
    if lines:
        yield "\n".join(lines)


def _parse_chunk(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ResponderError("malformed chat completions chunk") from exc
    if not isinstance(chunk, dict):
        raise ResponderError("malformed chat completions chunk")
    if "error" in chunk:
        raise ResponderError("chat completions server reported an error in the stream")
    return chunk


def _merge_tool_call(calls: dict[int, _ToolCallBuffer], call: Mapping[str, Any]) -> None:
    buf = calls.setdefault(int(call.get("index", 0)), _ToolCallBuffer())
    buf.call_id = call.get("id") or buf.call_id
    function = call.get("function") or {}
    buf.name = function.get("name") or buf.name
    fragment = function.get("arguments") or ""
    buf.size += len(fragment)
    if buf.size > MAX_TOOL_ARGUMENT_CHARS:
        raise ResponderError("tool call arguments exceed the size limit")
    buf.arguments.append(fragment)


async def collect(pieces: AsyncIterator[ReplyPiece], *, timeout_s: float) -> list[ReplyPiece]:
    """Drain a reply into a list within ``timeout_s`` (tests and simple callers).

    Raises:
        ResponderTimeoutError: the reply did not finish in time.
    """
    out: list[ReplyPiece] = []

    async def drain() -> None:
        async for piece in pieces:
            out.append(piece)

    try:
        async with asyncio.timeout(timeout_s):
            await drain()
    except TimeoutError as exc:
        raise ResponderTimeoutError("reply did not finish in time") from exc
    return out
