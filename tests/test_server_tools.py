"""session/server_tools.py: what a stock client sees of a session with server tools. Pure.

Each test feeds the interceptor upstream events (as the machine passes them to the client) and
client frames, and checks exactly what reaches the client and what goes upstream.
"""

from __future__ import annotations

from typing import Any

import orjson

from voxgate.protocol import server_events as ev
from voxgate.session.injector import EVENT_PREFIX, METADATA_KEY, Injector, MessageRecord
from voxgate.session.server_tools import MAX_HELD, ToolInterceptor

QUOTE = {
    "type": "function",
    "name": "get_quote",
    "description": "Latest price.",
    "parameters": {"type": "object", "properties": {"symbol": {"type": "string"}}},
}
WEATHER = {"type": "function", "name": "get_weather", "description": "", "parameters": {}}


def t(event: dict[str, Any]) -> str:
    return orjson.dumps(event).decode()


def j(text: str) -> dict[str, Any]:
    event: dict[str, Any] = orjson.loads(text)
    return event


def make() -> ToolInterceptor:
    return ToolInterceptor([QUOTE], Injector())


def response(rid: str, status: str = "in_progress", output: Any = (), meta: Any = None) -> Any:
    return {
        "object": "realtime.response",
        "id": rid,
        "status": status,
        "output": list(output),
        "metadata": meta,
    }


def created(rid: str, meta: Any = None) -> str:
    return t({"type": "response.created", "event_id": "e1", "response": response(rid, meta=meta)})


def done(rid: str, output: Any = (), status: str = "completed", meta: Any = None) -> str:
    body = response(rid, status, output, meta)
    return t({"type": "response.done", "event_id": "e2", "response": body})


def call_item(item_id: str, call_id: str, name: str, status: str = "in_progress") -> Any:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": "" if status == "in_progress" else '{"symbol":"AAPL"}',
    }


def call_events(rid: str, item_id: str, call_id: str, name: str, prev: str | None) -> list[str]:
    """A whole function-call item as the real server streams it (§6.3)."""
    where = {"response_id": rid, "item_id": item_id, "output_index": 0, "call_id": call_id}
    finished = call_item(item_id, call_id, name, "completed")
    return [
        t({"type": "response.output_item.added", "event_id": "e", "response_id": rid,
           "output_index": 0, "item": call_item(item_id, call_id, name)}),
        t({"type": "conversation.item.added", "event_id": "e", "previous_item_id": prev,
           "item": call_item(item_id, call_id, name)}),
        t({"type": "response.function_call_arguments.delta", "event_id": "e", **where,
           "delta": '{"symbol":"AAPL"}'}),
        t({"type": "response.function_call_arguments.done", "event_id": "e", **where,
           "name": name, "arguments": '{"symbol":"AAPL"}'}),
        t({"type": "conversation.item.done", "event_id": "e", "previous_item_id": prev,
           "item": finished}),
        t({"type": "response.output_item.done", "event_id": "e", "response_id": rid,
           "output_index": 0, "item": finished}),
    ]  # fmt: skip


def message_added(rid: str, item_id: str, prev: str | None) -> list[str]:
    item = ev.assistant_item(item_id, status="in_progress", content=[])
    return [
        t({"type": "response.output_item.added", "event_id": "e", "response_id": rid,
           "output_index": 1, "item": item}),
        t({"type": "conversation.item.added", "event_id": "e", "previous_item_id": prev,
           "item": item}),
    ]  # fmt: skip


def feed(tools: ToolInterceptor, texts: list[str], now: float = 0.0) -> tuple[list[str], Any]:
    shown: list[str] = []
    calls: list[Any] = []
    upstream: list[str] = []
    for text in texts:
        verdict = tools.to_client(text, now)
        shown.extend(verdict.to_client)
        calls.extend(verdict.calls)
        upstream.extend(verdict.to_upstream)
    return shown, (calls, upstream)


# --------------------------------------------------------------------------- session config


