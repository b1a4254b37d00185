"""Recovery and ReplayDriver (voxgate.session.recovery, .replay_driver), driven synchronously:
frames sent upstream and server events in, the exact frames a fresh upstream gets and the
fix-ups the client sees out. No sockets, no clock."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from voxgate.session.mirror import Mirror
from voxgate.session.recovery import PARSED_SERVER_TYPES, TRACKED_CLIENT_TYPES, Recovery
from voxgate.session.replay_driver import ReplayDriver

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
CONFIG_EVENT_ID = "event_vgreplay_config"
FRAME = 4800  # 100 ms of 24 kHz PCM16


def J(event: dict[str, Any]) -> str:
    return orjson.dumps(event).decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def recovery(session: dict[str, Any] = MANUAL_SESSION, **mirror_kw: int) -> Recovery:
    rec = Recovery(Mirror(**mirror_kw))
    assert server(rec, {"type": "session.created", "session": session}) is not None
    return rec


def server(rec: Recovery, event: dict[str, Any], now: float = 0.0) -> dict[str, Any] | None:
    """Feed one server event; return what the client gets (parsed), None if swallowed."""
    out = rec.on_server(str(event["type"]), J(event), now)
    return None if out is None else orjson.loads(out)


def append(rec: Recovery, data: bytes) -> str:
    audio = b64(data)
    rec.sent_append('{"type":"input_audio_buffer.append","audio":"' + audio + '"}')
    return audio


def user_text(item_id: str | None, text: str) -> dict[str, Any]:
    item: dict[str, Any] = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": text}],
    }
    if item_id is not None:
        item["id"] = item_id
    return item


def user_audio(item_id: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_audio", "transcript": None}],
    }


def assistant(item_id: str, status: str = "in_progress") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": []}


def added(item: dict[str, Any], previous: str | None = None) -> dict[str, Any]:
    return {"type": "conversation.item.added", "item": item, "previous_item_id": previous}


def done(item: dict[str, Any], previous: str | None = None) -> dict[str, Any]:
    return {"type": "conversation.item.done", "item": item, "previous_item_id": previous}


def response_body(response_id: str) -> dict[str, Any]:
    return {
        "object": "realtime.response",
        "id": response_id,
        "status": "in_progress",
        "status_details": None,
        "output": [],
        "conversation_id": "conv_1",
        "output_modalities": ["audio"],
        "usage": None,
        "metadata": None,
    }


def upstream_ack(item: dict[str, Any]) -> dict[str, Any]:
    """The new upstream's item.added for a replayed (or client) item.create."""
    return added({"object": "realtime.item", "status": "completed", **item})


def replay_to_done(
    rec: Recovery,
    *,
    retry: bool = False,
    new_ids: dict[str, str] | None = None,
    session: dict[str, Any] = MANUAL_SESSION,
) -> tuple[list[str], Any]:
    """Run a whole replay; return every frame it sent after the items, and the driver."""
    new_ids = new_ids or {}
    driver = ReplayDriver(rec, retry_response=retry)
    sent = driver.on_text(J({"type": "session.created", "session": session}))
    assert [orjson.loads(t)["event_id"] for t in sent] == [CONFIG_EVENT_ID]
    creates = driver.on_text(J({"type": "session.updated", "session": session}))
    tail: list[str] = []
    if driver.done:
        return creates, driver
    for text in creates:
        item = orjson.loads(text)["item"]
        tail = driver.on_text(J(upstream_ack({**item, "id": new_ids.get(item["id"], item["id"])})))
    assert driver.done
    return tail, driver


# ---------------------------------------------------------------------------- appends


def test_type_first_append_is_mirrored_through_the_fast_path() -> None:
    rec = recovery()
    rec.sent_append('{"type":"input_audio_buffer.append","audio":"AAECAwQF"}')
    assert rec.mirror.pending_frames() == [(0, "AAECAwQF")]
    assert rec.mirror.stream_bytes == 6


