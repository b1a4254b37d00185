"""SessionMachine with recovery on (issue #6), driven synchronously: an upstream loss becomes
the exact actions that end what was running for the client and start a reconnect; frames the
client sends meanwhile are held and flushed after the rebuild. No sockets, no loop."""

from __future__ import annotations

from typing import Any

import orjson

from voxgate.session.actions import (
    FORWARD,
    NOTHING,
    EndSession,
    Outcome,
    SendClient,
    SendUpstream,
    StartFlush,
    StartReconnect,
)
from voxgate.session.machine import Phase, SessionMachine
from voxgate.session.mirror import Mirror
from voxgate.session.recovery import Recovery
from voxgate.session.replay_driver import ReplayDriver

SESSION: dict[str, Any] = {
    "type": "realtime",
    "id": "sess_1",
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "turn_detection": {"type": "server_vad"},
        }
    },
}
CREATED = orjson.dumps({"type": "session.created", "event_id": "event_c", "session": SESSION})
CREATED_TEXT = CREATED.decode()


def J(event: dict[str, Any]) -> str:
    return orjson.dumps(event).decode()


def append(n: int) -> str:
    return '{"type":"input_audio_buffer.append","audio":"' + f"{n:04d}" + "A" * 636 + '"}'


def machine(*, extensions: bool = False, embedded: dict[str, Any] | None = None) -> SessionMachine:
    return SessionMachine(
        embedded_session=embedded,
        extensions=extensions,
        prebuffer_limit_bytes=64 * 1024,
        coalesce_window_s=1.0,
        recovery=Recovery(Mirror()),
    )


def flush(m: SessionMachine) -> list[str]:
    out = []
    while (frame := m.pop_buffered(0.0)) is not None:
        out.append(frame)
    m.flush_done()
    return out


def ready(**kw: Any) -> SessionMachine:
    m = machine(**kw)
    assert m.upstream_text(CREATED_TEXT, 0.0) == [SendClient(CREATED_TEXT), StartFlush()]
    assert flush(m) == []
    assert m.phase is Phase.READY
    return m


def rec(m: SessionMachine) -> Recovery:
    assert m.recovery is not None
    return m.recovery


def sent_to_client(outcome: Outcome) -> list[dict[str, Any]]:
    assert isinstance(outcome, tuple | list)
    return [orjson.loads(a.text) for a in outcome if isinstance(a, SendClient)]


def run_replay(driver: ReplayDriver) -> list[str]:
    sent = driver.on_text(J({"type": "session.created", "session": SESSION}))
    sent += driver.on_text(J({"type": "session.updated", "session": SESSION}))
    assert driver.done
    return sent


def running_vad_response(m: SessionMachine) -> None:
    body = {"object": "realtime.response", "id": "resp_1", "status": "in_progress", "output": []}
    assert m.upstream_text(J({"type": "response.created", "response": body}), 0.0) is FORWARD


def error(code: str, message: str) -> str:
    return J(
        {
            "type": "error",
            "event_id": "event_e",
            "error": {
                "type": "invalid_request_error",
                "code": code,
                "message": message,
                "param": None,
                "event_id": None,
            },
        }
    )


# ---------------------------------------------------------------------------- loss when ready


def test_loss_while_ready_ends_the_running_response_then_starts_a_reconnect() -> None:
    m = ready()
    running_vad_response(m)
    actions = m.upstream_closed(1006, "")
    assert isinstance(actions, list)
    assert [type(a) for a in actions] == [SendClient, StartReconnect]
    assert actions[-1] == StartReconnect("lost:1006", retry_response=True)
    (done,) = sent_to_client(actions)
    assert done.pop("event_id").startswith("event_")
    assert done == {
        "type": "response.done",
        "response": {
            "object": "realtime.response",
            "id": "resp_1",
            "status": "failed",
            "status_details": {
                "type": "failed",
                "error": {
                    "type": "server_error",
                    "code": "voxgate_upstream_lost",
                    "message": "The connection to the upstream was lost while this response "
                    "was running; voxgate is reconnecting.",
                },
            },
            "output": [],
            "usage": None,
        },
    }
    assert m.phase is Phase.RECONNECTING


