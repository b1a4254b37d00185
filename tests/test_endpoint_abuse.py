"""Isolation under abuse (issue #7 part 4): arbitrary frames at the realtime endpoint.

Everything goes over real sockets: the fake OpenAI server as upstream, voxgate in front of it,
raw aiohttp clients throwing frames, and a stock ``openai`` SDK client talking next to them.
What must hold, whatever a client sends:

- the gateway stays up (``/healthz`` answers 200) and no abusive session outlives its socket;
- an abusive connection receives only OpenAI-shaped ``error`` events (no traceback, no internal
  detail, no secret), or a close with a documented code;
- a well-behaved session running at the same time completes its turns, with its own events
  only and correct content.

The property test runs the fake and the gateway once, on an event loop in a background thread,
so hypothesis examples (each one fresh client connection) are plain synchronous calls and the
well-behaved session keeps talking while hypothesis generates the next example. Durations of
the well-behaved turns, without and with abuse, go to ``artifacts/endpoint_abuse_timing.json``
(recorded, never asserted).

The tests at the end pin the bugs this file found (fixed in 63a5542): a duplicate top-level
``type`` smuggling one event past the gateway as another, and the protocol core's JSON parser
ending a local-engine session on deep nesting or naming Python internals on huge numbers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import concurrent.futures
import contextlib
import json
import re
import statistics
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
from aiohttp import WSMsgType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import AsyncOpenAI

from gateway_helpers import (
    SERVER_KEY,
    SIGNING_SECRET,
    TIMEOUT_S,
    UPSTREAM_KEY,
    fake_and_gateway,
    recv_json,
    recv_until,
)
from voxgate.app import ENDPOINT
from voxgate.backends.local.backend import LocalBackend
from voxgate.backends.local.responder import KnowledgeResponder
from voxgate.config import Settings
from voxgate.testing import FakeRealtimeServer
from voxgate.testing.gateway import RunningGateway, run_gateway
from voxgate.tools.knowledge import KnowledgeBase

T = TypeVar("T")

#: The smallest frame limit Settings allows; anything bigger is an "oversized frame" here.
MAX_FRAME_BYTES = 64 * 1024
EXAMPLES = 200
EXAMPLE_TIMEOUT_S = 30.0
TIMING_FILE = Path(__file__).resolve().parents[1] / "artifacts" / "endpoint_abuse_timing.json"
AUTH = {"Authorization": f"Bearer {SERVER_KEY}"}
NO_VAD = {
    "type": "session.update",
    "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
}
SENTINEL = '{"type":"input_audio_buffer.clear","event_id":"evt_abuse_sentinel"}'
KNOWN_TYPES = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
)
ERROR_TYPES = frozenset({"invalid_request_error", "server_error"})

# ------------------------------------------------------------------------------- what leaks

#: Text that must never reach a client unless the client sent it itself (then it is an echo).
_INTERNAL_PATTERNS = [
    re.compile(p)
    for p in (
        r"Traceback \(most recent call last\)",
        r'File "[^"]*", line \d+',
        r"\.py\b",
        r"\b[A-Z][A-Za-z]+(?:Error|Exception)\b",
        r" object at 0x[0-9a-fA-F]+",
        r"\bvoxgate\.[a-z_]+",
        r"\b(?:aiohttp|asyncio|orjson|pydantic|structlog|sys)\b",
        r"\bwss?://",
        r"\bBearer\b",
        r"\bsk-[A-Za-z0-9_-]{4,}",
        r"\bek_[A-Za-z0-9_-]{4,}",
    )
]


def internal_details(message: str, sent: list[str], secrets: tuple[str, ...]) -> list[str]:
    """What in ``message`` looks internal (a traceback, a module, a secret) and is no echo."""
    found = [s for s in secrets if s and s in message]
    for pattern in _INTERNAL_PATTERNS:
        for match in pattern.finditer(message):
            if not any(match.group(0) in text for text in sent):
                found.append(match.group(0))
    return found


def check_error_event(event: dict[str, Any], sent: list[str], secrets: tuple[str, ...]) -> None:
    """An OpenAI-shaped ``error`` event (realtime-protocol.md §7) with nothing internal in it."""
    assert event["type"] == "error", event
    assert isinstance(event.get("event_id"), str), event
    err = event.get("error")
    assert isinstance(err, dict), event
    assert {"type", "code", "message", "param", "event_id"} <= err.keys(), event
    assert err["type"] in ERROR_TYPES, event
    assert err["code"] is None or isinstance(err["code"], str), event
    assert isinstance(err["message"], str), event
    assert err["message"], event
    leaked = internal_details(err["message"], sent, secrets)
    assert not leaked, f"internal detail {leaked} in {event}"


# ------------------------------------------------------------------------------- abuse model


@dataclass(frozen=True)
class Text:
    """A text frame; ``silent`` when the protocol answers it with nothing (odd-length audio)."""

    data: str
    silent: bool = False


@dataclass(frozen=True)
class Binary:
    data: bytes


@dataclass(frozen=True)
class Flood:
    frame: Text | Binary
    count: int


@dataclass(frozen=True)
class Oversize:
    """A frame past ``max_frame_bytes``: error ``voxgate_frame_too_large``, then close 1009."""

    binary: bool
    prefix: str
    n_bytes: int


@dataclass(frozen=True)
class Violation:
    """A frame that breaks RFC 6455 itself; aiohttp closes with ``close_code`` (§7.4.1)."""

    name: str
    opcode: int
    payload: bytes
    close_code: int


@dataclass(frozen=True)
class Vanish:
    """The client drops the TCP connection (no close frame), after ``partial`` raw bytes."""

    partial: bytes


@dataclass(frozen=True)
class Abuse:
    """One connection's worth: frames, then optionally a frame that ends the connection.

    ``wait_ready`` False sends everything before ``session.created`` (the pre-ready buffer);
    ``opt_in`` offers ``voxgate.v1``, which turns binary frames into audio.
    """

    frames: tuple[Text | Binary | Flood, ...]
    terminal: Oversize | Violation | Vanish | None
    opt_in: bool
    wait_ready: bool

    def expects_error(self) -> bool:
        def one(frame: Text | Binary) -> bool:
            return not frame.silent if isinstance(frame, Text) else not self.opt_in

        return any(one(f.frame if isinstance(f, Flood) else f) for f in self.frames)


@dataclass(frozen=True)
class ResumeAbuse:
    """A connection offering ``voxgate.resume`` whose first frame is no valid resume request
    (``first`` None: it sends nothing); always refused with ``voxgate_resume_refused``."""

    first: Text | Binary | None
    with_key: bool


def _dumps(value: Any) -> str:
    return json.dumps(value)


_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


def wrong(*allowed: type) -> st.SearchStrategy[Any]:
    """Any JSON value but null and the ``allowed`` types (bool is not an int here)."""
    return json_values.filter(lambda v: v is not None and type(v) not in allowed)


def event(etype: str, **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[str]:
    return st.fixed_dictionaries({"type": st.just(etype), **fields}).map(_dumps)


def _not_base64(s: str) -> bool:
    try:
        base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        return True
    return False


_escapes = st.lists(
    st.sampled_from(["\\ud800", "\\udc00", "\\udfff", "\\ud83d", "\\u0000", "\\\\", '\\"', "x"]),
    min_size=1,
    max_size=6,
).map("".join)
_nested_depth = st.integers(min_value=1, max_value=6000)
#: Past 4300 digits Python's int parser refuses, naming its internals (fixed, see the end).
_huge_ints = st.integers(min_value=20, max_value=8000).map(lambda n: "9" * n)
_huge_numbers = _huge_ints | st.sampled_from(["1e999", "-1e999", "1e-999", "-0.0e99999"])


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


bad_session = st.one_of(
    wrong(dict),
    st.dictionaries(st.text(max_size=10).filter(lambda k: k != "type"), json_values, max_size=3),
    st.fixed_dictionaries({"type": wrong(str) | st.text().filter(lambda t: t != "realtime")}),
    st.sampled_from(
        [
            ("instructions", (str,)),
            ("output_modalities", (list,)),
            ("audio", (dict,)),
            ("tools", (list,)),
            ("max_output_tokens", (int,)),
        ]
    ).flatmap(
        lambda kv: st.fixed_dictionaries({"type": st.just("realtime"), kv[0]: wrong(*kv[1])})
    ),
)
bad_item = st.one_of(
    wrong(dict),
    st.fixed_dictionaries(
        {"type": wrong(str) | st.text().filter(lambda t: t not in ("message", "function_call"))}
    ).filter(lambda i: i["type"] != "function_call_output"),
    st.fixed_dictionaries(
        {
            "type": st.just("message"),
            "role": st.text().filter(lambda r: r not in ("user", "assistant", "system")),
            "content": st.just([]),
        }
    ),
    st.fixed_dictionaries(
        {"type": st.just("message"), "role": st.just("user"), "content": wrong(list)}
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("message"),
            "role": st.just("user"),
            "content": st.lists(wrong(dict), min_size=1, max_size=3),
        }
    ),
    st.fixed_dictionaries(
        {"type": st.just("function_call_output"), "call_id": wrong(str), "output": json_values}
    ),
)
bad_response = st.one_of(
    # a falsy ``response`` (0, "", [], false) counts as "no overrides" in the fake: not bad
    wrong(dict).filter(bool),
    st.sampled_from(
        [
            ("instructions", (str,)),
            ("output_modalities", (list,)),
            ("input", (list,)),
            ("tools", (list,)),
            ("max_output_tokens", (int,)),
        ]
    ).flatmap(lambda kv: st.fixed_dictionaries({kv[0]: wrong(*kv[1])})),
    st.fixed_dictionaries({"metadata": wrong(dict)}),
    st.fixed_dictionaries(
        {"conversation": json_values.filter(lambda v: v not in ("auto", "none"))}
    ),
)

#: Frames small enough to flood with (each at most a few KiB).
small_frames: st.SearchStrategy[Text | Binary] = st.one_of(
    st.text(max_size=300).map(Text),
    event("input_audio_buffer.append", audio=wrong(str)).map(Text),
    event(
        "input_audio_buffer.append", audio=st.text(min_size=1, max_size=40).filter(_not_base64)
    ).map(Text),
    # Odd byte counts are valid base64 of PCM16 the real server does not check: no answer.
    st.binary(min_size=1, max_size=301)
    .filter(lambda b: len(b) % 2 == 1)
    .map(
        lambda b: Text(
            _dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b).decode()}),
            silent=True,
        )
    ),
    event("session.update", session=bad_session).map(Text),
    event("conversation.item.create", item=bad_item).map(Text),
    event("response.create", response=bad_response).map(Text),
    event("conversation.item.retrieve", item_id=json_values).map(Text),
    event("conversation.item.delete", item_id=json_values).map(Text),
    event("response.cancel", response_id=json_values).map(Text),
    st.text(max_size=40)
    .filter(lambda t: t not in KNOWN_TYPES)
    .map(lambda t: Text(_dumps({"type": t}))),
    st.sampled_from(
        [
            "transcription_session.update",
            "session.close",
            "output_audio_buffer.clear",
            "voxgate.resume",
        ]
    ).map(lambda t: Text(_dumps({"type": t, "event_id": "evt_x"}))),
    wrong(dict).map(lambda v: Text(_dumps(v))),
    wrong(str).map(lambda v: Text(_dumps({"type": v}))),
    # a duplicate top-level "type": one event to a first-wins reader, another to a last-wins one
    st.tuples(st.sampled_from(KNOWN_TYPES), st.sampled_from(KNOWN_TYPES))
    .filter(lambda p: p[0] != p[1])
    .map(lambda p: Text(f'{{"type":"{p[0]}","audio":"AAAA","type":"{p[1]}"}}')),
    st.binary(max_size=512).map(Binary),
)

#: Frames that are expensive to build or parse, sent once rather than flooded.
big_frames: st.SearchStrategy[Text] = st.one_of(
    st.tuples(
        st.sampled_from(
            [
                "",
                '{"type":"no.such","x":',
                '{"type":"session.update","session":',
                '{"type":"conversation.item.create","item":',
            ]
        ),
        _nested_depth,
    ).map(lambda p: Text(p[0] + _nested(p[1]) + ("}" if p[0] else ""))),
    st.tuples(
        st.sampled_from(
            [
                '{{"type":"session.update","session":{{"type":"realtime","max_output_tokens":{}}}}}',
                '{{"type":"response.create","response":{{"max_output_tokens":{}}}}}',
                '{{"type":"input_audio_buffer.append","audio":{}}}',
                '{{"type":"conversation.item.create","item":{}}}',
                '{{"type":{}}}',
                '{{"type":"no.such","n":{}}}',
                "{}",
            ]
        ),
        _huge_numbers,
    ).map(lambda p: Text(p[0].format(p[1]))),
    st.tuples(
        st.sampled_from(
            [
                '{{"type":"{}"}}',
                '{{"type":"session.update","session":"{}"}}',
                '{{"type":"session.update","session":{{"type":"realtime","instructions":"{}","tools":5}}}}',
                '{{"type":"no.such","{}":1}}',
            ]
        ),
        _escapes,
    ).map(lambda p: Text(p[0].format(p[1]))),
    st.tuples(
        st.sampled_from(
            [
                SENTINEL,
                _dumps(NO_VAD),
                '{"type":"response.create"}',
                '{"type":"conversation.item.create","item":{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]}}',
            ]
        ),
        st.floats(min_value=0, max_value=1, exclude_max=True),
    ).map(lambda p: Text(p[0][: int(len(p[0]) * p[1])])),  # truncated JSON
)

terminals: st.SearchStrategy[Oversize | Violation | Vanish] = st.one_of(
    st.builds(
        Oversize,
        binary=st.booleans(),
        prefix=st.sampled_from(['{"type":"input_audio_buffer.append","audio":"', "garbage", "{"]),
        n_bytes=st.integers(min_value=MAX_FRAME_BYTES + 1, max_value=3 * MAX_FRAME_BYTES),
    ),
    st.binary(min_size=1, max_size=64)
    .filter(lambda b: not _is_utf8(b))
    .map(lambda b: Violation("invalid UTF-8 in a text frame", int(WSMsgType.TEXT), b, 1007)),
    st.sampled_from([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]).map(
        lambda op: Violation(f"reserved opcode {op:#x}", op, b"x", 1002)
    ),
    st.just(
        Violation("continuation without a first frame", int(WSMsgType.CONTINUATION), b"abc", 1002)
    ),
    st.just(Violation("ping payload over 125 bytes", int(WSMsgType.PING), b"p" * 200, 1002)),
    st.just(Violation("close frame with a 1-byte payload", int(WSMsgType.CLOSE), b"\x03", 1002)),
    # a masked text frame header announcing 64 KiB - 1, then part of it
    st.binary(max_size=32).map(lambda b: Vanish(b"\x81\xfe\xff\xff\x00\x00\x00\x00" + b)),
    st.just(Vanish(b"")),
)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


abuses = st.builds(
    Abuse,
    frames=st.lists(
        st.one_of(
            small_frames,
            big_frames,
            st.builds(Flood, frame=small_frames, count=st.integers(min_value=20, max_value=300)),
        ),
        min_size=1,
        max_size=8,
    ).map(tuple),
    terminal=st.integers(0, 3).flatmap(lambda k: terminals if k == 3 else st.none()),
    opt_in=st.booleans(),
    wait_ready=st.booleans(),
)


_forged_resume = st.fixed_dictionaries(
    {
        "type": st.just("voxgate.session.resume"),
        "resume_token": st.text(max_size=60)
        | st.text(max_size=40).map("vgr_".__add__)
        | wrong(str),
        "received_events": json_values,
    }
).map(lambda e: Text(_dumps(e)))
resume_abuses = st.builds(
    ResumeAbuse,
    first=st.none() | _forged_resume | small_frames,
    with_key=st.booleans(),
)


# ------------------------------------------------------------------------------- one abuser


async def resume_abuse_once(
    gw: RunningGateway, http: aiohttp.ClientSession, abuse: ResumeAbuse, secrets: tuple[str, ...]
) -> Tally:
    """A resume attempt that must be refused: the error, then close 4000, nothing else."""
    sent: list[str] = []
    async with http.ws_connect(
        gw.realtime_url(),
        headers=AUTH if abuse.with_key else None,
        protocols=["voxgate.v1", "voxgate.resume"],
    ) as ws:
        if abuse.first is not None:
            await _send(ws, abuse.first, sent)
        events = await _read(ws, until_type=None)
    types = [e["type"] if isinstance(e, dict) else "(closed)" for e in events]
    assert types == ["error", "(closed)"], events
    error = events[0]
    assert isinstance(error, dict)
    check_error_event(error, sent, secrets)
    assert error["error"]["code"] == "voxgate_resume_refused", error
    assert (ws.close_code, _close_reason(events)) == (
        4000,
        "invalid_request_error.voxgate_resume_refused",
    )
    return Tally(frames=len(sent), errors=1, ending="resume refused")


async def abuse_once(
    gw: RunningGateway, http: aiohttp.ClientSession, abuse: Abuse, secrets: tuple[str, ...]
) -> Tally:
    """Open a fresh connection, throw ``abuse`` at it and check every answer."""
    protocols = ["realtime", "voxgate.v1"] if abuse.opt_in else ["realtime"]
    sent: list[str] = [_dumps(NO_VAD)]
    tally = Tally(frames=sum(f.count if isinstance(f, Flood) else 1 for f in abuse.frames))
    async with http.ws_connect(
        gw.realtime_url(), headers=AUTH, protocols=protocols, max_msg_size=0
    ) as ws:
        assert ws.protocol == protocols[-1]
        if abuse.wait_ready:
            assert (await _recv_openai(ws, abuse.opt_in))["type"] == "session.created"
        await ws.send_str(sent[0])
        if abuse.wait_ready:
            assert (await _recv_openai(ws, abuse.opt_in))["type"] == "session.updated"
        for frame in abuse.frames:
            await _send(ws, frame, sent)
        terminal = abuse.terminal
        if terminal is None:
            await ws.send_str(SENTINEL)
            events = await _read(ws, until_type="input_audio_buffer.cleared")
            errors = _answers(events, abuse, sent, secrets)
            if abuse.expects_error():
                assert errors, f"no error at all for {abuse}"
            if not abuse.wait_ready:
                types = {e["type"] for e in events if isinstance(e, dict)}
                assert {"session.created", "session.updated"} <= types, types
            tally.errors, tally.ending = len(errors), "session went on"
            return tally
        if isinstance(terminal, Vanish):
            _vanish(ws, terminal)
            tally.ending = "client vanished"
            return tally
        sent.append(await _send_terminal(ws, terminal))
        events = await _read(ws, until_type=None)
        errors = _answers(events, abuse, sent, secrets)
        code, reason = ws.close_code, _close_reason(events)
        if isinstance(terminal, Oversize):
            assert errors, "no error before the 1009 close"
            assert errors[-1]["error"]["code"] == "voxgate_frame_too_large"
            assert (code, reason) == (1009, "invalid_request_error.voxgate_frame_too_large")
        else:
            assert code == terminal.close_code, (terminal, code, reason)
        tally.errors, tally.ending = len(errors), f"closed {code}"
        return tally


async def _recv_openai(ws: aiohttp.ClientWebSocketResponse, opt_in: bool) -> dict[str, Any]:
    """The next OpenAI event; an opted-in client may get ``voxgate.*`` events in between."""
    while True:
        event = await recv_json(ws)
        if not (opt_in and event["type"].startswith("voxgate.")):
            return event


@dataclass
class Tally:
    """What one example did, summed into the timing artifact (never asserted)."""

    frames: int
    errors: int = 0
    ending: str = ""


def _vanish(ws: aiohttp.ClientWebSocketResponse, vanish: Vanish) -> None:
    """Drop the TCP connection with no close frame, optionally mid-frame."""
    assert ws._response is not None
    transport = ws._response.connection.transport  # type: ignore[union-attr]
    assert transport is not None
    if vanish.partial:
        transport.write(vanish.partial)
    transport.abort()


async def _send(
    ws: aiohttp.ClientWebSocketResponse, frame: Text | Binary | Flood, sent: list[str]
) -> None:
    if isinstance(frame, Flood):
        for _ in range(frame.count):
            await _send(ws, frame.frame, sent)
    elif isinstance(frame, Text):
        sent.append(frame.data)
        await ws.send_str(frame.data)
    else:
        await ws.send_bytes(frame.data)


async def _send_terminal(
    ws: aiohttp.ClientWebSocketResponse, terminal: Oversize | Violation
) -> str:
    """Send the last frame; the gateway may cut the socket while it is still being written."""
    if isinstance(terminal, Oversize):
        text = terminal.prefix + "A" * (terminal.n_bytes - len(terminal.prefix))
        payload, opcode = text.encode(), WSMsgType.BINARY if terminal.binary else WSMsgType.TEXT
    else:
        text, payload, opcode = (
            terminal.payload.decode("latin-1"),
            terminal.payload,
            terminal.opcode,
        )
    with contextlib.suppress(ConnectionError, aiohttp.ClientConnectionError):
        await ws.send_frame(payload, opcode)  # type: ignore[arg-type]  # reserved opcodes on purpose
    return text


@dataclass
class _Closed:
    code: int | None
    reason: str


async def _read(
    ws: aiohttp.ClientWebSocketResponse, until_type: str | None
) -> list[dict[str, Any] | _Closed]:
    """Events up to ``until_type`` (which must come), or up to the close (``until_type`` None)."""
    seen: list[dict[str, Any] | _Closed] = []
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                event = orjson.loads(msg.data)
                assert isinstance(event, dict), msg.data
                seen.append(event)
                if event["type"] == until_type:
                    return seen
                continue
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), msg
            seen.append(_Closed(ws.close_code, str(msg.extra or "")))
            assert until_type is None, (
                f"closed ({ws.close_code}, {msg.extra!r}) before {until_type}: {seen}"
            )
            return seen


def _close_reason(events: list[dict[str, Any] | _Closed]) -> str:
    last = events[-1]
    assert isinstance(last, _Closed)
    return last.reason


def _answers(
    events: list[dict[str, Any] | _Closed], abuse: Abuse, sent: list[str], secrets: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Check every event an abuser received; return its error events.

    Allowed besides errors, at most once each: the sentinel's ``input_audio_buffer.cleared``,
    and, when the frames went out before the session was ready, the answers to the one valid
    ``session.update`` (``session.created``, ``session.updated``). Opted-in clients may also
    get ``voxgate.*`` events.
    """
    once = {"input_audio_buffer.cleared"}
    if not abuse.wait_ready:
        once |= {"session.created", "session.updated"}
    errors: list[dict[str, Any]] = []
    seen: list[str] = []
    for item in events:
        if isinstance(item, _Closed):
            continue
        etype = item["type"]
        if etype == "error":
            check_error_event(item, sent, secrets)
            errors.append(item)
        elif etype.startswith("voxgate."):
            assert abuse.opt_in, f"gateway event {item} sent to a stock client"
        else:
            assert etype in once, f"unexpected {item} for {abuse}"
            assert etype not in seen, f"second {item} for {abuse}"
            seen.append(etype)
    return errors


