"""protocol/beta.py: beta ⇄ GA translation, one round trip per event type (no sockets)."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from voxgate.protocol.beta import (
    BETA_CLIENT_TYPES,
    SERVER_RENAMES,
    BetaTranslator,
    is_beta_handshake,
)
from voxgate.protocol.beta_shapes import param_to_beta
from voxgate.protocol.session_config import default_realtime_session, default_transcription_session


def dumps(event: dict[str, Any]) -> str:
    return orjson.dumps(event).decode()


def loads(text: str) -> dict[str, Any]:
    event = orjson.loads(text)
    assert isinstance(event, dict)
    return event


# ------------------------------------------------------------------------------ client events

FULL_BETA_SESSION: dict[str, Any] = {
    "model": "gpt-realtime",
    "modalities": ["text"],
    "instructions": "Be brief.",
    "voice": "ash",
    "speed": 1.1,
    "input_audio_format": "g711_ulaw",
    "output_audio_format": "g711_alaw",
    "input_audio_transcription": {"model": "whisper-1", "language": "en"},
    "turn_detection": {"type": "server_vad", "threshold": 0.6, "silence_duration_ms": 400},
    "input_audio_noise_reduction": {"type": "near_field"},
    "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
    "tool_choice": "auto",
    "max_response_output_tokens": 200,
    "tracing": None,
}

#: (beta client event, its GA form). Every beta client event type appears at least once.
CLIENT_CASES: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (
        {"type": "session.update", "session": FULL_BETA_SESSION},
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "model": "gpt-realtime",
                "output_modalities": ["text"],
                "instructions": "Be brief.",
                "tools": FULL_BETA_SESSION["tools"],
                "tool_choice": "auto",
                "max_output_tokens": 200,
                "tracing": None,
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcmu"},
                        "transcription": {"model": "whisper-1", "language": "en"},
                        "turn_detection": FULL_BETA_SESSION["turn_detection"],
                        "noise_reduction": {"type": "near_field"},
                    },
                    "output": {"format": {"type": "audio/pcma"}, "voice": "ash", "speed": 1.1},
                },
            },
        },
    ),
    (
        {
            "type": "transcription_session.update",
            "event_id": "c1",
            "session": {
                "input_audio_format": "pcm16",
                "input_audio_transcription": {"model": "gpt-4o-transcribe"},
                "turn_detection": None,
                "include": ["item.input_audio_transcription.logprobs"],
            },
        },
        {
            "type": "session.update",
            "event_id": "c1",
            "session": {
                "type": "transcription",
                "include": ["item.input_audio_transcription.logprobs"],
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "transcription": {"model": "gpt-4o-transcribe"},
                        "turn_detection": None,
                    }
                },
            },
        },
    ),
    ({"type": "input_audio_buffer.append", "audio": "AAAA"}, {}),
    ({"type": "input_audio_buffer.commit"}, {}),
    ({"type": "input_audio_buffer.clear", "event_id": "c2"}, {}),
    (
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": "Earlier answer."}],
            },
        },
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Earlier answer."}],
            },
        },
    ),
    (
        {
            "type": "conversation.item.create",
            "previous_item_id": "root",
            "item": {"type": "function_call_output", "call_id": "call_1", "output": "{}"},
        },
        {},
    ),
    ({"type": "conversation.item.retrieve", "item_id": "item_1"}, {}),
    (
        {
            "type": "conversation.item.truncate",
            "item_id": "item_1",
            "content_index": 0,
            "audio_end_ms": 300,
        },
        {},
    ),
    ({"type": "conversation.item.delete", "item_id": "item_1"}, {}),
    (
        {
            "type": "response.create",
            "event_id": "c3",
            "response": {
                "modalities": ["audio", "text"],
                "voice": "coral",
                "output_audio_format": "pcm16",
                "max_response_output_tokens": "inf",
                "instructions": "Say hi.",
                "conversation": "none",
                "metadata": {"k": "v"},
            },
        },
        {
            "type": "response.create",
            "event_id": "c3",
            "response": {
                "output_modalities": ["audio"],
                "audio": {
                    "output": {"voice": "coral", "format": {"type": "audio/pcm", "rate": 24000}}
                },
                "max_output_tokens": "inf",
                "instructions": "Say hi.",
                "conversation": "none",
                "metadata": {"k": "v"},
            },
        },
    ),
    ({"type": "response.cancel", "response_id": "resp_1"}, {}),
]


def test_every_beta_client_type_has_a_case() -> None:
    assert {beta["type"] for beta, _ in CLIENT_CASES} == set(BETA_CLIENT_TYPES)


@pytest.mark.parametrize(("beta", "ga"), CLIENT_CASES, ids=lambda c: c.get("type", "same"))
def test_client_event_round_trip(beta: dict[str, Any], ga: dict[str, Any]) -> None:
    t = BetaTranslator()
    text = dumps(beta)
    translated = t.client_to_ga(text)
    assert loads(translated) == (ga or beta)
    if not ga:
        assert translated is text  # unchanged events are passed on as the same text
    assert loads(t.client_to_beta(translated)) == beta


def test_audio_append_passes_as_the_same_text_without_parsing() -> None:
    t = BetaTranslator()
    for text in (
        '{"type":"input_audio_buffer.append","audio":"AAAA"}',
        '{"type": "input_audio_buffer.append", "audio": "AAAA"}',
    ):
        assert t.client_to_ga(text) is text


def test_beta_only_temperature_is_kept_and_echoed_not_sent_upstream() -> None:
    t = BetaTranslator()
    ga = loads(t.client_to_ga(dumps({"type": "session.update", "session": {"temperature": 0.6}})))
    assert ga == {"type": "session.update", "session": {"type": "realtime"}}
    session = default_realtime_session(session_id="sess_1")
    [updated] = t.server_to_beta(dumps({"type": "session.updated", "session": session}))
    assert loads(updated)["session"]["temperature"] == 0.6


def test_not_json_and_unknown_types_pass_unchanged() -> None:
    t = BetaTranslator()
    assert t.client_to_ga("not json") == "not json"
    text = '{"type":"nope.nope"}'
    assert t.client_to_ga(text) is text


# ------------------------------------------------------------------------------ server events


def _item(content_type: str) -> dict[str, Any]:
    return {
        "id": "item_a",
        "object": "realtime.item",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": content_type, "transcript": "Hi."}],
    }


def _response(content_type: str) -> dict[str, Any]:
    return {
        "object": "realtime.response",
        "id": "resp_1",
        "status": "completed",
        "status_details": None,
        "output": [_item(content_type)],
        "conversation_id": "conv_1",
        "output_modalities": ["audio"],
        "max_output_tokens": "inf",
        "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}},
        "usage": None,
        "metadata": None,
    }


_IDS = {"response_id": "resp_1", "item_id": "item_a", "output_index": 0, "content_index": 0}

#: (GA server event, the beta type it becomes). Body changes are asserted by the round trip.
SERVER_CASES: list[tuple[dict[str, Any], str]] = [
    ({"type": "conversation.item.added", "previous_item_id": None, "item": _item("output_audio")},
     "conversation.item.created"),
    ({"type": "conversation.item.retrieved", "item": _item("output_text")},
     "conversation.item.retrieved"),
    ({"type": "response.output_item.added", "response_id": "resp_1", "output_index": 0,
      "item": _item("output_audio")}, "response.output_item.added"),
    ({"type": "response.output_item.done", "response_id": "resp_1", "output_index": 0,
      "item": _item("output_audio")}, "response.output_item.done"),
    ({"type": "response.created", "response": {**_response("output_audio"), "output": []}},
     "response.created"),
    ({"type": "response.done", "response": _response("output_audio")}, "response.done"),
    ({"type": "response.output_audio.delta", **_IDS, "delta": "AAAA"}, "response.audio.delta"),
    ({"type": "response.output_audio.done", **_IDS}, "response.audio.done"),
    ({"type": "response.output_audio_transcript.delta", **_IDS, "delta": "Hi"},
     "response.audio_transcript.delta"),
    ({"type": "response.output_audio_transcript.done", **_IDS, "transcript": "Hi."},
     "response.audio_transcript.done"),
    ({"type": "response.output_text.delta", **_IDS, "delta": "Hi"}, "response.text.delta"),
    ({"type": "response.output_text.done", **_IDS, "text": "Hi."}, "response.text.done"),
    ({"type": "response.content_part.added", **_IDS, "part": {"type": "audio", "transcript": ""}},
     "response.content_part.added"),
    ({"type": "response.function_call_arguments.done", **_IDS, "call_id": "call_1",
      "name": "lookup", "arguments": "{}"}, "response.function_call_arguments.done"),
    ({"type": "input_audio_buffer.speech_started", "audio_start_ms": 10, "item_id": "item_u"},
     "input_audio_buffer.speech_started"),
    ({"type": "input_audio_buffer.committed", "item_id": "item_u", "previous_item_id": None},
     "input_audio_buffer.committed"),
    ({"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_u",
      "content_index": 0, "transcript": "hello", "usage": {"type": "duration", "seconds": 1}},
     "conversation.item.input_audio_transcription.completed"),
    ({"type": "conversation.item.truncated", "item_id": "item_a", "content_index": 0,
      "audio_end_ms": 100}, "conversation.item.truncated"),
    ({"type": "rate_limits.updated", "rate_limits": []}, "rate_limits.updated"),
]  # fmt: skip


@pytest.mark.parametrize(("ga", "beta_type"), SERVER_CASES, ids=lambda c: str(c))
def test_server_event_round_trip(ga: dict[str, Any], beta_type: str) -> None:
    t = BetaTranslator()
    ga = {**ga, "event_id": "event_1"}
    [beta] = t.server_to_beta(dumps(ga))
    event = loads(beta)
    assert event["type"] == beta_type
    text = orjson.dumps(event).decode()
    for ga_name in ('"output_audio"', '"output_text"', "output_audio.", "output_text."):
        assert ga_name not in text  # beta names only
    assert "output_modalities" not in text
    back = event
    if "response" in event:
        assert event["response"]["temperature"] == 0.8
        assert event["response"]["modalities"] == ["audio", "text"]
        back = {**event, "response": {k: v for k, v in event["response"].items()
                                      if k != "temperature"}}  # fmt: skip
    [ga_again] = t.server_to_ga(dumps(back))
    assert loads(ga_again) == ga


def test_audio_delta_is_renamed_at_the_head_without_parsing() -> None:
    t = BetaTranslator()
    for sep in ("", " "):
        head = f'{{"type":{sep}"response.output_audio.delta"'
        text = head + ',"delta":"' + "A" * 4000 + '"}'
        [out] = t.server_to_beta(text)
        assert out == f'{{"type":{sep}"response.audio.delta"' + text[len(head) :]
    assert set(SERVER_RENAMES.values()) <= {
        "response.audio.delta",
        "response.audio.done",
        "response.audio_transcript.delta",
        "response.audio_transcript.done",
        "response.text.delta",
        "response.text.done",
    }


def test_session_created_becomes_flat_then_conversation_created_once() -> None:
    t = BetaTranslator()
    session = default_realtime_session(session_id="sess_1", model="gpt-realtime")
    frames = t.server_to_beta(
        dumps({"type": "session.created", "event_id": "e", "session": session})
    )
    created, conversation = (loads(f) for f in frames)
    assert created["type"] == "session.created"
    flat = created["session"]
    assert flat["modalities"] == ["audio", "text"]
    assert flat["voice"] == "alloy"
    assert flat["input_audio_format"] == flat["output_audio_format"] == "pcm16"
    assert flat["turn_detection"]["type"] == "server_vad"
    assert flat["max_response_output_tokens"] == "inf"
    assert not {"audio", "type", "truncation"} & set(flat)
    assert conversation["type"] == "conversation.created"
    assert conversation["conversation"]["object"] == "realtime.conversation"
    assert conversation["conversation"]["id"].startswith("conv_")
    # a later session.created (it should not come, but) never repeats conversation.created
    assert len(t.server_to_beta(dumps({"type": "session.created", "session": session}))) == 1
    # session round trip: the GA-only fields (truncation, prompt) have no beta name
    [ga] = t.server_to_ga(dumps(created))
    expected = copy.deepcopy(session)
    del expected["truncation"], expected["prompt"]
    assert loads(ga)["session"] == expected
    assert t.server_to_ga(dumps(conversation)) == []


def test_transcription_session_events_have_beta_names() -> None:
    t = BetaTranslator()
    session = default_transcription_session(session_id="sess_t")
    [created] = t.server_to_beta(dumps({"type": "session.created", "session": session}))
    event = loads(created)
    assert event["type"] == "transcription_session.created"
    assert event["session"]["object"] == "realtime.transcription_session"
    assert event["session"]["input_audio_transcription"]["model"] == "gpt-4o-transcribe"
    assert event["session"]["modalities"] == ["text"]
    [updated] = t.server_to_beta(dumps({"type": "session.updated", "session": session}))
    assert loads(updated)["type"] == "transcription_session.updated"
    [ga] = t.server_to_ga(updated)
    assert loads(ga) == {"type": "session.updated", "session": session}


def test_item_done_is_dropped_beta_clients_got_the_item_in_created() -> None:
    t = BetaTranslator()
    text = dumps({"type": "conversation.item.done", "event_id": "e", "item": _item("output_text")})
    assert t.server_to_beta(text) == []


def test_errors_name_beta_fields_and_list_beta_types() -> None:
    t = BetaTranslator()
    ga_error = {
        "type": "error",
        "event_id": "e",
        "error": {
            "type": "invalid_request_error",
            "code": "invalid_value",
            "message": "Invalid value for 'session.audio.input.format.type': 'mp3'.",
            "param": "session.audio.input.format.type",
            "event_id": "c9",
        },
    }
    [beta] = t.server_to_beta(dumps(ga_error))
    error = loads(beta)["error"]
    assert error["param"] == "session.input_audio_format.type"
    assert error["message"] == "Invalid value for 'session.input_audio_format.type': 'mp3'."
    assert error["event_id"] == "c9"
    message = "Invalid value: 'x.y'. Supported values are: 'session.update'."
    unknown = {**ga_error, "error": {**ga_error["error"], "param": "type", "message": message}}
    [beta] = t.server_to_beta(dumps(unknown))
    message = loads(beta)["error"]["message"]
    assert message.startswith("Invalid value: 'x.y'. Supported values are: ")
    assert "'transcription_session.update'" in message
    assert "'session.close'" not in message


@pytest.mark.parametrize(
    ("ga", "beta"),
    [
        ("session.audio.output.voice", "session.voice"),
        ("session.audio.input.turn_detection.threshold", "session.turn_detection.threshold"),
        ("session.output_modalities[0]", "session.modalities[0]"),
        ("response.audio.output.format", "response.output_audio_format"),
        ("session.max_output_tokens", "session.max_response_output_tokens"),
        ("session.instructions", "session.instructions"),
        ("item.content", "item.content"),
        (None, None),
    ],
)
def test_param_paths_map_to_beta(ga: str | None, beta: str | None) -> None:
    assert param_to_beta(ga) == beta


def test_beta_handshake_by_header_or_subprotocol() -> None:
    assert is_beta_handshake("realtime=v1", [])
    assert is_beta_handshake("assistants=v2, realtime=v1", [])
    assert is_beta_handshake(None, ["realtime", "openai-beta.realtime-v1"])
    assert not is_beta_handshake(None, ["realtime"])
    assert not is_beta_handshake("assistants=v2", [])
