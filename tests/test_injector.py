"""session/injector.py: when voxgate may speak on its own, and what becomes of a message. Pure."""

from __future__ import annotations

from typing import Any

import orjson

from voxgate.session.injector import (
    CONTEXT_PREFIX,
    EVENT_PREFIX,
    MAX_TRIES,
    METADATA_KEY,
    SAY_PREFIX,
    Injector,
    MessageRecord,
)


def record(mode: str = "speak", *, priority: str = "normal", expires_at: float = 100.0,
           key: str | None = None, text: str = "AAPL is down 5%") -> MessageRecord:  # fmt: skip
    return MessageRecord(
        message_id="msg_1",
        session_id="vg_1",
        mode=mode,  # type: ignore[arg-type]
        text=text,
        priority=priority,
        created_at=0.0,
        expires_at=expires_at,
        idempotency_key=key,
    )


def j(text: str) -> dict[str, Any]:
    event: dict[str, Any] = orjson.loads(text)
    return event


def tag_of(text: str) -> str:
    return str(j(text)["response"]["metadata"][METADATA_KEY])


def test_a_speak_message_waits_for_the_user_to_finish_then_speaks_and_is_delivered() -> None:
    inj = Injector(extensions=True, settle_s=1.0)
    inj.on_speech_started()
    rec = inj.submit(record())
    assert inj.pump(1.0) == []  # the user is speaking
    inj.on_speech_stopped(2.0)
    assert inj.pump(2.5) == []  # the turn may still become an item and get its answer
    inj.on_committed(2.6)
    assert inj.wake_at(2.6) == 3.6
    inj.on_response_created("resp_vad", None)  # the turn's own answer
    assert inj.pump(3.0) == []
    assert inj.on_response_done({"id": "resp_vad", "status": "completed"}, 4.0) == []
    [sent] = inj.pump(4.0)
    event = j(sent)
    assert event["type"] == "response.create"
    assert event["event_id"].startswith(EVENT_PREFIX)
    assert event["response"]["instructions"] == SAY_PREFIX + "AAPL is down 5%"
    assert rec.status == "queued"
    inj.on_response_created("resp_say", tag_of(sent))
    assert (rec.status, rec.response_id) == ("injecting", "resp_say")
    [delivered] = inj.on_response_done({"id": "resp_say", "status": "completed"}, 5.0)
    assert j(delivered)["type"] == "voxgate.message.delivered"
    assert j(delivered)["message_id"] == "msg_1"
    assert (rec.status, rec.delivered_at) == ("delivered", 5.0)


def test_stock_clients_get_no_gateway_event_for_a_delivery() -> None:
    inj = Injector(extensions=False)
    rec = inj.submit(record())
    [sent] = inj.pump(0.0)
    inj.on_response_created("r", tag_of(sent))
    assert inj.on_response_done({"id": "r", "status": "completed"}, 1.0) == []
    assert rec.status == "delivered"


def test_a_message_that_expires_before_a_safe_point_is_dropped_with_the_reason() -> None:
    inj = Injector()
    inj.on_speech_started()
    rec = inj.submit(record(expires_at=10.0))
    assert inj.wake_at(5.0) == 10.0
    assert inj.pump(10.0) == []
    assert (rec.status, rec.reason) == ("expired", "expired")
    inj.on_speech_stopped(11.0)
    assert inj.pump(20.0) == []


def test_a_context_message_is_a_hidden_system_item_delivered_when_added() -> None:
    inj = Injector(extensions=True)
    rec = inj.submit(record("context", text="The user holds 100 AAPL."))
    [sent] = inj.pump(0.0)
    event = j(sent)
    assert event["type"] == "conversation.item.create"
    item = event["item"]
    assert item["role"] == "system"
    assert item["content"][0]["text"] == CONTEXT_PREFIX + "The user holds 100 AAPL."
    assert rec.status == "injecting"
    [delivered] = inj.on_item_added(item["id"], 1.0)
    assert j(delivered)["item_id"] == item["id"]
    assert rec.status == "delivered"