# ------------------------------------------------------------------------------- good citizen


@dataclass
class Turn:
    label: str
    n: int
    elapsed_s: float


@dataclass
class Talker:
    """A stock ``openai`` SDK session doing text turns, checking each one completely."""

    gw: RunningGateway
    turns: list[Turn] = field(default_factory=list)
    _conn: Any = None
    _client: AsyncOpenAI | None = None
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack)

    async def open(self) -> None:
        self._client = AsyncOpenAI(api_key=SERVER_KEY, websocket_base_url=self.gw.ws_base)
        self._conn = await self._stack.enter_async_context(
            self._client.realtime.connect(model="gpt-realtime")
        )
        assert (await self._conn.recv()).type == "session.created"
        await self._conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        assert (await self._conn.recv()).type == "session.updated"

    async def close(self) -> None:
        await self._stack.aclose()
        if self._client is not None:
            await self._client.close()

    async def turn(self, label: str) -> Turn:
        n = len(self.turns)
        item_id = f"item_good_{n:05d}"
        text = f"good turn {label} {n}"
        started = time.perf_counter()
        await self._conn.conversation.item.create(
            item={
                "id": item_id,
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": text}],
            }
        )
        await self._conn.response.create()
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(TIMEOUT_S):
            async for event in self._conn:
                events.append(event.to_dict())
                if event.type == "response.done":
                    break
        turn = Turn(label, n, time.perf_counter() - started)
        check_own_turn(events, item_id, f"You said: {text}")
        self.turns.append(turn)
        return turn

    async def talk_until(self, stop: asyncio.Event, label: str) -> None:
        while not stop.is_set():
            await self.turn(label)