def test_agents_style_append_with_audio_first_and_type_last_is_mirrored() -> None:
    rec = recovery()
    rec.sent_append('{"audio": "AAECAwQF", "type": "input_audio_buffer.append"}')
    rec.sent_append('{"event_id":"e1","audio":"BgcI","type":"input_audio_buffer.append"}')
    assert rec.mirror.pending_audio() == bytes(range(9))
    assert (rec.mirror.pending_start, rec.mirror.stream_bytes) == (0, 9)


def test_append_with_escaped_slashes_is_mirrored_through_the_full_parse() -> None:
    rec = recovery()
    rec.sent_append('{"type":"input_audio_buffer.append","audio":"\\/\\/\\/\\/"}')
    assert rec.mirror.pending_frames() == [(0, "////")]


def test_append_whose_event_id_says_audio_is_mirrored_through_the_full_parse() -> None:
    rec = recovery()
    rec.sent_append('{"event_id":"audio","type":"input_audio_buffer.append","audio":"AQID"}')
    rec.sent_append('{"type":"input_audio_buffer.append","audio" : "BAUG"}')
    assert rec.mirror.pending_audio() == bytes(range(1, 7))
    assert (rec.mirror.pending_start, rec.mirror.stream_bytes) == (0, 6)


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        '{"type":"input_audio_buffer.append"}',
        '{"type":"input_audio_buffer.append","audio":5}',
        '["audio"]',
        '{"type":"input_audio_buffer.append","audio":"AAA"}',  # not a multiple of 4
    ],
)
def test_append_without_usable_audio_is_not_mirrored(frame: str) -> None:
    rec = recovery()
    rec.sent_append(frame)
    assert rec.mirror.stream_bytes == 0
    assert rec.mirror.pending_frames() == []


# ---------------------------------------------------------------------------- control events


def test_tracked_types_are_the_client_events_with_an_ack() -> None:
    assert (
        frozenset(
            {
                "session.update",
                "conversation.item.create",
                "conversation.item.retrieve",
                "conversation.item.truncate",
                "conversation.item.delete",
                "input_audio_buffer.commit",
                "input_audio_buffer.clear",
                "response.create",
            }
        )
        == TRACKED_CLIENT_TYPES
    )
    assert "response.done" in PARSED_SERVER_TYPES
    assert "response.output_audio.delta" not in PARSED_SERVER_TYPES


def test_control_event_without_mapping_is_sent_unchanged() -> None:
    rec = recovery()
    text = J({"type": "session.update", "session": {"type": "realtime"}})
    to_upstream, to_client = rec.sent_control("session.update", text, 0.0)
    assert to_upstream is text
    assert to_client is None


def test_session_update_is_pending_until_session_updated() -> None:
    rec = recovery()
    rec.sent_control("session.update", J({"type": "session.update", "session": {}}), 0.0)
    assert not rec.is_quiet(0.0)
    assert server(rec, {"type": "session.updated", "session": MANUAL_SESSION}) is not None
    assert rec.is_quiet(0.0)


def test_item_create_with_an_id_is_acked_only_by_that_id() -> None:
    rec = recovery()
    rec.sent_control(
        "conversation.item.create",
        J({"type": "conversation.item.create", "item": user_text("item_mine", "hi")}),
        0.0,
    )
    server(rec, added({**user_text("item_other", "x"), "status": "completed"}))
    assert not rec.is_quiet(0.0)
    server(rec, added({**user_text("item_mine", "hi"), "status": "completed"}))
    assert rec.is_quiet(0.0)


def test_item_create_without_id_is_acked_by_type_and_role() -> None:
    rec = recovery()
    rec.sent_control(
        "conversation.item.create",
        J({"type": "conversation.item.create", "item": user_text(None, "hi")}),
        0.0,
    )
    server(rec, added({**user_text("item_s", "x"), "role": "system", "status": "completed"}))
    assert not rec.is_quiet(0.0)
    server(rec, added({**user_text("item_1", "hi"), "status": "completed"}))
    assert rec.is_quiet(0.0)


def test_item_create_is_never_acked_by_an_in_progress_response_output_item() -> None:
    rec = recovery()
    rec.sent_control(
        "conversation.item.create",
        J(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "assistant", "content": []},
            }
        ),
        0.0,
    )
    server(rec, added(assistant("item_r", "in_progress")))
    assert not rec.is_quiet(0.0)
    server(rec, added(assistant("item_a", "completed")))
    assert rec.is_quiet(0.0)


