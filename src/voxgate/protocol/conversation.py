"""The server's conversation: ordered items and the client events that change them (§4).

Pure: no I/O, no clock, no logging. :class:`Conversation` keeps items in order with
``previous_item_id`` / ``"root"`` insertion and answers create / retrieve / delete / truncate,
raising :class:`ClientEventError` with the real server's codes; :func:`normalise_client_item`
checks a client's ``conversation.item.create``. The events these produce are built by
:mod:`voxgate.protocol.server_events`; a response's cycle by
:mod:`voxgate.protocol.response_builder`. It never decides what to answer.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping
from typing import Any, Final

from voxgate.protocol import ids
from voxgate.protocol.errors import ClientEventError
from voxgate.protocol.server_events import Item

ROOT: Final = "root"
_USER_CONTENT: Final = ("input_text", "input_audio", "input_image")
_CONTENT_BY_ROLE: Final[Mapping[str, tuple[str, ...]]] = {
    "user": _USER_CONTENT,
    "system": ("input_text",),
    "assistant": ("output_text",),
}


# Conversation state


class Conversation:
    """The ordered items of one session's default conversation.

    Bounded: at most ``max_items`` items (the oldest is dropped past it, as the real server
    truncates context) and ``max_audio_bytes`` of retained user audio (the oldest audio is
    forgotten first; ``retrieve`` then returns the item without its ``audio``).
    """

    def __init__(self, *, max_items: int = 4096, max_audio_bytes: int = 32 * 1024 * 1024) -> None:
        self._items: list[Item] = []
        self._audio: dict[str, bytes] = {}  # item id -> input audio bytes (insertion order)
        self._audio_ms: dict[str, float] = {}  # assistant item id -> output audio duration
        self._max_items = max_items
        self._max_audio_bytes = max_audio_bytes

    # -- reading

    @property
    def items(self) -> list[Item]:
        """Copies of the items, in order."""
        return [copy.deepcopy(i) for i in self._items]

    def snapshot(self) -> list[Item]:
        """The stored items themselves, in order (a new list; callers must not mutate them).

        What a response reads as its context: a deep copy per response would cost O(length of
        the conversation) on every turn, which grows without bound in a long call.
        """
        return list(self._items)

    @property
    def last_item_id(self) -> str | None:
        return self._items[-1]["id"] if self._items else None

    def get(self, item_id: str) -> Item | None:
        """The stored item (not a copy), or None."""
        for item in self._items:
            if item["id"] == item_id:
                return item
        return None

    def __contains__(self, item_id: object) -> bool:
        return any(i["id"] == item_id for i in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def audio_of(self, item_id: str) -> bytes | None:
        """Retained input audio of a user item, or None."""
        return self._audio.get(item_id)

    # -- writing

    def insert(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Insert a normalised item; return the id of the item now before it (or None).

        ``previous_item_id`` None appends, ``"root"`` puts first. Raises ``KeyError`` on an
        unknown id (callers validate first with :meth:`check_previous`).
        """
        if previous_item_id is None:
            index = len(self._items)
        elif previous_item_id == ROOT:
            index = 0
        else:
            index = self._index(previous_item_id) + 1
        self._items.insert(index, item)
        while len(self._items) > self._max_items:
            dropped = self._items.pop(0)
            self._audio.pop(dropped["id"], None)
            self._audio_ms.pop(dropped["id"], None)
        pos = self._index(item["id"])
        return self._items[pos - 1]["id"] if pos > 0 else None

    def replace(self, item: Item) -> None:
        """Replace the stored item with the same id (e.g. an assistant item when it finishes)."""
        self._items[self._index(item["id"])] = item

    def attach_audio(self, item_id: str, audio: bytes) -> None:
        """Retain a user item's input audio, within ``max_audio_bytes``."""
        if len(audio) > self._max_audio_bytes:
            return
        self._audio[item_id] = audio
        total = sum(len(a) for a in self._audio.values())
        while total > self._max_audio_bytes:
            oldest = next(iter(self._audio))
            total -= len(self._audio.pop(oldest))

    def set_audio_duration(self, item_id: str, ms: float) -> None:
        """Record how much output audio an assistant item has (bounds ``truncate``)."""
        self._audio_ms[item_id] = ms

    def audio_duration(self, item_id: str) -> float | None:
        return self._audio_ms.get(item_id)

    # -- client operations (§4)

    def check_previous(self, previous_item_id: Any, *, event_id: str | None) -> None:
        if previous_item_id is None or previous_item_id == ROOT or previous_item_id in self:
            return
        raise ClientEventError(
            f"Invalid 'previous_item_id': no item with id '{previous_item_id}' in the "
            "conversation.",
            code="invalid_value",
            param="previous_item_id",
            event_id=event_id,
        )

    def create(
        self,
        item: Any,
        *,
        previous_item_id: str | None,
        new_item_id: str,
        event_id: str | None,
    ) -> tuple[Item, str | None]:
        """Handle ``conversation.item.create``: validate, normalise and insert the item.

        Returns:
            ``(stored item, previous_item_id)``; the caller emits :func:`item_added` and
            :func:`item_done` with them.

        Raises:
            ClientEventError: bad item shape, duplicate id or unknown ``previous_item_id``.
        """
        normalised = normalise_client_item(item, new_item_id=new_item_id, event_id=event_id)
        if normalised["id"] in self:
            raise ClientEventError(
                f"Invalid 'item.id': an item with id '{normalised['id']}' already exists.",
                code="invalid_value",
                param="item.id",
                event_id=event_id,
            )
        self.check_previous(previous_item_id, event_id=event_id)
        audio = b""
        for part in normalised.get("content") or []:
            if part.get("type") == "input_audio" and isinstance(part.get("audio"), str):
                audio += _b64decode(part["audio"], event_id=event_id)
        previous = self.insert(normalised, previous_item_id)
        if audio:
            self.attach_audio(normalised["id"], audio)
        return normalised, previous

    def retrieve(self, item_id: Any, *, event_id: str | None) -> Item:
        """Handle ``conversation.item.retrieve``: the full item, including input audio."""
        item = self.get(item_id) if isinstance(item_id, str) else None
        if item is None:
            raise ClientEventError(
                f"Invalid 'item_id': no item with id '{item_id}' in the conversation.",
                code="item_retrieve_invalid_item_id",
                param="item_id",
                event_id=event_id,
            )
        full = copy.deepcopy(item)
        audio = self._audio.get(item["id"])
        if audio is not None:
            for part in full.get("content") or []:
                if part.get("type") == "input_audio":
                    part["audio"] = base64.b64encode(audio).decode("ascii")
        return full

    def delete(self, item_id: Any, *, event_id: str | None) -> None:
        """Handle ``conversation.item.delete``."""
        if not isinstance(item_id, str) or item_id not in self:
            raise ClientEventError(
                f"Invalid 'item_id': no item with id '{item_id}' in the conversation.",
                code="item_delete_invalid_item_id",
                param="item_id",
                event_id=event_id,
            )
        del self._items[self._index(item_id)]
        self._audio.pop(item_id, None)
        self._audio_ms.pop(item_id, None)

    def truncate(
        self, item_id: Any, content_index: Any, audio_end_ms: Any, *, event_id: str | None
    ) -> None:
        """Handle ``conversation.item.truncate`` on an assistant audio item.

        The transcript beyond ``audio_end_ms`` is removed (proportionally to the audio cut).

        Raises:
            ClientEventError: ``item_truncate_invalid_item_id`` for an unknown or non-audio
                item, ``invalid_value`` when ``audio_end_ms`` is past the audio's end.
        """
        item = self.get(item_id) if isinstance(item_id, str) else None
        duration = self._audio_ms.get(item_id) if isinstance(item_id, str) else None
        if item is None or item.get("role") != "assistant" or duration is None:
            raise ClientEventError(
                f"Invalid 'item_id': only model output audio messages can be truncated; "
                f"'{item_id}' is not one.",
                code="item_truncate_invalid_item_id",
                param="item_id",
                event_id=event_id,
            )
        content = item.get("content") or []
        if not isinstance(content_index, int) or not 0 <= content_index < len(content):
            raise ClientEventError(
                f"Invalid 'content_index': {content_index}.",
                code="invalid_value",
                param="content_index",
                event_id=event_id,
            )
        if not isinstance(audio_end_ms, int) or isinstance(audio_end_ms, bool) or audio_end_ms < 0:
            raise ClientEventError(
                f"Invalid 'audio_end_ms': {audio_end_ms}.",
                code="invalid_value",
                param="audio_end_ms",
                event_id=event_id,
            )
        if audio_end_ms > duration:
            raise ClientEventError(
                f"Audio content of {int(duration)}ms is already shorter than {audio_end_ms}ms",
                code="invalid_value",
                param="audio_end_ms",
                event_id=event_id,
            )
        part = content[content_index]
        transcript = part.get("transcript") or ""
        keep = int(len(transcript) * (audio_end_ms / duration)) if duration else 0
        part["transcript"] = transcript[:keep]
        self._audio_ms[item_id] = float(audio_end_ms)

    def _index(self, item_id: str) -> int:
        for i, item in enumerate(self._items):
            if item["id"] == item_id:
                return i
        raise KeyError(item_id)