_TURN_TYPES = frozenset(
    {
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
        "rate_limits.updated",
    }
)


def check_own_turn(events: list[dict[str, Any]], user_item_id: str, reply: str) -> None:
    """One text turn, complete, with this session's ids only and the expected reply."""
    types = [e["type"] for e in events]
    assert "error" not in types, events
    assert set(types) <= _TURN_TYPES, types
    done = events[-1]["response"]
    assert done["status"] == "completed", done
    response_id = done["id"]
    assert len(done["output"]) == 1, done
    reply_id = done["output"][0]["id"]
    assert reply_id != user_item_id
    added = [e["item"]["id"] for e in events if e["type"] == "conversation.item.added"]
    assert added == [user_item_id, reply_id], added
    for e in events:
        if "response_id" in e:
            assert e["response_id"] == response_id, e
        if "item_id" in e:
            assert e["item_id"] == reply_id, e
        if e["type"] == "response.created":
            assert e["response"]["id"] == response_id
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == reply
    assert done["output"][0]["content"][0]["text"] == reply


# ------------------------------------------------------------------------------- the loop thread


class LoopThread:
    """An event loop in a daemon thread: the gateway lives there across hypothesis examples."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="abuse-loop", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = EXAMPLE_TIMEOUT_S) -> T:
        future = self.submit(coro)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise TimeoutError(f"hung for {timeout_s} s") from exc

    def stop(self) -> None:
        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        self.run(cancel_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT_S)
        self.loop.close()


@dataclass
class Env:
    fake: FakeRealtimeServer
    gw: RunningGateway
    http: aiohttp.ClientSession
    secrets: tuple[str, ...]


@contextmanager
def gateway_in_thread(**gateway_settings: Any) -> Iterator[tuple[LoopThread, Env]]:
    """Start the fake upstream and the gateway once, on a background loop."""
    thread = LoopThread()
    thread.start()
    stack = AsyncExitStack()

    async def start() -> Env:
        fake, gw = await stack.enter_async_context(fake_and_gateway(**gateway_settings))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        secrets = (SERVER_KEY, UPSTREAM_KEY, SIGNING_SECRET, fake.url, f"127.0.0.1:{fake.port}")
        return Env(fake, gw, http, secrets)

    try:
        yield thread, thread.run(start())
    finally:
        try:
            thread.run(stack.aclose())
        finally:
            thread.stop()


async def assert_gateway_healthy_and_idle(env: Env) -> None:
    """``/healthz`` is 200, no session is left running, every upstream connection is closed."""
    async with env.http.get(env.gw.http_url + "/healthz") as resp:
        assert resp.status == 200
    assert await env.gw.app[ENDPOINT].wait_idle(TIMEOUT_S), "a session outlived its client"
    for record in list(env.fake.connections):
        await record.wait_closed(timeout_s=TIMEOUT_S)


def record_timing(test: str, turns: list[Turn], **extra: Any) -> None:
    """Durations of the well-behaved turns, by phase, for the report (never asserted)."""
    by_label: dict[str, list[float]] = {}
    for t in turns:
        by_label.setdefault(t.label, []).append(t.elapsed_s * 1000)
    summary = {
        label: {
            "turns": len(ms),
            "median_ms": round(statistics.median(ms), 1),
            "max_ms": round(max(ms), 1),
        }
        for label, ms in by_label.items()
    }
    TIMING_FILE.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(TIMING_FILE.read_text()) if TIMING_FILE.exists() else {}
    data[test] = {"well_behaved_turns": summary, **extra}
    TIMING_FILE.write_text(json.dumps(data, indent=2) + "\n")


# ------------------------------------------------------------------------------- the tests


def test_arbitrary_frames_get_only_openai_errors_while_a_neighbour_talks() -> None:
    with gateway_in_thread(
        max_frame_bytes=MAX_FRAME_BYTES,
        prebuffer_bytes=16 * 1024 * 1024,
        error_coalesce_window_s=0.5,
        resume_grace_s=1.0,  # a vanished voxgate.v1 client's session is held this long
        resume_wait_s=0.2,  # a resume attempt that sends nothing is refused after this
    ) as (thread, env):
        talker = Talker(env.gw)
        thread.run(talker.open())
        for _ in range(5):
            thread.run(talker.turn("without_abuse"))
        stop = asyncio.Event()
        talking = thread.submit(talker.talk_until(stop, "with_abuse"))
        tallies: list[Tally] = []

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.filter_too_much,
            ],
        )
        @given(abuse=abuses | resume_abuses)
        def throw(abuse: Abuse | ResumeAbuse) -> None:
            assert not talking.done(), "the well-behaved session stopped"
            attempt = resume_abuse_once if isinstance(abuse, ResumeAbuse) else abuse_once
            tallies.append(thread.run(attempt(env.gw, env.http, abuse, env.secrets)))  # type: ignore[arg-type]

        started = time.perf_counter()
        try:
            throw()
        finally:
            thread.loop.call_soon_threadsafe(stop.set)
            try:
                talking.result(EXAMPLE_TIMEOUT_S)  # re-raises what the talker saw
            finally:
                thread.run(talker.close())
        abuse_s = time.perf_counter() - started
        assert any(t.label == "with_abuse" for t in talker.turns)
        thread.run(assert_gateway_healthy_and_idle(env))
        record_timing(
            "hypothesis_abuse",
            talker.turns,
            examples=len(tallies),
            frames=sum(t.frames for t in tallies),
            errors=sum(t.errors for t in tallies),
            endings=dict(collections.Counter(t.ending for t in tallies).most_common()),
            abuse_wall_s=round(abuse_s, 2),
        )


FLOOD_FRAMES = 5000
#: One of each kind of malformed frame; the flood cycles through them.
FLOOD_KINDS: list[tuple[str | bytes, str]] = [
    ("garbage", "invalid_json"),
    (b"\x00\xffgarbage", "invalid_event"),
    ('{"type":"no.such.event"}', "invalid_value"),
    ('{"type":"input_audio_buffer.append","audio":5}', "missing_required_parameter"),
    ('{"type":"session.update","session":5}', "invalid_type"),
]


async def test_flood_of_malformed_frames_is_coalesced_and_the_neighbour_sees_only_its_own() -> None:
    async with (
        # Pacing off: the flood reaches the session as fast as the socket carries it, the worst
        # case for the neighbour (with pacing on, the flooder is slowed to 250 frames/s).
        fake_and_gateway(error_coalesce_window_s=60, client_max_events_per_s=0) as (fake, gw),
        aiohttp.ClientSession() as http,
    ):
        env = Env(fake, gw, http, (SERVER_KEY, UPSTREAM_KEY, SIGNING_SECRET, fake.url))
        talker = Talker(gw)
        try:
            handled_s = await _flood_next_to(talker, env)
        finally:
            await talker.close()
        await assert_gateway_healthy_and_idle(env)
    record_timing(
        "flood_5000", talker.turns, flood_frames=FLOOD_FRAMES, flood_handled_s=round(handled_s, 2)
    )


async def _flood_next_to(talker: Talker, env: Env) -> float:
    """The flood test's body; returns how long the gateway took to answer the whole flood."""
    fake, gw, http = env.fake, env.gw, env.http
    await talker.open()  # upstream connection #1
    good_record = await fake.wait_for_connection(1)
    for _ in range(2):
        await talker.turn("without_abuse")
    flooding = asyncio.Event()
    async with http.ws_connect(gw.realtime_url(), headers=AUTH) as flooder:
        await recv_until(flooder, "session.created")
        flood_record = await fake.wait_for_connection(2)

        async def flood() -> None:
            for i in range(FLOOD_FRAMES):
                frame = FLOOD_KINDS[i % len(FLOOD_KINDS)][0]
                if isinstance(frame, bytes):
                    await flooder.send_bytes(frame)
                else:
                    await flooder.send_str(frame)
                if i == 100:
                    flooding.set()

        async def talk() -> None:
            await flooding.wait()
            for _ in range(5):
                await talker.turn("with_abuse")

        started = time.perf_counter()
        await asyncio.gather(flood(), talk())
        await flooder.send_str(SENTINEL)
        events = await recv_until(flooder, "input_audio_buffer.cleared", timeout_s=30)
        handled_s = time.perf_counter() - started  # every flood frame judged and answered
        errors = [e for e in events if e["type"] == "error"]
        assert [e["type"] for e in events if e["type"] != "error"] == ["input_audio_buffer.cleared"]
        for e in errors:
            check_error_event(e, [k for k, _ in FLOOD_KINDS if isinstance(k, str)], env.secrets)
        # one error per kind: the 60 s window never ends during the flood
        assert len(errors) == len(FLOOD_KINDS), [e["error"] for e in errors]
        assert sorted(e["error"]["code"] for e in errors) == sorted(c for _, c in FLOOD_KINDS)
    # the upstream of each session saw only that session's frames
    forwarded = FLOOD_FRAMES * 2 // len(FLOOD_KINDS)  # the two kinds the upstream judges
    flood_types = [e["type"] for e in flood_record.client_events]
    assert len(flood_types) == forwarded + 1, len(flood_types)
    assert flood_types[-1] == "input_audio_buffer.clear"
    good_items = [e["item"]["id"] for e in good_record.events_of("conversation.item.create")]
    assert good_items == [f"item_good_{n:05d}" for n in range(7)]
    assert {e["type"] for e in good_record.client_events} == {
        "session.update",
        "conversation.item.create",
        "response.create",
    }
    return handled_s


