"""Which function tool a transcript asks for, without a language model (the local engine).

Issue 14. The offline responder has no model to choose tools, so it matches the transcript's
content words against each tool's name (weighted double) and the first sentence of its
description, with the knowledge base's ASR-tolerant word matching, and fills the arguments
from the JSON Schema:

* a string ``enum``: the value named in the transcript, by the value itself or by an alias the
  property's description gives as ``VALUE (alias, other alias)`` — e.g. ``"AAPL (Apple)"``;
* ``integer`` / ``number``: the first number said (digits, or number words up to thousands);
* a free ``string`` named ``text``, ``note``, ``query``, ``message`` or ``content``: the
  transcript itself; any other free ``string``: the words after the request's last ``in`` /
  ``for`` / ``of`` / ``about`` / ``on`` / ``at`` ("the weather in Oslo" → ``Oslo``);
* anything else only when it has a default.

A tool whose required arguments cannot all be filled is not chosen; an ``enum`` argument the
transcript names counts as one more matching word; the best remaining tool wins when it scores
at least :data:`MIN_SCORE` (one name word, or two description words) and clearly beats the
runner-up. Pure functions; no I/O, no state.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson

from voxgate.tools.knowledge import similarity, tokens

MIN_SCORE: Final = 2.0
_MARGIN: Final = 0.5
_NAME_WEIGHT: Final = 2.0
_FREE_TEXT: Final = frozenset({"text", "note", "query", "message", "content", "question"})
_NAMING: Final = frozenset({"in", "for", "of", "about", "on", "at"})
_NUMBER_RE: Final = re.compile(r"-?\d+(?:[.,]\d+)?")
_ALIAS_RE: Final = re.compile(r"\b([A-Za-z0-9_.-]+)\s*\(([^)]*)\)")
_UNITS: Final = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
)
_WORDS: Final = {w: i for i, w in enumerate(_UNITS.split(" "))}
_TENS: Final = {
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}


class Tool(Protocol):
    """A function tool as the responder sees it (``responder.Tool``)."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def parameters(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Routed:
    """The tool to call and its JSON arguments."""

    name: str
    arguments: str
    score: float


def route(text: str, tools: Sequence[Tool]) -> Routed | None:
    """The tool ``text`` asks for, with its arguments, or None (see the module docstring)."""
    words = list(dict.fromkeys(tokens(text)))
    if not words:
        return None
    scored: list[tuple[float, Tool, dict[str, Any]]] = []
    for tool in tools:
        score = _score(words, tool)
        if score <= 0:
            continue
        arguments = fill_arguments(text, tool.parameters)
        if arguments is not None:
            named = sum(1 for k in arguments if _options(_prop(tool.parameters, k)))
            scored.append((score + named, tool, arguments))
    if not scored:
        return None
    scored.sort(key=lambda s: s[0], reverse=True)
    best, tool, arguments = scored[0]
    runner_up = scored[1][0] if len(scored) > 1 else 0.0
    if best < MIN_SCORE or best - runner_up < _MARGIN:
        return None
    return Routed(tool.name, orjson.dumps(arguments).decode(), best)


def _score(words: list[str], tool: Tool) -> float:
    name_words = set(tokens(tool.name.replace("_", " ").replace("-", " ")))
    summary = re.split(r"(?<=[.!?])\s", tool.description.strip(), maxsplit=1)[0]
    described = set(tokens(summary)) - name_words
    total = 0.0
    for word in words:
        total += _NAME_WEIGHT * _best(word, name_words) + _best(word, described)
    return total


def _best(word: str, vocabulary: set[str]) -> float:
    if word in vocabulary:
        return 1.0
    soft = max((similarity(word, v) for v in vocabulary), default=0.0)
    return soft * 0.5 if soft >= 0.7 else 0.0


