"""The server events of the Realtime wire and the items they carry, one builder each (§5, §6).

Pure: no I/O, no clock. Each builder mints a fresh ``event_id`` and returns exactly the field
shapes openai-agents validates (realtime-protocol.md §5, §10): content *parts* say
``audio``/``text``, assistant *item* content says ``output_audio``/``output_text``,
transcription events carry ``usage``. Used by the conversation store, the response builder,
the fake upstream and the local engine, so every one of them emits the same shapes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Final

from voxgate.protocol import ids

Event = dict[str, Any]
Item = dict[str, Any]

CANCEL_REASONS: Final = frozenset({"turn_detected", "client_cancelled"})
INCOMPLETE_REASONS: Final = frozenset({"max_output_tokens", "content_filter"})


def server_event(event_type: str, **fields: Any) -> Event:
    """Any server event: its ``type``, a fresh ``event_id``, and ``fields``."""
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
    return server_event("session.created", session=copy.deepcopy(dict(session)))


def session_updated(session: Mapping[str, Any]) -> Event:
    return server_event("session.updated", session=copy.deepcopy(dict(session)))


def item_added(item: Mapping[str, Any], previous_item_id: str | None) -> Event:
    return server_event(
        "conversation.item.added", item=public_item(item), previous_item_id=previous_item_id
    )


def item_done(item: Mapping[str, Any], previous_item_id: str | None) -> Event:
    return server_event(
        "conversation.item.done", item=public_item(item), previous_item_id=previous_item_id
    )


def item_retrieved(item: Mapping[str, Any]) -> Event:
    return server_event("conversation.item.retrieved", item=copy.deepcopy(dict(item)))


def item_truncated(item_id: str, content_index: int, audio_end_ms: int) -> Event:
    return server_event(
        "conversation.item.truncated",
        item_id=item_id,
        content_index=content_index,
        audio_end_ms=audio_end_ms,
    )


def item_deleted(item_id: str) -> Event:
    return server_event("conversation.item.deleted", item_id=item_id)


def speech_started(audio_start_ms: int, item_id: str) -> Event:
    return server_event(
        "input_audio_buffer.speech_started", audio_start_ms=audio_start_ms, item_id=item_id
    )


def speech_stopped(audio_end_ms: int, item_id: str) -> Event:
    return server_event(
        "input_audio_buffer.speech_stopped", audio_end_ms=audio_end_ms, item_id=item_id
    )


def buffer_committed(item_id: str, previous_item_id: str | None) -> Event:
    return server_event(
        "input_audio_buffer.committed", item_id=item_id, previous_item_id=previous_item_id
    )


def buffer_cleared() -> Event:
    return server_event("input_audio_buffer.cleared")


def timeout_triggered(item_id: str, audio_start_ms: int, audio_end_ms: int) -> Event:
    return server_event(
        "input_audio_buffer.timeout_triggered",
        item_id=item_id,
        audio_start_ms=audio_start_ms,
        audio_end_ms=audio_end_ms,
    )


def transcription_delta(item_id: str, delta: str, *, content_index: int = 0) -> Event:
    return server_event(
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
    return server_event(
        "conversation.item.input_audio_transcription.completed",
        item_id=item_id,
        content_index=content_index,
        transcript=transcript,
        usage=dict(usage),
        logprobs=None,
    )


def transcription_failed(item_id: str, *, code: str, message: str, content_index: int = 0) -> Event:
    return server_event(
        "conversation.item.input_audio_transcription.failed",
        item_id=item_id,
        content_index=content_index,
        error={"type": "transcription_error", "code": code, "message": message, "param": None},
    )


def rate_limits_updated(*, limit: int = 40_000, remaining: int = 40_000) -> Event:
    """Live servers send only the ``tokens`` limit (§5)."""
    return server_event(
        "rate_limits.updated",
        rate_limits=[
            {"name": "tokens", "limit": limit, "remaining": remaining, "reset_seconds": 0.0}
        ],
    )


def estimate_text_tokens(text: str) -> int:
    """About four characters per token, as OpenAI's rule of thumb; deterministic."""
    return (len(text) + 3) // 4


# --------------------------------------------------------------------------------------------