# ------------------------------------------------------------------------------- found bugs


async def test_duplicate_type_key_cannot_smuggle_an_event_past_the_gateway() -> None:
    async with (
        fake_and_gateway() as (fake, gw),
        aiohttp.ClientSession() as http,
        http.ws_connect(gw.realtime_url(), headers=AUTH) as ws,
    ):
        await recv_until(ws, "session.created")
        # Routed as audio by the first "type", run as a response by a last-wins parser: refused.
        await ws.send_str(
            '{"type":"input_audio_buffer.append","audio":"AAAA","type":"response.create"}'
        )
        await ws.send_str(SENTINEL)
        events = await recv_until(ws, "input_audio_buffer.cleared")
        record = await fake.wait_for_connection()
        assert record.events_of("response.create") == []
        types = [e["type"] for e in events if not e["type"].startswith("input_audio_buffer.")]
        assert types == ["error"]
        assert events[-2]["error"]["code"] == "invalid_event"


@asynccontextmanager
async def local_gateway() -> AsyncIterator[RunningGateway]:
    """The gateway on the local engine, not warmed: these tests never reach ASR or TTS."""
    settings = Settings(
        backend="local", api_keys=SERVER_KEY, secret=SIGNING_SECRET, ping_interval_s=0
    )
    backend = LocalBackend(responder=KnowledgeResponder(KnowledgeBase.example()), warm=False)
    async with run_gateway(settings, backend=backend) as gw:
        yield gw


