"""Beta ⇄ GA shapes of the objects inside Realtime events (realtime-protocol.md §9). Pure.

The retired beta protocol and GA carry the same information in different places: a flat
session (``voice``, ``input_audio_format: "pcm16"``, top-level ``turn_detection`` …) against
GA's nested ``audio.input`` / ``audio.output``; ``modalities`` against ``output_modalities``;
assistant content ``text`` / ``audio`` against ``output_text`` / ``output_audio``. Each mapping
is one table of (beta field, GA path, value conversion) read in both directions, so a change is
one row and the two directions cannot drift apart.

Owns: sessions (realtime and transcription), ``response.create`` parameters, response objects,
conversation items, and parameter paths of errors. Must not: know event types (that is
:mod:`voxgate.protocol.beta`), hold state, or do I/O. Values of fields it does not know are
passed on untouched: the GA validator downstream names what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

Conv = Callable[[Any], Any]

#: Beta audio format names and the GA format objects (§8).
FORMATS_TO_GA: Final[dict[str, dict[str, Any]]] = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "g711_ulaw": {"type": "audio/pcmu"},
    "g711_alaw": {"type": "audio/pcma"},
}
_FORMATS_TO_BETA: Final = {v["type"]: k for k, v in FORMATS_TO_GA.items()}
#: Assistant content part types inside items (user content is the same in both shapes).
_CONTENT_TO_GA: Final = {"text": "output_text", "audio": "output_audio"}
_CONTENT_TO_BETA: Final = {v: k for k, v in _CONTENT_TO_GA.items()}
#: What beta clients were told when the server did not say (the beta server's defaults).
BETA_DEFAULT_TEMPERATURE: Final = 0.8


def _same(value: Any) -> Any:
    return value


def format_to_ga(value: Any) -> Any:
    """``"pcm16"`` → ``{"type": "audio/pcm", "rate": 24000}``; an unknown name becomes a GA
    object of that type, which the GA validator then refuses with its own words."""
    if isinstance(value, str):
        known = FORMATS_TO_GA.get(value)
        return dict(known) if known is not None else {"type": value}
    return value


def format_to_beta(value: Any) -> Any:
    if isinstance(value, dict):
        return _FORMATS_TO_BETA.get(str(value.get("type")), value.get("type"))
    return value


def modalities_to_ga(value: Any) -> Any:
    """Beta ``["text"]`` is text only; any list with ``audio`` is GA's ``["audio"]`` (audio
    plus its transcript). GA cannot say "both", so ``["audio"]`` alone comes back as both."""
    if isinstance(value, list):
        return ["audio"] if "audio" in value else ["text"] if value == ["text"] else value
    return value


def modalities_to_beta(value: Any) -> Any:
    if isinstance(value, list):
        return ["text"] if value == ["text"] else ["audio", "text"]
    return value


@dataclass(frozen=True, slots=True)
class Field:
    """One beta field, where GA keeps it, and how its value changes on the way."""

    beta: str
    ga: tuple[str, ...]
    to_ga: Conv = _same
    to_beta: Conv = _same


def _fields(*rows: tuple[Any, ...]) -> tuple[Field, ...]:
    return tuple(Field(*row) for row in rows)


_COMMON_SESSION = _fields(
    ("id", ("id",)),
    ("object", ("object",)),
    ("expires_at", ("expires_at",)),
    ("input_audio_format", ("audio", "input", "format"), format_to_ga, format_to_beta),
    ("input_audio_transcription", ("audio", "input", "transcription")),
    ("turn_detection", ("audio", "input", "turn_detection")),
    ("input_audio_noise_reduction", ("audio", "input", "noise_reduction")),
    ("include", ("include",)),
)
REALTIME_SESSION: Final = _COMMON_SESSION + _fields(
    ("model", ("model",)),
    ("modalities", ("output_modalities",), modalities_to_ga, modalities_to_beta),
    ("instructions", ("instructions",)),
    ("voice", ("audio", "output", "voice")),
    ("speed", ("audio", "output", "speed")),
    ("output_audio_format", ("audio", "output", "format"), format_to_ga, format_to_beta),
    ("tools", ("tools",)),
    ("tool_choice", ("tool_choice",)),
    ("max_response_output_tokens", ("max_output_tokens",)),
    ("tracing", ("tracing",)),
)
TRANSCRIPTION_SESSION: Final = _COMMON_SESSION
#: ``response.create``'s ``response`` (the per-response overrides).
RESPONSE_PARAMS: Final = _fields(
    ("modalities", ("output_modalities",), modalities_to_ga, modalities_to_beta),
    ("voice", ("audio", "output", "voice")),
    ("output_audio_format", ("audio", "output", "format"), format_to_ga, format_to_beta),
    ("max_response_output_tokens", ("max_output_tokens",)),
    ("instructions", ("instructions",)),
    ("tools", ("tools",)),
    ("tool_choice", ("tool_choice",)),
    ("conversation", ("conversation",)),
    ("metadata", ("metadata",)),
    ("prompt", ("prompt",)),
)
#: The response object of ``response.created`` / ``response.done``.
RESPONSE_OBJECT: Final = _fields(
    ("id", ("id",)),
    ("object", ("object",)),
    ("status", ("status",)),
    ("status_details", ("status_details",)),
    ("conversation_id", ("conversation_id",)),
    ("modalities", ("output_modalities",), modalities_to_ga, modalities_to_beta),
    ("voice", ("audio", "output", "voice")),
    ("output_audio_format", ("audio", "output", "format"), format_to_ga, format_to_beta),
    ("max_output_tokens", ("max_output_tokens",)),
    ("usage", ("usage",)),
    ("metadata", ("metadata",)),
)
#: Beta fields GA has no place for: kept by the translator, never sent upstream.
BETA_ONLY: Final = frozenset({"temperature", "client_secret"})


def _put(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        child = target.get(key)
        if not isinstance(child, dict):
            child = target[key] = {}
        target = child
    target[path[-1]] = value


def _get(source: dict[str, Any], path: tuple[str, ...]) -> tuple[bool, Any]:
    node: Any = source
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def to_ga(beta: dict[str, Any], table: tuple[Field, ...]) -> dict[str, Any]:
    """A flat beta object in GA shape. Unknown keys pass as they are (GA names the problem);
    :data:`BETA_ONLY` keys are left out (the caller keeps what it needs of them)."""
    by_beta = {f.beta: f for f in table}
    ga: dict[str, Any] = {}
    for key, value in beta.items():
        spec = by_beta.get(key)
        if spec is not None:
            _put(ga, spec.ga, spec.to_ga(value))
        elif key == "input" and isinstance(value, list):
            ga[key] = [item_to_ga(i) for i in value]
        elif key not in BETA_ONLY:
            ga[key] = value
    return ga


def to_beta(ga: dict[str, Any], table: tuple[Field, ...]) -> dict[str, Any]:
    """The flat beta view of a GA object: only fields the table names (GA-only fields such as
    ``truncation`` or ``prompt`` have no beta name and are left out)."""
    beta: dict[str, Any] = {}
    for spec in table:
        found, value = _get(ga, spec.ga)
        if found:
            beta[spec.beta] = spec.to_beta(value)
    return beta


def item_to_ga(item: Any) -> Any:
    """A beta conversation item in GA shape (assistant ``text`` → ``output_text``)."""
    return _map_content(item, _CONTENT_TO_GA)


def item_to_beta(item: Any) -> Any:
    """A GA conversation item in beta shape (``output_audio`` → ``audio``)."""
    return _map_content(item, _CONTENT_TO_BETA)


def _map_content(item: Any, table: dict[str, str]) -> Any:
    if not isinstance(item, dict) or not isinstance(item.get("content"), list):
        return item
    content = [
        {**part, "type": table[part["type"]]}
        if isinstance(part, dict) and part.get("type") in table
        else part
        for part in item["content"]
    ]
    return {**item, "content": content}


def response_to_beta(response: Any, temperature: float) -> Any:
    """A GA response object in beta shape, with the temperature the client asked for."""
    if not isinstance(response, dict):
        return response
    beta = to_beta(response, RESPONSE_OBJECT)
    if isinstance(response.get("output"), list):
        beta["output"] = [item_to_beta(i) for i in response["output"]]
    beta["temperature"] = temperature
    return beta


def response_to_ga(response: Any) -> Any:
    if not isinstance(response, dict):
        return response
    ga = to_ga({k: v for k, v in response.items() if k != "output"}, RESPONSE_OBJECT)
    if isinstance(response.get("output"), list):
        ga["output"] = [item_to_ga(i) for i in response["output"]]
    return ga


# ------------------------------------------------------------------------------ error params

#: GA parameter paths and the beta field each names, longest GA path first.
_PARAMS: Final = tuple(
    sorted(
        {(".".join(f.ga), f.beta) for f in REALTIME_SESSION + RESPONSE_PARAMS if f.ga != (f.beta,)},
        key=lambda pair: -len(pair[0]),
    )
)


def param_to_beta(param: str | None) -> str | None:
    """The beta parameter behind a GA one: ``session.audio.output.voice`` → ``session.voice``,
    ``response.output_modalities`` → ``response.modalities``; other paths unchanged."""
    if not param:
        return param
    head, dot, rest = param.partition(".")
    if not dot or head not in ("session", "response"):
        return param
    for ga, beta in _PARAMS:
        if rest == ga or rest.startswith((ga + ".", ga + "[")):
            return f"{head}.{beta}{rest[len(ga) :]}"
    return param
