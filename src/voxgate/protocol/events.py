"""The event types of the Realtime wire, in one place (realtime-protocol.md §4, §5). Pure.

:data:`CLIENT_EVENT_TYPES` is what a GA WebSocket client may send; :data:`SUPPORTED_VALUES`
is the list the real server quotes when it refuses an unknown ``type`` (it also names two
types of the translation API that GA clients never send, §4), in the server's order.
"""

from __future__ import annotations

from typing import Final

APPEND: Final = "input_audio_buffer.append"

#: Client event types of the GA WebSocket protocol.
CLIENT_EVENT_TYPES: Final[frozenset[str]] = frozenset(
    {
        "session.update",
        APPEND,
        "input_audio_buffer.commit",
        "input_audio_buffer.clear",
        "conversation.item.create",
        "conversation.item.retrieve",
        "conversation.item.truncate",
        "conversation.item.delete",
        "response.create",
        "response.cancel",
    }
)

#: The real server's "Supported values are: …" list for an unknown ``type``.
SUPPORTED_VALUES: Final[tuple[str, ...]] = (
    "session.update",
    APPEND,
    "input_audio_buffer.clear",
    "input_audio_buffer.commit",
    "conversation.item.create",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "response.cancel",
    "response.create",
    "session.close",
    "session.input_audio_buffer.append",
)


def unsupported_type_message(event_type: object) -> str:
    """The real server's message for an unknown client event ``type`` (§7 ``invalid_value``)."""
    supported = ", ".join(f"'{t}'" for t in SUPPORTED_VALUES)
    return f"Invalid value: '{str(event_type)[:64]}'. Supported values are: {supported}."