def test_loss_tells_an_opted_in_client_it_is_reconnecting() -> None:
    m = ready(extensions=True)
    running_vad_response(m)
    actions = m.upstream_closed(1006, "")
    assert isinstance(actions, list)
    assert [type(a) for a in actions] == [SendClient, SendClient, StartReconnect]
    done, reconnecting = sent_to_client(actions)
    assert done["type"] == "response.done"
    assert reconnecting["event_id"].startswith("event_")
    assert {k: v for k, v in reconnecting.items() if k != "event_id"} == {
        "type": "voxgate.upstream.reconnecting",
        "reason": "lost:1006",
    }
    assert actions[-1] == StartReconnect("lost:1006", retry_response=True)


def test_loss_without_a_close_frame_is_a_reconnect() -> None:
    m = ready()
    assert m.upstream_closed(None, "") == [StartReconnect("lost:network")]


def test_frames_sent_while_reconnecting_are_held_then_flushed_and_recorded() -> None:
    m = ready()
    assert m.upstream_closed(1011, "") == [StartReconnect("lost:1011")]
    held = [
        append(1),
        '{"audio": "AAAA", "type": "input_audio_buffer.append"}',
        J({"type": "response.create", "event_id": "c1"}),
    ]
    for frame in held:
        assert m.client_text(frame, 0.0) == NOTHING
    before = rec(m).mirror.stream_bytes
    driver = m.replay(False)
    assert [orjson.loads(t)["type"] for t in run_replay(driver)] == ["session.update"]
    assert m.reconnected(driver.stats, 12.4) == [StartFlush()]
    assert m.phase is Phase.FLUSHING
    assert m.client_text(append(2), 0.0) == NOTHING  # still held while flushing
    assert flush(m) == [*held, append(2)]
    assert m.phase is Phase.READY
    assert rec(m).mirror.stream_bytes == before + 480 + 3 + 480
    assert not rec(m).is_quiet(0.0)  # the response.create waits for its ack


def test_reconnected_tells_an_opted_in_client_what_was_restored() -> None:
    m = ready(extensions=True)
    m.client_text(append(1), 0.0)
    m.upstream_closed(1006, "")
    driver = m.replay(False)
    sent = run_replay(driver)
    assert [orjson.loads(t)["type"] for t in sent] == [
        "session.update",
        "input_audio_buffer.append",
    ]
    actions = m.reconnected(driver.stats, 12.4)
    assert isinstance(actions, list)
    assert actions[-1] == StartFlush()
    (event,) = sent_to_client(actions)
    assert {k: v for k, v in event.items() if k != "event_id"} == {
        "type": "voxgate.upstream.reconnected",
        "state_restored": True,
        "replayed_items": 0,
        "resent_events": 0,
        "audio_resent_ms": 10,
        "gap_ms": 12,
    }


def test_truncate_of_a_cut_answer_sent_while_reconnecting_is_answered_locally() -> None:
    m = ready()
    running_vad_response(m)
    item = {"id": "item_r", "type": "message", "role": "assistant", "status": "in_progress"}
    m.upstream_text(J({"type": "conversation.item.added", "item": item}), 0.0)
    m.upstream_closed(1006, "")
    truncate = J({"type": "conversation.item.truncate", "item_id": "item_r", "audio_end_ms": 900})
    m.client_text(truncate, 0.0)
    m.client_text(append(1), 0.0)
    driver = m.replay(True)
    assert [orjson.loads(t)["type"] for t in run_replay(driver)] == [
        "session.update",
        "response.create",
    ]
    m.reconnected(driver.stats, 1.0)
    assert m.pop_buffered(0.0) == append(1)
    (answer,) = [orjson.loads(t) for t in m.flush_replies]
    assert answer["type"] == "conversation.item.truncated"
    assert answer["item_id"] == "item_r"
    assert answer["audio_end_ms"] == 900


