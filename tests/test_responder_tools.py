"""The local engine's responder with tools (issue 14): which tool a transcript asks for, how
arguments are found without a model, and what is said about a tool's output."""

from __future__ import annotations

import json
from typing import Any

import pytest

from voxgate.backends.local.responder import (
    KNOWLEDGE_TOOL,
    FunctionCall,
    FunctionCallOutput,
    KnowledgeResponder,
    Message,
    ReplyPiece,
    TextPiece,
    Tool,
    collect,
)
from voxgate.backends.local.tool_output import spoken_text
from voxgate.backends.local.tool_router import fill_arguments, first_number, route
from voxgate.session.injector import SAY_PREFIX
from voxgate.tools.knowledge import KnowledgeBase, KnowledgeLibrary
from voxgate.tools.knowledge_tool import search

SYMBOL = {
    "type": "string",
    "enum": ["AAPL", "MSFT", "TSLA"],
    "description": "Ticker: AAPL (Apple), MSFT (Microsoft), TSLA (Tesla, Tesla Motors)",
}
TOOLS = [
    Tool(
        "get_quote",
        "Get the latest price quote of a stock.",
        {"type": "object", "properties": {"symbol": SYMBOL}, "required": ["symbol"]},
    ),
    Tool(
        "place_order",
        "Place a paper order to buy or sell shares.",
        {
            "type": "object",
            "properties": {
                "side": {"type": "string", "enum": ["buy", "sell"]},
                "symbol": SYMBOL,
                "quantity": {"type": "integer"},
            },
            "required": ["side", "symbol", "quantity"],
        },
    ),
    Tool(
        "set_alert",
        "Set a price alert on a stock.",
        {
            "type": "object",
            "properties": {"symbol": SYMBOL, "price": {"type": "number"}},
            "required": ["symbol", "price"],
        },
    ),
    Tool("list_alerts", "List the price alerts that are set.", {"type": "object"}),
    Tool(
        "journal_note",
        "Write a note in the trading journal.",
        {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    ),
    Tool(
        "get_weather",
        "Get the weather for a city.",
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    ),
]


@pytest.mark.parametrize(
    ("heard", "name", "arguments"),
    [
        ("What is the price of Apple?", "get_quote", {"symbol": "AAPL"}),
        ("Quote for Microsoft please", "get_quote", {"symbol": "MSFT"}),
        ("Buy 10 shares of Tesla.", "place_order", {"side": "buy", "symbol": "TSLA",
                                                    "quantity": 10}),
        ("sell twenty five shares of apple", "place_order", {"side": "sell", "symbol": "AAPL",
                                                             "quantity": 25}),
        ("Set an alert on Tesla at 250.5", "set_alert", {"symbol": "TSLA", "price": 250.5}),
        ("Which alerts do I have?", "list_alerts", {}),
        ("Note in my journal: I chased the breakout.", "journal_note",
         {"text": "Note in my journal: I chased the breakout."}),
        ("What's the weather in Oslo?", "get_weather", {"city": "Oslo"}),
    ],
)  # fmt: skip
def test_a_transcript_that_names_a_tool_calls_it_with_its_arguments(
    heard: str, name: str, arguments: dict[str, Any]
) -> None:
    routed = route(heard, TOOLS)
    assert routed is not None
    assert (routed.name, json.loads(routed.arguments)) == (name, arguments)


@pytest.mark.parametrize(
    "heard",
    ["What is a stop loss order?", "hello there", "What is the price?", "um"],
)
def test_no_tool_when_none_is_named_or_its_arguments_are_missing(heard: str) -> None:
    assert route(heard, TOOLS) is None


def test_numbers_said_as_words_or_digits() -> None:
    assert first_number("buy ten shares") == 10
    assert first_number("twenty five") == 25
    assert first_number("one hundred and five") == 105
    assert first_number("two thousand three hundred") == 2300
    assert first_number("at 12.5 or fifty") == 12.5
    assert first_number("no number") is None
    assert fill_arguments("nothing", {"properties": {"n": {"type": "integer"}}}) == {}


async def reply(responder: KnowledgeResponder, **kwargs: Any) -> list[ReplyPiece]:
    args = {"instructions": "", "history": [], "tools": [], "user_text": None, **kwargs}
    return await collect(responder.respond(**args), timeout_s=10)


KNOWLEDGE = Tool(KNOWLEDGE_TOOL, "Search the notes.", {"type": "object"})


async def test_a_question_for_the_notes_goes_through_search_knowledge_and_back() -> None:
    library = KnowledgeLibrary.example()
    responder = KnowledgeResponder(library)
    question = "What is a stop loss order?"
    [call] = await reply(responder, tools=[KNOWLEDGE, *TOOLS], user_text=question,
                         history=[Message("user", question)])  # fmt: skip
    assert isinstance(call, FunctionCall)
    assert (call.name, json.loads(call.arguments)) == (KNOWLEDGE_TOOL, {"query": question})
    output = json.dumps(search(library, question))
    history = [Message("user", question), call, FunctionCallOutput(call.call_id, output)]
    pieces = await reply(responder, tools=[KNOWLEDGE], history=history)
    spoken = " ".join(p.text for p in pieces if isinstance(p, TextPiece))
    assert spoken == " ".join(responder.answer(question))  # the same answer as without tools
    assert all(isinstance(p, TextPiece) and p.static for p in pieces)


async def test_a_yes_to_did_you_mean_asks_the_tool_for_that_heading() -> None:
    responder = KnowledgeResponder(KnowledgeBase.example())
    history = [
        Message("user", "stop order"),
        Message("assistant", "Did you mean stop loss order?"),
        Message("user", "yes"),
    ]
    [call] = await reply(responder, tools=[KNOWLEDGE], history=history, user_text="yes")
    assert isinstance(call, FunctionCall)
    assert json.loads(call.arguments) == {"query": "Stop loss order"}


async def test_a_micro_tool_output_is_said_and_a_speak_turn_is_said_word_for_word() -> None:
    responder = KnowledgeResponder(KnowledgeBase.example())
    heard = "what is the price of apple"
    [call] = await reply(responder, tools=[KNOWLEDGE, *TOOLS], user_text=heard,
                         history=[Message("user", heard)])  # fmt: skip
    assert isinstance(call, FunctionCall)
    assert call.name == "get_quote"
    out = FunctionCallOutput(call.call_id, '{"summary": "Apple is at 189.50 dollars."}')
    pieces = await reply(responder, history=[Message("user", heard), call, out])
    assert [p.text for p in pieces if isinstance(p, TextPiece)] == ["Apple is at 189.50 dollars."]
    said = await reply(responder, instructions=SAY_PREFIX + "Margin call. Act now.", tools=TOOLS)
    assert [p.text for p in said if isinstance(p, TextPiece)] == ["Margin call.", "Act now."]


def test_what_is_said_about_outputs() -> None:
    assert spoken_text("plain words") == "plain words"
    assert spoken_text('"a json string"') == "a json string"
    assert spoken_text('{"error": "timeout", "message": "Too slow."}') == (
        "Sorry, that did not work: Too slow."
    )
    assert spoken_text('{"symbol": "AAPL", "price": 189.5}') == "symbol: AAPL. price: 189.5."
    assert spoken_text("[]") == "Nothing found."


def test_each_number_said_fills_one_parameter_required_ones_first() -> None:
    schema = {
        "properties": {
            "limit_price": {"type": "number"},
            "quantity": {"type": "integer"},
            "symbol": SYMBOL,
        },
        "required": ["quantity", "symbol"],
    }
    assert fill_arguments("buy 10 shares of Tesla", schema) == {"symbol": "TSLA", "quantity": 10}
    assert fill_arguments("buy 10 Tesla at 250.5", schema) == {
        "symbol": "TSLA",
        "quantity": 10,
        "limit_price": 250.5,
    }
    assert fill_arguments("buy some Tesla", schema) is None
