"""SessionMachine driven synchronously: frames in, exact actions out. No sockets, no loop."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from voxgate.protocol.errors import InvalidState
from voxgate.session.actions import (
    FORWARD,
    NOTHING,
    EndSession,
    SendClient,
    SendUpstream,
    StartFlush,
)
from voxgate.session.machine import Phase, SessionMachine

CREATED = orjson.dumps(
    {
        "type": "session.created",
        "event_id": "event_c",
        "session": {"type": "realtime", "id": "sess_1"},
    }
).decode()


def append(i: int) -> str:
    return '{"type":"input_audio_buffer.append","audio":"' + f"{i:08d}" + "A" * 1272 + '"}'


def machine(**kw: object) -> SessionMachine:
    args: dict[str, object] = {
        "embedded_session": None,
        "extensions": False,
        "prebuffer_limit_bytes": 64 * 1024,
        "coalesce_window_s": 1.0,
    }
    args.update(kw)
    return SessionMachine(**args)  # type: ignore[arg-type]


def flush(m: SessionMachine) -> list[str]:
    out = []
    while (frame := m.pop_buffered()) is not None:
        out.append(frame)
    m.flush_done()
    return out


def errors_in(actions: object) -> list[dict[str, object]]:
    assert isinstance(actions, tuple | list)
    return [orjson.loads(a.text)["error"] for a in actions if isinstance(a, SendClient)]


def test_frames_before_ready_are_held_then_flushed_in_order() -> None:
    m = machine()
    frames = [append(i) for i in range(40)]
    for f in frames:
        assert m.client_text(f, 0.0) == NOTHING
    actions = m.upstream_text(CREATED, 0.0)
    assert actions == [SendClient(CREATED), StartFlush()]
    assert m.phase is Phase.FLUSHING
    # frames that arrive while flushing join the back of the same buffer
    late = append(99)
    assert m.client_text(late, 0.0) == NOTHING
    assert flush(m) == [*frames, late]
    assert m.phase is Phase.READY
    assert m.client_text(append(100), 0.0) is FORWARD


def test_embedded_config_is_applied_before_the_client_sees_session_created() -> None:
    m = machine(embedded_session={"type": "realtime", "instructions": "Be brief."})
    m.client_text(append(1), 0.0)
    actions = m.upstream_text(CREATED, 0.0)
    assert isinstance(actions, tuple)
    assert len(actions) == 1
    update = actions[0]
    assert isinstance(update, SendUpstream)
    sent = orjson.loads(update.text)
    assert sent["type"] == "session.update"
    assert sent["session"] == {"type": "realtime", "instructions": "Be brief."}
    assert m.phase is Phase.CONFIGURING
    updated = {
        "type": "session.updated",
        "event_id": "event_u",
        "session": {"type": "realtime", "id": "sess_1", "instructions": "Be brief."},
    }
    actions = m.upstream_text(orjson.dumps(updated).decode(), 0.0)
    assert isinstance(actions, list)
    first = actions[0]
    assert isinstance(first, SendClient)
    created = orjson.loads(first.text)
    assert created["type"] == "session.created"
    assert created["event_id"] == "event_c"
    assert created["session"]["instructions"] == "Be brief."
    assert actions[-1] == StartFlush()
    assert flush(m) == [append(1)]


def test_rejected_embedded_config_ends_the_session() -> None:
    m = machine(embedded_session={"type": "realtime"})
    update = m.upstream_text(CREATED, 0.0)
    assert isinstance(update, tuple)
    config_event_id = orjson.loads(update[0].text)["event_id"]  # type: ignore[union-attr]
    error = {
        "type": "error",
        "event_id": "event_e",
        "error": {
            "type": "invalid_request_error",
            "code": "unknown_parameter",
            "message": "no",
            "param": "session.x",
            "event_id": config_event_id,
        },
    }
    actions = m.upstream_text(orjson.dumps(error).decode(), 0.0)
    assert isinstance(actions, tuple)
    end = actions[0]
    assert isinstance(end, EndSession)
    assert end.reason == "server_error.voxgate_session_config_rejected"
    assert m.phase is Phase.CLOSED


def test_prebuffer_overflow_ends_the_session_with_a_stable_code() -> None:
    m = machine(prebuffer_limit_bytes=3000)
    assert m.client_text(append(1), 0.0) == NOTHING
    assert m.client_text(append(2), 0.0) == NOTHING
    actions = m.client_text(append(3), 0.0)
    assert isinstance(actions, tuple)
    end = actions[0]
    assert isinstance(end, EndSession)
    assert end.close_code == 1013
    assert end.error_text is not None
    assert orjson.loads(end.error_text)["error"]["code"] == "voxgate_prebuffer_overflow"


def test_ready_timeout_and_unreachable_have_stable_codes() -> None:
    for call, code in (
        (lambda m: m.ready_timeout(10), "voxgate_upstream_timeout"),
        (lambda m: m.upstream_unreachable("refused"), "voxgate_upstream_unreachable"),
    ):
        m = machine()
        actions = call(m)
        end = actions[0]
        assert isinstance(end, EndSession)
        assert end.close_code == 1013
        assert orjson.loads(end.error_text)["error"]["code"] == code  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("frame", "code", "param"),
    [
        ("{nope", "invalid_json", None),
        ("[]", "invalid_event", None),
        ('{"type":"bogus.event","event_id":"evt_7"}', "invalid_value", "type"),
        ('{"type":"voxgate.unknown"}', "invalid_value", "type"),
    ],
)
def test_client_mistakes_get_an_error_and_the_session_goes_on(
    frame: str, code: str, param: str | None
) -> None:
    m = machine()
    m.upstream_text(CREATED, 0.0)
    flush(m)
    errors = errors_in(m.client_text(frame, 0.0))
    assert [(e["code"], e["param"]) for e in errors] == [(code, param)]
    if code == "invalid_value":
        assert errors[0]["event_id"] == ("evt_7" if "evt_7" in frame else None)
    assert m.phase is Phase.READY
    assert m.client_text(append(1), 0.0) is FORWARD


def test_binary_frames_are_errors_unless_opted_in() -> None:
    stock = machine()
    assert [e["code"] for e in errors_in(stock.client_binary(b"\x00\x01", 0.0))] == [
        "invalid_event"
    ]
    opted = machine(extensions=True)
    opted.upstream_text(CREATED, 0.0)
    flush(opted)
    actions = opted.client_binary(b"\x00\x01", 0.0)
    assert actions == (SendUpstream('{"type":"input_audio_buffer.append","audio":"AAE="}'),)


def test_repeated_identical_errors_are_coalesced_with_a_count() -> None:
    m = machine()
    sent = [m.client_text("garbage", t * 0.01) for t in range(50)]
    delivered = [s for s in sent if s]
    assert len(delivered) == 1
    later = m.client_text("garbage", 1.5)
    (err,) = errors_in(later)
    assert "repeated 49 more times" in str(err["message"])
    assert m.errors.suppressed_total == 49


def test_upstream_error_quoting_a_key_is_redacted() -> None:
    m = machine(known_secrets=("sk-live-supersecret-1234",))
    error = {
        "type": "error",
        "event_id": "event_e",
        "error": {
            "type": "invalid_request_error",
            "code": "invalid_api_key",
            "message": "Incorrect API key provided: sk-live*****1234. Find your key at x.",
            "param": None,
            "event_id": None,
        },
    }
    # the upstream refused voxgate's own key (issue 12.9): never forwarded as "your key"
    assert errors_in(m.upstream_text(orjson.dumps(error).decode(), 0.0)) == []
    assert m.upstream_auth_failed
    (end,) = m.upstream_closed(3000, "invalid_request_error.invalid_api_key")
    assert isinstance(end, EndSession)
    assert (end.close_code, end.reason, end.cause) == (
        1011,
        "server_error.voxgate_upstream_auth_failed",
        "upstream_auth_failed",
    )
    assert end.error_text is not None
    assert "sk-live" not in end.error_text
    assert "voxgate_upstream_auth_failed" in end.error_text


def test_upstream_error_without_secrets_is_forwarded_unchanged() -> None:
    m = machine()
    m.upstream_text(CREATED, 0.0)
    flush(m)
    text = orjson.dumps(
        {
            "type": "error",
            "event_id": "e",
            "error": {
                "type": "invalid_request_error",
                "code": "response_cancel_not_active",
                "message": "Cancellation failed: no active response found",
                "param": None,
                "event_id": None,
            },
        }
    ).decode()
    assert m.upstream_text(text, 0.0) is FORWARD


def test_abnormal_upstream_loss_and_session_expiry() -> None:
    m = machine()
    (end,) = m.upstream_closed(None, "")  # type: ignore[misc]
    assert isinstance(end, EndSession)
    assert (end.close_code, end.reason) == (1011, "server_error.voxgate_upstream_lost")
    m2 = machine()
    (end2,) = m2.session_expired(1800)  # type: ignore[misc]
    assert isinstance(end2, EndSession)
    assert (end2.close_code, end2.reason) == (1001, "invalid_request_error.session_expired")
    assert "30 minutes" in orjson.loads(end2.error_text)["error"]["message"]  # type: ignore[arg-type]


def test_misuse_raises_invalid_state() -> None:
    m = machine()
    with pytest.raises(InvalidState):
        m.pop_buffered()
    with pytest.raises(InvalidState):
        m.flush_done()


@given(st.lists(st.integers(min_value=1, max_value=3000), max_size=60), st.integers(1000, 20000))
def test_prebuffer_keeps_order_and_never_exceeds_its_limit(sizes: list[int], limit: int) -> None:
    m = machine(prebuffer_limit_bytes=limit)
    accepted: list[str] = []
    for i, size in enumerate(sizes):
        frame = '{"type":"input_audio_buffer.append","audio":"' + str(i) + "A" * size + '"}'
        out = m.client_text(frame, 0.0)
        if out == NOTHING:
            accepted.append(frame)
        else:
            assert isinstance(out, tuple)
            assert isinstance(out[0], EndSession)
            break
        assert m.prebuffer.size_bytes <= limit
    if m.phase is Phase.CLOSED:
        return
    m.upstream_text(CREATED, 0.0)
    assert flush(m) == accepted


def test_the_machine_tracks_the_sessions_audio_formats_for_its_bounds() -> None:
    m = machine()
    assert (m.input_bytes_per_s, m.output_b64_chars_per_s) == (48_000, 64_000)
    session = {
        "type": "realtime",
        "audio": {
            "input": {"format": {"type": "audio/pcmu"}},
            "output": {"format": {"type": "audio/pcma"}},
        },
    }
    m.upstream_text(orjson.dumps({"type": "session.created", "session": session}).decode(), 0.0)
    assert (m.input_bytes_per_s, m.output_b64_chars_per_s) == (8_000, 8_000 * 4 / 3)
    assert m.formats_seen == 1