def test_after_a_replay_with_a_changed_id_both_directions_are_mapped() -> None:
    m = ready()
    item = {
        "id": "item_a",
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_text", "text": "hi"}],
    }
    assert m.upstream_text(J({"type": "conversation.item.added", "item": item}), 0.0) is FORWARD
    m.upstream_closed(1006, "")
    driver = m.replay(False)
    driver.on_text(J({"type": "session.created", "session": SESSION}))
    driver.on_text(J({"type": "session.updated", "session": SESSION}))
    driver.on_text(J({"type": "conversation.item.added", "item": {**item, "id": "item_X"}}))
    assert driver.done
    m.reconnected(driver.stats, 1.0)
    flush(m)
    retrieve = J({"type": "conversation.item.retrieve", "item_id": "item_a"})
    assert m.client_text(retrieve, 0.0) == (
        SendUpstream(J({"type": "conversation.item.retrieve", "item_id": "item_X"})),
    )
    retrieved = {"type": "conversation.item.retrieved", "item": {**item, "id": "item_X"}}
    assert m.upstream_text(J(retrieved), 0.0) == (
        SendClient(J({"type": "conversation.item.retrieved", "item": item})),
    )
    done = {"type": "conversation.item.done", "item": {**item, "id": "item_X"}}
    assert m.upstream_text(J(done), 0.0) == NOTHING  # the ack of the replayed item


# ---------------------------------------------------------------------------- the end


def test_bad_request_and_auth_closes_end_the_session() -> None:
    m = ready()
    reason = "invalid_request_error.invalid_model"
    assert m.upstream_closed(4000, reason) == (EndSession(4000, reason, None, "upstream_fatal"),)
    assert m.phase is Phase.CLOSED
    # 3000 from the upstream: it refused voxgate's own key, not the client's (issue 12.9)
    m = ready()
    (end,) = m.upstream_closed(3000, "invalid_request_error.invalid_api_key")  # type: ignore[misc]
    assert isinstance(end, EndSession)
    assert (end.close_code, end.cause) == (1011, "upstream_auth_failed")
    assert m.phase is Phase.CLOSED


def test_normal_close_chosen_by_the_upstream_ends_the_session() -> None:
    m = ready()
    (end,) = m.upstream_closed(1000, "")  # type: ignore[misc]
    assert isinstance(end, EndSession)
    assert (end.close_code, end.cause) == (1001, "upstream_closed")


def test_fatal_upstream_error_then_a_retryable_close_never_reconnects() -> None:
    m = ready()
    outcome = m.upstream_text(error("insufficient_quota", "Quota exceeded for key sk-abc"), 0.0)
    (forwarded,) = sent_to_client(outcome)
    assert forwarded["error"]["message"] == "Quota exceeded for key [redacted]"
    assert m.upstream_closed(1006, "") == (
        EndSession(4000, "invalid_request_error.insufficient_quota", None, "upstream_fatal"),
    )
    assert m.phase is Phase.CLOSED
    assert m.upstream_closed(1006, "") == NOTHING


def test_upstream_refusing_the_gateway_key_ends_the_session_as_the_gateways_fault() -> None:
    m = ready()
    assert m.upstream_text(error("invalid_api_key", "Incorrect API key provided."), 0.0) == ()
    (end,) = m.upstream_closed(3000, "invalid_request_error.invalid_api_key")  # type: ignore[misc]
    assert isinstance(end, EndSession)
    assert (end.close_code, end.reason, end.cause) == (
        1011,
        "server_error.voxgate_upstream_auth_failed",
        "upstream_auth_failed",
    )


def test_upstream_session_expired_is_swallowed_and_its_close_becomes_a_reconnect() -> None:
    for close in (1001, 1000):
        m = ready()
        expired = error("session_expired", "Your session hit the maximum duration of 60 minutes.")
        assert m.upstream_text(expired, 0.0) == NOTHING
        assert m.upstream_closed(close, "") == [StartReconnect("session_expired")]
        assert m.phase is Phase.RECONNECTING


# ---------------------------------------------------------------------------- before ready


def test_loss_before_session_created_retries_with_the_prebuffer_intact() -> None:
    m = machine()
    frames = [append(1), append(2)]
    for frame in frames:
        assert m.client_text(frame, 0.0) == NOTHING
    assert m.upstream_closed(1006, "") == (StartReconnect("lost:1006", before_ready=True),)
    assert m.phase is Phase.CONNECTING
    assert len(m.prebuffer) == 2
    assert m.upstream_text(CREATED_TEXT, 0.0) == [SendClient(CREATED_TEXT), StartFlush()]
    assert flush(m) == frames