def test_initial_config_merges_server_tools_after_the_keys_own() -> None:
    tools = make()
    embedded = {"type": "realtime", "instructions": "hi", "tools": [WEATHER]}
    config = tools.initial_config(embedded)
    assert config is not None
    assert [x["name"] for x in config["tools"]] == ["get_weather", "get_quote"]
    assert config["instructions"] == "hi"
    assert tools.initial_config(None) == {"type": "realtime", "tools": [QUOTE]}
    transcription = {"type": "transcription"}
    assert tools.initial_config(transcription) == transcription


def test_no_server_tools_leaves_the_config_and_updates_alone() -> None:
    tools = ToolInterceptor([], Injector())
    assert tools.initial_config(None) is None
    update = t({"type": "session.update", "session": {"type": "realtime", "tools": [WEATHER]}})
    assert tools.from_client(update, 0.0) is update


def test_client_tools_in_session_update_are_merged_and_a_same_named_client_tool_wins() -> None:
    tools = make()
    update = {"type": "session.update", "session": {"type": "realtime", "tools": [WEATHER]}}
    merged = j(tools.from_client(t(update), 0.0) or "")
    assert [x["name"] for x in merged["session"]["tools"]] == ["get_weather", "get_quote"]
    own_quote = {**QUOTE, "description": "mine"}
    update["session"]["tools"] = [own_quote]
    merged = j(tools.from_client(t(update), 0.0) or "")
    assert merged["session"]["tools"] == [own_quote]
    assert tools.hidden_names == frozenset()
    plain = t({"type": "session.update", "session": {"type": "realtime", "instructions": "x"}})
    assert tools.from_client(plain, 0.0) is plain


def test_session_events_to_the_client_list_only_its_own_tools() -> None:
    tools = make()
    tools.initial_config({"type": "realtime", "tools": [WEATHER]})
    session = {"type": "realtime", "tools": [WEATHER, QUOTE],
               "tool_choice": {"type": "function", "name": "get_quote"}}  # fmt: skip
    shown, _ = feed(tools, [t({"type": "session.updated", "event_id": "e", "session": session})])
    event = j(shown[0])
    assert event["session"]["tools"] == [WEATHER]
    assert event["session"]["tool_choice"] == "auto"


# --------------------------------------------------------------------------- one tool turn


def test_a_response_that_only_calls_a_server_tool_never_reaches_the_client() -> None:
    tools = make()
    shown, (calls, upstream) = feed(
        tools,
        [created("resp_1"), *call_events("resp_1", "item_f", "call_1", "get_quote", "item_u")],
    )
    assert shown == []
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_1", "get_quote", '{"symbol":"AAPL"}')
    ]
    assert upstream == []
    # the output goes up at once; the follow-up waits for the response to end
    sent = tools.output_ready("call_1", '{"price":1}', 0.0)
    assert len(sent) == 1
    output = j(sent[0])
    assert output["type"] == "conversation.item.create"
    assert output["event_id"].startswith(EVENT_PREFIX)
    assert output["item"]["type"] == "function_call_output"
    assert output["item"]["call_id"] == "call_1"
    shown, (_, upstream) = feed(tools, [done("resp_1", [call_item("item_f", "call_1", "x")])])
    assert shown == []
    assert len(upstream) == 1
    follow = j(upstream[0])
    assert follow["type"] == "response.create"
    tag = follow["response"]["metadata"][METADATA_KEY]
    # voxgate's output item and the follow-up answer: the answer is the client's next turn
    out_id = output["item"]["id"]
    added_out = t({"type": "conversation.item.added", "event_id": "e",
                   "previous_item_id": "item_f", "item": output["item"]})  # fmt: skip
    shown, _ = feed(tools, [added_out, created("resp_2", {METADATA_KEY: tag})])
    assert shown == []
    shown, _ = feed(tools, message_added("resp_2", "item_a", out_id))
    assert [j(s)["type"] for s in shown] == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
    ]
    assert j(shown[0])["response"]["metadata"] is None
    assert j(shown[2])["previous_item_id"] == "item_u"  # the call and its output skipped
    answer = ev.assistant_item("item_a", status="completed", content=[])
    shown, _ = feed(tools, [done("resp_2", [answer], meta={METADATA_KEY: tag, "k": "v"})])
    assert j(shown[0])["response"]["metadata"] == {"k": "v"}


