"""Knowledge as a tool (issue 14): the note formats people write, kinds, reloads, the output."""

from __future__ import annotations

import json
from pathlib import Path

from voxgate.session.server_side import ToolCallContext
from voxgate.tools.knowledge import KnowledgeLibrary, parse_markdown
from voxgate.tools.knowledge_tool import NAME, knowledge_tool, search
from voxgate.tools.registry import ToolRegistry

CTX = ToolCallContext("vg_1", None, {}, "call_1", lambda text: False)

GLOSSARY = """# Glossary

## Pip
The smallest price move of a currency pair.

## Gap
A jump in price between one close and the next open, with no trades in between.
"""

SIZING = """# Position sizing rules

Never risk more than one percent of the account on a trade.

- Size from the stop distance, not from conviction
- Halve the size before earnings
* Write the size down before entering
1. No averaging down
"""

POSTMORTEM = """---
title: NVDA earnings gap, March 2024
date: 2024-03-01
---

Intro text that is not a section.

## What happened
Held a full position through earnings.

### Mistake
- No stop in place
- Position three times normal size

### Lesson
Cut the position in half before earnings, and always place the stop first.

#### Details
This is read as text.

```
## not a heading inside code
```
"""


def notes(root: Path) -> Path:
    (root / "glossary").mkdir(parents=True)
    (root / "glossary" / "terms.md").write_text(GLOSSARY, encoding="utf-8")
    (root / "playbook" / "risk").mkdir(parents=True)
    (root / "playbook" / "risk" / "sizing.md").write_text(SIZING, encoding="utf-8")
    (root / "postmortems").mkdir()
    (root / "postmortems" / "2024-03-nvda-gap.md").write_text(POSTMORTEM, encoding="utf-8")
    (root / "postmortems" / "draft.txt").write_text("## Ignored\nnot markdown\n")
    (root / ".trash").mkdir()
    (root / ".trash" / "old.md").write_text("## Old\nhidden folder\n")
    return root


def test_the_note_formats_people_write_become_entries(tmp_path: Path) -> None:
    kb = KnowledgeLibrary(notes(tmp_path)).current()
    found = {(e.kind, e.source, e.heading): e.body for e in kb.entries}
    assert found == {
        ("glossary", "glossary/terms.md", "Pip"): "The smallest price move of a currency pair.",
        ("glossary", "glossary/terms.md", "Gap"): (
            "A jump in price between one close and the next open, with no trades in between."
        ),
        ("playbook", "playbook/risk/sizing.md", "Position sizing rules"): (
            "Never risk more than one percent of the account on a trade. Size from the stop "
            "distance, not from conviction. Halve the size before earnings. Write the size "
            "down before entering. No averaging down."
        ),
        ("postmortems", "postmortems/2024-03-nvda-gap.md", "What happened"): (
            "Held a full position through earnings."
        ),
        ("postmortems", "postmortems/2024-03-nvda-gap.md", "What happened: Mistake"): (
            "No stop in place. Position three times normal size."
        ),
        ("postmortems", "postmortems/2024-03-nvda-gap.md", "What happened: Lesson"): (
            "Cut the position in half before earnings, and always place the stop first. "
            "Details. This is read as text. not a heading inside code"
        ),
    }
    assert kb.kinds == ["glossary", "playbook", "postmortems"]


def test_a_file_without_headings_is_one_entry_named_after_it() -> None:
    [entry] = parse_markdown("Just a thought about stops.\n", "notes/stop-ideas.md", kind="x")
    assert (entry.heading, entry.body, entry.kind) == (
        "Stop ideas",
        "Just a thought about stops.",
        "x",
    )
    [titled] = parse_markdown("---\ntitle: 'Gap rules'\n---\nBody.\n", "a.md")
    assert titled.heading == "Gap rules"


def test_search_results_carry_their_source_and_a_kind_narrows_them(tmp_path: Path) -> None:
    library = KnowledgeLibrary(notes(tmp_path))
    found = search(library, "what was the lesson on earnings")
    assert found["results"][0]["source"] == "postmortems/2024-03-nvda-gap.md"
    assert found["results"][0]["heading"] == "What happened: Lesson"
    assert 0 < found["results"][0]["score"] <= 1.5
    mistake = search(library, "mistake with the stop")["results"]
    assert mistake[0]["kind"] == "postmortems"
    assert search(library, "mistake with the stop", kind="glossary")["results"] == []
    sizing = search(library, "size", kind="Playbook")
    assert [(r["kind"], r["heading"]) for r in sizing["results"]] == [
        ("playbook", "Position sizing rules")
    ]
    assert search(library, "what is the weather on mars")["results"] == []
    nothing = search(library, "earnings", kind="recipes")
    assert nothing["results"] == []
    assert (
        nothing["note"]
        == "No notes of kind 'recipes'; the kinds are: glossary, playbook, postmortems."
    )


def test_notes_are_reloaded_when_a_file_changes_or_appears(tmp_path: Path) -> None:
    root = notes(tmp_path)
    library = KnowledgeLibrary(root, check_interval_s=1e-9)
    assert search(library, "what is a pip")["results"][0]["heading"] == "Pip"
    (root / "glossary" / "terms.md").write_text(
        GLOSSARY.replace("## Pip", "## Pipette"), encoding="utf-8"
    )
    (root / "glossary" / "more.md").write_text("## Lot\nA standard trade size.\n")
    headings = [r["heading"] for r in search(library, "what is a pipette")["results"]]
    assert headings[0] == "Pipette"
    assert search(library, "what is a lot")["results"][0]["source"] == "glossary/more.md"
    assert library.reloads == 1
    frozen = KnowledgeLibrary(root, check_interval_s=0)
    (root / "glossary" / "more.md").unlink()
    assert any(e.heading == "Lot" for e in frozen.current().entries)  # 0: never reloaded


async def test_search_knowledge_is_a_server_tool(tmp_path: Path) -> None:
    library = KnowledgeLibrary(notes(tmp_path))
    made = knowledge_tool(library)
    spec = made.spec()
    assert spec["name"] == NAME
    assert spec["parameters"]["required"] == ["query"]
    assert (
        "glossary, playbook, postmortems" in spec["parameters"]["properties"]["kind"]["description"]
    )
    tools = ToolRegistry([made]).select(None)
    out = json.loads(await tools.call(NAME, '{"query": "what is a gap", "kind": "glossary"}', CTX))
    assert out["results"][0]["heading"] == "Gap"
    assert out["kind"] == "glossary"
    bad = json.loads(await tools.call(NAME, '{"kind": "glossary"}', CTX))
    assert bad["error"] == "invalid_arguments"
