"""The session mirror (voxgate.session.mirror), driven synchronously: server events and client
appends in, the replay it would send out. VAD cuts come from the caller (Recovery) through
``speech_stopped_at`` / ``commit_until``; the mirror does not read speech events itself."""

from __future__ import annotations

import base64
import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from voxgate.session.audio_ring import PAGE, AudioRing
from voxgate.session.mirror import MIRRORED_TYPES, Mirror, b64_len

VAD_SESSION: dict[str, Any] = {
    "type": "realtime",
    "object": "realtime.session",
    "id": "sess_1",
    "expires_at": 9,
    "instructions": "Be brief.",
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "turn_detection": {"type": "server_vad"},
        }
    },
}
MANUAL_SESSION: dict[str, Any] = {
    **VAD_SESSION,
    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None}},
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def mirror(session: dict[str, Any] | None = MANUAL_SESSION, **kw: int) -> Mirror:
    m = Mirror(**kw)
    if session is not None:
        m.on_server_event("session.created", {"type": "session.created", "session": session})
    return m


def added(m: Mirror, item: dict[str, Any], previous: str | None) -> None:
    m.on_server_event(
        "conversation.item.added",
        {"type": "conversation.item.added", "item": item, "previous_item_id": previous},
    )


def user_text(item_id: str, text: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_text", "text": text}],
    }


def user_audio(item_id: str, transcript: str | None = None) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_audio", "transcript": transcript}],
    }


def created_items(m: Mirror) -> list[dict[str, Any]]:
    return [event["item"] for _, event, _ in m.item_events()]


# ---------------------------------------------------------------------------- config


def test_config_event_is_none_before_session_created() -> None:
    m = mirror(session=None)
    assert m.config_event() is None
    assert m.replay_events() == []


def test_config_event_restores_the_session_without_server_only_fields() -> None:
    m = mirror(VAD_SESSION)
    assert m.config_event() == {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "instructions": "Be brief.",
            "audio": VAD_SESSION["audio"],
        },
    }
    assert m.vad_on is True
    assert m.bytes_per_ms == 48


def test_session_updated_replaces_the_config_and_reads_format_and_vad() -> None:
    m = mirror(VAD_SESSION)
    g711 = {
        "type": "realtime",
        "instructions": "Now in French.",
        "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": None}},
    }
    m.on_server_event("session.updated", {"type": "session.updated", "session": g711})
    assert m.config_event() == {"type": "session.update", "session": g711}
    assert m.vad_on is False
    assert m.bytes_per_ms == 8


def test_mirrored_types_are_the_events_the_mirror_reads() -> None:
    assert (
        frozenset(
            {
                "session.created",
                "session.updated",
                "conversation.item.added",
                "conversation.item.done",
                "conversation.item.created",
                "conversation.item.deleted",
                "conversation.item.input_audio_transcription.completed",
            }
        )
        == MIRRORED_TYPES
    )


# ---------------------------------------------------------------------------- items


def test_items_are_replayed_as_creatable_text_in_conversation_order() -> None:
    m = mirror(VAD_SESSION)
    added(m, user_text("item_a", "first"), None)
    added(m, user_text("item_c", "third"), "item_a")
    added(m, user_text("item_b", "second"), "item_a")  # goes between a and c
    added(m, user_audio("item_u"), "item_c")
    m.on_server_event(
        "conversation.item.input_audio_transcription.completed",
        {"item_id": "item_u", "content_index": 0, "transcript": "what is a stop loss"},
    )
    added(
        m,
        {"id": "item_r", "type": "message", "role": "assistant", "status": "in_progress"},
        "item_u",
    )
    m.on_server_event(
        "conversation.item.done",
        {
            "item": {
                "id": "item_r",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_audio", "transcript": "An order to sell."}],
            },
            "previous_item_id": "item_u",
        },
    )
    added(
        m,
        {
            "id": "item_f",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_1",
            "name": "quote",
            "arguments": "{}",
        },
        "item_r",
    )
    added(
        m,
        {"id": "item_o", "type": "function_call_output", "call_id": "call_1", "output": "42"},
        "item_f",
    )
    assert [(item_id, as_audio) for item_id, _, as_audio in m.item_events()] == [
        ("item_a", False),
        ("item_b", False),
        ("item_c", False),
        ("item_u", False),
        ("item_r", True),
        ("item_f", False),
        ("item_o", False),
    ]
    assert created_items(m) == [
        {
            "id": "item_a",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "first"}],
        },
        {
            "id": "item_b",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "second"}],
        },
        {
            "id": "item_c",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "third"}],
        },
        {
            "id": "item_u",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "what is a stop loss"}],
        },
        {
            "id": "item_r",
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "An order to sell."}],
        },
        {
            "id": "item_f",
            "type": "function_call",
            "call_id": "call_1",
            "name": "quote",
            "arguments": "{}",
        },
        {"id": "item_o", "type": "function_call_output", "call_id": "call_1", "output": "42"},
    ]
    assert m.replay_events() == [
        m.config_event(),
        *({"type": "conversation.item.create", "item": item} for item in created_items(m)),
    ]


