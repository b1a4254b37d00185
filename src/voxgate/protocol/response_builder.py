"""One response's server events, in wire order (§6.2 voice turn, §6.3 function calls, §6.4
barge-in), so the fake upstream and the local engine emit identical cycles.

Pure: no I/O, no clock. :class:`ResponseBuilder` methods return event lists; the caller sends
them in order. It records output items in a :class:`~voxgate.protocol.conversation.Conversation`
as the real server does, and ends every response with ``response.done`` (a cancel only with a
reason in the SDK's closed set, realtime-protocol.md §11).
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping
from typing import Any, Literal

from voxgate.protocol import ids
from voxgate.protocol.conversation import Conversation
from voxgate.protocol.errors import InvalidState
from voxgate.protocol.server_events import (
    CANCEL_REASONS,
    INCOMPLETE_REASONS,
    Event,
    Item,
    assistant_item,
    estimate_text_tokens,
    function_call_item,
    item_added,
    item_done,
    public_item,
    rate_limits_updated,
    server_event,
)

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
        return [server_event("response.created", response=self.response_object("in_progress"))]

    def _ids(self, item_id: str, output_index: int) -> dict[str, Any]:
        return {"response_id": self.response_id, "item_id": item_id, "output_index": output_index}

    def _add_item(self, item: Item) -> list[Event]:
        self._require_running()
        self._output.append(item)
        events = [
            server_event(
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
            server_event(
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
            server_event(
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
            server_event(
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
                server_event(
                    "response.output_audio_transcript.delta",
                    **where,
                    content_index=0,
                    delta=transcript_delta,
                )
            )
        if chunk:
            self._open_audio_bytes += len(chunk)
            events.append(
                server_event(
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
            events.append(server_event("response.output_audio.done", **where, content_index=0))
            events.append(
                server_event(
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
            events.append(
                server_event("response.output_text.done", **where, content_index=0, text=text)
            )
            part = {"type": "text", "text": text}
            item["content"] = [{"type": "output_text", "text": text}]
        self._text_tokens += estimate_text_tokens(text)
        events.append(
            server_event("response.content_part.done", **where, content_index=0, part=part)
        )
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
                server_event(
                    "response.function_call_arguments.delta",
                    **where,
                    call_id=item["call_id"],
                    delta=arguments[i : i + step],
                )
            )
        events.append(
            server_event(
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
            server_event("response.done", response=self.response_object(status, details, usage))
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