async def test_deeply_nested_control_frame_is_a_non_fatal_error_on_the_local_engine() -> None:
    async with (
        local_gateway() as gw,
        aiohttp.ClientSession() as http,
        http.ws_connect(gw.realtime_url(), headers=AUTH) as ws,
    ):
        await recv_until(ws, "session.created", timeout_s=30)
        await ws.send_str('{"type":"session.update","session":' + _nested(5000) + "}")
        await ws.send_str(SENTINEL)
        events = await recv_until(ws, "input_audio_buffer.cleared")  # was: closed 1011
        assert [e["type"] for e in events] == ["error", "input_audio_buffer.cleared"]
        assert events[0]["error"]["code"] == "invalid_json"


async def test_huge_integer_error_names_no_python_internals() -> None:
    async with (
        local_gateway() as gw,
        aiohttp.ClientSession() as http,
        http.ws_connect(gw.realtime_url(), headers=AUTH) as ws,
    ):
        await recv_until(ws, "session.created", timeout_s=30)
        frame = (
            '{"type":"session.update","session":{"type":"realtime","max_output_tokens":'
            + "9" * 5000
            + "}}"
        )
        await ws.send_str(frame)
        error = (await recv_until(ws, "error"))[-1]
        check_error_event(error, [frame], (SERVER_KEY, SIGNING_SECRET))


def test_the_error_checker_catches_what_it_should() -> None:
    """The leak detector itself: internal text is caught, an echo of the client's input is not."""
    sent = ['{"type":"my.py.TypeError"}']
    assert internal_details("Invalid value: 'my.py.TypeError'.", sent, ()) == []
    assert internal_details('Traceback (most recent call last): File "x.py", line 3', [], ())
    assert internal_details("use sys.set_int_max_str_digits() to increase the limit", [], ())
    assert internal_details("failed: KeyError('session')", [], ())
    assert internal_details(f"key {UPSTREAM_KEY}", [], (UPSTREAM_KEY,)) == [
        UPSTREAM_KEY,
        "sk-upstream-test-key-0000000001",
    ]
    assert (
        internal_details(
            "Invalid event: failed to parse JSON value (depth limit exceeded).", [], ()
        )
        == []
    )
    assert internal_details("Error committing input audio buffer: buffer too small.", [], ()) == []