def test_null_previous_item_id_on_a_later_item_appends_it() -> None:
    m = mirror()
    added(m, user_text("item_a", "a"), None)
    added(m, user_text("item_b", "b"), None)
    added(m, user_text("item_c", "c"), None)
    assert [item["id"] for item in m.items] == ["item_a", "item_b", "item_c"]


def test_root_previous_item_id_puts_the_item_first() -> None:
    m = mirror()
    added(m, user_text("item_a", "a"), None)
    added(m, user_text("item_b", "b"), "item_a")
    added(m, user_text("item_r", "r"), "root")
    assert [item["id"] for item in m.items] == ["item_r", "item_a", "item_b"]


def test_previous_item_id_inserts_right_after_that_item() -> None:
    m = mirror()
    added(m, user_text("item_a", "a"), None)
    added(m, user_text("item_b", "b"), "item_a")
    added(m, user_text("item_c", "c"), "item_b")
    added(m, user_text("item_x", "x"), "item_a")
    assert [item["id"] for item in m.items] == ["item_a", "item_x", "item_b", "item_c"]


def test_unknown_previous_item_id_appends_the_item() -> None:
    m = mirror()
    added(m, user_text("item_a", "a"), None)
    added(m, user_text("item_b", "b"), "item_gone")
    assert [item["id"] for item in m.items] == ["item_a", "item_b"]


def test_item_done_updates_in_place_without_moving_it() -> None:
    m = mirror()
    added(
        m, {"id": "item_r", "type": "message", "role": "assistant", "status": "in_progress"}, None
    )
    added(m, user_text("item_b", "b"), "item_r")
    m.on_server_event(
        "conversation.item.done",
        {
            "item": {
                "id": "item_r",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "done"}],
            },
            "previous_item_id": None,
        },
    )
    assert [item["id"] for item in m.items] == ["item_r", "item_b"]
    assert m.items[0]["status"] == "completed"


def test_item_done_with_null_transcript_keeps_the_one_already_known() -> None:
    m = mirror()
    added(m, user_audio("item_u"), None)
    m.on_server_event(
        "conversation.item.input_audio_transcription.completed",
        {"item_id": "item_u", "content_index": 0, "transcript": "hello"},
    )
    m.on_server_event("conversation.item.done", {"item": user_audio("item_u", None)})
    assert m.items[0]["content"] == [{"type": "input_audio", "transcript": "hello"}]


def test_items_drop_the_object_field_and_audio_bytes() -> None:
    m = mirror()
    added(
        m,
        {
            "id": "item_u",
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "audio": "AAAA", "transcript": "hi"}],
        },
        None,
    )
    assert m.items == [
        {
            "id": "item_u",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": "hi"}],
        }
    ]


def test_deleted_items_are_not_replayed() -> None:
    m = mirror()
    added(m, user_text("item_a", "a"), None)
    added(m, user_text("item_b", "b"), "item_a")
    m.on_server_event("conversation.item.deleted", {"item_id": "item_a"})
    assert [item["id"] for item in created_items(m)] == ["item_b"]