def test_response_create_is_acked_by_response_created() -> None:
    rec = recovery()
    rec.sent_control("response.create", J({"type": "response.create"}), 0.0)
    assert not rec.is_quiet(0.0)
    server(rec, {"type": "response.created", "response": response_body("resp_1")})
    assert rec.response_active
    assert not rec.is_quiet(0.0)  # the response is running
    server(rec, {"type": "response.done", "response": {**response_body("resp_1"), "status": "ok"}})
    assert not rec.response_active
    assert rec.is_quiet(0.0)


def test_error_naming_an_event_id_pops_that_pending_event_only() -> None:
    rec = recovery()
    rec.sent_control("response.create", J({"type": "response.create", "event_id": "c1"}), 0.0)
    rec.sent_control("session.update", J({"type": "session.update", "event_id": "c2"}), 0.0)
    error = {
        "type": "error",
        "error": {"type": "invalid_request_error", "code": "x", "message": "m", "event_id": "c1"},
    }
    assert server(rec, error) == error  # errors are forwarded unchanged
    texts, _ = rec.begin("voxgate_upstream_lost", "gone")
    assert texts == []
    tail, driver = replay_to_done(rec)
    assert tail == [J({"type": "session.update", "event_id": "c2"})]
    assert driver.stats.resent_events == 1


def test_response_cancel_and_appends_are_not_tracked() -> None:
    rec = recovery()
    assert rec.sent_control("response.cancel", J({"type": "response.cancel"}), 0.0)[1] is None
    append(rec, b"\x00" * 10)
    assert rec.is_quiet(0.0)


def test_pending_event_is_forgotten_after_the_ack_ttl() -> None:
    rec = Recovery(Mirror(), ack_ttl_s=10.0)
    rec.sent_control("session.update", J({"type": "session.update"}), 100.0)
    assert not rec.is_quiet(110.0)
    assert rec.is_quiet(110.5)


