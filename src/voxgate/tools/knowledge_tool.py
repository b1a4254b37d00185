"""``search_knowledge(query, kind?)``: the knowledge base as a server tool (issue 14).

One tool over a :class:`~voxgate.tools.knowledge.KnowledgeLibrary` (a folder of Markdown notes,
reloaded when it changes), usable by any backend: OpenAI's model calls it like any function,
and the local engine's responder calls it too (it answers from the results' scores with the
same "did you mean" rules it always had). The output is JSON::

    {"query": "...", "kind": null,
     "results": [{"heading": "Stop loss order", "text": "...", "source": "glossary.md",
                  "kind": "glossary", "score": 0.93}, ...]}

``score`` is the retriever's normalised score (about 1 when every word of the query is in the
heading); results under the library's threshold are left out, so an empty list means the notes
do not cover the question.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import orjson

from voxgate.tools.knowledge import DEFAULT_MIN_SCORE, KnowledgeLibrary
from voxgate.tools.registry import Tool, ToolContext, error_output

NAME: Final = "search_knowledge"
#: results handed back (the local responder's verdict looks at two; a model reads three)
RESULTS: Final = 5
_SEARCH_POOL: Final = 50


def search(
    library: KnowledgeLibrary, query: str, kind: str | None = None, k: int = RESULTS
) -> dict[str, Any]:
    """The tool's output for ``query`` (and, optionally, one kind of note)."""
    kb = library.current()
    wanted = kind.strip().lower() if kind and kind.strip() else None
    hits = kb.search(query, k=_SEARCH_POOL if wanted else k, min_score=DEFAULT_MIN_SCORE)
    if wanted:
        hits = [h for h in hits if h.entry.kind == wanted][:k]
    out: dict[str, Any] = {
        "query": query,
        "kind": wanted,
        "results": [
            {
                "heading": h.entry.heading,
                "text": h.entry.body,
                "source": h.entry.source,
                "kind": h.entry.kind,
                "score": round(h.score, 3),
            }
            for h in hits
        ],
    }
    if wanted and wanted not in kb.kinds:
        out["note"] = f"No notes of kind {wanted!r}; the kinds are: {', '.join(kb.kinds)}."
    return out


def knowledge_tool(library: KnowledgeLibrary, *, timeout_s: float = 5.0) -> Tool:
    """The ``search_knowledge`` tool over ``library``."""
    kinds = library.current().kinds
    kind_help = f"Only search notes of this kind: one of {', '.join(kinds)}." if kinds else ""
    parameters = {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "What to look up, in the user's words."},
            "kind": {"anyOf": [{"type": "string"}, {"type": "null"}], "description": kind_help},
        },
        "required": ["query"],
        "additionalProperties": False,
    }

    async def handler(arguments: dict[str, Any], context: ToolContext) -> str:
        query, kind = arguments.get("query"), arguments.get("kind")
        if not isinstance(query, str) or not query.strip():
            return error_output("invalid_arguments", "Invalid arguments: query: a text is required")
        found = await asyncio.to_thread(
            search, library, query, kind if isinstance(kind, str) else None
        )
        return orjson.dumps(found).decode()

    return Tool(
        name=NAME,
        description=(
            "Search the user's own notes (playbook, glossary, post-mortems and other Markdown "
            "notes) and return the best matching sections with their source file. Use it for "
            "definitions, rules and lessons before answering from general knowledge."
        ),
        parameters=parameters,
        handler=handler,
        timeout_s=timeout_s,
        source="builtin:knowledge",
    )