def test_assistant_audio_without_transcript_is_not_replayed() -> None:
    m = mirror()
    added(
        m,
        {
            "id": "item_r",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_audio", "transcript": None}],
        },
        None,
    )
    assert len(m.items) == 1
    assert m.item_events() == []


def test_unknown_item_types_and_events_are_ignored() -> None:
    m = mirror()
    added(m, {"id": "item_m", "type": "mcp_call", "name": "x"}, None)
    m.on_server_event("response.output_audio.delta", {"delta": "AAAA"})
    m.on_server_event("conversation.item.added", {"item": {"type": "message"}})  # no id
    assert [item["id"] for item in m.items] == ["item_m"]
    assert m.item_events() == []


def test_items_past_the_byte_limit_drop_the_oldest_first() -> None:
    m = mirror(items_limit_bytes=600)
    previous = None
    for i in range(20):
        added(m, user_text(f"item_{i}", "x" * 40), previous)
        previous = f"item_{i}"
    ids = [item["id"] for item in m.items]
    assert m.items_bytes <= 600
    assert m.dropped_items == 20 - len(ids)
    assert ids == [f"item_{i}" for i in range(20 - len(ids), 20)]
    assert m.config_event() is not None  # the config is never dropped


def test_drop_unfinished_items_forgets_in_progress_items_and_returns_their_ids() -> None:
    m = mirror()
    added(m, user_text("item_a", "a"), None)
    added(
        m, {"id": "item_r", "type": "message", "role": "assistant", "status": "in_progress"}, None
    )
    added(
        m,
        {"id": "item_f", "type": "function_call", "status": "in_progress", "arguments": ""},
        None,
    )
    assert m.drop_unfinished_items() == ["item_r", "item_f"]
    assert [item["id"] for item in m.items] == ["item_a"]
    assert m.drop_unfinished_items() == []


# ---------------------------------------------------------------------------- audio


def test_b64_len_is_the_decoded_length() -> None:
    for data in (b"", b"a", b"ab", b"abc", b"abcd", bytes(range(256))):
        assert b64_len(b64(data)) == len(data)


def test_append_whose_length_is_not_a_multiple_of_4_is_ignored() -> None:
    m = mirror()
    m.on_client_append("AAA")
    m.on_client_append("AAAAA")
    assert m.stream_bytes == 0
    assert m.pending_frames() == []
    m.on_client_append("AAAA")
    assert m.stream_bytes == 3
    assert m.pending_frames() == [(0, "AAAA")]


def test_pending_audio_is_one_ring_of_exact_bytes_with_integer_positions() -> None:
    m = mirror()
    frames = [b64(b"\x01" * 960), b64(b"\x02" * 480), b64(b"\x03" * 7)]
    for frame in frames:
        m.on_client_append(frame)
    # issue 11: no per-frame objects; replay chunks are cut from the ring at 100 ms
    assert m.pending_frames() == [(0, b64(b"\x01" * 960 + b"\x02" * 480 + b"\x03" * 7))]
    assert m.pending_start == 0
    assert m.stream_bytes == m.pending_audio_bytes == 1447
    assert m.pending_audio() == b"\x01" * 960 + b"\x02" * 480 + b"\x03" * 7


def test_vad_cut_commits_pending_audio_exactly_at_the_cut() -> None:
    m = mirror(VAD_SESSION)
    audio = bytes(range(256)) * 30  # 7680 bytes = 160 ms at 48 bytes/ms
    m.speech_started()
    for i in range(0, len(audio), 960):
        m.on_client_append(b64(audio[i : i + 960]))
    m.speech_stopped_at(70 * 48)
    assert m.vad_cut == 70 * 48
    assert m.pending_audio() == audio  # not cut before the commit is confirmed
    m.commit_until(m.vad_cut, "item_u")
    assert m.vad_cut is None
    assert m.speaking is False
    assert m.pending_audio() == audio[70 * 48 :]
    assert m.pending_start == 70 * 48
    assert m.pending_audio_bytes == len(audio) - 70 * 48
    replayed = b"".join(
        base64.b64decode(e["audio"])
        for e in m.replay_events()
        if e["type"] == "input_audio_buffer.append"
    )
    assert replayed == audio[70 * 48 :]