def test_high_priority_interrupts_a_running_answer_normal_waits() -> None:
    inj = Injector()
    inj.on_response_created("resp_1", None)
    normal = inj.submit(record())
    assert inj.pump(0.0) == []
    urgent = inj.submit(record(priority="high", text="Margin call!"))
    [cancel] = inj.pump(0.0)
    assert j(cancel) == {
        "type": "response.cancel",
        "event_id": j(cancel)["event_id"],
        "response_id": "resp_1",
    }
    assert inj.pump(0.0) == []  # cancelled once, waiting for its end
    inj.on_response_done({"id": "resp_1", "status": "cancelled"}, 1.0)
    [first] = inj.pump(1.0)
    assert j(first)["response"]["instructions"] == SAY_PREFIX + "Margin call!"
    assert normal.status == "queued"
    assert urgent.status == "queued"


def test_a_high_priority_message_never_interrupts_the_user() -> None:
    inj = Injector()
    inj.on_speech_started()
    inj.on_response_created("resp_1", None)
    inj.submit(record(priority="high"))
    assert inj.pump(0.0) == []


def test_an_idempotency_key_returns_the_first_record() -> None:
    inj = Injector()
    first = inj.submit(record(key="alert-7"))
    again = inj.submit(record(key="alert-7", text="different"))
    assert again is first
    assert len(inj.queued()) == 1


def test_a_refused_request_is_retried_then_fails_with_the_code() -> None:
    inj = Injector()
    rec = inj.submit(record())
    for _ in range(MAX_TRIES):
        [sent] = inj.pump(0.0)
        inj.on_error(j(sent)["event_id"], "conversation_already_has_active_response")
    assert inj.pump(0.0) == []
    assert (rec.status, rec.reason) == (
        "failed",
        "refused:conversation_already_has_active_response",
    )


def test_a_cancelled_delivery_is_failed_with_the_reason() -> None:
    inj = Injector()
    rec = inj.submit(record())
    [sent] = inj.pump(0.0)
    inj.on_response_created("r", tag_of(sent))
    done = {"id": "r", "status": "cancelled", "status_details": {"reason": "turn_detected"}}
    inj.on_response_done(done, 1.0)
    assert (rec.status, rec.reason) == ("failed", "response_cancelled:turn_detected")


def test_a_follow_up_already_answered_by_a_later_response_is_not_sent() -> None:
    inj = Injector()
    inj.follow_up()
    inj.follow_up()  # one per batch
    assert len(inj.queued()) == 1
    inj.on_response_created("resp_client", None)
    inj.on_response_done({"id": "resp_client", "status": "completed"}, 0.0)
    assert inj.pump(0.0) == []
    assert inj.queued() == []


def test_a_client_request_goes_first_and_a_lost_request_is_given_up_on() -> None:
    inj = Injector()
    inj.on_client_request(0.0)
    inj.say("One moment.")
    assert inj.pump(1.0) == []
    assert inj.wake_at(1.0) == 5.0
    [sent] = inj.pump(5.0)  # no answer to the client's request came: go on
    assert inj.voxgate_request_pending
    assert inj.pump(6.0) == []
    assert inj.wake_at(6.0) == 20.0
    [again] = inj.pump(20.0)  # no response.created for voxgate's own: once more
    assert j(again)["event_id"] == j(sent)["event_id"]


def test_closing_drops_everything_not_delivered() -> None:
    inj = Injector()
    queued = inj.submit(record())
    inj.on_speech_started()
    inj.close("session_ended")
    assert (queued.status, queued.reason) == ("dropped", "session_ended")
    assert inj.pump(0.0) == []


def test_the_answer_to_a_tool_goes_before_a_normal_message_and_after_a_high_one() -> None:
    inj = Injector()
    inj.submit(record(text="normal news"))
    inj.follow_up()
    [first] = inj.pump(0.0)
    assert "instructions" not in j(first)["response"]  # the follow-up: no speak instructions
    inj.on_response_created("r1", tag_of(first))
    inj.on_response_done({"id": "r1", "status": "completed"}, 1.0)
    [second] = inj.pump(1.0)
    assert j(second)["response"]["instructions"] == SAY_PREFIX + "normal news"
    high = Injector()
    high.follow_up()
    high.submit(record(priority="high", text="urgent"))
    [urgent] = high.pump(0.0)
    assert j(urgent)["response"]["instructions"] == SAY_PREFIX + "urgent"


def test_a_tools_say_never_interrupts_an_answer() -> None:
    inj = Injector()
    inj.on_response_created("resp_1", None)
    assert inj.say("One moment.")
    assert inj.pump(0.0) == []
