"""The sans-I/O half of media calls: the playback ledger and the call core (no event loop).

What each session event means for a caller whose audio voxgate plays itself, and what the
caller's own events do (realtime-protocol.md §6.4, §9: OpenAI's WebRTC/SIP behaviour).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from voxgate.transports.media.core import (
    CUT_EVENT_PREFIX,
    CallCore,
    Forward,
    Play,
    StopPlayback,
    ToSession,
    fit_event,
    merge_config,
)
from voxgate.transports.media.ledger import Cut, PlaybackLedger


def ev(**fields: Any) -> str:
    return orjson.dumps(fields).decode()


def delta(rid: str, iid: str, n_bytes: int) -> str:
    audio = base64.b64encode(b"\x01\x00" * (n_bytes // 2)).decode()
    return ev(type="response.output_audio.delta", response_id=rid, item_id=iid, delta=audio)


def types(actions: tuple[Any, ...]) -> list[str]:
    out = []
    for a in actions:
        if isinstance(a, Forward | ToSession):
            out.append(f"{type(a).__name__}:{json.loads(a.text)['type']}")
        else:
            out.append(type(a).__name__)
    return out


# ------------------------------------------------------------------ ledger


def test_cut_is_at_what_was_heard_of_the_first_unfinished_item() -> None:
    ledger = PlaybackLedger()
    ledger.queued("r1", "a", 1000)
    ledger.queued("r1", "b", 500)
    ledger.heard("a", 1000)
    ledger.heard("b", 120.7)
    assert ledger.playing
    assert ledger.cut() == Cut("b", "r1", 120)
    assert not ledger.playing
    assert ledger.is_cleared("r1")


def test_nothing_to_cut_when_everything_was_heard() -> None:
    ledger = PlaybackLedger()
    ledger.queued("r1", "a", 300)
    ledger.heard("a", 300)
    assert ledger.cut() is None
    assert not ledger.is_cleared("r1")


def test_heard_never_exceeds_queued_and_marks_only_move_forward() -> None:
    ledger = PlaybackLedger()
    ledger.queued("r1", "a", 200)
    ledger.heard("a", 500)
    assert ledger.heard_ms("a") == 200
    ledger.queued("r1", "a", 200)
    ledger.heard_until("a", 300)
    ledger.heard_until("a", 250)  # an older mark arriving late changes nothing
    assert ledger.heard_ms("a") == 300


def test_stopped_once_per_response_after_done_and_drained() -> None:
    ledger = PlaybackLedger()
    assert ledger.queued("r1", "a", 100) is True  # first audio: started
    assert ledger.queued("r1", "a", 100) is False
    assert ledger.response_done("r1") == []  # still playing
    assert ledger.drained(settle=True) == ["r1"]
    assert ledger.drained(settle=True) == []


def test_items_are_bounded() -> None:
    ledger = PlaybackLedger(max_items=3)
    for i in range(10):
        ledger.queued(f"r{i}", f"i{i}", 10)
    assert ledger.heard_ms("i0") == 0
    ledger.heard("i9", 5)
    assert ledger.heard_ms("i9") == 5


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(0, 2000), st.floats(0, 2000)),
        max_size=30,
    )
)
def test_a_cut_never_lies_about_what_was_queued(ops: list[tuple[str, float, float]]) -> None:
    ledger = PlaybackLedger()
    queued: dict[str, float] = {}
    for item, q, h in ops:
        ledger.queued("r", item, q)
        queued[item] = queued.get(item, 0) + q
        ledger.heard(item, h)
    cut = ledger.cut()
    if cut is not None:
        assert 0 <= cut.audio_end_ms <= queued[cut.item_id]
    assert not ledger.playing


# ------------------------------------------------------------------ core: session -> caller


def test_audio_deltas_become_playback_not_events() -> None:
    core = CallCore()
    first = core.from_session(delta("r1", "a", 4800))
    assert types(first) == ["Forward:output_audio_buffer.started", "Play"]
    play = first[1]
    assert isinstance(play, Play)
    assert (play.response_id, play.item_id, len(play.audio)) == ("r1", "a", 4800)
    assert types(core.from_session(delta("r1", "a", 4800))) == ["Play"]
    assert core.ledger.playing


def test_speech_over_the_answer_cuts_clears_and_truncates() -> None:
    core = CallCore()
    core.from_session(delta("r1", "a", 48 * 1000))  # 1 s of PCM16 24 kHz
    core.heard("a", 420.0)
    actions = core.from_session(ev(type="input_audio_buffer.speech_started", item_id="u2"))
    assert types(actions) == [
        "Forward:input_audio_buffer.speech_started",
        "StopPlayback",
        "Forward:output_audio_buffer.cleared",
        "ToSession:conversation.item.truncate",
    ]
    stop, cleared, truncate = actions[1], actions[2], actions[3]
    assert isinstance(stop, StopPlayback)
    assert json.loads(cleared.text)["response_id"] == "r1"  # type: ignore[union-attr]
    sent = json.loads(truncate.text)  # type: ignore[union-attr]
    assert (sent["item_id"], sent["content_index"], sent["audio_end_ms"]) == ("a", 0, 420)
    assert sent["event_id"].startswith(CUT_EVENT_PREFIX)
    # Late audio of the cut response is discarded; its done never says "stopped".
    assert core.from_session(delta("r1", "a", 4800)) == ()
    done = core.from_session(ev(type="response.done", response={"id": "r1", "status": "cancelled"}))
    assert types(done) == ["Forward:response.done"]


def test_speech_with_nothing_playing_is_only_forwarded() -> None:
    core = CallCore()
    actions = core.from_session(ev(type="input_audio_buffer.speech_started"))
    assert types(actions) == ["Forward:input_audio_buffer.speech_started"]


def test_interrupt_response_false_lets_the_answer_play_on() -> None:
    core = CallCore()
    session = {
        "audio": {"input": {"turn_detection": {"type": "server_vad", "interrupt_response": False}}}
    }
    core.from_session(ev(type="session.updated", session=session))
    core.from_session(delta("r1", "a", 4800))
    actions = core.from_session(ev(type="input_audio_buffer.speech_started"))
    assert types(actions) == ["Forward:input_audio_buffer.speech_started"]
    assert core.ledger.playing


def test_output_format_from_the_session_sizes_the_audio() -> None:
    core = CallCore()
    session = {
        "audio": {
            "output": {"format": {"type": "audio/pcmu"}},
            "input": {"format": {"type": "audio/pcmu"}},
        }
    }
    core.from_session(ev(type="session.created", session=session))
    assert core.input_format.name == "audio/pcmu"
    core.from_session(delta("r1", "a", 800))  # 100 ms of μ-law
    core.heard("a", 1000)
    assert core.ledger.heard_ms("a") == 100


def test_done_after_drain_and_drain_after_done_both_stop_once() -> None:
    core = CallCore()
    core.from_session(delta("r1", "a", 480))
    assert types(core.drained()) == []  # not done yet
    done = core.from_session(ev(type="response.done", response={"id": "r1"}))
    assert types(done) == ["Forward:response.done", "Forward:output_audio_buffer.stopped"]
    core.from_session(delta("r2", "b", 480))
    assert types(core.from_session(ev(type="response.done", response={"id": "r2"}))) == [
        "Forward:response.done"
    ]
    assert types(core.drained()) == ["Forward:output_audio_buffer.stopped"]


def test_errors_answering_our_own_truncate_are_not_forwarded() -> None:
    core = CallCore()
    own = ev(
        type="error",
        error={"code": "item_truncate_invalid_item_id", "event_id": CUT_EVENT_PREFIX + "x1"},
    )
    assert core.from_session(own) == ()
    assert core.own_errors[0]["code"] == "item_truncate_invalid_item_id"
    theirs = ev(type="error", error={"code": "invalid_value", "event_id": "event_client"})
    assert types(core.from_session(theirs)) == ["Forward:error"]


def test_audio_done_completes_the_item_unless_it_was_cut() -> None:
    core = CallCore()
    core.from_session(delta("r1", "a", 480))
    done = ev(type="response.output_audio.done", response_id="r1", item_id="a")
    assert types(core.from_session(done)) == ["Forward:response.output_audio.done", "AudioDone"]
    core.from_session(delta("r2", "b", 4800))
    core.from_caller(ev(type="output_audio_buffer.clear"))
    done_b = ev(type="response.output_audio.done", response_id="r2", item_id="b")
    assert types(core.from_session(done_b)) == ["Forward:response.output_audio.done"]


def test_other_events_pass_unchanged() -> None:
    text = '{"type":"response.output_audio_transcript.delta","delta":"Hi","item_id":"a"}'
    assert CallCore().from_session(text) == (Forward(text),)


# ------------------------------------------------------------------ core: caller -> session


def test_output_audio_buffer_clear_cuts_playback() -> None:
    core = CallCore()
    core.from_session(delta("r1", "a", 4800))
    core.heard("a", 40)
    actions = core.from_caller(ev(type="output_audio_buffer.clear"))
    assert types(actions) == [
        "StopPlayback",
        "Forward:output_audio_buffer.cleared",
        "ToSession:conversation.item.truncate",
    ]
    assert core.from_caller(ev(type="output_audio_buffer.clear")) == ()


def test_caller_events_go_to_the_session_unchanged() -> None:
    text = '{"type":"response.create"}'
    assert CallCore().from_caller(text) == (ToSession(text),)
    assert CallCore().from_caller("not json") == (ToSession("not json"),)


# ------------------------------------------------------------------ helpers


def test_fit_event_drops_item_audio_to_fit_a_message() -> None:
    big = ev(
        type="conversation.item.retrieved",
        item={
            "id": "u1",
            "content": [{"type": "input_audio", "audio": "A" * 300_000, "transcript": "hi"}],
        },
    )
    fitted = fit_event(big, 262_144)
    assert fitted is not None
    part = json.loads(fitted)["item"]["content"][0]
    assert part == {"type": "input_audio", "audio": None, "transcript": "hi"}
    assert fit_event(ev(type="x", blob="B" * 300_000), 262_144) is None


def test_merge_config_merges_objects_and_replaces_the_rest() -> None:
    base = {"type": "realtime", "audio": {"output": {"voice": "ash"}}, "tools": [1]}
    over = {"audio": {"output": {"format": {"type": "audio/pcmu"}}}, "tools": []}
    assert merge_config(base, over) == {
        "type": "realtime",
        "audio": {"output": {"voice": "ash", "format": {"type": "audio/pcmu"}}},
        "tools": [],
    }