def test_commit_until_the_stream_end_and_clear_take_everything_pending() -> None:
    m = mirror()
    m.on_client_append(b64(b"\x01" * 960))
    m.commit_until(m.stream_bytes, "item_u")
    assert m.pending_audio() == b""
    assert m.pending_start == 960
    m.on_client_append(b64(b"\x02" * 960))
    m.speech_started()
    m.clear_pending()
    assert m.pending_audio_bytes == 0
    assert m.pending_frames() == []
    assert m.speaking is False
    assert m.stream_bytes == 1920  # the timeline keeps counting


def test_user_turn_audio_is_replayed_as_input_audio_until_its_transcript_is_known() -> None:
    m = mirror()
    turn = bytes(range(200)) * 5
    m.on_client_append(b64(turn))
    m.commit_until(m.stream_bytes, "item_u")
    added(m, user_audio("item_u"), None)
    assert created_items(m) == [
        {
            "id": "item_u",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "audio": b64(turn)}],
        }
    ]
    m.on_server_event(
        "conversation.item.input_audio_transcription.completed",
        {"item_id": "item_u", "content_index": 0, "transcript": "hello there"},
    )
    assert created_items(m)[0]["content"] == [{"type": "input_text", "text": "hello there"}]


def test_user_audio_item_without_audio_or_transcript_is_not_replayed() -> None:
    m = mirror()
    added(m, user_audio("item_u"), None)
    assert m.item_events() == []


def test_turn_audio_past_its_bound_keeps_only_the_newest_turns() -> None:
    m = mirror(turn_audio_limit_bytes=1000)
    for n, item_id in enumerate(("item_1", "item_2")):
        m.on_client_append(b64(bytes([n]) * 800))
        m.commit_until(m.stream_bytes, item_id)
    added(m, user_audio("item_1", None), None)
    added(m, user_audio("item_2", None), "item_1")
    assert m.turn_audio_bytes == 800
    assert created_items(m) == [
        {
            "id": "item_2",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "audio": b64(b"\x01" * 800)}],
        }
    ]
    # the oldest turn falls back to its transcript once one is known
    m.on_server_event(
        "conversation.item.input_audio_transcription.completed",
        {"item_id": "item_1", "transcript": "one"},
    )
    assert [item["content"][0] for item in created_items(m)] == [
        {"type": "input_text", "text": "one"},
        {"type": "input_audio", "audio": b64(b"\x01" * 800)},
    ]


def test_idle_vad_session_keeps_only_the_newest_idle_keep_ms() -> None:
    m = mirror(VAD_SESSION, idle_keep_ms=200)  # 9600 bytes
    frames = [b64(bytes([n]) * 4800) for n in range(5)]  # 100 ms each
    for frame in frames:
        m.on_client_append(frame)
    assert m.pending_frames() == [(14400, frames[3]), (19200, frames[4])]
    assert m.pending_audio_bytes == 9600
    assert m.dropped_audio_bytes == 0  # idle trimming drops only silence
    assert m.stream_bytes == 24000


def test_speaking_vad_session_keeps_audio_past_idle_keep_ms() -> None:
    m = mirror(VAD_SESSION, idle_keep_ms=200)
    m.speech_started()
    for n in range(5):
        m.on_client_append(b64(bytes([n]) * 4800))
    assert m.pending_audio_bytes == 24000
    assert m.pending_start == 0


def test_vad_session_is_not_trimmed_between_speech_stopped_and_commit() -> None:
    m = mirror(VAD_SESSION, idle_keep_ms=100)
    m.speech_started()
    m.on_client_append(b64(b"\x01" * 4800))
    m.speech_stopped_at(4800)
    m.on_client_append(b64(b"\x02" * 4800))
    assert m.pending_audio_bytes == 9600


def test_manual_session_keeps_pending_audio_past_idle_keep_ms() -> None:
    m = mirror(MANUAL_SESSION, idle_keep_ms=100)
    for n in range(5):
        m.on_client_append(b64(bytes([n]) * 4800))
    assert m.pending_audio_bytes == 24000