def test_a_response_with_a_message_and_a_server_call_shows_the_message_only() -> None:
    tools = make()
    shown, _ = feed(tools, [created("resp_1"), *message_added("resp_1", "item_a", "item_u")])
    assert [j(s)["type"] for s in shown][:1] == ["response.created"]
    shown, (calls, _) = feed(
        tools, call_events("resp_1", "item_f", "call_1", "get_quote", "item_a")
    )
    assert shown == []
    assert len(calls) == 1
    answer = ev.assistant_item("item_a", status="completed", content=[])
    call = call_item("item_f", "call_1", "get_quote", "completed")
    shown, _ = feed(tools, [done("resp_1", [answer, call])])
    assert [o["id"] for o in j(shown[0])["response"]["output"]] == ["item_a"]


def test_a_response_with_nothing_in_it_is_shown_as_it_came() -> None:
    tools = make()
    shown, _ = feed(tools, [created("resp_1"), done("resp_1", [], status="cancelled")])
    assert [j(s)["type"] for s in shown] == ["response.created", "response.done"]


def test_client_and_server_calls_in_one_response_leave_the_next_turn_to_the_client() -> None:
    tools = ToolInterceptor([QUOTE], Injector())
    tools.initial_config({"type": "realtime", "tools": [WEATHER]})
    feed(tools, [created("resp_1"), *call_events("resp_1", "item_f", "call_1", "get_quote", None)])
    shown, _ = feed(tools, call_events("resp_1", "item_w", "call_2", "get_weather", "item_f"))
    assert j(shown[0])["type"] == "response.created"
    assert j(shown[2])["previous_item_id"] is None  # after the hidden call: the start
    assert all("get_quote" not in s for s in shown)
    shown, (_, upstream) = feed(tools, [done("resp_1", [call_item("item_w", "call_2", "x")])])
    assert upstream == []
    # the client answers its own call: its response.create waits for voxgate's output
    own_output = t({"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": "call_2", "output": "sunny"}})  # fmt: skip
    assert tools.from_client(own_output, 0.0) == own_output
    request = t({"type": "response.create", "event_id": "agents_1"})
    assert tools.from_client(request, 0.0) is None
    sent = tools.output_ready("call_1", "1", 0.0)
    assert [j(s)["type"] for s in sent] == ["conversation.item.create", "response.create"]
    assert j(sent[1])["event_id"] == "agents_1"  # the client's own, not a follow-up


def test_held_client_frames_keep_their_order_and_overflow_goes_through() -> None:
    tools = make()
    feed(tools, [created("resp_1"), *call_events("resp_1", "item_f", "call_1", "get_quote", None)])
    first = t({"type": "response.create", "event_id": "c1"})
    item = t({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
              "content": [{"type": "input_text", "text": "x"}]}})  # fmt: skip
    second = t({"type": "response.create", "event_id": "c2"})
    assert tools.from_client(first, 0.0) is None
    assert tools.from_client(item, 0.0) is None
    assert tools.from_client(second, 0.0) is None
    for _ in range(MAX_HELD - 3):
        assert tools.from_client(item, 0.0) is None
    assert tools.from_client(item, 0.0) == item  # past the bound: sent on as it is
    _, (_, upstream) = feed(tools, [done("resp_1", [])])
    assert upstream == []  # the call's output is still missing
    sent = tools.output_ready("call_1", "1", 0.0)
    # voxgate's output, the first request and the item behind it; the second request waits
    assert [j(s)["type"] for s in sent] == [
        "conversation.item.create",
        "response.create",
        "conversation.item.create",
    ]
    assert j(sent[1])["event_id"] == "c1"
    assert j(sent[2]) == j(item)


