"""The GA session object: defaults, session.update merge and validation (protocol §3)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from agents.realtime.openai_realtime import get_server_event_type_adapter
from hypothesis import given
from hypothesis import strategies as st

from voxgate.protocol.errors import ClientEventError
from voxgate.protocol.server_events import session_created
from voxgate.protocol.session_config import (
    apply_session_update,
    bytes_per_ms,
    default_realtime_session,
    default_transcription_session,
    duration_ms,
    input_format,
    output_format,
    sample_rate_hz,
    validate_session_config,
)


@pytest.fixture
def session() -> dict[str, Any]:
    return default_realtime_session(session_id="sess_1", now_s=1_000)


def _reject(current: dict[str, Any], patch: Any) -> ClientEventError:
    with pytest.raises(ClientEventError) as info:
        apply_session_update(current, patch, event_id="evt_1")
    return info.value


def test_realtime_default_matches_the_reference_shape(session: dict[str, Any]) -> None:
    assert session["object"] == "realtime.session"
    assert session["output_modalities"] == ["audio"]
    assert session["max_output_tokens"] == "inf"
    assert session["expires_at"] == 1_000 + 3600
    td = session["audio"]["input"]["turn_detection"]
    assert td == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 200,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }
    assert session["audio"]["output"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "voice": "alloy",
        "speed": 1.0,
    }


@pytest.mark.parametrize(
    "session_obj",
    [
        default_realtime_session(session_id="sess_1"),
        default_transcription_session(session_id="sess_2"),
    ],
)
def test_defaults_pass_sdk_validation(session_obj: dict[str, Any]) -> None:
    get_server_event_type_adapter().validate_python(session_created(session_obj))


def test_partial_update_changes_only_given_fields(session: dict[str, Any]) -> None:
    updated = apply_session_update(
        session,
        {"type": "realtime", "instructions": "be brief", "audio": {"output": {"voice": "ash"}}},
        event_id=None,
    )
    assert updated["instructions"] == "be brief"
    assert updated["audio"]["output"]["voice"] == "ash"
    assert updated["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert updated["audio"]["input"] == session["audio"]["input"]
    assert updated["tools"] == []


def test_update_does_not_mutate_current(session: dict[str, Any]) -> None:
    before = copy.deepcopy(session)
    apply_session_update(session, {"type": "realtime", "tools": []}, event_id=None)
    assert session == before


def test_null_clears_turn_detection(session: dict[str, Any]) -> None:
    patch = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
    updated = apply_session_update(session, patch, event_id=None)
    assert updated["audio"]["input"]["turn_detection"] is None


def test_semantic_vad_gets_its_defaults(session: dict[str, Any]) -> None:
    patch = {
        "type": "realtime",
        "audio": {
            "input": {"turn_detection": {"type": "semantic_vad", "interrupt_response": True}}
        },
    }
    td = apply_session_update(session, patch, event_id=None)["audio"]["input"]["turn_detection"]
    assert td == {
        "type": "semantic_vad",
        "eagerness": "auto",
        "create_response": True,
        "interrupt_response": True,
    }


def test_server_vad_partial_update_keeps_other_fields(session: dict[str, Any]) -> None:
    patch = {"type": "realtime", "audio": {"input": {"turn_detection": {"threshold": 0.7}}}}
    td = apply_session_update(session, patch, event_id=None)["audio"]["input"]["turn_detection"]
    assert td["threshold"] == 0.7
    assert td["silence_duration_ms"] == 200


def test_missing_type_is_rejected(session: dict[str, Any]) -> None:
    err = _reject(session, {"instructions": "x"})
    assert (err.code, err.param, err.event_id) == (
        "missing_required_parameter",
        "session.type",
        "evt_1",
    )
    assert err.message == "Missing required parameter: 'session.type'."


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"type": "realtime", "temperature": 0.8}, "session.temperature"),
        ({"type": "realtime", "audio": {"input": {"bogus": 1}}}, "session.audio.input.bogus"),
        (
            {
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "server_vad", "x": 1}}},
            },
            "session.audio.input.turn_detection.x",
        ),
        ({"type": "realtime", "object": "realtime.session"}, "session.object"),
    ],
)
def test_unknown_parameter_names_the_dotted_path(
    session: dict[str, Any], patch: dict[str, Any], param: str
) -> None:
    err = _reject(session, patch)
    assert (err.code, err.param) == ("unknown_parameter", param)
    assert err.message == f"Unknown parameter: '{param}'."


def test_rate_below_24000_is_rejected(session: dict[str, Any]) -> None:
    patch = {
        "type": "realtime",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}},
    }
    err = _reject(session, patch)
    assert (err.code, err.param) == ("integer_below_min_value", "session.audio.input.format.rate")
    assert "Expected a value >= 24000" in err.message


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        (
            {"type": "realtime", "audio": {"output": {"voice": "robot"}}},
            "session.audio.output.voice",
        ),
        ({"type": "realtime", "output_modalities": ["video"]}, "session.output_modalities[0]"),
        ({"type": "realtime", "tool_choice": "sometimes"}, "session.tool_choice"),
        (
            {"type": "realtime", "audio": {"input": {"format": {"type": "audio/flac"}}}},
            "session.audio.input.format.type",
        ),
        ({"type": "voice"}, "session.type"),
    ],
)
def test_bad_enum_is_invalid_value(
    session: dict[str, Any], patch: dict[str, Any], param: str
) -> None:
    err = _reject(session, patch)
    assert (err.code, err.param) == ("invalid_value", param)


def test_both_modalities_are_rejected(session: dict[str, Any]) -> None:
    err = _reject(session, {"type": "realtime", "output_modalities": ["text", "audio"]})
    assert err.param == "session.output_modalities"


def test_wrong_type_is_invalid_type(session: dict[str, Any]) -> None:
    err = _reject(session, {"type": "realtime", "instructions": 3})
    assert (err.code, err.param) == ("invalid_type", "session.instructions")


def test_a_different_model_is_tolerated_and_ignored(session: dict[str, Any]) -> None:
    updated = apply_session_update(
        session, {"type": "realtime", "model": "gpt-realtime-2.1"}, event_id=None
    )
    assert updated["model"] == "gpt-realtime"


def test_transcription_update_on_realtime_session_is_an_error(session: dict[str, Any]) -> None:
    err = _reject(session, {"type": "transcription"})
    assert (err.code, err.param) == ("invalid_value", "session.type")


def test_transcription_session_accepts_only_its_fields() -> None:
    current = default_transcription_session(session_id="sess_t")
    patch = {
        "type": "transcription",
        "audio": {"input": {"transcription": {"model": "whisper-1"}, "turn_detection": None}},
    }
    updated = apply_session_update(current, patch, event_id=None)
    assert updated["audio"]["input"]["transcription"] == {"model": "whisper-1"}
    assert updated["object"] == "realtime.transcription_session"
    err = _reject(current, {"type": "transcription", "instructions": "x"})
    assert (err.code, err.param) == ("unknown_parameter", "session.instructions")


def test_a_rejected_update_changes_nothing(session: dict[str, Any]) -> None:
    before = copy.deepcopy(session)
    _reject(session, {"type": "realtime", "instructions": "new", "bogus": True})
    assert session == before


def test_agents_initial_update_is_accepted(session: dict[str, Any]) -> None:
    patch = {
        "type": "realtime",
        "model": "gpt-realtime-2.1",
        "instructions": "You are helpful.",
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": "gpt-4o-mini-transcribe"},
                "turn_detection": {"type": "semantic_vad", "interrupt_response": True},
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "ash"},
        },
        "tools": [
            {
                "type": "function",
                "name": "get_weather",
                "description": "Weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                    "additionalProperties": False,
                },
            }
        ],
        "tracing": "auto",
    }
    updated = apply_session_update(session, patch, event_id=None)
    assert updated["tools"][0]["name"] == "get_weather"
    assert updated["tracing"] == "auto"


def test_custom_voice_object_is_accepted(session: dict[str, Any]) -> None:
    patch = {"type": "realtime", "audio": {"output": {"voice": {"id": "voice_123"}}}}
    assert apply_session_update(session, patch, event_id=None)["audio"]["output"]["voice"] == {
        "id": "voice_123"
    }


def test_validate_session_config_applies_model_and_defaults() -> None:
    cfg = validate_session_config({"type": "realtime", "model": "gpt-realtime-mini"})
    assert cfg["model"] == "gpt-realtime-mini"
    assert "id" not in cfg
    assert cfg["audio"]["output"]["voice"] == "alloy"


def test_validate_session_config_requires_type_and_rejects_unknown() -> None:
    with pytest.raises(ClientEventError) as info:
        validate_session_config({"model": "gpt-realtime"})
    assert info.value.param == "session.type"
    with pytest.raises(ClientEventError) as info:
        validate_session_config({"type": "realtime", "voice": "alloy"})
    assert (info.value.code, info.value.param) == ("unknown_parameter", "session.voice")


def test_validate_transcription_config() -> None:
    cfg = validate_session_config({"type": "transcription"})
    assert cfg["type"] == "transcription"
    assert "output_modalities" not in cfg


@pytest.mark.parametrize(
    ("fmt", "rate", "per_ms"),
    [
        ({"type": "audio/pcm", "rate": 24000}, 24000, 48),
        ({"type": "audio/pcmu"}, 8000, 8),
        ({"type": "audio/pcma"}, 8000, 8),
        (None, 24000, 48),
    ],
)
def test_audio_format_helpers(fmt: dict[str, Any] | None, rate: int, per_ms: int) -> None:
    assert sample_rate_hz(fmt) == rate
    assert bytes_per_ms(fmt) == per_ms
    assert duration_ms(per_ms * 20, fmt) == 20


def test_format_accessors(session: dict[str, Any]) -> None:
    assert input_format(session) == {"type": "audio/pcm", "rate": 24000}
    assert output_format({}) == {"type": "audio/pcm", "rate": 24000}


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@given(
    patch=st.dictionaries(
        st.sampled_from(
            ["type", "instructions", "audio", "tools", "tool_choice", "tracing", "bogus", "model"]
        ),
        _json,
    )
)
def test_any_patch_either_applies_or_raises_client_event_error(patch: dict[str, Any]) -> None:
    current = default_realtime_session(session_id="sess_h")
    before = copy.deepcopy(current)
    error: ClientEventError | None = None
    try:
        updated = apply_session_update(current, patch, event_id=None)
    except ClientEventError as exc:
        error = exc
    if error is not None:
        assert error.code
        assert error.param is None or error.param.startswith("session")
    else:
        assert updated["type"] == "realtime"
    assert current == before