def test_replay_sends_pending_audio_in_100_ms_appends() -> None:
    m = mirror()
    audio = bytes(range(256)) * 40  # 10240 bytes
    m.on_client_append(b64(audio[:1000]))
    m.on_client_append(b64(audio[1000:]))
    appends = [e for e in m.replay_events() if e["type"] == "input_audio_buffer.append"]
    assert [base64.b64decode(e["audio"]) for e in appends] == [
        audio[:4800],
        audio[4800:9600],
        audio[9600:],
    ]


def test_replay_of_g711_audio_uses_800_byte_appends() -> None:
    g711 = {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}
    m = mirror(g711)
    m.on_client_append(b64(b"\x7f" * 2000))
    appends = [e for e in m.replay_events() if e["type"] == "input_audio_buffer.append"]
    assert [len(base64.b64decode(e["audio"])) for e in appends] == [800, 800, 400]


def test_undecodable_audio_of_valid_length_replays_nothing() -> None:
    m = mirror()
    m.on_client_append("%%%not base64%%%")
    m.on_client_append(b64(b"\x05" * 96))
    assert m.pending_audio() == b"\x05" * 96


def test_memory_bytes_counts_items_turn_audio_and_pending_audio() -> None:
    m = mirror()
    added(m, user_text("item_a", "a"), None)
    m.on_client_append(b64(b"\x01" * 300))
    m.commit_until(m.stream_bytes, "item_u")
    m.on_client_append(b64(b"\x02" * 30))
    assert m.memory_bytes() == m.items_bytes + 300 + 30  # pending audio is raw bytes now


def test_single_append_larger_than_the_bound_keeps_pending_audio_within_it() -> None:
    m = mirror(audio_limit_bytes=500, idle_keep_ms=1)
    m.on_client_append(b64(b"\x01" * 501))
    assert m.pending_audio_bytes <= 500


def test_audio_limit_below_idle_keep_is_still_enforced() -> None:
    m = mirror(MANUAL_SESSION, audio_limit_bytes=1000, idle_keep_ms=1000)  # 48000 bytes
    for n in range(10):
        m.on_client_append(b64(bytes([n]) * 480))
    assert m.pending_audio_bytes <= 1000


# ---------------------------------------------------------------------------- properties

frame_sizes = st.lists(st.integers(min_value=1, max_value=500), max_size=40)


@given(frame_sizes, st.integers(500, 20000))
def test_pending_audio_never_exceeds_its_bound_and_keeps_the_newest(
    sizes: list[int], limit: int
) -> None:
    m = mirror(MANUAL_SESSION, audio_limit_bytes=limit, idle_keep_ms=1)
    stream = b""
    for n, size in enumerate(sizes):
        chunk = bytes([n % 256]) * size
        stream += chunk
        m.on_client_append(b64(chunk))
        assert m.pending_audio_bytes <= limit
    assert stream.endswith(m.pending_audio())
    assert m.pending_audio_bytes == len(m.pending_audio())
    assert m.pending_audio_bytes + m.dropped_audio_bytes == len(stream)
    assert m.stream_bytes == len(stream)
    assert m.pending_start == len(stream) - m.pending_audio_bytes


@given(frame_sizes, st.integers(1, 20))
def test_idle_pending_audio_never_exceeds_idle_keep(sizes: list[int], keep_ms: int) -> None:
    m = mirror(VAD_SESSION, idle_keep_ms=keep_ms)
    keep = keep_ms * 48
    stream = b""
    for n, size in enumerate(sizes):
        chunk = bytes([n % 256]) * size
        stream += chunk
        m.on_client_append(b64(chunk))
        assert m.pending_audio_bytes <= max(keep, size)
    assert stream.endswith(m.pending_audio())
    assert m.dropped_audio_bytes == 0


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=20), st.data())
def test_commit_until_any_offset_leaves_exactly_the_bytes_after_it(
    chunks: list[bytes], data: st.DataObject
) -> None:
    m = mirror(MANUAL_SESSION)
    for chunk in chunks:
        m.on_client_append(b64(chunk))
    stream = b"".join(chunks)
    cut = data.draw(st.integers(0, len(stream)))
    m.commit_until(cut, "item_u")
    assert m.pending_audio() == stream[cut:]
    assert m.pending_audio_bytes == len(stream) - cut
    assert m.pending_start == cut
    frames = m.pending_frames()
    assert b"".join(base64.b64decode(f) for _, f in frames) == stream[cut:]
    for (start, frame), (following, _) in itertools.pairwise(frames):
        assert start + b64_len(frame) == following
    added(m, user_audio("item_u"), None)
    if cut:
        assert created_items(m)[0]["content"] == [
            {"type": "input_audio", "audio": b64(stream[:cut])}
        ]
    else:
        assert m.item_events() == []


