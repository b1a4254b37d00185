"""Server-side conversation state and the server events of the response cycle (§4–§6).

Pure: no I/O, no clock, no logging. Ids come from :mod:`voxgate.protocol.ids` or the caller.
Owns:

* :class:`Conversation`: ordered items with ``previous_item_id`` / ``"root"`` insertion and
  create / retrieve / delete / truncate, raising :class:`ClientEventError` with the real codes;
* builder functions, one per server event (each mints a fresh ``event_id``), with exactly the
  field shapes openai-agents validates (§5, §10): content *parts* say ``audio``/``text``,
  assistant *item* content says ``output_audio``/``output_text``;
* :class:`ResponseBuilder`: the event sequence of one response (§6.2, §6.3, §6.4), so the fake
  upstream and the local engine emit identical cycles. Its methods return event lists; the
  caller sends them in order.

It does not decide *what* to answer (the caller's responder does) and never sees a socket.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping
from typing import Any, Final, Literal

from voxgate.protocol import ids
from voxgate.protocol.errors import ClientEventError, InvalidState

Event = dict[str, Any]
Item = dict[str, Any]

ROOT: Final = "root"
CANCEL_REASONS: Final = frozenset({"turn_detected", "client_cancelled"})
INCOMPLETE_REASONS: Final = frozenset({"max_output_tokens", "content_filter"})
_USER_CONTENT: Final = ("input_text", "input_audio", "input_image")
_CONTENT_BY_ROLE: Final[Mapping[str, tuple[str, ...]]] = {
    "user": _USER_CONTENT,
    "system": ("input_text",),
    "assistant": ("output_text",),
}


def _event(event_type: str, **fields: Any) -> Event:
    return {"type": event_type, "event_id": ids.event_id(), **fields}


def public_item(item: Mapping[str, Any]) -> Item:
    """A copy of ``item`` without audio bytes, as ``item.done`` / ``response.done`` carry it."""
    out = copy.deepcopy(dict(item))
    for part in out.get("content") or []:
        part.pop("audio", None)
    return out


# --------------------------------------------------------------------------------------------
# Items


def user_text_item(item_id: str, text: str) -> Item:
    return {
        "id": item_id,
        "type": "message",
        "object": "realtime.item",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_text", "text": text}],
    }


def user_audio_item(item_id: str, *, transcript: str | None = None) -> Item:
    """The user item a commit creates (audio bytes are kept by :class:`Conversation`)."""
    return {
        "id": item_id,
        "type": "message",
        "object": "realtime.item",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": transcript}],
    }


def assistant_item(
    item_id: str, *, status: str = "in_progress", content: list[Any] | None = None
) -> Item:
    return {
        "id": item_id,
        "type": "message",
        "object": "realtime.item",
        "status": status,
        "role": "assistant",
        "content": content if content is not None else [],
    }


def function_call_item(
    item_id: str, *, call_id: str, name: str, arguments: str = "", status: str = "in_progress"
) -> Item:
    return {
        "id": item_id,
        "type": "function_call",
        "object": "realtime.item",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


# --------------------------------------------------------------------------------------------
# Event builders (§5)


def session_created(session: Mapping[str, Any]) -> Event:
    return _event("session.created", session=copy.deepcopy(dict(session)))


def session_updated(session: Mapping[str, Any]) -> Event:
    return _event("session.updated", session=copy.deepcopy(dict(session)))


def item_added(item: Mapping[str, Any], previous_item_id: str | None) -> Event:
    return _event(
        "conversation.item.added", item=public_item(item), previous_item_id=previous_item_id
    )


def item_done(item: Mapping[str, Any], previous_item_id: str | None) -> Event:
    return _event(
        "conversation.item.done", item=public_item(item), previous_item_id=previous_item_id
    )


def item_retrieved(item: Mapping[str, Any]) -> Event:
    return _event("conversation.item.retrieved", item=copy.deepcopy(dict(item)))


def item_truncated(item_id: str, content_index: int, audio_end_ms: int) -> Event:
    return _event(
        "conversation.item.truncated",
        item_id=item_id,
        content_index=content_index,
        audio_end_ms=audio_end_ms,
    )


def item_deleted(item_id: str) -> Event:
    return _event("conversation.item.deleted", item_id=item_id)


def speech_started(audio_start_ms: int, item_id: str) -> Event:
    return _event(
        "input_audio_buffer.speech_started", audio_start_ms=audio_start_ms, item_id=item_id
    )


def speech_stopped(audio_end_ms: int, item_id: str) -> Event:
    return _event("input_audio_buffer.speech_stopped", audio_end_ms=audio_end_ms, item_id=item_id)


def buffer_committed(item_id: str, previous_item_id: str | None) -> Event:
    return _event(
        "input_audio_buffer.committed", item_id=item_id, previous_item_id=previous_item_id
    )


def buffer_cleared() -> Event:
    return _event("input_audio_buffer.cleared")


def timeout_triggered(item_id: str, audio_start_ms: int, audio_end_ms: int) -> Event:
    return _event(
        "input_audio_buffer.timeout_triggered",
        item_id=item_id,
        audio_start_ms=audio_start_ms,
        audio_end_ms=audio_end_ms,
    )


def transcription_delta(item_id: str, delta: str, *, content_index: int = 0) -> Event:
    return _event(
        "conversation.item.input_audio_transcription.delta",
        item_id=item_id,
        content_index=content_index,
        delta=delta,
        logprobs=None,
    )


def transcription_usage(audio_ms: float, transcript: str) -> dict[str, Any]:
    """Token usage for a transcription, estimated deterministically from duration and text."""
    audio_tokens = max(1, round(audio_ms / 100))
    text_tokens = estimate_text_tokens(transcript)
    return {
        "type": "tokens",
        "input_tokens": audio_tokens,
        "output_tokens": text_tokens,
        "total_tokens": audio_tokens + text_tokens,
        "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
    }


def transcription_completed(
    item_id: str, transcript: str, usage: Mapping[str, Any], *, content_index: int = 0
) -> Event:
    return _event(
        "conversation.item.input_audio_transcription.completed",
        item_id=item_id,
        content_index=content_index,
        transcript=transcript,
        usage=dict(usage),
        logprobs=None,
    )


def transcription_failed(item_id: str, *, code: str, message: str, content_index: int = 0) -> Event:
    return _event(
        "conversation.item.input_audio_transcription.failed",
        item_id=item_id,
        content_index=content_index,
        error={"type": "transcription_error", "code": code, "message": message, "param": None},
    )


def rate_limits_updated(*, limit: int = 40_000, remaining: int = 40_000) -> Event:
    """Live servers send only the ``tokens`` limit (§5)."""
    return _event(
        "rate_limits.updated",
        rate_limits=[
            {"name": "tokens", "limit": limit, "remaining": remaining, "reset_seconds": 0.0}
        ],
    )


def estimate_text_tokens(text: str) -> int:
    """About four characters per token, as OpenAI's rule of thumb; deterministic."""
    return (len(text) + 3) // 4