def test_an_error_for_voxgates_own_event_is_hidden_and_the_request_retried() -> None:
    tools = make()
    feed(tools, [created("resp_1"), *call_events("resp_1", "item_f", "call_1", "get_quote", None)])
    tools.output_ready("call_1", "1", 0.0)
    _, (_, upstream) = feed(tools, [done("resp_1", [])])
    follow = j(upstream[0])
    # a VAD turn won the race: its response is shown, voxgate's request is refused
    refused = t(ev.server_event("error", error={
        "type": "invalid_request_error", "code": "conversation_already_has_active_response",
        "message": "busy", "param": None, "event_id": follow["event_id"]}))  # fmt: skip
    shown, (_, upstream) = feed(tools, [created("resp_vad"), refused])
    assert shown == []
    assert upstream == []
    shown, (_, upstream) = feed(tools, [*message_added("resp_vad", "item_v", None)])
    assert j(shown[0])["type"] == "response.created"
    answer = ev.assistant_item("item_v", status="completed", content=[])
    _, (_, upstream) = feed(tools, [done("resp_vad", [answer])])
    assert upstream == []  # the VAD answer came after the output: it read it already


def test_a_client_error_passes_and_argument_deltas_of_client_calls_pass() -> None:
    tools = make()
    error = t(ev.server_event("error", error={"type": "x", "code": "c", "message": "m",
                                              "param": None, "event_id": "client_1"}))  # fmt: skip
    assert feed(tools, [error])[0] == [error]
    delta = t({"type": "response.function_call_arguments.delta", "event_id": "e",
               "response_id": "r", "item_id": "item_w", "output_index": 0,
               "call_id": "c", "delta": "{"})  # fmt: skip
    assert feed(tools, [delta])[0] == [delta]


def test_committed_and_items_after_a_hidden_item_point_at_the_last_visible_one() -> None:
    tools = make()
    feed(tools, [created("resp_1"), *call_events("resp_1", "item_f", "call_1", "get_quote", "u1")])
    committed = t({"type": "input_audio_buffer.committed", "event_id": "e",
                   "previous_item_id": "item_f", "item_id": "u2"})  # fmt: skip
    shown, _ = feed(tools, [committed])
    assert j(shown[0])["previous_item_id"] == "u1"


def test_a_call_cut_before_its_arguments_finished_is_never_run_nor_followed_up() -> None:
    tools = make()
    events = call_events("resp_1", "item_f", "call_1", "get_quote", None)
    shown, (calls, upstream) = feed(tools, [created("resp_1"), *events[:3]])
    assert calls == []
    shown, (calls, upstream) = feed(tools, [done("resp_1", [], status="cancelled")])
    assert shown == calls == upstream == []
    assert tools.from_client(t({"type": "response.create"}), 0.0) is not None


def test_a_proactive_message_waits_for_the_answer_of_a_running_tool() -> None:
    tools = make()
    feed(tools, [created("resp_1"), *call_events("resp_1", "item_f", "call_1", "get_quote", None)])
    message = MessageRecord("msg_1", "vg_1", "speak", "Alert!", "normal", 0.0, 100.0)
    tools.injector.submit(message)
    _, (_, upstream) = feed(tools, [done("resp_1", [])])
    assert upstream == []  # the tool is still running: its answer comes first
    sent = tools.output_ready("call_1", "1", 0.0)
    assert [j(s)["type"] for s in sent] == ["conversation.item.create", "response.create"]
    assert "instructions" not in j(sent[1])["response"]  # the follow-up, not the message
    assert message.status == "queued"


def test_without_hidden_tools_nothing_is_held_and_voxgates_tag_is_still_removed() -> None:
    tools = ToolInterceptor([], Injector())
    tag = {METADATA_KEY: "vgjob_1"}
    shown, _ = feed(tools, [created("resp_1", tag)])
    assert j(shown[0])["response"]["metadata"] is None
    shown, _ = feed(tools, [done("resp_1", [], meta=tag)])
    assert j(shown[0])["response"]["metadata"] is None
    plain = created("resp_2")
    assert feed(tools, [plain])[0] == [plain]