def _prop(schema: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    prop = props.get(name) if isinstance(props, Mapping) else None
    return prop if isinstance(prop, Mapping) else {}


def fill_arguments(text: str, schema: Mapping[str, Any]) -> dict[str, Any] | None:
    """Arguments for ``schema`` taken from ``text``; None when a required one is missing."""
    props = schema.get("properties") if isinstance(schema, Mapping) else None
    if not isinstance(props, Mapping):
        return {}
    required = set(schema.get("required") or ())
    out: dict[str, Any] = {}
    numeric: list[str] = []
    for name, prop in props.items():
        if not isinstance(prop, Mapping):
            continue
        if not _options(prop) and _types(prop) & {"integer", "number"}:
            numeric.append(str(name))
            continue
        value = _value(str(name), prop, text)
        if value is not None:
            out[str(name)] = value
        elif name in required:
            return None
    # each number said is used once: required parameters first, then optional ones
    said = numbers(text)
    for name in sorted(numeric, key=lambda n: n not in required):
        if not said:
            if name in required:
                return None
            continue
        number = said.pop(0)
        kinds = _types(props[name])
        out[name] = int(number) if "integer" in kinds and "number" not in kinds else number
    return out


def _value(name: str, prop: Mapping[str, Any], text: str) -> Any:
    options = _options(prop)
    kinds = _types(prop)
    if options:
        return _enum_value(options, str(prop.get("description") or ""), text)
    if "string" in kinds and name.lower() in _FREE_TEXT:
        return text.strip()
    if "string" in kinds:
        return _named_thing(text)
    return None


def _named_thing(text: str) -> str | None:
    """What a short request names last: the words after its last ``in``/``for``/``of``/
    ``about``/``on`` ("the weather in Oslo" → "Oslo"), or None."""
    words = re.findall(r"[A-Za-z0-9][A-Za-z0-9'&.-]*", text)
    for i in range(len(words) - 2, -1, -1):
        if words[i].lower() in _NAMING:
            named = " ".join(w.strip(".") for w in words[i + 1 :])
            return named or None
    return None


def _options(prop: Mapping[str, Any]) -> list[str]:
    if isinstance(prop.get("enum"), list):
        return [str(v) for v in prop["enum"] if v is not None]
    for key in ("anyOf", "oneOf"):
        for sub in prop.get(key) or ():
            if isinstance(sub, Mapping) and isinstance(sub.get("enum"), list):
                return [str(v) for v in sub["enum"] if v is not None]
    return []


def _types(prop: Mapping[str, Any]) -> set[str]:
    kind = prop.get("type")
    found = {kind} if isinstance(kind, str) else set(kind) if isinstance(kind, list) else set()
    for key in ("anyOf", "oneOf"):
        for sub in prop.get(key) or ():
            if isinstance(sub, Mapping) and isinstance(sub.get("type"), str):
                found.add(sub["type"])
    return {str(k) for k in found}


def _enum_value(options: list[str], description: str, text: str) -> str | None:
    said = set(tokens(text)) | set(re.findall(r"[a-z0-9]+", text.lower()))
    aliases = {m.group(1).lower(): m.group(2) for m in _ALIAS_RE.finditer(description)}
    for option in options:
        names = [option, *(a.strip() for a in aliases.get(option.lower(), "").split(","))]
        for alias in filter(None, names):
            alias_words = set(tokens(alias)) or set(re.findall(r"[a-z0-9]+", alias.lower()))
            if alias_words and alias_words <= said:
                return option
    return None


def first_number(text: str) -> float | int | None:
    """The first number in ``text``: digits ("10", "2.5") or words ("ten", "twenty five")."""
    said = numbers(text)
    return said[0] if said else None


def numbers(text: str) -> list[float | int]:
    """Every number in ``text``, in order: digits ("10", "2.5") and runs of number words."""
    found: list[tuple[int, float | int]] = []
    for match in _NUMBER_RE.finditer(text):
        raw = match.group(0).replace(",", ".")
        found.append((match.start(), float(raw) if "." in raw else int(raw)))
    found.extend(_spoken_numbers(text))
    return [value for _, value in sorted(found, key=lambda pair: pair[0])]


def _spoken_numbers(text: str) -> list[tuple[int, int]]:
    """``(position, value)`` of each run of number words ("twenty five", "one hundred")."""
    runs: list[tuple[int, int]] = []
    value, start, current, seen = 0, -1, 0, False
    for match in re.finditer(r"[a-z]+", text.lower()):
        word = match.group(0)
        if word in _WORDS:
            current += _WORDS[word]
        elif word in _TENS:
            current += _TENS[word]
        elif word == "hundred" and seen:
            current *= 100
            continue
        elif word == "thousand" and seen:
            value, current = value + current * 1000, 0
            continue
        elif word == "and" and seen:
            continue
        else:
            if seen:
                runs.append((start, value + current))
                value, start, current, seen = 0, -1, 0, False
            continue
        if not seen:
            start, seen = match.start(), True
    if seen:
        runs.append((start, value + current))
    return runs