# --------------------------------------------------------------------------------------------
# Conversation state


class Conversation:
    """The ordered items of one session's default conversation.

    Bounded: at most ``max_items`` items (the oldest is dropped past it, as the real server
    truncates context) and ``max_audio_bytes`` of retained user audio (the oldest audio is
    forgotten first; ``retrieve`` then returns the item without its ``audio``).
    """

    def __init__(self, *, max_items: int = 4096, max_audio_bytes: int = 32 * 1024 * 1024) -> None:
        self._items: list[Item] = []
        self._audio: dict[str, bytes] = {}  # item id -> input audio bytes (insertion order)
        self._audio_ms: dict[str, float] = {}  # assistant item id -> output audio duration
        self._max_items = max_items
        self._max_audio_bytes = max_audio_bytes

    # -- reading

    @property
    def items(self) -> list[Item]:
        """Copies of the items, in order."""
        return [copy.deepcopy(i) for i in self._items]

    def snapshot(self) -> list[Item]:
        """The stored items themselves, in order (a new list; callers must not mutate them).

        What a response reads as its context: a deep copy per response would cost O(length of
        the conversation) on every turn, which grows without bound in a long call.
        """
        return list(self._items)

    @property
    def last_item_id(self) -> str | None:
        return self._items[-1]["id"] if self._items else None

    def get(self, item_id: str) -> Item | None:
        """The stored item (not a copy), or None."""
        for item in self._items:
            if item["id"] == item_id:
                return item
        return None

    def __contains__(self, item_id: object) -> bool:
        return any(i["id"] == item_id for i in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def audio_of(self, item_id: str) -> bytes | None:
        """Retained input audio of a user item, or None."""
        return self._audio.get(item_id)

    # -- writing

    def insert(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Insert a normalised item; return the id of the item now before it (or None).

        ``previous_item_id`` None appends, ``"root"`` puts first. Raises ``KeyError`` on an
        unknown id (callers validate first with :meth:`check_previous`).
        """
        if previous_item_id is None:
            index = len(self._items)
        elif previous_item_id == ROOT:
            index = 0
        else:
            index = self._index(previous_item_id) + 1
        self._items.insert(index, item)
        while len(self._items) > self._max_items:
            dropped = self._items.pop(0)
            self._audio.pop(dropped["id"], None)
            self._audio_ms.pop(dropped["id"], None)
        pos = self._index(item["id"])
        return self._items[pos - 1]["id"] if pos > 0 else None

    def replace(self, item: Item) -> None:
        """Replace the stored item with the same id (e.g. an assistant item when it finishes)."""
        self._items[self._index(item["id"])] = item

    def attach_audio(self, item_id: str, audio: bytes) -> None:
        """Retain a user item's input audio, within ``max_audio_bytes``."""
        if len(audio) > self._max_audio_bytes:
            return
        self._audio[item_id] = audio
        total = sum(len(a) for a in self._audio.values())
        while total > self._max_audio_bytes:
            oldest = next(iter(self._audio))
            total -= len(self._audio.pop(oldest))

    def set_audio_duration(self, item_id: str, ms: float) -> None:
        """Record how much output audio an assistant item has (bounds ``truncate``)."""
        self._audio_ms[item_id] = ms

    def audio_duration(self, item_id: str) -> float | None:
        return self._audio_ms.get(item_id)

    # -- client operations (§4)

    def check_previous(self, previous_item_id: Any, *, event_id: str | None) -> None:
        if previous_item_id is None or previous_item_id == ROOT or previous_item_id in self:
            return
        raise ClientEventError(
            f"Invalid 'previous_item_id': no item with id '{previous_item_id}' in the "
            "conversation.",
            code="invalid_value",
            param="previous_item_id",
            event_id=event_id,
        )

    def create(
        self,
        item: Any,
        *,
        previous_item_id: str | None,
        new_item_id: str,
        event_id: str | None,
    ) -> tuple[Item, str | None]:
        """Handle ``conversation.item.create``: validate, normalise and insert the item.

        Returns:
            ``(stored item, previous_item_id)``; the caller emits :func:`item_added` and
            :func:`item_done` with them.

        Raises:
            ClientEventError: bad item shape, duplicate id or unknown ``previous_item_id``.
        """
        normalised = normalise_client_item(item, new_item_id=new_item_id, event_id=event_id)
        if normalised["id"] in self:
            raise ClientEventError(
                f"Invalid 'item.id': an item with id '{normalised['id']}' already exists.",
                code="invalid_value",
                param="item.id",
                event_id=event_id,
            )
        self.check_previous(previous_item_id, event_id=event_id)
        audio = b""
        for part in normalised.get("content") or []:
            if part.get("type") == "input_audio" and isinstance(part.get("audio"), str):
                audio += _b64decode(part["audio"], event_id=event_id)
        previous = self.insert(normalised, previous_item_id)
        if audio:
            self.attach_audio(normalised["id"], audio)
        return normalised, previous

    def retrieve(self, item_id: Any, *, event_id: str | None) -> Item:
        """Handle ``conversation.item.retrieve``: the full item, including input audio."""
        item = self.get(item_id) if isinstance(item_id, str) else None
        if item is None:
            raise ClientEventError(
                f"Invalid 'item_id': no item with id '{item_id}' in the conversation.",
                code="item_retrieve_invalid_item_id",
                param="item_id",
                event_id=event_id,
            )
        full = copy.deepcopy(item)
        audio = self._audio.get(item["id"])
        if audio is not None:
            for part in full.get("content") or []:
                if part.get("type") == "input_audio":
                    part["audio"] = base64.b64encode(audio).decode("ascii")
        return full

    def delete(self, item_id: Any, *, event_id: str | None) -> None:
        """Handle ``conversation.item.delete``."""
        if not isinstance(item_id, str) or item_id not in self:
            raise ClientEventError(
                f"Invalid 'item_id': no item with id '{item_id}' in the conversation.",
                code="item_delete_invalid_item_id",
                param="item_id",
                event_id=event_id,
            )
        del self._items[self._index(item_id)]
        self._audio.pop(item_id, None)
        self._audio_ms.pop(item_id, None)

    def truncate(
        self, item_id: Any, content_index: Any, audio_end_ms: Any, *, event_id: str | None
    ) -> None:
        """Handle ``conversation.item.truncate`` on an assistant audio item.

        The transcript beyond ``audio_end_ms`` is removed (proportionally to the audio cut).

        Raises:
            ClientEventError: ``item_truncate_invalid_item_id`` for an unknown or non-audio
                item, ``invalid_value`` when ``audio_end_ms`` is past the audio's end.
        """
        item = self.get(item_id) if isinstance(item_id, str) else None
        duration = self._audio_ms.get(item_id) if isinstance(item_id, str) else None
        if item is None or item.get("role") != "assistant" or duration is None:
            raise ClientEventError(
                f"Invalid 'item_id': only model output audio messages can be truncated; "
                f"'{item_id}' is not one.",
                code="item_truncate_invalid_item_id",
                param="item_id",
                event_id=event_id,
            )
        content = item.get("content") or []
        if not isinstance(content_index, int) or not 0 <= content_index < len(content):
            raise ClientEventError(
                f"Invalid 'content_index': {content_index}.",
                code="invalid_value",
                param="content_index",
                event_id=event_id,
            )
        if not isinstance(audio_end_ms, int) or isinstance(audio_end_ms, bool) or audio_end_ms < 0:
            raise ClientEventError(
                f"Invalid 'audio_end_ms': {audio_end_ms}.",
                code="invalid_value",
                param="audio_end_ms",
                event_id=event_id,
            )
        if audio_end_ms > duration:
            raise ClientEventError(
                f"Audio content of {int(duration)}ms is already shorter than {audio_end_ms}ms",
                code="invalid_value",
                param="audio_end_ms",
                event_id=event_id,
            )
        part = content[content_index]
        transcript = part.get("transcript") or ""
        keep = int(len(transcript) * (audio_end_ms / duration)) if duration else 0
        part["transcript"] = transcript[:keep]
        self._audio_ms[item_id] = float(audio_end_ms)

    def _index(self, item_id: str) -> int:
        for i, item in enumerate(self._items):
            if item["id"] == item_id:
                return i
        raise KeyError(item_id)


def _b64decode(data: str, *, event_id: str | None) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        raise ClientEventError(
            "Invalid 'audio': expected base64-encoded audio.",
            code="invalid_value",
            param="audio",
            event_id=event_id,
        ) from None


def normalise_client_item(item: Any, *, new_item_id: str, event_id: str | None) -> Item:
    """Validate a client item (§4 shapes) and fill ``id``, ``object`` and ``status``."""

    def bad(message: str, param: str, code: str = "invalid_value") -> ClientEventError:
        return ClientEventError(message, code=code, param=param, event_id=event_id)

    if not isinstance(item, dict):
        raise bad("Invalid type for 'item': expected an object.", "item", "invalid_type")
    out = copy.deepcopy(item)
    kind = out.get("type")
    if kind == "message":
        role = out.get("role")
        if role not in _CONTENT_BY_ROLE:
            raise bad(
                f"Invalid value: '{role}'. Supported values are: 'user', 'assistant', 'system'.",
                "item.role",
            )
        content = out.get("content")
        if not isinstance(content, list):
            raise bad(
                "Missing required parameter: 'item.content'.",
                "item.content",
                "missing_required_parameter",
            )
        allowed = _CONTENT_BY_ROLE[str(role)]
        for i, part in enumerate(content):
            ptype = part.get("type") if isinstance(part, dict) else None
            if ptype not in allowed:
                supported = ", ".join(f"'{a}'" for a in allowed)
                raise bad(
                    f"Invalid value: '{ptype}'. Supported values are: {supported}.",
                    f"item.content[{i}].type",
                )
            if ptype == "input_audio":
                part.setdefault("transcript", None)
    elif kind == "function_call":
        for key in ("name", "arguments"):
            if not isinstance(out.get(key), str):
                raise bad(
                    f"Missing required parameter: 'item.{key}'.",
                    f"item.{key}",
                    "missing_required_parameter",
                )
        out.setdefault("call_id", ids.call_id())
    elif kind == "function_call_output":
        for key in ("call_id", "output"):
            if not isinstance(out.get(key), str):
                raise bad(
                    f"Missing required parameter: 'item.{key}'.",
                    f"item.{key}",
                    "missing_required_parameter",
                )
    else:
        raise bad(
            f"Invalid value: '{kind}'. Supported values are: 'message', 'function_call', "
            "'function_call_output'.",
            "item.type",
        )
    out["id"] = out.get("id") or new_item_id
    out["object"] = "realtime.item"
    out.setdefault("status", "completed")
    return out


# --------------------------------------------------------------------------------------------
# One response (§6.2–§6.4)

Status = Literal["completed", "cancelled", "incomplete", "failed"]


class ResponseBuilder:
    """Builds the server events of one response, in wire order.

    Usage (each call returns the events to send, in order)::

        rb = ResponseBuilder(response_id=ids.response_id(), conversation=conv, ...)
        rb.start()                          # response.created
        rb.begin_message()                  # output_item.added, item.added, content_part.added
        rb.audio(pcm_chunk, "Hel")          # output_audio.delta + output_audio_transcript.delta
        rb.text("Hel")                      # output_text.delta (text modality)
        rb.function_call("get_weather", '{"city":"Oslo"}')   # a whole function-call item
        rb.finish()                         # closes the open message, response.done, rate limits
        rb.cancel("turn_detected")          # or: ends it as cancelled

    ``conversation`` None (``conversation: "none"``) writes nothing to the conversation and
    sends no ``conversation.item.*`` events. Misuse (e.g. ``audio`` before ``begin_message``)
    raises :class:`InvalidState`.
    """

    def __init__(
        self,
        *,
        response_id: str,
        conversation: Conversation | None,
        conversation_id: str | None,
        output_modalities: list[str],
        audio_output: Mapping[str, Any],
        max_output_tokens: int | str = "inf",
        metadata: Mapping[str, Any] | None = None,
        input_tokens: int = 0,
        audio_bytes_per_ms: int = 48,
        rate_limit_events: bool = True,
    ) -> None:
        self.response_id = response_id
        self._conv = conversation
        self._conversation_id = conversation_id if conversation is not None else None
        self._modalities = list(output_modalities)
        self._audio_output = copy.deepcopy(dict(audio_output))
        self._max_output_tokens = max_output_tokens
        self._metadata = dict(metadata) if metadata is not None else None
        self._input_tokens = input_tokens
        self._bpms = audio_bytes_per_ms
        self._rate_limit_events = rate_limit_events
        self._output: list[Item] = []
        self._previous: dict[str, str | None] = {}  # output item id -> previous_item_id
        self._open: Item | None = None  # the message item being streamed
        self._open_text = ""
        self._open_audio_bytes = 0
        self._text_tokens = 0
        self._audio_tokens = 0
        self.started = False
        self.finished = False

    @property
    def is_audio(self) -> bool:
        return "audio" in self._modalities

    @property
    def output(self) -> list[Item]:
        return [copy.deepcopy(i) for i in self._output]

    def response_object(self, status: str, status_details: Any = None, usage: Any = None) -> Event:
        return {
            "object": "realtime.response",
            "id": self.response_id,
            "status": status,
            "status_details": status_details,
            "output": [public_item(i) for i in self._output],
            "conversation_id": self._conversation_id,
            "output_modalities": list(self._modalities),
            "max_output_tokens": self._max_output_tokens,
            "audio": {"output": copy.deepcopy(self._audio_output)},
            "usage": usage,
            "metadata": copy.deepcopy(self._metadata),
        }

    def start(self) -> list[Event]:
        if self.started:
            raise InvalidState("response already started")
        self.started = True
        return [_event("response.created", response=self.response_object("in_progress"))]

    def _ids(self, item_id: str, output_index: int) -> dict[str, Any]:
        return {"response_id": self.response_id, "item_id": item_id, "output_index": output_index}

    def _add_item(self, item: Item) -> list[Event]:
        self._require_running()
        self._output.append(item)
        events = [
            _event(
                "response.output_item.added",
                response_id=self.response_id,
                output_index=len(self._output) - 1,
                item=public_item(item),
            )
        ]
        if self._conv is not None:
            previous = self._conv.insert(copy.deepcopy(item))
            self._previous[item["id"]] = previous
            events.append(item_added(item, previous))
        return events

    def _done_item(self, item: Item) -> list[Event]:
        previous = self._previous.pop(item["id"], None)
        index = next(i for i, it in enumerate(self._output) if it["id"] == item["id"])
        events: list[Event] = []
        if self._conv is not None:
            if item["id"] in self._conv:
                self._conv.replace(copy.deepcopy(item))
            events.append(item_done(item, previous))
        events.append(
            _event(
                "response.output_item.done",
                response_id=self.response_id,
                output_index=index,
                item=public_item(item),
            )
        )
        return events

    def begin_message(self, item_id: str | None = None) -> list[Event]:
        """Open an assistant message: output_item.added, item.added, content_part.added."""
        if self._open is not None:
            raise InvalidState("a message is already open")
        self._require_running()
        item = assistant_item(item_id or ids.item_id())
        events = self._add_item(item)
        self._open, self._open_text, self._open_audio_bytes = item, "", 0
        part: dict[str, Any] = (
            {"type": "audio", "transcript": ""} if self.is_audio else {"type": "text", "text": ""}
        )
        events.append(
            _event(
                "response.content_part.added",
                **self._ids(item["id"], len(self._output) - 1),
                content_index=0,
                part=part,
            )
        )
        return events

    def text(self, delta: str) -> list[Event]:
        """A text chunk (text modality): ``response.output_text.delta``."""
        item = self._require_open()
        if self.is_audio:
            raise InvalidState("text() on an audio response; use audio()")
        self._open_text += delta
        return [
            _event(
                "response.output_text.delta",
                **self._ids(item["id"], len(self._output) - 1),
                content_index=0,
                delta=delta,
            )
        ]

    def audio(self, chunk: bytes, transcript_delta: str | None = None) -> list[Event]:
        """An audio chunk and, optionally, the transcript that goes with it."""
        item = self._require_open()
        if not self.is_audio:
            raise InvalidState("audio() on a text response; use text()")
        where = self._ids(item["id"], len(self._output) - 1)
        events: list[Event] = []
        if transcript_delta:
            self._open_text += transcript_delta
            events.append(
                _event(
                    "response.output_audio_transcript.delta",
                    **where,
                    content_index=0,
                    delta=transcript_delta,
                )
            )
        if chunk:
            self._open_audio_bytes += len(chunk)
            events.append(
                _event(
                    "response.output_audio.delta",
                    **where,
                    content_index=0,
                    delta=base64.b64encode(chunk).decode("ascii"),
                )
            )
        return events

    def end_message(self, status: str = "completed") -> list[Event]:
        """Close the open message (``…done`` events, item.done, output_item.done)."""
        item = self._require_open()
        where = self._ids(item["id"], len(self._output) - 1)
        text = self._open_text
        events: list[Event] = []
        if self.is_audio:
            events.append(_event("response.output_audio.done", **where, content_index=0))
            events.append(
                _event(
                    "response.output_audio_transcript.done",
                    **where,
                    content_index=0,
                    transcript=text,
                )
            )
            part: dict[str, Any] = {"type": "audio", "transcript": text}
            item["content"] = [{"type": "output_audio", "transcript": text}]
            ms = self._open_audio_bytes / self._bpms
            self._audio_tokens += round(ms / 50)
            if self._conv is not None:
                self._conv.set_audio_duration(item["id"], ms)
        else:
            events.append(_event("response.output_text.done", **where, content_index=0, text=text))
            part = {"type": "text", "text": text}
            item["content"] = [{"type": "output_text", "text": text}]
        self._text_tokens += estimate_text_tokens(text)
        events.append(_event("response.content_part.done", **where, content_index=0, part=part))
        item["status"] = status
        events.extend(self._done_item(item))
        self._open = None
        return events

    def function_call(
        self,
        name: str,
        arguments: str,
        *,
        call_id: str | None = None,
        item_id: str | None = None,
        chunks: int = 3,
    ) -> list[Event]:
        """A whole function-call item (§6.3), its arguments streamed in ``chunks`` deltas."""
        if self._open is not None:
            raise InvalidState("close the open message before a function call")
        item = function_call_item(
            item_id or ids.item_id(), call_id=call_id or ids.call_id(), name=name
        )
        events = self._add_item(item)
        where = self._ids(item["id"], len(self._output) - 1)
        step = max(1, -(-len(arguments) // max(1, chunks)))
        for i in range(0, len(arguments), step):
            events.append(
                _event(
                    "response.function_call_arguments.delta",
                    **where,
                    call_id=item["call_id"],
                    delta=arguments[i : i + step],
                )
            )
        events.append(
            _event(
                "response.function_call_arguments.done",
                **where,
                call_id=item["call_id"],
                name=name,
                arguments=arguments,
            )
        )
        item["arguments"] = arguments
        item["status"] = "completed"
        self._text_tokens += estimate_text_tokens(arguments)
        events.extend(self._done_item(item))
        return events

    def finish(self, status: Status = "completed", *, reason: str | None = None) -> list[Event]:
        """End the response: close an open message, then ``response.done`` (+ rate limits).

        ``status`` ``incomplete`` needs ``reason`` ``max_output_tokens``/``content_filter``;
        use :meth:`cancel` and :meth:`fail` for the other outcomes (§11's closed set).
        """
        if status == "completed":
            details = None
        elif status == "incomplete" and reason in INCOMPLETE_REASONS:
            details = {"type": "incomplete", "reason": reason}
        else:
            raise InvalidState(f"finish({status!r}, reason={reason!r}) is not allowed")
        item_status = "completed" if status == "completed" else "incomplete"
        return self._end(status, details, item_status)

    def cancel(self, reason: str) -> list[Event]:
        """End as ``cancelled`` with reason ``turn_detected`` or ``client_cancelled``."""
        if reason not in CANCEL_REASONS:
            raise InvalidState(f"cancel reason {reason!r} is not in the SDK's closed set")
        return self._end("cancelled", {"type": "cancelled", "reason": reason}, "incomplete")

    def fail(self, *, code: str, message: str, error_type: str = "server_error") -> list[Event]:
        """End as ``failed`` with an error (for reasons outside the closed ``reason`` set)."""
        details = {
            "type": "failed",
            "error": {"type": error_type, "code": code, "message": message},
        }
        return self._end("failed", details, "incomplete")

    def _end(self, status: str, details: Any, item_status: str) -> list[Event]:
        self._require_running()
        events: list[Event] = []
        if self._open is not None:
            events.extend(self.end_message(item_status))
        self.finished = True
        out_tokens = self._text_tokens + self._audio_tokens
        usage = {
            "total_tokens": self._input_tokens + out_tokens,
            "input_tokens": self._input_tokens,
            "output_tokens": out_tokens,
            "input_token_details": {
                "text_tokens": self._input_tokens,
                "audio_tokens": 0,
                "image_tokens": 0,
                "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {
                "text_tokens": self._text_tokens,
                "audio_tokens": self._audio_tokens,
            },
        }
        events.append(
            _event("response.done", response=self.response_object(status, details, usage))
        )
        if self._rate_limit_events:
            events.append(rate_limits_updated(remaining=max(0, 40_000 - out_tokens)))
        return events

    def _require_running(self) -> None:
        if not self.started or self.finished:
            raise InvalidState("response is not running")

    def _require_open(self) -> Item:
        self._require_running()
        if self._open is None:
            raise InvalidState("no open message; call begin_message() first")
        return self._open
