"""Conversation state and the response-cycle event builders (protocol §4–§6, §10, §11)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from agents.realtime.openai_realtime import get_server_event_type_adapter

from voxgate.protocol import conversation as cv
from voxgate.protocol import ids
from voxgate.protocol import response_builder as rb
from voxgate.protocol import server_events as ev
from voxgate.protocol.errors import ClientEventError, InvalidState

PCM = {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}


def _sdk_valid(events: list[dict[str, Any]]) -> None:
    """Validate like openai-agents does (it maps a null previous_item_id to "")."""
    adapter = get_server_event_type_adapter()
    for event in events:
        if "previous_item_id" in event and event["previous_item_id"] is None:
            event = {**event, "previous_item_id": ""}
        adapter.validate_python(event)


def _user_text(conv: cv.Conversation, text: str, **kw: Any) -> dict[str, Any]:
    item, _ = conv.create(
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        previous_item_id=kw.get("previous_item_id"),
        new_item_id=kw.get("item_id", ids.item_id()),
        event_id=None,
    )
    return item


def _builder(conv: cv.Conversation | None, modalities: list[str]) -> rb.ResponseBuilder:
    return rb.ResponseBuilder(
        response_id=ids.response_id(),
        conversation=conv,
        conversation_id="conv_1",
        output_modalities=modalities,
        audio_output=PCM,
        metadata={"topic": "test"},
    )


# ------------------------------------------------------------------ conversation


def test_items_append_in_order_with_previous_ids() -> None:
    conv = cv.Conversation()
    first = _user_text(conv, "a", item_id="item_a")
    item, previous = conv.create(
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "b"}]},
        previous_item_id=None,
        new_item_id="item_b",
        event_id=None,
    )
    assert previous == first["id"]
    assert [i["id"] for i in conv.items] == ["item_a", "item_b"]
    assert item["object"] == "realtime.item"
    assert item["status"] == "completed"


def test_root_inserts_first_and_previous_inserts_after() -> None:
    conv = cv.Conversation()
    _user_text(conv, "a", item_id="item_a")
    _user_text(conv, "b", item_id="item_b")
    _user_text(conv, "r", item_id="item_r", previous_item_id="root")
    _user_text(conv, "m", item_id="item_m", previous_item_id="item_a")
    assert [i["id"] for i in conv.items] == ["item_r", "item_a", "item_m", "item_b"]


def test_unknown_previous_item_id_is_an_error() -> None:
    conv = cv.Conversation()
    with pytest.raises(ClientEventError) as info:
        _user_text(conv, "a", previous_item_id="item_nope")
    assert (info.value.code, info.value.param) == ("invalid_value", "previous_item_id")
    assert len(conv) == 0


def test_client_chosen_id_is_kept_and_duplicates_rejected() -> None:
    conv = cv.Conversation()
    _user_text(conv, "a", item_id="item_x")
    with pytest.raises(ClientEventError):
        conv.create(
            {"id": "item_x", "type": "message", "role": "user", "content": []},
            previous_item_id=None,
            new_item_id="item_y",
            event_id=None,
        )


@pytest.mark.parametrize(
    ("item", "param"),
    [
        ({"type": "message", "role": "robot", "content": []}, "item.role"),
        (
            {"type": "message", "role": "assistant", "content": [{"type": "output_audio"}]},
            "item.content[0].type",
        ),
        (
            {"type": "message", "role": "user", "content": [{"type": "text"}]},
            "item.content[0].type",
        ),
        ({"type": "function_call_output", "output": "x"}, "item.call_id"),
        ({"type": "reasoning"}, "item.type"),
    ],
)
def test_bad_items_are_rejected(item: dict[str, Any], param: str) -> None:
    with pytest.raises(ClientEventError) as info:
        cv.Conversation().create(item, previous_item_id=None, new_item_id="i", event_id="e9")
    assert info.value.param == param
    assert info.value.event_id == "e9"


def test_retrieve_returns_input_audio_and_unknown_id_errors() -> None:
    conv = cv.Conversation()
    audio = base64.b64encode(b"\x01\x02" * 100).decode()
    conv.create(
        {"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": audio}]},
        previous_item_id=None,
        new_item_id="item_au",
        event_id=None,
    )
    full = conv.retrieve("item_au", event_id=None)
    assert full["content"][0]["audio"] == audio
    assert ev.public_item(full)["content"][0].get("audio") is None
    with pytest.raises(ClientEventError) as info:
        conv.retrieve("item_missing", event_id="e1")
    assert info.value.code == "item_retrieve_invalid_item_id"


def test_delete_removes_and_unknown_id_errors() -> None:
    conv = cv.Conversation()
    _user_text(conv, "a", item_id="item_a")
    conv.delete("item_a", event_id=None)
    assert len(conv) == 0
    with pytest.raises(ClientEventError) as info:
        conv.delete("item_a", event_id=None)
    assert info.value.code == "item_delete_invalid_item_id"


def _audio_reply(conv: cv.Conversation, ms: int, transcript: str) -> str:
    rb = _builder(conv, ["audio"])
    rb.start()
    added = rb.begin_message()
    rb.audio(b"\0" * 48 * ms, transcript)
    rb.finish()
    return str(added[0]["item"]["id"])


def test_truncate_cuts_the_transcript_proportionally() -> None:
    conv = cv.Conversation()
    item_id = _audio_reply(conv, 1000, "0123456789")
    conv.truncate(item_id, 0, 500, event_id=None)
    item = conv.get(item_id)
    assert item is not None
    assert item["content"][0]["transcript"] == "01234"
    assert conv.audio_duration(item_id) == 500


def test_truncate_errors() -> None:
    conv = cv.Conversation()
    user = _user_text(conv, "hi")
    item_id = _audio_reply(conv, 200, "hello")
    with pytest.raises(ClientEventError) as info:
        conv.truncate("item_nope", 0, 10, event_id="e")
    assert info.value.code == "item_truncate_invalid_item_id"
    with pytest.raises(ClientEventError) as info:
        conv.truncate(user["id"], 0, 10, event_id="e")
    assert info.value.code == "item_truncate_invalid_item_id"
    with pytest.raises(ClientEventError) as info:
        conv.truncate(item_id, 0, 5000, event_id="e")
    assert (info.value.code, info.value.param) == ("invalid_value", "audio_end_ms")


def test_conversation_is_bounded() -> None:
    conv = cv.Conversation(max_items=3, max_audio_bytes=10)
    for i in range(5):
        _user_text(conv, str(i), item_id=f"item_{i}")
    assert [i["id"] for i in conv.items] == ["item_2", "item_3", "item_4"]
    conv.attach_audio("item_2", b"x" * 6)
    conv.attach_audio("item_3", b"y" * 6)
    assert conv.audio_of("item_2") is None
    assert conv.audio_of("item_3") == b"y" * 6


# ------------------------------------------------------------------ response builder


def test_audio_response_sequence_matches_section_6_2() -> None:
    conv = cv.Conversation()
    rb = _builder(conv, ["audio"])
    events = rb.start() + rb.begin_message()
    events += rb.audio(b"\0" * 960, "Hel") + rb.audio(b"\0" * 960, "lo")
    events += rb.finish()
    types = [e["type"] for e in events]
    assert types == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "conversation.item.done",
        "response.output_item.done",
        "response.done",
        "rate_limits.updated",
    ]
    _sdk_valid(events)
    by_type = {e["type"]: e for e in events}
    assert by_type["response.content_part.added"]["part"] == {"type": "audio", "transcript": ""}
    assert by_type["response.content_part.done"]["part"] == {"type": "audio", "transcript": "Hello"}
    done_item = by_type["conversation.item.done"]["item"]
    assert done_item["content"] == [{"type": "output_audio", "transcript": "Hello"}]
    response = by_type["response.done"]["response"]
    assert response["status"] == "completed"
    assert response["status_details"] is None
    assert response["metadata"] == {"topic": "test"}
    assert response["usage"]["output_token_details"]["audio_tokens"] >= 0
    assert by_type["response.created"]["response"]["output"] == []
    assert len({e["event_id"] for e in events}) == len(events)


def test_text_response_uses_text_parts_and_output_text_items() -> None:
    rb = _builder(cv.Conversation(), ["text"])
    events = rb.start() + rb.begin_message() + rb.text("Hi ") + rb.text("there") + rb.finish()
    _sdk_valid(events)
    by_type = {e["type"]: e for e in events}
    assert by_type["response.output_text.done"]["text"] == "Hi there"
    assert by_type["response.content_part.done"]["part"] == {"type": "text", "text": "Hi there"}
    assert by_type["response.output_item.done"]["item"]["content"] == [
        {"type": "output_text", "text": "Hi there"}
    ]


def test_function_call_item_is_completed_and_arguments_stream() -> None:
    conv = cv.Conversation()
    rb = _builder(conv, ["audio"])
    events = rb.start() + rb.function_call("get_weather", '{"city":"Oslo"}', call_id="call_1")
    events += rb.finish()
    _sdk_valid(events)
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert "".join(deltas) == '{"city":"Oslo"}'
    done = next(e for e in events if e["type"] == "response.output_item.done")
    assert done["item"]["status"] == "completed"
    assert done["item"]["call_id"] == "call_1"
    assert conv.items[-1]["arguments"] == '{"city":"Oslo"}'


def test_cancel_marks_item_incomplete_with_closed_reason() -> None:
    conv = cv.Conversation()
    rb = _builder(conv, ["audio"])
    events = rb.start() + rb.begin_message() + rb.audio(b"\0" * 960, "Hi")
    events += rb.cancel("turn_detected")
    _sdk_valid(events)
    done = next(e for e in events if e["type"] == "response.done")["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert done["output"][0]["status"] == "incomplete"


def test_reasons_outside_the_sdk_closed_set_are_refused() -> None:
    rb = _builder(None, ["text"])
    rb.start()
    with pytest.raises(InvalidState):
        rb.cancel("upstream_lost")
    with pytest.raises(InvalidState):
        rb.finish("incomplete", reason="tired")


def test_fail_uses_failed_status_with_error() -> None:
    rb = _builder(None, ["text"])
    events = rb.start() + rb.fail(code="engine_error", message="the engine crashed")
    _sdk_valid(events)
    details = events[-2]["response"]["status_details"]
    assert details["type"] == "failed"
    assert details["error"]["code"] == "engine_error"


def test_out_of_band_response_writes_nothing_to_the_conversation() -> None:
    conv = cv.Conversation()
    rb = _builder(None, ["text"])
    events = rb.start() + rb.begin_message() + rb.text("x") + rb.finish()
    assert not any(e["type"].startswith("conversation.") for e in events)
    assert events[-2]["response"]["conversation_id"] is None
    assert len(conv) == 0


def test_misuse_raises_invalid_state() -> None:
    rb = _builder(None, ["audio"])
    with pytest.raises(InvalidState):
        rb.begin_message()
    rb.start()
    with pytest.raises(InvalidState):
        rb.audio(b"\0\0", "x")
    rb.begin_message()
    with pytest.raises(InvalidState):
        rb.text("x")
    rb.finish()
    with pytest.raises(InvalidState):
        rb.finish()


def test_misc_builders_pass_sdk_validation() -> None:
    item = ev.user_audio_item("item_u")
    usage = ev.transcription_usage(1600, "hello there")
    events = [
        ev.speech_started(0, "item_u"),
        ev.speech_stopped(900, "item_u"),
        ev.buffer_committed("item_u", None),
        ev.buffer_cleared(),
        ev.timeout_triggered("item_u", 0, 5000),
        ev.item_added(item, None),
        ev.item_done(item, "item_prev"),
        ev.item_retrieved(item),
        ev.item_truncated("item_a", 0, 300),
        ev.item_deleted("item_a"),
        ev.transcription_delta("item_u", "hel"),
        ev.transcription_completed("item_u", "hello there", usage),
        ev.transcription_failed("item_u", code="audio_unintelligible", message="no speech"),
        ev.rate_limits_updated(),
        ev.session_created({"type": "realtime"}),
        ev.session_updated({"type": "realtime"}),
    ]
    _sdk_valid(events)
    assert usage["type"] == "tokens"
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
