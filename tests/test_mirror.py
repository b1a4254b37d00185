"""The session mirror, driven with server events synchronously."""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from voxgate.session.mirror import Mirror

SESSION = {
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


def mirror(**kw: int) -> Mirror:
    return Mirror(
        items_limit_bytes=kw.get("items", 1 << 20), audio_limit_bytes=kw.get("audio", 1 << 20)
    )


def added(item: dict[str, Any], previous: str | None) -> tuple[str, dict[str, Any]]:
    return "conversation.item.added", {"item": item, "previous_item_id": previous}


def user_text(item_id: str, text: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "user",
        "object": "realtime.item",
        "content": [{"type": "input_text", "text": text}],
    }


def test_replay_rebuilds_config_and_items_in_conversation_order() -> None:
    m = mirror()
    m.on_server_event("session.created", {"session": SESSION})
    for etype, event in (
        added(user_text("item_a", "first"), None),
        added(user_text("item_c", "third"), "item_a"),
        added(user_text("item_b", "second"), "item_a"),  # inserted between a and c
        added(
            {
                "id": "item_u",
                "type": "message",
                "role": "user",
                "content": [{"type": "input_audio", "transcript": None}],
            },
            "item_c",
        ),
        (
            "conversation.item.input_audio_transcription.completed",
            {"item_id": "item_u", "transcript": "what is a stop loss"},
        ),
        added(
            {
                "id": "item_r",
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            },
            "item_u",
        ),
        (
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
        ),
        added(
            {
                "id": "item_f",
                "type": "function_call",
                "call_id": "call_1",
                "name": "quote",
                "arguments": "{}",
                "status": "completed",
            },
            "item_r",
        ),
        added(
            {"id": "item_o", "type": "function_call_output", "call_id": "call_1", "output": "42"},
            "item_f",
        ),
    ):
        m.on_server_event(etype, event)
    events = m.replay_events()
    assert events[0] == {
        "type": "session.update",
        "session": {k: v for k, v in SESSION.items() if k not in ("object", "id", "expires_at")},
    }
    items = [e["item"] for e in events[1:]]
    assert [i["id"] for i in items] == [
        "item_a",
        "item_b",
        "item_c",
        "item_u",
        "item_r",
        "item_f",
        "item_o",
    ]
    assert items[3]["content"] == [{"type": "input_text", "text": "what is a stop loss"}]
    assert items[4] == {
        "id": "item_r",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "An order to sell."}],
    }
    assert items[5]["name"] == "quote"
    assert items[6]["output"] == "42"


def test_deleted_items_are_not_replayed() -> None:
    m = mirror()
    m.on_server_event(*added(user_text("item_a", "a"), None))
    m.on_server_event(*added(user_text("item_b", "b"), "item_a"))
    m.on_server_event("conversation.item.deleted", {"item_id": "item_a"})
    assert [e["item"]["id"] for e in m.replay_events()] == ["item_b"]


def test_items_past_the_byte_limit_drop_the_oldest_first() -> None:
    m = mirror(items=600)
    previous = None
    for i in range(20):
        m.on_server_event(*added(user_text(f"item_{i}", "x" * 40), previous))
        previous = f"item_{i}"
    assert m.items_bytes <= 600
    assert m.dropped_items > 0
    ids = [item["id"] for item in m.items]
    assert ids[-1] == "item_19"
    assert ids == [f"item_{i}" for i in range(20 - len(ids), 20)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_vad_commit_cuts_pending_audio_at_speech_stopped_exactly() -> None:
    m = mirror()
    m.on_server_event("session.created", {"session": SESSION})
    audio = bytes(range(256)) * 30  # 7680 bytes = 160 ms at 48 bytes/ms
    for i in range(0, len(audio), 960):
        m.on_client_append(b64(audio[i : i + 960]))
    m.on_server_event("input_audio_buffer.speech_stopped", {"audio_end_ms": 70, "item_id": "i"})
    m.on_server_event("input_audio_buffer.committed", {"item_id": "i"})
    assert m.pending_audio() == audio[70 * 48 :]
    replayed = b"".join(
        base64.b64decode(e["audio"])
        for e in m.replay_events()
        if e["type"] == "input_audio_buffer.append"
    )
    assert replayed == audio[70 * 48 :]


def test_manual_commit_and_clear_take_everything_pending() -> None:
    m = mirror()
    manual = {
        **SESSION,
        "audio": {"input": {"format": {"type": "audio/pcm"}, "turn_detection": None}},
    }
    m.on_server_event("session.created", {"session": manual})
    m.on_client_append(b64(b"\x01" * 960))
    m.on_server_event("input_audio_buffer.committed", {"item_id": "i"})
    assert m.pending_audio() == b""
    m.on_client_append(b64(b"\x02" * 960))
    m.on_server_event("input_audio_buffer.cleared", {})
    assert m.pending_audio_bytes == 0


@given(st.lists(st.integers(min_value=1, max_value=2000), max_size=40), st.integers(500, 20000))
def test_pending_audio_never_exceeds_its_bound_and_keeps_the_newest(
    sizes: list[int], limit: int
) -> None:
    m = mirror(audio=limit)
    stream = b""
    for n, size in enumerate(sizes):
        chunk = bytes([n % 256]) * size
        stream += chunk
        m.on_client_append(b64(chunk))
        assert m.pending_audio_bytes <= limit
    assert stream.endswith(m.pending_audio())
    assert m.pending_audio_bytes + m.dropped_audio_bytes == len(stream)


def test_undecodable_audio_counts_as_nothing_replayed() -> None:
    m = mirror()
    m.on_client_append("%%%not base64%%%")
    m.on_client_append(b64(b"\x05" * 96))
    assert m.pending_audio() == b"\x05" * 96