# ---------------------------------------------------------------------------- the ring


@given(
    st.lists(st.integers(min_value=0, max_value=6000), max_size=40),
    st.integers(min_value=1, max_value=20_000),
    st.data(),
)
def test_audio_ring_is_a_byte_exact_fifo_that_gives_consumed_pages_back(
    sizes: list[int], reserve: int, data: st.DataObject
) -> None:
    """Wraps to the mapping's start, moves to a larger mapping and pages given back never
    change the bytes, and what stays resident is the contents plus at most the release batch
    and a few pages. (No slack, a small reserve: the rare paths run often.)"""
    ring = AudioRing(reserve_bytes=reserve, release_bytes=PAGE, slack_bytes=0)
    model = bytearray()
    for n, size in enumerate(sizes):
        chunk = bytes([n % 251 + 1]) * size
        ring.append(chunk)
        model += chunk
        if data.draw(st.booleans()):
            cut = data.draw(st.integers(0, len(model) + 5))
            taken = ring.take_front(cut) if data.draw(st.booleans()) else None
            if taken is None:
                ring.drop_front(cut)
            else:
                assert taken == bytes(model[:cut])
            del model[:cut]
        assert len(ring) == len(model)
        lo = data.draw(st.integers(0, len(model)))
        hi = data.draw(st.integers(lo, len(model) + 3))
        assert ring.peek(lo, hi) == bytes(model[lo:hi])
        assert ring.allocated_bytes <= len(ring) + 4 * PAGE
    ring.drop_front(len(ring))
    assert ring.allocated_bytes <= PAGE  # emptied: at most the page the front is in
    ring.clear()
    assert ring.allocated_bytes == 0


def test_audio_ring_sized_for_its_bound_is_mapped_once_however_long_the_call() -> None:
    """Issue 11: rings that doubled when full doubled together in every session streaming at
    the same rate (30-85 ms loop stalls at 200 sessions). Held at its bound, as the mirror
    holds push-to-talk audio, a ring wraps in its one mapping: nothing is ever moved, and
    resident memory stays the contents plus the release batch."""
    bound = 96_000  # 2 s of 24 kHz PCM16
    ring = AudioRing(reserve_bytes=bound)
    frame = bytes(range(256)) * 3 + bytes(192)  # 960 bytes: 20 ms
    sent = 0
    for _ in range(3_000):  # 60 s of audio: the mapping's length is passed many times
        size = ring.append(frame)
        sent += len(frame)
        if size > bound:
            ring.drop_front(size - bound)
        assert ring.allocated_bytes <= len(ring) + 16 * 1024 + 2 * PAGE
    assert ring.mappings == 1
    assert len(ring) == bound
    stream = frame * (sent // len(frame))
    assert ring.peek(0, bound) == stream[-bound:]


def test_audio_bounds_in_seconds_follow_the_sessions_format() -> None:
    """Issue 11.7: buffers are sized in seconds of audio for the session's format."""
    m = Mirror(audio_limit_s=2.0, turn_audio_limit_s=1.0)
    assert (m.audio_limit_bytes, m.turn_audio_limit_bytes) == (96_000, 48_000)  # before created
    g711 = {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}
    m.on_server_event("session.created", {"type": "session.created", "session": g711})
    assert (m.audio_limit_bytes, m.turn_audio_limit_bytes) == (16_000, 8_000)
    for _ in range(30):  # 3 s of G.711 streamed without a commit: 2 s are kept
        m.on_client_append(b64(b"\x7f" * 800))
    assert m.pending_audio_bytes == 16_000
    assert m.dropped_audio_bytes == 8_000