def _b64decode(data: str, *, event_id: str | None) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        raise ClientEventError(
            "Invalid 'audio': expected base64-encoded audio.",
            code="invalid_value",
            param="audio",
            event_id=event_id,
        ) from None


def normalise_client_item(item: Any, *, new_item_id: str, event_id: str | None) -> Item:
    """Validate a client item (§4 shapes) and fill ``id``, ``object`` and ``status``."""

    def bad(message: str, param: str, code: str = "invalid_value") -> ClientEventError:
        return ClientEventError(message, code=code, param=param, event_id=event_id)

    if not isinstance(item, dict):
        raise bad("Invalid type for 'item': expected an object.", "item", "invalid_type")
    out = copy.deepcopy(item)
    kind = out.get("type")
    if kind == "message":
        role = out.get("role")
        if role not in _CONTENT_BY_ROLE:
            raise bad(
                f"Invalid value: '{role}'. Supported values are: 'user', 'assistant', 'system'.",
                "item.role",
            )
        content = out.get("content")
        if not isinstance(content, list):
            raise bad(
                "Missing required parameter: 'item.content'.",
                "item.content",
                "missing_required_parameter",
            )
        allowed = _CONTENT_BY_ROLE[str(role)]
        for i, part in enumerate(content):
            ptype = part.get("type") if isinstance(part, dict) else None
            if ptype not in allowed:
                supported = ", ".join(f"'{a}'" for a in allowed)
                raise bad(
                    f"Invalid value: '{ptype}'. Supported values are: {supported}.",
                    f"item.content[{i}].type",
                )
            if ptype == "input_audio":
                part.setdefault("transcript", None)
    elif kind == "function_call":
        for key in ("name", "arguments"):
            if not isinstance(out.get(key), str):
                raise bad(
                    f"Missing required parameter: 'item.{key}'.",
                    f"item.{key}",
                    "missing_required_parameter",
                )
        out.setdefault("call_id", ids.call_id())
    elif kind == "function_call_output":
        for key in ("call_id", "output"):
            if not isinstance(out.get(key), str):
                raise bad(
                    f"Missing required parameter: 'item.{key}'.",
                    f"item.{key}",
                    "missing_required_parameter",
                )
    else:
        raise bad(
            f"Invalid value: '{kind}'. Supported values are: 'message', 'function_call', "
            "'function_call_output'.",
            "item.type",
        )
    out["id"] = out.get("id") or new_item_id
    out["object"] = "realtime.item"
    out.setdefault("status", "completed")
    return out