def test_is_quiet_is_false_while_the_user_speaks() -> None:
    rec = recovery(VAD_SESSION)
    assert rec.is_quiet(0.0)
    server(rec, {"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "u"})
    assert not rec.is_quiet(0.0)
    server(rec, {"type": "input_audio_buffer.committed", "item_id": "u"})
    assert rec.is_quiet(0.0)


# ---------------------------------------------------------------------------- begin()


def test_begin_ends_each_running_response_with_one_failed_response_done() -> None:
    rec = recovery(VAD_SESSION)
    server(rec, {"type": "response.created", "response": response_body("resp_1")})
    oob = {**response_body("resp_2"), "metadata": {"topic": "x"}}
    server(rec, {"type": "response.created", "response": oob})
    texts, _ = rec.begin("voxgate_upstream_lost", "gone")
    events = [orjson.loads(t) for t in texts]
    assert [e["event_id"][:6] for e in events] == ["event_", "event_"]
    failed: dict[str, Any] = {
        "status": "failed",
        "status_details": {
            "type": "failed",
            "error": {"type": "server_error", "code": "voxgate_upstream_lost", "message": "gone"},
        },
        "output": [],
        "usage": None,
    }
    assert [{k: v for k, v in e.items() if k != "event_id"} for e in events] == [
        {"type": "response.done", "response": {**response_body("resp_1"), **failed}},
        {"type": "response.done", "response": {**oob, **failed}},
    ]
    assert all("reason" not in e["response"]["status_details"] for e in events)
    assert not rec.response_active
    assert rec.begin("voxgate_upstream_lost", "gone") == ([], False)
    assert rec.reconnects == 2


def test_begin_retries_a_vad_response_that_produced_nothing() -> None:
    rec = recovery(VAD_SESSION)
    server(rec, {"type": "response.created", "response": response_body("resp_1")})
    server(
        rec,
        {
            "type": "response.output_item.done",
            "response_id": "resp_1",
            "item": assistant("item_r", "incomplete"),
        },
    )
    texts, retry = rec.begin("voxgate_upstream_lost", "gone")
    assert len(texts) == 1
    assert retry is True


def test_begin_does_not_retry_a_vad_response_with_a_completed_output() -> None:
    rec = recovery(VAD_SESSION)
    server(rec, {"type": "response.created", "response": response_body("resp_1")})
    server(
        rec,
        {
            "type": "response.output_item.done",
            "response_id": "resp_1",
            "item": {"id": "item_f", "type": "function_call", "status": "completed"},
        },
    )
    assert rec.begin("voxgate_upstream_lost", "gone")[1] is False


def test_begin_does_not_retry_a_client_requested_response() -> None:
    rec = recovery(VAD_SESSION)
    rec.sent_control("response.create", J({"type": "response.create"}), 0.0)
    server(rec, {"type": "response.created", "response": response_body("resp_1")})
    texts, retry = rec.begin("voxgate_upstream_lost", "gone")
    assert len(texts) == 1
    assert retry is False


def test_begin_drops_unfinished_items_and_answers_their_truncate_locally() -> None:
    rec = recovery(VAD_SESSION)
    server(rec, added({**user_text("item_u", "hi"), "status": "completed"}))
    server(rec, {"type": "response.created", "response": response_body("resp_1")})
    server(rec, added(assistant("item_r"), "item_u"))
    rec.begin("voxgate_upstream_lost", "gone")
    assert [item["id"] for item in rec.mirror.items] == ["item_u"]
    assert rec.local_truncate_ids == {"item_r"}
    truncate = J(
        {
            "type": "conversation.item.truncate",
            "item_id": "item_r",
            "content_index": 0,
            "audio_end_ms": 1200,
        }
    )
    to_upstream, to_client = rec.sent_control("conversation.item.truncate", truncate, 0.0)
    assert to_upstream is None
    assert to_client is not None
    answer = orjson.loads(to_client)
    assert answer["event_id"].startswith("event_")
    assert {k: v for k, v in answer.items() if k != "event_id"} == {
        "type": "conversation.item.truncated",
        "item_id": "item_r",
        "content_index": 0,
        "audio_end_ms": 1200,
    }
    assert rec.is_quiet(0.0)  # answered locally: nothing waits for an upstream ack
    other = J({"type": "conversation.item.truncate", "item_id": "item_u", "audio_end_ms": 5})
    assert rec.sent_control("conversation.item.truncate", other, 0.0) == (other, None)


# ---------------------------------------------------------------------------- ReplayDriver


def test_replay_sends_config_items_then_pending_audio_with_unacked_commits_in_place() -> None:
    rec = recovery(MANUAL_SESSION)
    create_a = J({"type": "conversation.item.create", "item": user_text("item_a", "hello")})
    assert rec.sent_control("conversation.item.create", create_a, 0.0) == (create_a, None)
    server(rec, upstream_ack(user_text("item_a", "hello")))
    server(rec, done({**user_text("item_a", "hello"), "status": "completed"}))
    server(rec, {"type": "response.created", "response": response_body("resp_1")})
    answer = {
        "id": "item_r",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_audio", "transcript": "Hi there."}],
    }
    server(rec, added(assistant("item_r"), "item_a"))
    server(rec, done(answer, "item_a"))
    server(rec, {"type": "response.done", "response": {**response_body("resp_1"), "status": "ok"}})
    frames = [append(rec, bytes([n]) * 960) for n in range(2)]
    commit = '{"type":"input_audio_buffer.commit","event_id":"c_commit"}'
    rec.sent_control("input_audio_buffer.commit", commit, 1.0)
    frames.append(append(rec, b"\x09" * 480))

    assert rec.begin("voxgate_upstream_lost", "gone") == ([], False)
    driver = ReplayDriver(rec, retry_response=False)
    assert driver.on_text(J({"type": "session.created", "session": {"id": "sess_2"}})) == [
        J(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "instructions": "Be brief.",
                    "audio": MANUAL_SESSION["audio"],
                },
                "event_id": CONFIG_EVENT_ID,
            }
        )
    ]
    assert driver.on_text(J({"type": "rate_limits.updated", "rate_limits": []})) == []
    creates = driver.on_text(J({"type": "session.updated", "session": MANUAL_SESSION}))
    assert [orjson.loads(t) for t in creates] == [
        {
            "type": "conversation.item.create",
            "item": {
                "id": "item_a",
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "hello"}],
            },
            "event_id": "event_vgreplay_0",
        },
        {
            "type": "conversation.item.create",
            "item": {
                "id": "item_r",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hi there."}],
            },
            "event_id": "event_vgreplay_1",
        },
    ]
    assert rec.local_truncate_ids == {"item_r"}  # the new upstream has it as text only
    assert driver.on_text(J(upstream_ack(user_text("item_a", "hello")))) == []
    assert driver.on_text(J(done({**user_text("item_a", "hello"), "status": "completed"}))) == []
    assert not driver.done
    tail = driver.on_text(J(upstream_ack({**answer, "content": []})))
    assert driver.done
    # the audio before the commit goes first, in as few appends as fit (exact bytes), then
    # the commit at the very byte it was sent at, then the rest
    before = base64.b64encode(b"\x00" * 960 + b"\x01" * 960).decode()
    assert tail == [
        '{"type":"input_audio_buffer.append","audio":"' + before + '"}',
        commit,
        '{"type":"input_audio_buffer.append","audio":"' + frames[2] + '"}',
    ]
    stats = driver.stats
    assert (stats.replayed_items, stats.resent_events, stats.audio_resent_bytes) == (2, 1, 2400)
    assert stats.state_restored is True
    assert stats.notes == []

    # after the replay: the ack of item_r's replay is swallowed, the re-sent commit is acked
    # at its original audio position
    assert server(rec, done(answer)) is None
    assert server(rec, {"type": "input_audio_buffer.committed", "item_id": "item_u"}) == {
        "type": "input_audio_buffer.committed",
        "item_id": "item_u",
    }
    assert rec.mirror.pending_frames() == [(1920, frames[2])]
    assert rec.is_quiet(2.0)


