"""Session snapshots (voxgate.session.snapshot), synchronously: take from a live session's parts,
encode, decode, restore into a fresh recovery, and rebuild a fresh upstream from it through the
ordinary ReplayDriver. No sockets, no clock."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from voxgate.session.machine import Phase, SessionMachine
from voxgate.session.mirror import Mirror
from voxgate.session.recovery import Recovery
from voxgate.session.replay import ReplayLog
from voxgate.session.replay_driver import ReplayDriver
from voxgate.session.snapshot import (
    SessionMeta,
    SessionSnapshot,
    SnapshotError,
    decode,
    encode,
    restore,
    take,
    written_after,
)

SESSION: dict[str, Any] = {
    "type": "realtime",
    "object": "realtime.session",
    "id": "sess_1",
    "instructions": "Coach the trader.",
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "turn_detection": {"type": "server_vad"},
        }
    },
}
META = SessionMeta(
    session_id="vg_1",
    subject="u-1",
    key_id="k1",
    grant_kind="client_key",
    model="gpt-realtime",
    intent=None,
    started_at=1000.0,
    max_session_s=3600.0,
)
DELTA = '{"type":"response.output_audio.delta","event_id":"e%d","delta":"AAAA"}'


def J(event: dict[str, Any]) -> str:
    return orjson.dumps(event).decode()


def server(rec: Recovery, event: dict[str, Any]) -> None:
    rec.on_server(str(event["type"]), J(event), 0.0)


def message(item_id: str, role: str, text: str, status: str = "completed") -> dict[str, Any]:
    kind = "input_text" if role == "user" else "output_text"
    return {
        "id": item_id,
        "type": "message",
        "role": role,
        "status": status,
        "content": [{"type": kind, "text": text}],
    }


def conversation() -> Recovery:
    rec = Recovery(Mirror())
    server(rec, {"type": "session.created", "session": SESSION})
    server(rec, {"type": "conversation.item.added", "item": message("u1", "user", "Hi")})
    server(
        rec,
        {
            "type": "conversation.item.added",
            "item": message("a1", "assistant", "Hello."),
            "previous_item_id": "u1",
        },
    )
    return rec


def snapshot_of(
    rec: Recovery, log: ReplayLog, *, final: bool = False, **kw: Any
) -> SessionSnapshot:
    args: dict[str, Any] = {
        "node": "node-a",
        "recovery": rec,
        "replay": log,
        "client_audio_bytes": rec.mirror.stream_bytes,
        "now": 1010.0,
        "final": final,
        "replay_bytes": 64 * 1024,
        "max_bytes": 1024 * 1024,
    }
    args.update(kw)
    return take(META, **args)


def round_trip(snap: SessionSnapshot) -> SessionSnapshot:
    enc = encode(snap, None)
    return decode(enc.head, enc.put)


def test_round_trip_keeps_config_items_position_and_tail() -> None:
    rec = conversation()
    rec.mirror.on_client_audio(b"\x01\x00" * 48_000)  # 2 s of audio, nobody speaking
    log = ReplayLog(1 << 20)
    for n in range(3):
        log.append(J({"type": "response.output_audio_transcript.delta", "delta": f"w{n}"}))
    log.ack(1)
    snap = round_trip(snapshot_of(rec, log))
    assert snap.meta == META
    assert (snap.node, snap.taken_at, snap.elapsed_s) == ("node-a", 1010.0, 10.0)
    assert snap.config is not None
    assert orjson.loads(snap.config)["instructions"] == "Coach the trader."
    assert [i for i, _ in snap.items] == ["u1", "a1"]
    # idle audio is trimmed to the last second: the rebuilt session continues from there
    assert snap.stream_bytes == rec.mirror.pending_start == 96_000 - 48_000
    assert snap.input_audio_bytes == snap.stream_bytes
    assert (snap.acked, snap.last_seq) == (1, 3)
    assert [seq for seq, _ in snap.frames] == [2, 3]
    assert snap.missed(2) == [log.frame(3)]


def test_restore_then_replay_builds_the_same_conversation_on_a_fresh_upstream() -> None:
    rec = conversation()
    snap = round_trip(snapshot_of(rec, ReplayLog(1 << 20)))
    fresh = Recovery(Mirror())
    restore(snap, fresh)
    assert fresh.mirror.session == rec.mirror.session
    assert fresh.mirror.items == rec.mirror.items
    assert fresh.mirror.stream_bytes == snap.stream_bytes
    # the machine takes it from there exactly as after a lost upstream
    machine = SessionMachine(
        embedded_session=None,
        extensions=True,
        prebuffer_limit_bytes=1 << 20,
        coalesce_window_s=1.0,
        recovery=fresh,
    )
    outcome = machine.rebuild("node_lost")
    assert machine.phase is Phase.RECONNECTING
    assert [type(a).__name__ for a in outcome] == ["SendClient", "StartReconnect"]  # type: ignore[union-attr]
    driver = machine.replay(retry_response=False)
    assert isinstance(driver, ReplayDriver)
    sent = driver.on_text(J({"type": "session.created", "session": {"id": "sess_2"}}))
    assert orjson.loads(sent[0])["session"]["instructions"] == "Coach the trader."
    items = driver.on_text(J({"type": "session.updated", "session": SESSION}))
    assert [orjson.loads(t)["item"]["id"] for t in items] == ["u1", "a1"]


def test_a_running_response_is_ended_for_the_client_and_asked_for_again() -> None:
    rec = conversation()
    body = {"object": "realtime.response", "id": "resp_1", "status": "in_progress", "output": []}
    server(rec, {"type": "response.created", "response": body})
    server(
        rec,
        {"type": "conversation.item.added", "item": message("a2", "assistant", "", "in_progress")},
    )
    snap = round_trip(snapshot_of(rec, ReplayLog(1 << 20)))
    assert len(snap.running) == 1
    fresh = Recovery(Mirror())
    restore(snap, fresh)
    texts, retry = fresh.begin("voxgate_node_lost", "moved")
    assert retry  # a VAD turn whose answer produced nothing complete is asked for again
    ended = orjson.loads(texts[0])
    assert (ended["type"], ended["response"]["id"], ended["response"]["status"]) == (
        "response.done",
        "resp_1",
        "failed",
    )
    assert [i["id"] for i in fresh.mirror.items] == ["u1", "a1"]  # the cut answer is gone


def test_periodic_tail_has_no_output_audio_and_a_final_one_keeps_it() -> None:
    rec = conversation()
    log = ReplayLog(1 << 20)
    for n in range(4):
        log.append(DELTA % n)
        log.append(J({"type": "response.output_audio_transcript.delta", "n": n}))
    periodic = round_trip(snapshot_of(rec, log))
    assert [seq for seq, _ in periodic.frames] == [2, 4, 6, 8]
    final = round_trip(snapshot_of(rec, log, final=True))
    assert [seq for seq, _ in final.frames] == list(range(1, 9))
    assert final.final


def test_tail_is_bounded_newest_kept() -> None:
    rec = conversation()
    log = ReplayLog(1 << 20)
    for n in range(100):
        log.append(J({"type": "response.output_audio_transcript.delta", "delta": "x" * 90, "n": n}))
    size = len(log.frame(100))  # the newest ten are all this long
    snap = snapshot_of(rec, log, replay_bytes=size * 10)
    assert [seq for seq, _ in snap.frames] == list(range(91, 101))


def test_untranscribed_turn_audio_is_kept_until_its_transcript_arrives() -> None:
    rec = conversation()
    rec.mirror.commit_until(0, None)
    rec.mirror.on_client_audio(b"\x02\x00" * 2400)
    rec.mirror.speech_started()
    rec.mirror.commit_until(rec.mirror.stream_bytes, "u2")
    snap = round_trip(snapshot_of(rec, ReplayLog(1 << 20)))
    assert snap.turn_audio == {"u2": b"\x02\x00" * 2400}
    fresh = Recovery(Mirror())
    restore(snap, fresh)
    events = fresh.mirror.item_events()
    assert events[-1][1]["item"]["content"][0]["type"] == "input_audio"  # re-sent as audio
    server(
        rec,
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "u2",
            "transcript": "Buy?",
        },
    )
    assert round_trip(snapshot_of(rec, ReplayLog(1 << 20))).turn_audio == {}


def test_items_over_the_bound_lose_the_oldest_first() -> None:
    rec = conversation()
    for n in range(20):
        server(
            rec, {"type": "conversation.item.added", "item": message(f"m{n}", "user", "y" * 400)}
        )
    snap = snapshot_of(rec, ReplayLog(1 << 20), max_bytes=4000)
    assert sum(len(t) for _, t in snap.items) <= 4000
    assert snap.items[-1][0] == "m19"
    assert "u1" not in dict(snap.items)


def test_encode_puts_only_changed_items_and_drops_removed_ones() -> None:
    rec = conversation()
    first = snapshot_of(rec, ReplayLog(1 << 20))
    enc = encode(first, None)
    assert sorted(enc.put) == ["a1", "u1"]
    held = written_after(first)
    server(rec, {"type": "conversation.item.added", "item": message("u2", "user", "More?")})
    second = snapshot_of(rec, ReplayLog(1 << 20))
    assert list(encode(second, held).put) == ["u2"]
    server(rec, {"type": "conversation.item.deleted", "item_id": "u1"})
    third = snapshot_of(rec, ReplayLog(1 << 20))
    again = encode(third, written_after(second))
    assert (again.put, again.drop) == ({}, ["u1"])
    # decoding with the store's merged items gives the current conversation
    store_items = {**enc.put, **encode(second, held).put}
    for gone in again.drop:
        store_items.pop(gone)
    assert [i for i, _ in decode(again.head, store_items).items] == ["a1", "u2"]


def test_large_heads_are_compressed() -> None:
    rec = conversation()
    log = ReplayLog(1 << 20)
    for _ in range(50):
        log.append(J({"type": "response.output_audio_transcript.delta", "delta": "word " * 20}))
    enc = encode(snapshot_of(rec, log), None)
    assert enc.head[:1] == b"z"
    assert len(decode(enc.head, enc.put).frames) == 50


@pytest.mark.parametrize(
    "head",
    [b"", b"not json", b'{"v": 99}', b'{"v": 1}', b"z" + b"garbage", orjson.dumps([1, 2])],
)
def test_anything_else_is_a_snapshot_error(head: bytes) -> None:
    with pytest.raises(SnapshotError):
        decode(head, {})


def test_replay_log_continues_another_nodes_numbering() -> None:
    log = ReplayLog(1 << 20)
    log.continue_from(41)
    assert (log.first_seq, log.last_seq, log.acked) == (42, 41, 41)
    assert log.can_resume_from(41)
    log.append("a")
    assert log.last_seq == 42
    assert log.frame(42) == "a"
    assert log.newest(10) == [(42, "a")]
    with pytest.raises(ValueError, match="holds frames"):
        log.continue_from(50)


def test_client_audio_after_the_position_is_left_to_the_client() -> None:
    rec = conversation()
    rec.mirror.speech_started()
    rec.mirror.on_client_audio(base64.b64decode("AQA=") * 24_000)  # speaking: all kept
    snap = snapshot_of(rec, ReplayLog(1 << 20), client_audio_bytes=48_000 + 1000)
    assert snap.stream_bytes == 0
    assert snap.input_audio_bytes == 1000  # what the client sent before the pending audio
    assert snap.speaking
