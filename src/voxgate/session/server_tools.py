"""Server-side tools, hidden from the client: what stands between the upstream and the client. Pure.

Issue 14. voxgate merges its own function tools into the upstream session and runs their calls
itself; a stock client must see only its own tools and never a server tool's call, its output,
or a response that carried nothing else. :class:`ToolInterceptor` decides that, one event at a
time, on the slow path only (audio deltas never reach it):

* ``session.update`` from the client: server tools are appended to a ``tools`` list it sets
  (a client tool of the same name wins); :meth:`initial_config` does the same for the config
  a session starts with;
* ``session.created`` / ``session.updated`` to the client: server tools removed;
* with server tools the client cannot see, a response's ``response.created`` is held until
  its first output item: a server tool call stays hidden (with its argument deltas, item
  events and output item), anything else releases the held ``response.created`` first; a
  response that carried only server calls is dropped whole, and a visible one's
  ``response.done`` lists only visible items (their ``output_index`` is left as the upstream
  numbered it: audio deltas carry it on the hot path). Without such tools nothing is held;
* ``previous_item_id`` naming a hidden item is replaced by the nearest visible item before it
  (null at the start), so retrieve, truncate and insertion keep working on the client's ids;
* a completed server call (``function_call_arguments.done``, or its ``output_item.done``) is
  handed to the caller as a :class:`ToolCall`; :meth:`output_ready` turns the result into a
  hidden ``function_call_output`` item; once every server call of a response has its output
  and the response is done (and it carried no client calls, whose ``response.create`` is the
  client's), the :class:`~voxgate.session.injector.Injector` queues the follow-up
  ``response.create``;
* the client's ``response.create`` waits (with the control events behind it, in order) while
  voxgate's own request, a hidden response or a server tool output is pending, so neither side
  ever collides with the other's response (``conversation_already_has_active_response``).

The events voxgate sends upstream carry ``event_vgss_…`` ids; an ``error`` naming one never
reaches the client. Ids here are the client's (the machine maps a reconnected upstream's
ids first); the mirror sees every event, hidden ones included, so server tool calls survive an
upstream reconnect. Everything is bounded; nothing does I/O or reads a clock.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from voxgate.protocol.sniff import NotAnEvent, event_type, parse_event
from voxgate.session.injector import (
    CONTEXT_ITEM_PREFIX,
    CONTEXT_PREFIX,
    EVENT_PREFIX,
    METADATA_KEY,
    OUTPUT_ITEM_PREFIX,
    Injector,
)

_MAX_RESPONSES: Final = 64
_MAX_CALLS: Final = 256
_MAX_HIDDEN: Final = 1024
#: Client control events held behind a waiting ``response.create`` (more are sent on as is).
MAX_HELD: Final = 32


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A completed server tool call to run."""

    call_id: str
    name: str
    arguments: str
    item_id: str
    response_id: str | None


@dataclass(slots=True)
class Verdict:
    """What to do with one client-bound event.

    ``to_client``: texts to send the client, in order (none: hidden; several: a held
    ``response.created`` released first). ``calls``: server tool calls to start now.
    ``to_upstream``: events to send upstream now (as if from the client: recorded and gated).
    """

    to_client: list[str]
    calls: list[ToolCall] = field(default_factory=list)
    to_upstream: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Response:
    created: str | None  # the held response.created (None once released)
    visible: bool = False
    calls: list[str] = field(default_factory=list)  # server call ids
    client_calls: int = 0
    done: bool = False


@dataclass(slots=True)
class _Call:
    call_id: str
    name: str
    item_id: str
    response_id: str | None
    arguments: str = ""
    started: bool = False
    output_sent: bool = False