def test_replay_with_a_lost_vad_answer_asks_for_a_response_before_the_audio() -> None:
    rec = recovery(VAD_SESSION)
    server(rec, {"type": "response.created", "response": response_body("resp_1")})
    audio = append(rec, b"\x01" * 960)
    _, retry = rec.begin("voxgate_upstream_lost", "gone")
    assert retry is True
    tail, _ = replay_to_done(rec, retry=True, session=VAD_SESSION)
    assert tail == [
        '{"type":"response.create"}',
        '{"type":"input_audio_buffer.append","audio":"' + audio + '"}',
    ]


def test_replay_without_items_finishes_on_session_updated() -> None:
    rec = recovery(MANUAL_SESSION)
    rec.begin("voxgate_upstream_lost", "gone")
    driver = ReplayDriver(rec, retry_response=False)
    driver.on_text(J({"type": "session.created", "session": MANUAL_SESSION}))
    assert driver.on_text(J({"type": "session.updated", "session": MANUAL_SESSION})) == []
    assert driver.done
    assert driver.stats.replayed_items == 0


def test_replay_before_any_session_config_skips_the_update() -> None:
    rec = Recovery(Mirror())
    rec.begin("voxgate_upstream_lost", "gone")
    driver = ReplayDriver(rec, retry_response=False)
    assert driver.on_text(J({"type": "session.created", "session": MANUAL_SESSION})) == []
    assert driver.done


def test_changed_item_id_in_an_ack_is_mapped_both_ways() -> None:
    rec = recovery(MANUAL_SESSION)
    server(rec, added({**user_text("item_a", "hello"), "status": "completed"}))
    rec.begin("voxgate_upstream_lost", "gone")
    replay_to_done(rec, new_ids={"item_a": "item_X"})

    # server → client: the client keeps seeing its own id
    assert server(rec, done({**user_text("item_X", "hello"), "status": "completed"})) is None
    delta = {
        "type": "conversation.item.input_audio_transcription.delta",
        "item_id": "item_X",
        "delta": "he",
    }
    assert server(rec, delta) == {**delta, "item_id": "item_a"}
    unrelated = J({"type": "response.output_text.delta", "item_id": "item_b", "delta": "x"})
    assert rec.on_server("response.output_text.delta", unrelated, 0.0) is unrelated

    # client → upstream: its id is sent as the upstream's
    delete = J({"type": "conversation.item.delete", "event_id": "c1", "item_id": "item_a"})
    to_upstream, to_client = rec.sent_control("conversation.item.delete", delete, 0.0)
    assert to_client is None
    assert to_upstream is not None
    assert orjson.loads(to_upstream) == {
        "type": "conversation.item.delete",
        "event_id": "c1",
        "item_id": "item_X",
    }
    assert server(rec, {"type": "conversation.item.deleted", "item_id": "item_X"}) == {
        "type": "conversation.item.deleted",
        "item_id": "item_a",
    }
    assert rec.mirror.items == []
    assert rec.is_quiet(0.0)


