"""Read an event's ``type`` without decoding the frame (DESIGN.md principle 1).

Audio events are most of the traffic: a 20 ms PCM16 frame is ~1.3 KB of base64 inside JSON.
The relay only needs the ``type`` to route a frame, then forwards the original text.

Two fast paths cover the serialisers the SDKs use:

* ``type`` is the first key (openai-python, the real server, browsers):
  ``{"type":"x"…`` or ``{"type": "x"…``;
* ``type`` is the last key (pydantic's ``model_dump`` order in openai-agents puts ``audio``
  first): ``…"type": "x"}``.

Both are exact: a JSON string cannot contain an unescaped quote, so ``"type"`` followed by a
colon is a key; at the start it is the first top-level key, and at the end, followed only by the
closing brace, it is the last top-level key (a nested one would be followed by another brace).
Anything else falls back to a full parse. Pure; no I/O.
"""

from __future__ import annotations

from typing import Any

import orjson

_HEAD = '{"type":'
_HEAD_LEN = len(_HEAD)
_TAIL_KEY = '"type"'


class NotAnEvent(ValueError):
    """The frame is not a JSON object with a string ``type``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _head_type(text: str) -> str | None:
    if not text.startswith(_HEAD):
        return None
    i = _HEAD_LEN
    if text[i : i + 1] == " ":
        i += 1
    if text[i : i + 1] != '"':
        return None
    j = text.find('"', i + 1)
    if j < 0:
        return None
    value = text[i + 1 : j]
    if "\\" in value:
        return None
    if text.find('"type"', j) >= 0:
        # A second "type": nested (session.type), or a duplicate top-level key whose last value
        # a JSON parser keeps. A frame that means one thing to voxgate and another to the
        # upstream is refused, never forwarded.
        parsed = parse_event(text)[0]
        if parsed != value:
            raise NotAnEvent("invalid_event", "Invalid event: duplicate 'type' key.")
    return value


def _tail_type(text: str) -> str | None:
    end = len(text.rstrip())
    if end < 2 or text[end - 1] != "}" or text[end - 2] != '"':
        return None
    k = text.rfind(_TAIL_KEY, 0, end)
    if k <= 0:
        return None
    i = k + len(_TAIL_KEY)
    while text[i] in " \t\r\n":
        i += 1
    if text[i] != ":":
        return None
    i += 1
    while text[i] in " \t\r\n":
        i += 1
    if text[i] != '"':
        return None
    j = text.find('"', i + 1)
    if j != end - 2:
        return None
    value = text[i + 1 : j]
    return None if "\\" in value else value


def event_type(text: str) -> str:
    """Return the top-level ``type`` of a client or server event.

    Raises:
        NotAnEvent: the text is not JSON (``invalid_json``) or not an object with a string
            ``type`` (``invalid_event``).
    """
    found = _head_type(text)
    if found is not None:
        return found
    found = _tail_type(text)
    if found is not None:
        return found
    return parse_event(text)[0]


def parse_event(text: str | bytes) -> tuple[str, dict[str, Any]]:
    """Fully parse a frame into ``(type, event)``.

    Raises:
        NotAnEvent: as :func:`event_type`.
    """
    try:
        event = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise NotAnEvent(
            "invalid_json", f"Invalid event: failed to parse JSON value ({exc.msg})."
        ) from None
    if not isinstance(event, dict):
        raise NotAnEvent("invalid_event", "Invalid event: expected a JSON object.")
    etype = event.get("type")
    if not isinstance(etype, str):
        raise NotAnEvent("invalid_event", "Invalid event: missing or non-string 'type'.")
    return etype, event


def client_event_id(text: str) -> str | None:
    """Best-effort ``event_id`` of a client frame, for echoing in ``error.event_id``."""
    try:
        event = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if isinstance(event, dict):
        value = event.get("event_id")
        return value if isinstance(value, str) else None
    return None


#: The two ways the SDKs and voxgate's own client serialise an append (compact, and Python's
#: ``json.dumps`` default separators): exactly these keys in this order, nothing else.
_APPEND_AUDIO_HEADS = (
    '{"type":"input_audio_buffer.append","audio":"',
    '{"type": "input_audio_buffer.append", "audio": "',
)
_COMPACT_HEAD, _SPACED_HEAD = _APPEND_AUDIO_HEADS


def append_audio_start(text: str) -> int:
    """Where the base64 of a plain append starts, or -1 (then use :func:`event_type`).

    A plain append is exactly ``{"type":"input_audio_buffer.append","audio":"<b64>"}`` (or the
    same with ``json.dumps`` spacing). One bounded check on the audio span decides it: the span
    runs to the closing ``"}`` with no quote and no backslash inside, so the frame holds no
    second key (no smuggled ``type``) and the audio needs no unescaping; its text is
    ``text[start:-2]``.
    """
    if text.startswith(_COMPACT_HEAD):
        start = 45
    elif text.startswith(_SPACED_HEAD):
        start = 48
    else:
        return -1
    end = len(text) - 2
    # The first quote after the audio's start is the closing one at ``end`` and the last
    # character is the brace (so the frame ends in ``"}``); no backslash after the start
    # (``"}`` holds none). Two-argument finds and an index: each method argument CPython
    # parses costs ~150 instructions, and this runs once per append frame.
    if (
        end < start
        or text.find('"', start) != end
        or text[-1] != "}"
        or text.find("\\", start) >= 0
    ):
        return -1
    return start