class ToolInterceptor:
    """One session's server tools (see the module docstring).

    Args:
        tools: the server tools, in the session config's flat shape
            (``{"type": "function", "name", "description", "parameters"}``).
        injector: the session's gate and job queue (shared with proactive messages).

    Caller's duty: pass every client control frame (never audio) to :meth:`from_client` and
    send what it returns; pass every client-bound text to :meth:`to_client` and perform the
    :class:`Verdict` in order; call :meth:`output_ready` for every :class:`ToolCall` it handed
    out, and :meth:`pump` when a timer from ``injector.wake_at()`` fires.
    """

    def __init__(self, tools: Sequence[Mapping[str, Any]], injector: Injector) -> None:
        self.specs: list[dict[str, Any]] = [dict(t) for t in tools]
        self.server_names = frozenset(str(t["name"]) for t in tools)
        self.client_names: frozenset[str] = frozenset()
        self.injector = injector
        self._responses: OrderedDict[str, _Response] = OrderedDict()
        self._calls: OrderedDict[str, _Call] = OrderedDict()
        self._call_items: dict[str, str] = {}  # hidden call item id -> call id
        self._streaming = 0  # hidden calls whose arguments are still arriving
        self._running = 0  # calls started whose output is not sent yet
        self._unseen: set[str] = set()  # responses running that the client has not seen
        self._hidden: OrderedDict[str, str | None] = OrderedDict()  # item -> visible predecessor
        self._held: deque[tuple[str, bool]] = deque()  # (client frame, is response.create)

    @property
    def hidden_names(self) -> frozenset[str]:
        """Server tools the client cannot see (a client tool of the same name wins)."""
        return self.server_names - self.client_names

    # ------------------------------------------------------------------ session config

    def initial_config(self, embedded: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The config the upstream session starts with: the key's own, plus server tools.

        A transcription session gets no tools (it has none); with no server tools the key's
        config is returned unchanged.
        """
        if not self.specs or (embedded is not None and embedded.get("type") == "transcription"):
            return dict(embedded) if embedded is not None else None
        config: dict[str, Any] = dict(embedded) if embedded is not None else {"type": "realtime"}
        config["tools"] = self._merged(config.get("tools"))
        return config

    def _merged(self, client_tools: Any) -> list[Any]:
        own = list(client_tools) if isinstance(client_tools, list) else []
        self.client_names = frozenset(
            str(t["name"]) for t in own if isinstance(t, dict) and isinstance(t.get("name"), str)
        )
        return own + [t for t in self.specs if t["name"] not in self.client_names]

    # ------------------------------------------------------------------ client -> upstream

    def from_client(self, text: str, now: float, *, busy: bool = False) -> str | None:
        """A client control frame (not audio). Returns the text to send on, or None: held.

        ``busy``: the caller still has events of voxgate's own to send upstream first (a
        ``response.create`` must not overtake them). Held frames come back from :meth:`pump`
        / the :class:`Verdict` when the way is clear.
        """
        try:
            etype = event_type(text)
        except NotAnEvent:
            return text  # the machine answers it
        if etype == "session.update" and self.specs:
            text = self._merge_update(text)
        is_create = etype == "response.create"
        waits = self._held or (is_create and (busy or self._client_must_wait()))
        if waits and len(self._held) < MAX_HELD:
            self._held.append((text, is_create))
            return None
        if is_create:
            self.injector.on_client_request(now)
        return text

    def _merge_update(self, text: str) -> str:
        try:
            _, event = parse_event(text)
        except NotAnEvent:
            return text
        session = event.get("session")
        if not isinstance(session, dict) or "tools" not in session:
            return text
        merged = {**session, "tools": self._merged(session["tools"])}
        return orjson.dumps({**event, "session": merged}).decode()

    def _client_must_wait(self) -> bool:
        return self.injector.voxgate_request_pending or bool(self._running or self._unseen)

    # ------------------------------------------------------------------ upstream -> client

    def to_client(self, text: str, now: float) -> Verdict:
        """One client-bound text (upstream events after the machine, and voxgate's own)."""
        try:
            etype = event_type(text)
        except NotAnEvent:
            return Verdict([text])
        handler = _HANDLERS.get(etype)
        if handler is None:
            return Verdict([text])
        return handler(self, etype, text, now)

    def _on_session(self, etype: str, text: str, now: float) -> Verdict:
        event = _parse(text)
        session = event.get("session") if event is not None else None
        if event is None or not isinstance(session, dict):
            return Verdict([text])
        self.injector.on_session(session)
        tools = session.get("tools")
        hidden = self.hidden_names
        if not isinstance(tools, list) or not hidden:
            return Verdict([text])
        shown = [t for t in tools if not (isinstance(t, dict) and t.get("name") in hidden)]
        changed = len(shown) != len(tools)
        clean = {**session, "tools": shown}
        choice = session.get("tool_choice")
        if isinstance(choice, dict) and choice.get("name") in hidden:
            clean["tool_choice"], changed = "auto", True
        if not changed:
            return Verdict([text])
        return Verdict([orjson.dumps({**event, "session": clean}).decode()])

    def _on_response_created(self, etype: str, text: str, now: float) -> Verdict:
        event = _parse(text)
        body = event.get("response") if event is not None else None
        if event is None or not isinstance(body, dict) or not isinstance(body.get("id"), str):
            return Verdict([text])
        tag = _tag(body)
        self.injector.on_response_created(body["id"], tag)
        if tag is not None:
            text = orjson.dumps({**event, "response": _untagged(body)}).decode()
        if not self.hidden_names:  # nothing of voxgate's can be in it: show it at once
            return Verdict([text])
        self._responses[body["id"]] = _Response(text)
        self._unseen.add(body["id"])
        while len(self._responses) > _MAX_RESPONSES:
            self._unseen.discard(self._responses.popitem(last=False)[0])
        return Verdict([])

    def _on_output_item_added(self, etype: str, text: str, now: float) -> Verdict:
        event = _parse(text)
        item = event.get("item") if event is not None else None
        if event is None or not isinstance(item, dict):
            return Verdict([text])
        rid = event.get("response_id")
        response = self._responses.get(rid) if isinstance(rid, str) else None
        if item.get("type") == "function_call":
            if item.get("name") in self.hidden_names:
                call = self._hide_call(item, rid if isinstance(rid, str) else None)
                if response is not None and call is not None:
                    response.calls.append(call.call_id)
                return Verdict([])
            if response is not None:
                response.client_calls += 1
        return Verdict([*self._reveal(rid, response), text])

    def _hide_call(self, item: dict[str, Any], response_id: str | None) -> _Call | None:
        item_id, call_id = item.get("id"), item.get("call_id")
        if not isinstance(item_id, str) or not isinstance(call_id, str):
            return None
        self._hide(item_id, None)
        if call_id in self._calls:
            return self._calls[call_id]
        call = _Call(call_id, str(item.get("name")), item_id, response_id)
        self._calls[call_id] = call
        self._call_items[item_id] = call_id
        self._streaming += 1
        while len(self._calls) > _MAX_CALLS:
            _, old = self._calls.popitem(last=False)
            self._call_items.pop(old.item_id, None)
            if old.started and not old.output_sent:  # (never: the bound is far above the limit)
                self._running -= 1
        return call

    def _hide(self, item_id: str, previous: Any) -> None:
        if item_id in self._hidden and previous is None:
            return
        self._hidden[item_id] = self._visible(previous)
        while len(self._hidden) > _MAX_HIDDEN:
            self._hidden.popitem(last=False)

    def _visible(self, item_id: Any) -> str | None:
        """The nearest visible item at or before ``item_id`` (None: the conversation start)."""
        if not isinstance(item_id, str):
            return None
        return self._hidden.get(item_id, item_id)

    def _reveal(self, response_id: Any, response: _Response | None) -> list[str]:
        if response is None or response.visible:
            return []
        response.visible = True
        self._unseen.discard(response_id)
        created, response.created = response.created, None
        return [created] if created is not None else []

    def _on_item(self, etype: str, text: str, now: float) -> Verdict:
        event = _parse(text)
        item = event.get("item") if event is not None else None
        if event is None or not isinstance(item, dict) or not isinstance(item.get("id"), str):
            return Verdict([text])
        item_id: str = item["id"]
        previous = event.get("previous_item_id")
        if self._is_hidden(item):
            self._hide(item_id, previous)
            if etype == "conversation.item.done":
                return Verdict([])
            return Verdict(self.injector.on_item_added(item_id, now))
        if isinstance(previous, str) and previous in self._hidden:
            event["previous_item_id"] = self._hidden[previous]
            return Verdict([orjson.dumps(event).decode()])
        return Verdict([text])

    def _is_hidden(self, item: dict[str, Any]) -> bool:
        item_id = item["id"]
        if item_id in self._hidden or item_id.startswith((OUTPUT_ITEM_PREFIX, CONTEXT_ITEM_PREFIX)):
            return True
        kind = item.get("type")
        if kind == "function_call":
            if item.get("call_id") in self._calls:
                return True
            if item.get("name") in self.hidden_names:
                self._hide_call(item, None)  # a server call first seen here (no response)
                return True
            return False
        if kind == "function_call_output":
            return item.get("call_id") in self._calls
        if kind == "message" and item.get("role") == "system":
            content = item.get("content")
            first = content[0] if isinstance(content, list) and content else None
            text = first.get("text") if isinstance(first, dict) else None
            return isinstance(text, str) and text.startswith(CONTEXT_PREFIX)
        return False

    def _on_arguments_delta(self, etype: str, text: str, now: float) -> Verdict:
        if not self._streaming:
            return Verdict([text])
        event = _parse(text)
        if event is not None and event.get("item_id") in self._call_items:
            return Verdict([])
        return Verdict([text])

    def _on_arguments_done(self, etype: str, text: str, now: float) -> Verdict:
        event = _parse(text)
        if event is None or event.get("item_id") not in self._call_items:
            return Verdict([text])
        call = self._calls.get(self._call_items[event["item_id"]])
        arguments = event.get("arguments")
        if call is None:
            return Verdict([])
        return Verdict([], calls=self._start(call, arguments))

    def _on_output_item_done(self, etype: str, text: str, now: float) -> Verdict:
        event = _parse(text)
        item = event.get("item") if event is not None else None
        if not isinstance(item, dict) or item.get("id") not in self._hidden:
            return Verdict([text])
        call = self._calls.get(str(item.get("call_id")))
        if call is not None and item.get("status") == "completed":
            return Verdict([], calls=self._start(call, item.get("arguments")))
        return Verdict([])

    def _start(self, call: _Call, arguments: Any) -> list[ToolCall]:
        if call.started or call.output_sent:
            return []
        call.started = True
        self._running += 1
        self._streaming = max(0, self._streaming - 1)
        call.arguments = arguments if isinstance(arguments, str) else ""
        return [ToolCall(call.call_id, call.name, call.arguments, call.item_id, call.response_id)]

    def _on_response_done(self, etype: str, text: str, now: float) -> Verdict:
        event = _parse(text)
        body = event.get("response") if event is not None else None
        if event is None or not isinstance(body, dict):
            return Verdict([text])
        shown = self.injector.on_response_done(body, now)
        response = self._responses.get(str(body.get("id")))
        if response is None:
            if _tag(body) is not None:
                text = orjson.dumps({**event, "response": _untagged(body)}).decode()
            return Verdict([text, *shown], to_upstream=self.pump(now))
        response.done = True
        self._unseen.discard(str(body.get("id")))
        out: list[str] = []
        if not response.visible and not response.calls:
            out.extend(self._reveal(body.get("id"), response))  # nothing of voxgate's: show it
        if response.visible:
            out.append(self._visible_done(event, body, text))
        for call_id in response.calls:  # a call cut short never runs: forget it
            call = self._calls.get(call_id)
            if call is not None and not call.started and not call.output_sent:
                call.output_sent = True  # never started: nothing to answer
                self._streaming = max(0, self._streaming - 1)
        self._settle(str(body.get("id")), response)
        return Verdict([*out, *shown], to_upstream=self.pump(now))

    def _visible_done(self, event: dict[str, Any], body: dict[str, Any], text: str) -> str:
        output = body.get("output")
        hidden = self._hidden
        changed = _tag(body) is not None
        if isinstance(output, list):
            kept = [o for o in output if not (isinstance(o, dict) and o.get("id") in hidden)]
            changed = changed or len(kept) != len(output)
            body = {**body, "output": kept}
        if not changed:
            return text
        return orjson.dumps({**event, "response": _untagged(body)}).decode()

    def _settle(self, response_id: str, response: _Response) -> None:
        """A done response whose server calls all have outputs: follow up, then forget it."""
        if not response.done:
            return
        calls = [self._calls[c] for c in response.calls if c in self._calls]
        if any(not c.output_sent for c in calls):
            return
        if any(c.started for c in calls) and response.client_calls == 0:
            self.injector.follow_up()
        self._responses.pop(response_id, None)

    def _on_error(self, etype: str, text: str, now: float) -> Verdict:
        event = _parse(text)
        err = event.get("error") if event is not None else None
        eid = err.get("event_id") if isinstance(err, dict) else None
        if isinstance(err, dict) and isinstance(eid, str) and eid.startswith(EVENT_PREFIX):
            code = err.get("code")
            self.injector.on_error(eid, code if isinstance(code, str) else None)
            return Verdict([], to_upstream=self.pump(now))
        self.injector.on_client_error()
        return Verdict([text])

    def _on_speech_started(self, etype: str, text: str, now: float) -> Verdict:
        self.injector.on_speech_started()
        return Verdict([text])

    def _on_speech_stopped(self, etype: str, text: str, now: float) -> Verdict:
        self.injector.on_speech_stopped(now)
        return Verdict([text])

    def _on_committed(self, etype: str, text: str, now: float) -> Verdict:
        self.injector.on_committed(now)
        event = _parse(text)
        previous = event.get("previous_item_id") if event is not None else None
        if event is None or not isinstance(previous, str) or previous not in self._hidden:
            return Verdict([text])
        event["previous_item_id"] = self._hidden[previous]
        return Verdict([orjson.dumps(event).decode()])

    def _on_cleared(self, etype: str, text: str, now: float) -> Verdict:
        self.injector.on_cleared()
        return Verdict([text], to_upstream=self.pump(now))

    # ------------------------------------------------------------------ results and timers

    def output_ready(self, call_id: str, output: str, now: float) -> list[str]:
        """A server call finished: its hidden output item, then whatever may go now."""
        call = self._calls.get(call_id)
        if call is None or call.output_sent:
            return self.pump(now)
        call.output_sent = True
        self._running -= 1
        item_id = OUTPUT_ITEM_PREFIX + secrets.token_hex(8)
        self._hide(item_id, None)
        create = {
            "type": "conversation.item.create",
            "event_id": EVENT_PREFIX + "out_" + item_id[len(OUTPUT_ITEM_PREFIX) :],
            "item": {
                "id": item_id,
                "type": "function_call_output",
                "call_id": call_id,
                "output": output,
            },
        }
        response = self._responses.get(call.response_id) if call.response_id else None
        if response is not None:
            self._settle(str(call.response_id), response)
        elif not self._running:
            self.injector.follow_up()  # its response is gone from view: follow up anyway
        return [orjson.dumps(create).decode(), *self.pump(now)]

    def pump(self, now: float) -> list[str]:
        """Held client frames whose way is clear, then voxgate's own jobs that may go now."""
        out: list[str] = []
        if self._held and not self._client_must_wait():
            released_create = False
            while self._held:
                frame, is_create = self._held[0]
                if is_create and released_create:
                    break  # the next request waits until the way is clear again
                self._held.popleft()
                out.append(frame)
                if is_create:
                    released_create = True
                    self.injector.on_client_request(now)
        if self._held:
            return out
        return out + self.injector.pump(
            now, blocked=bool(self._unseen), tools_pending=bool(self._running)
        )


#: client-bound event type -> handler (plain functions: no bound method per session)
_HANDLERS: dict[str, Callable[[ToolInterceptor, str, str, float], Verdict]] = {
    "session.created": ToolInterceptor._on_session,
    "session.updated": ToolInterceptor._on_session,
    "response.created": ToolInterceptor._on_response_created,
    "response.output_item.added": ToolInterceptor._on_output_item_added,
    "response.output_item.done": ToolInterceptor._on_output_item_done,
    "conversation.item.added": ToolInterceptor._on_item,
    "conversation.item.done": ToolInterceptor._on_item,
    "conversation.item.created": ToolInterceptor._on_item,
    "response.function_call_arguments.delta": ToolInterceptor._on_arguments_delta,
    "response.function_call_arguments.done": ToolInterceptor._on_arguments_done,
    "response.done": ToolInterceptor._on_response_done,
    "error": ToolInterceptor._on_error,
    "input_audio_buffer.speech_started": ToolInterceptor._on_speech_started,
    "input_audio_buffer.speech_stopped": ToolInterceptor._on_speech_stopped,
    "input_audio_buffer.committed": ToolInterceptor._on_committed,
    "input_audio_buffer.cleared": ToolInterceptor._on_cleared,
}


def _parse(text: str) -> dict[str, Any] | None:
    try:
        return parse_event(text)[1]
    except NotAnEvent:
        return None


def _tag(body: Mapping[str, Any]) -> str | None:
    metadata = body.get("metadata")
    value = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
    return value if isinstance(value, str) else None


def _untagged(body: dict[str, Any]) -> dict[str, Any]:
    metadata = body.get("metadata")
    if not isinstance(metadata, dict) or METADATA_KEY not in metadata:
        return body
    rest = {k: v for k, v in metadata.items() if k != METADATA_KEY}
    return {**body, "metadata": rest or None}