def test_reconnect_mid_speech_folds_the_new_vad_turn_into_the_one_the_client_saw() -> None:
    rec = recovery(VAD_SESSION, idle_keep_ms=1000)  # idle: keep 48000 bytes
    frames = [append(rec, bytes([n]) * FRAME) for n in range(30)]
    started: dict[str, Any] = {"type": "input_audio_buffer.speech_started", "audio_start_ms": 2800}
    started_text = J({**started, "item_id": "item_U1"})
    assert rec.on_server("input_audio_buffer.speech_started", started_text, 0.0) is started_text
    frames += [append(rec, bytes([n]) * FRAME) for n in range(30, 35)]
    assert rec.mirror.pending_start == 20 * FRAME  # idle trimming kept 1 s before speech

    assert rec.begin("voxgate_upstream_lost", "gone") == ([], False)
    tail, driver = replay_to_done(rec, session=VAD_SESSION)
    assert [orjson.loads(t)["audio"] for t in tail] == frames[20:]
    assert driver.stats.audio_resent_bytes == 15 * FRAME

    # the new upstream heard audio from 2000 ms on; its times are shifted back by 2000 ms
    assert server(rec, {**started, "audio_start_ms": 800, "item_id": "item_U2"}) is None
    stopped = {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 1300}
    assert server(rec, {**stopped, "item_id": "item_U2"}) == {
        **stopped,
        "audio_end_ms": 3300,
        "item_id": "item_U1",
    }
    committed = {"type": "input_audio_buffer.committed", "previous_item_id": None}
    assert server(rec, {**committed, "item_id": "item_U2"}) == {**committed, "item_id": "item_U1"}
    assert server(rec, added(user_audio("item_U2"))) == added(user_audio("item_U1"))
    assert rec.mirror.pending_start == 3300 * 48
    pcm = b"".join(base64.b64decode(f) for f in frames)
    assert [event["item"] for _, event, _ in rec.mirror.item_events()] == [
        {
            "id": "item_U1",
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "audio": b64(pcm[20 * FRAME : 3300 * 48])}],
        }
    ]

    # the next turn is new to the client: forwarded, on the client's timeline
    assert server(rec, {**started, "audio_start_ms": 1400, "item_id": "item_U3"}) == {
        **started,
        "audio_start_ms": 3400,
        "item_id": "item_U3",
    }
    timeout = {
        "type": "input_audio_buffer.timeout_triggered",
        "item_id": "item_U4",
        "audio_start_ms": 1500,
        "audio_end_ms": 1700,
    }
    assert server(rec, timeout) == {**timeout, "audio_start_ms": 3500, "audio_end_ms": 3700}


