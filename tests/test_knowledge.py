"""tools/knowledge.py: Markdown parsing and the ASR-tolerant lexical retriever."""

from __future__ import annotations

from pathlib import Path

import pytest

from speech_sets import TRADING_QUESTIONS, normalise
from voxgate.tools.knowledge import (
    KnowledgeBase,
    SearchHit,
    asr_phrases,
    parse_markdown,
    phonetic_key,
    similarity,
)


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return KnowledgeBase.example()


def test_example_has_glossary_and_playbook_entries(kb: KnowledgeBase) -> None:
    sources = {e.source for e in kb.entries}
    assert sources == {"glossary.md", "playbook.md"}
    assert 30 <= len(kb.entries) <= 50
    stop_loss = next(e for e in kb.entries if e.heading == "Stop loss order")
    assert stop_loss.body.startswith("A stop loss order is")


def test_parse_ignores_preamble_and_strips_markdown() -> None:
    text = (
        "# Title\nintro\n\n## First\nSome **bold** `code` text.\n\n"
        "## Empty\n\n## Second\nBody two.\n"
    )
    entries = parse_markdown(text, "x.md")
    assert [(e.heading, e.body) for e in entries] == [
        ("First", "Some bold code text."),
        ("Second", "Body two."),
    ]


@pytest.mark.parametrize(
    ("query", "heading"),
    [
        ("What is a stop loss order?", "Stop loss order"),
        ("what is a stop lost order", "Stop loss order"),
        ("what is a top loss order", "Stop loss order"),
        ("stock loss order", "Stop loss order"),
        ("what is a margin call", "Margin call"),
        ("tell me about trailing stops", "Trailing stop"),
        ("what is slippage", "Slippage"),
        ("how do I size a position", "Position sizing"),
        ("what is a market order", "Market order"),
        ("explain take profit", "Take profit order"),
    ],
)
def test_search_finds_the_entry_even_when_misheard(
    kb: KnowledgeBase, query: str, heading: str
) -> None:
    hits = kb.search(query, k=3)
    assert hits, query
    assert hits[0].entry.heading == heading


@pytest.mark.parametrize(
    "query",
    [
        "what's the weather on mars",
        "tell me a joke",
        "who won the football game",
        "what is the capital of france",
        "hello how are you",
        "",
    ],
)
def test_search_returns_nothing_for_unrelated_questions(kb: KnowledgeBase, query: str) -> None:
    assert kb.search(query) == []


def test_hits_are_ranked_and_limited(kb: KnowledgeBase) -> None:
    hits = kb.search("limit order", k=2, min_score=0.0)
    assert len(hits) == 2
    assert hits[0].score >= hits[1].score


def test_soft_matching_primitives() -> None:
    assert similarity("loss", "loss") == 1.0
    assert 0 < similarity("lost", "loss") < 1
    assert similarity("weather", "margin") == 0.0
    assert phonetic_key("laws") == phonetic_key("loss")


def test_from_folder_reads_markdown_files(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("## Pip\nA small price move.\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("## Ignored\nnot markdown\n", encoding="utf-8")
    kb = KnowledgeBase.from_folder(tmp_path)
    assert [e.heading for e in kb.entries] == ["Pip"]
    assert kb.search("what is a pip")[0].entry.source == "a.md"


def test_from_folder_rejects_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        KnowledgeBase.from_folder(tmp_path / "nope")


def test_vocabulary_lists_heading_words(kb: KnowledgeBase) -> None:
    vocab = kb.vocabulary()
    assert {"stop", "loss", "margin", "slippage"} <= set(vocab)


def test_soft_matching_is_pairwise_similarity_over_the_vocabulary() -> None:
    """The precomputed per-word features give exactly what similarity() gives."""
    kb = KnowledgeBase.example()
    vocab = set(kb._vocab)  # the stemmed tokens the index holds
    heard = ["stock", "loot", "find", "sighs", "posishun", "a", "to", "12", "ordered", "lost"]
    for term in [*vocab, *heard, *(w[:-1] for w in vocab), *(w + "s" for w in vocab)]:
        factor = 0.5 if term in vocab else 1.0
        expected = {
            v: (1.0 if v == term else s * factor) for v in vocab if (s := similarity(term, v)) > 0
        }
        assert kb._soft_vocab(term) == expected, term


def test_a_repeated_query_is_ranked_once_and_thresholds_apply_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kb = KnowledgeBase.example()
    fresh = KnowledgeBase.example()
    ranked: list[str] = []
    rank = kb._rank

    def counted(query: str) -> tuple[SearchHit, ...]:
        ranked.append(query)
        return rank(query)

    monkeypatch.setattr(kb, "_rank", counted)
    first = kb.search("what is a stop loss order", k=5, min_score=0.1)
    again = kb.search("what is a stop loss order", k=2, min_score=0.5)
    assert ranked == ["what is a stop loss order"]  # the second search reused the ranking
    assert first == fresh.search("what is a stop loss order", k=5, min_score=0.1)
    assert again == fresh.search("what is a stop loss order", k=2, min_score=0.5)
    assert first[0].entry.heading == "Stop loss order"


def test_long_queries_are_answered_but_not_remembered() -> None:
    kb = KnowledgeBase.example()
    long_query = "what is a stop loss order " + "please " * 500
    hits = kb.search(long_query)
    assert hits
    assert hits[0].entry.heading == "Stop loss order"
    assert long_query not in kb._ranked
    kb.search("what is a limit order")
    assert "what is a limit order" in kb._ranked


def test_asked_lines_are_how_users_ask_not_what_is_said() -> None:
    """``Asked:`` questions go to the recogniser's prompt, after every heading; they are
    neither read out nor searched."""
    entries = parse_markdown(
        "## Position sizing\n"
        "Asked: How big should each position be? How much should I risk per trade?\n"
        "Risk one percent of your account per trade.\n"
        "\n"
        "## Spread\n"
        "The spread is the gap between the bid and the ask.\n"
        "```\nAsked: inside a fence is text\n```\n",
        "notes.md",
    )
    sizing, spread = entries
    assert sizing.asked == ("How big should each position be?", "How much should I risk per trade?")
    assert sizing.body == "Risk one percent of your account per trade."
    assert spread.asked == ()
    assert "inside a fence is text" in spread.body
    assert asr_phrases(entries) == [
        "Position sizing",
        "Spread",
        "How big should each position be?",
        "How much should I risk per trade?",
    ]
    kb = KnowledgeBase(entries)
    assert kb.search("how big should each") == []  # asked words are not in the index


def test_example_asked_questions_are_not_the_benchmark_questions(kb: KnowledgeBase) -> None:
    """The example's ``Asked:`` questions bias the recogniser; the WER benchmark and the
    understanding tests speak TRADING_QUESTIONS. Were those the same sentences, the prompt
    would hand the recogniser the answers and flatter every number (docs/local-engine.md)."""
    asked = {tuple(normalise(q)) for e in kb.entries for q in e.asked}
    assert asked, "the example knowledge base has Asked: questions"
    assert asked.isdisjoint({tuple(normalise(q)) for q in TRADING_QUESTIONS})
