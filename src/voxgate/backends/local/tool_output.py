"""What the local engine says about a tool's output (issue 14). Pure functions, no state.

:func:`spoken_text` turns a ``function_call_output`` into a sentence to speak: a ``say`` /
``summary`` / ``answer`` / ``text`` / ``message`` / ``result`` field, an error's message, a JSON
string, plain text, or (last) ``key: value`` pairs. :func:`hits_from_results` reads the
``search_knowledge`` tool's results back as search hits, so the knowledge responder judges them
with the same verdict rules as a search of its own.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from voxgate.tools.knowledge import Entry, SearchHit

TOOL_FAILED: Final = "Sorry, that did not work: {message}"
_SPOKEN_KEYS: Final = ("say", "summary", "answer", "text", "message", "result")


def hits_from_results(results: Any) -> list[SearchHit]:
    hits: list[SearchHit] = []
    for r in results if isinstance(results, list) else []:
        if isinstance(r, dict) and isinstance(r.get("heading"), str):
            entry = Entry(
                r["heading"], str(r.get("text") or ""), str(r.get("source")), str(r.get("kind"))
            )
            score = r.get("score")
            hits.append(SearchHit(entry, float(score) if isinstance(score, int | float) else 0.0))
    return hits


def json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None


def spoken_text(output: str, parsed: Any = None) -> str:
    """A tool output as something to say: its ``say``/``summary``/… text, an error's message,
    a JSON string, plain text, or (last resort) ``key: value`` pairs."""
    if parsed is None:
        parsed = json_or_none(output)
    if parsed is None:
        return output.strip() or "Done."
    if isinstance(parsed, str):
        return parsed
    if isinstance(parsed, dict):
        if isinstance(parsed.get("error"), str):
            message = parsed.get("message") or parsed["error"]
            return TOOL_FAILED.format(message=message)
        for key in _SPOKEN_KEYS:
            if isinstance(parsed.get(key), str) and parsed[key].strip():
                return str(parsed[key])
        pairs = [
            f"{_words(str(k))}: {v}"
            for k, v in parsed.items()
            if isinstance(v, str | int | float) and not isinstance(v, bool)
        ]
        return ". ".join(pairs[:8]) + "." if pairs else "Done."
    if isinstance(parsed, list):
        return f"{len(parsed)} results." if parsed else "Nothing found."
    return str(parsed)


def _words(key: str) -> str:
    return re.sub(r"[_-]+", " ", key)