def test_loss_while_configuring_retries_and_forgets_held_upstream_events() -> None:
    m = machine(embedded={"type": "realtime", "instructions": "Be brief."})
    m.client_text(append(1), 0.0)
    (update,) = m.upstream_text(CREATED_TEXT, 0.0)  # type: ignore[misc]
    assert isinstance(update, SendUpstream)
    assert m.upstream_text(J({"type": "rate_limits.updated", "rate_limits": []}), 0.0) == NOTHING
    assert m.phase is Phase.CONFIGURING
    assert m.upstream_closed(1012, "") == (StartReconnect("lost:1012", before_ready=True),)
    assert m.phase is Phase.CONNECTING
    assert len(m.prebuffer) == 1
    (again,) = m.upstream_text(CREATED_TEXT, 0.0)
    assert again == update  # the same config, with the same event id
    updated = J({"type": "session.updated", "event_id": "event_u", "session": SESSION})
    actions = m.upstream_text(updated, 0.0)
    assert isinstance(actions, list)
    assert [type(a) for a in actions] == [SendClient, StartFlush]  # no stale held events
    assert flush(m) == [append(1)]


# ---------------------------------------------------------------------------- recycle


def test_start_recycle_returns_nothing_unless_quiet() -> None:
    m = ready()
    m.client_text(J({"type": "session.update", "session": {"type": "realtime"}}), 0.0)
    assert m.start_recycle(0.0) == NOTHING  # waits for session.updated
    assert m.phase is Phase.READY
    m.upstream_text(J({"type": "session.updated", "session": SESSION}), 0.0)
    speech = {"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "u"}
    m.upstream_text(J(speech), 0.0)
    assert m.start_recycle(0.0) == NOTHING  # the user is speaking
    m.upstream_text(J({"type": "input_audio_buffer.committed", "item_id": "u"}), 0.0)
    running_vad_response(m)
    assert m.start_recycle(0.0) == NOTHING  # a response is running
    done = {"type": "response.done", "response": {"id": "resp_1", "status": "completed"}}
    m.upstream_text(J(done), 0.0)
    assert m.start_recycle(0.0) == [StartReconnect("recycle")]
    assert m.phase is Phase.RECONNECTING
    assert m.start_recycle(0.0) == NOTHING  # not READY any more


def test_start_recycle_tells_an_opted_in_client() -> None:
    m = ready(extensions=True)
    actions = m.start_recycle(0.0)
    assert isinstance(actions, list)
    assert actions[-1] == StartReconnect("recycle")
    assert [e["type"] for e in sent_to_client(actions)] == ["voxgate.upstream.reconnecting"]


# ---------------------------------------------------------------------------- giving up


def test_reconnect_failed_ends_the_session_and_tells_an_opted_in_client() -> None:
    m = ready(extensions=True)
    m.upstream_closed(1006, "")
    actions = m.reconnect_failed("timeout")
    assert isinstance(actions, list)
    lost, end = actions
    assert isinstance(lost, SendClient)
    event = orjson.loads(lost.text)
    assert (event["type"], event["reason"]) == ("voxgate.upstream.lost", "timeout")
    assert isinstance(end, EndSession)
    assert (end.close_code, end.reason, end.cause) == (
        1011,
        "server_error.voxgate_upstream_lost",
        "upstream_lost",
    )
    assert end.error_text is not None
    assert orjson.loads(end.error_text)["error"]["message"] == (
        "The connection to the upstream was lost and could not be restored (timeout)."
    )
    assert m.phase is Phase.CLOSED


def test_reconnect_refused_for_good_ends_the_session_with_the_upstream_code() -> None:
    m = ready()
    m.upstream_closed(1006, "")
    (end,) = m.reconnect_failed("You exceeded your quota", fatal_code="insufficient_quota")
    assert isinstance(end, EndSession)
    assert (end.close_code, end.reason, end.cause) == (
        1011,
        "server_error.insufficient_quota",
        "upstream_fatal",
    )
    m = ready()
    m.upstream_closed(1006, "")
    (end,) = m.reconnect_failed("Incorrect API key sk-abc1", fatal_code="invalid_api_key")
    assert isinstance(end, EndSession)
    assert (end.close_code, end.cause) == (1011, "upstream_auth_failed")