def test_reconnect_after_speech_stopped_swallows_both_speech_events() -> None:
    rec = recovery(VAD_SESSION, idle_keep_ms=0)
    server(rec, {"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "u1"})
    frames = [append(rec, bytes([n]) * FRAME) for n in range(5)]
    server(rec, {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 400, "item_id": "u1"})
    rec.begin("voxgate_upstream_lost", "gone")
    tail, _ = replay_to_done(rec, session=VAD_SESSION)
    assert [orjson.loads(t)["audio"] for t in tail] == frames
    start = {"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "u2"}
    assert server(rec, start) is None
    stop = {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 400, "item_id": "u2"}
    assert server(rec, stop) is None
    assert server(rec, {"type": "input_audio_buffer.committed", "item_id": "u2"}) == {
        "type": "input_audio_buffer.committed",
        "item_id": "u1",
    }
    assert rec.mirror.pending_start == 400 * 48


def test_fatal_error_during_replay_sets_fatal() -> None:
    rec = recovery()
    rec.begin("voxgate_upstream_lost", "gone")
    driver = ReplayDriver(rec, retry_response=False)
    error = {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "code": "invalid_api_key",
            "message": "Incorrect API key provided: sk-abc",
            "event_id": None,
        },
    }
    assert driver.on_text(J(error)) == []
    assert driver.fatal == ("invalid_api_key", "Incorrect API key provided: sk-abc")
    assert not driver.done


def test_rejected_replayed_config_goes_on_with_items_and_reports_state_not_restored() -> None:
    rec = recovery()
    server(rec, added({**user_text("item_a", "hello"), "status": "completed"}))
    rec.begin("voxgate_upstream_lost", "gone")
    driver = ReplayDriver(rec, retry_response=False)
    driver.on_text(J({"type": "session.created", "session": MANUAL_SESSION}))
    error = {
        "type": "error",
        "error": {"code": "unknown_parameter", "message": "no", "event_id": CONFIG_EVENT_ID},
    }
    creates = driver.on_text(J(error))
    assert [orjson.loads(t)["item"]["id"] for t in creates] == ["item_a"]
    assert driver.fatal is None
    item_error = {
        "type": "error",
        "error": {"code": "invalid_value", "message": "no", "event_id": "event_vgreplay_0"},
    }
    assert driver.on_text(J(item_error)) == []
    assert driver.done
    assert driver.stats.state_restored is False
    assert driver.stats.notes == [
        f"unknown_parameter:{CONFIG_EVENT_ID}",
        "invalid_value:event_vgreplay_0",
    ]


def test_replay_driver_ignores_non_json_frames() -> None:
    rec = recovery()
    driver = ReplayDriver(rec, retry_response=False)
    assert driver.on_text("nope") == []
    assert driver.on_text("[1]") == []
    assert not driver.done


# ---------------------------------------------------------------------------- known bugs


def test_vad_turn_item_does_not_ack_a_pending_user_item_create() -> None:
    rec = recovery(VAD_SESSION)
    create = J({"type": "conversation.item.create", "item": user_text(None, "typed")})
    rec.sent_control("conversation.item.create", create, 0.0)
    server(rec, {"type": "input_audio_buffer.committed", "item_id": "item_U"})
    server(rec, added(user_audio("item_U")))
    rec.begin("voxgate_upstream_lost", "gone")
    tail, _ = replay_to_done(rec, session=VAD_SESSION)
    assert tail == [create]


def test_event_resent_after_a_second_reconnect_names_the_new_upstreams_id() -> None:
    rec = recovery()
    server(rec, added({**user_text("item_a", "hello"), "status": "completed"}))
    rec.begin("voxgate_upstream_lost", "gone")
    replay_to_done(rec, new_ids={"item_a": "item_2"})
    delete = J({"type": "conversation.item.delete", "item_id": "item_a"})
    rec.sent_control("conversation.item.delete", delete, 0.0)  # sent as item_2, no ack yet
    rec.begin("voxgate_upstream_lost", "gone")
    tail, _ = replay_to_done(rec)  # the third upstream keeps the client's id item_a
    assert [orjson.loads(t) for t in tail] == [
        {"type": "conversation.item.delete", "item_id": "item_a"}
    ]


def test_cut_between_committed_and_item_added_still_replays_the_user_turn() -> None:
    rec = recovery(VAD_SESSION)
    server(rec, {"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "u"})
    turn = append(rec, b"\x01" * FRAME)
    server(rec, {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 100, "item_id": "u"})
    server(rec, {"type": "input_audio_buffer.committed", "item_id": "u"})
    rec.begin("voxgate_upstream_lost", "gone")
    replayed = [event for _, event, _ in rec.mirror.item_events()]
    assert replayed == [
        {
            "type": "conversation.item.create",
            "item": {
                "id": "u",
                "type": "message",
                "role": "user",
                "content": [{"type": "input_audio", "audio": turn}],
            },
        }
    ]
