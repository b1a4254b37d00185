"""What the fake "model" says: deterministic replies, tool calls and transcripts.

Pure. The fake upstream asks a *responder* what each response contains and a *transcriber*
what a committed audio turn said. Both are plain callables a test may replace
(``FakeRealtimeServer(responder=..., transcriber=...)``); the defaults are:

* reply to a ``function_call_output`` (the latest context item): say
  ``"The <tool> tool returned: <output>"``;
* otherwise, when function tools are available and ``tool_choice`` allows them: call the tool
  named by ``tool_choice``, the first tool for ``"required"``, or a tool whose name appears in
  the latest user text; arguments come from the tool's JSON schema (:func:`schema_arguments`);
* otherwise say ``"You said: <latest user text>"`` (or describe the audio when there is no text).

The default transcript of a committed turn is ``"<N> ms of audio"``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from voxgate.protocol.realtime_server import ResponseContext
from voxgate.protocol.session_config import duration_ms

__all__ = [
    "CallTool",
    "Reply",
    "Responder",
    "ResponseContext",
    "Say",
    "Transcriber",
    "default_responder",
    "default_transcriber",
    "schema_arguments",
]


@dataclass(frozen=True)
class Say:
    """Answer with this text (and, for an audio response, a synthetic voice for it)."""

    text: str


@dataclass(frozen=True)
class CallTool:
    """Call a function tool with these JSON ``arguments``."""

    name: str
    arguments: str


Reply = Sequence[Say | CallTool]


Responder = Callable[[ResponseContext], Reply]
Transcriber = Callable[[bytes, Mapping[str, Any]], str]


def default_transcriber(audio: bytes, fmt: Mapping[str, Any]) -> str:
    """Describe the audio: ``"<N> ms of audio"``."""
    return f"{round(duration_ms(len(audio), fmt))} ms of audio"


def default_responder(ctx: ResponseContext) -> Reply:
    """The deterministic policy described in the module docstring."""
    last = ctx.items[-1] if ctx.items else None
    if last is not None and last.get("type") == "function_call_output":
        name = _tool_name_for_call(ctx.items, str(last.get("call_id")))
        return [Say(f"The {name} tool returned: {last.get('output')}")]
    text = ctx.latest_user_text()
    tool = _pick_tool(ctx, text)
    if tool is not None:
        return [CallTool(str(tool["name"]), schema_arguments(tool.get("parameters")))]
    if text is None:
        return [Say("I heard you.")]
    return [Say(f"You said: {text}")]


def _tool_name_for_call(items: Sequence[Mapping[str, Any]], call_id: str) -> str:
    for item in reversed(items):
        if item.get("type") == "function_call" and item.get("call_id") == call_id:
            return str(item.get("name"))
    return "requested"


def _pick_tool(ctx: ResponseContext, text: str | None) -> Mapping[str, Any] | None:
    tools = [t for t in ctx.tools if t.get("type") == "function" and t.get("name")]
    choice = ctx.tool_choice
    if not tools or choice == "none":
        return None
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        return next((t for t in tools if t["name"] == choice.get("name")), None)
    if choice == "required":
        return tools[0]
    lowered = (text or "").lower()
    return next((t for t in tools if str(t["name"]).lower() in lowered), None)


def schema_arguments(schema: Any) -> str:
    """Deterministic JSON arguments for a JSON schema: one value per property by type.

    Strings become ``"test"`` (or the first ``enum`` value), numbers ``1``, booleans ``true``,
    arrays ``[]`` and objects are filled recursively.
    """
    return json.dumps(_value_for(schema if isinstance(schema, Mapping) else {}), sort_keys=True)


def _value_for(schema: Mapping[str, Any]) -> Any:
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: _value_for(sub) for name, sub in props.items() if isinstance(sub, Mapping)}
    defaults: dict[Any, Any] = {
        "string": "test",
        "integer": 1,
        "number": 1,
        "boolean": True,
        "array": [],
    }
    return defaults.get(kind, "test")
