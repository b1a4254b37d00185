from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from voxgate.protocol.sniff import NotAnEvent, append_audio_start, event_type, parse_event

AUDIO = "A" * 1280


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"type":"input_audio_buffer.append","audio":"' + AUDIO + '"}',
            "input_audio_buffer.append",
        ),
        (
            '{"type": "input_audio_buffer.append", "audio": "' + AUDIO + '"}',
            "input_audio_buffer.append",
        ),
        (
            '{"audio": "' + AUDIO + '", "type": "input_audio_buffer.append"}',
            "input_audio_buffer.append",
        ),
        (
            '{"audio":"' + AUDIO + '","type":"input_audio_buffer.append"}',
            "input_audio_buffer.append",
        ),
        (
            '{"event_id":"e","session":{"type":"realtime"},"type":"session.update"}',
            "session.update",
        ),
        (
            '{"session":{"type":"realtime"},"event_id":"e","type" : "session.update" }',
            "session.update",
        ),
        # nested "type" last inside a nested object: the fast paths must not take it
        ('{"type2":1,"session":{"type":"realtime"}}', None),
    ],
)
def test_event_type_reads_top_level_type(text: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(NotAnEvent):
            event_type(text)
    else:
        assert event_type(text) == expected


def test_nested_type_at_the_end_is_not_the_event_type() -> None:
    text = '{"event_id":"x","type":"response.create","response":{"type":"realtime"}}'
    assert event_type(text) == "response.create"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", "invalid_json"),
        ("[1,2]", "invalid_event"),
        ('{"type":3}', "invalid_event"),
        ("{}", "invalid_event"),
        ('{"a":"type"', "invalid_json"),
    ],
)
def test_bad_frames_raise_typed_errors(text: str, code: str) -> None:
    with pytest.raises(NotAnEvent) as info:
        event_type(text)
    assert info.value.code == code


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@given(
    etype=st.text(min_size=1, max_size=30),
    fields=st.dictionaries(
        st.text(max_size=10).filter(lambda k: k != "type"), json_values, max_size=4
    ),
    type_first=st.booleans(),
    spaced=st.booleans(),
)
def test_event_type_agrees_with_json_loads(
    etype: str, fields: dict[str, object], type_first: bool, spaced: bool
) -> None:
    event = {"type": etype, **fields} if type_first else {**fields, "type": etype}
    text = json.dumps(event) if spaced else orjson.dumps(event).decode()
    assert event_type(text) == json.loads(text)["type"]


@given(st.text(max_size=200))
def test_event_type_never_raises_anything_but_not_an_event(text: str) -> None:
    try:
        result = event_type(text)
    except NotAnEvent:
        return
    assert isinstance(result, str)


def test_truncated_frame_with_a_valid_head_is_routed_and_left_to_the_upstream() -> None:
    # The fast path does not validate the whole frame (that would cost a parse per audio
    # frame); the upstream rejects it with invalid_json exactly as OpenAI would.
    assert event_type('{"type":"input_audio_buffer.append","audio":"AAA') == (
        "input_audio_buffer.append"
    )


def test_parse_event_returns_the_dict() -> None:
    assert parse_event('{"type":"x","a":1}') == ("x", {"type": "x", "a": 1})


def _append_audio_start_reference(text: str) -> int:
    """The check spelled out plainly (how it read before it was tuned)."""
    for head in (
        '{"type":"input_audio_buffer.append","audio":"',
        '{"type": "input_audio_buffer.append", "audio": "',
    ):
        if text.startswith(head):
            start = len(head)
            break
    else:
        return -1
    end = len(text) - 2
    if end < start or not text.endswith('"}'):
        return -1
    span = text[start:end]
    return -1 if '"' in span or "\\" in span else start


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"input_audio_buffer.append","audio":"AAAA"}',
        '{"type": "input_audio_buffer.append", "audio": "AAAA"}',
        '{"type":"input_audio_buffer.append","audio":""}',
        '{"type":"input_audio_buffer.append","audio":"AA","type":"x"}',
        '{"type":"input_audio_buffer.append","audio":"A\\"A"}',
        '{"type":"input_audio_buffer.append","audio":"A\\\\u0041"}',
        '{"type":"input_audio_buffer.append","audio":"AAAA"} ',
        '{"type":"input_audio_buffer.append","audio":"AAAA"',
        '{"type":"input_audio_buffer.append","audio":"',
        '{"type":"input_audio_buffer.append","audio":"AAAA"}}',
        '{"type":"input_audio_buffer.commit"}',
    ],
)
def test_append_audio_start_matches_the_plain_check(text: str) -> None:
    assert append_audio_start(text) == _append_audio_start_reference(text)


@given(
    head=st.sampled_from(
        [
            '{"type":"input_audio_buffer.append","audio":"',
            '{"type": "input_audio_buffer.append", "audio": "',
            '{"type":"x","audio":"',
        ]
    ),
    body=st.text(alphabet='AB+/="\\}{ ', max_size=12),
    tail=st.sampled_from(['"}', '"', "}", '"} ', '"}}', ""]),
)
def test_append_audio_start_matches_the_plain_check_for_any_frame(
    head: str, body: str, tail: str
) -> None:
    text = head + body + tail
    assert append_audio_start(text) == _append_audio_start_reference(text)
