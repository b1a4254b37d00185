"""The session mirror: what voxgate must keep to rebuild a session on a fresh upstream. Pure.

Groundwork for upstream reconnect (issue #6); DESIGN.md principle 2. It follows the
*upstream's* view (the server events), not the client's requests, so it holds only what the
upstream accepted:

* the effective session config (``session.created`` / ``session.updated``);
* the conversation items in order, as text: user text, transcripts of user audio, assistant
  text and audio transcripts, function calls and their outputs (audio bytes are never kept);
* the input audio appended since the last commit, as the original append frames.

Bounds and policy: items are kept up to ``items_limit_bytes`` (their JSON size); past it the
oldest items are dropped first and counted in ``dropped_items`` (a replayed conversation then
starts later; the session config's instructions are always kept). Uncommitted audio is kept up
to ``audio_limit_bytes``; past it the oldest frames are dropped and counted in
``dropped_audio_bytes``. With server VAD the upstream commits on its own: the mirror uses
``speech_stopped.audio_end_ms`` to cut the committed part off the pending audio exactly, to the
byte, so a replay re-sends only what the upstream had not committed.
"""

from __future__ import annotations

import base64
import binascii
from collections import OrderedDict, deque
from typing import Any

import orjson

#: Fields of a session object a client may not send back in ``session.update``.
_SERVER_ONLY = ("object", "id", "expires_at")
_BYTES_PER_MS = {"audio/pcm": 48, "audio/pcmu": 8, "audio/pcma": 8}


def _b64_len(b64: str) -> int:
    return len(b64) * 3 // 4 - b64.count("=", max(0, len(b64) - 2))


class Mirror:
    def __init__(self, *, items_limit_bytes: int, audio_limit_bytes: int) -> None:
        self.items_limit_bytes = items_limit_bytes
        self.audio_limit_bytes = audio_limit_bytes
        self.session: dict[str, Any] | None = None
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._item_sizes: dict[str, int] = {}
        self.items_bytes = 0
        self.dropped_items = 0
        # pending audio: (stream offset in bytes of the frame's first byte, base64 text)
        self._pending: deque[tuple[int, str]] = deque()
        self.pending_audio_bytes = 0
        self.dropped_audio_bytes = 0
        self._stream_bytes = 0  # every input byte appended in the session, as the upstream counts

    # ------------------------------------------------------------------ inputs

    def on_client_append(self, audio_b64: str) -> None:
        """The client appended audio (already forwarded upstream).

        Cheap enough for the audio path: the base64 text is kept as is and its byte length
        computed from its length; it is decoded only when a commit cuts through it or when
        the pending audio is replayed.
        """
        size = _b64_len(audio_b64)
        self._pending.append((self._stream_bytes, audio_b64))
        self._stream_bytes += size
        self.pending_audio_bytes += size
        while self.pending_audio_bytes > self.audio_limit_bytes and self._pending:
            _, dropped = self._pending.popleft()
            dropped_size = _b64_len(dropped)
            self.pending_audio_bytes -= dropped_size
            self.dropped_audio_bytes += dropped_size

    def on_server_event(self, etype: str, event: dict[str, Any]) -> None:
        """Every non-audio server event, in order. Unknown types are ignored."""
        handler = _HANDLERS.get(etype)
        if handler is not None:
            handler(self, event)

    # ------------------------------------------------------------------ views

    @property
    def items(self) -> list[dict[str, Any]]:
        return list(self._items.values())

    def pending_audio(self) -> bytes:
        """The uncommitted audio, decoded (undecodable frames count as empty: the upstream
        rejected them too, so they were never in its buffer)."""
        return b"".join(_decode(b64) for _, b64 in self._pending)

    def replay_events(self) -> list[dict[str, Any]]:
        """Client events that rebuild this session on a fresh upstream, in order.

        ``session.update`` with the effective config, one ``conversation.item.create`` per
        item (items keep their ids, so ``previous_item_id`` chains hold), then the pending
        audio in frames of at most 100 ms.
        """
        events: list[dict[str, Any]] = []
        if self.session is not None:
            config = {k: v for k, v in self.session.items() if k not in _SERVER_ONLY}
            events.append({"type": "session.update", "session": config})
        for item in self._items.values():
            creatable = _creatable(item)
            if creatable is not None:
                events.append({"type": "conversation.item.create", "item": creatable})
        step = self._bytes_per_ms() * 100
        audio = self.pending_audio()
        for i in range(0, len(audio), step):
            chunk = base64.b64encode(audio[i : i + step]).decode("ascii")
            events.append({"type": "input_audio_buffer.append", "audio": chunk})
        return events

    # ------------------------------------------------------------------ handlers

    def _bytes_per_ms(self) -> int:
        fmt = (((self.session or {}).get("audio") or {}).get("input") or {}).get("format") or {}
        return _BYTES_PER_MS.get(str(fmt.get("type", "audio/pcm")), 48)

    def _session(self, event: dict[str, Any]) -> None:
        session = event.get("session")
        if isinstance(session, dict):
            self.session = session

    def _item(self, event: dict[str, Any]) -> None:
        item = event.get("item")
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            return
        item_id: str = item["id"]
        clean = _without_audio(item)
        if item_id in self._items:
            self._items[item_id] = clean
        else:
            self._insert(item_id, clean, event.get("previous_item_id"))
        self._account(item_id)

    def _insert(self, item_id: str, item: dict[str, Any], previous: Any) -> None:
        """Put a new item right after ``previous`` (null or ``root``: first), as the server did."""
        self._items[item_id] = item
        if previous is None or previous == "root":
            self._items.move_to_end(item_id, last=False)
            return
        if previous not in self._items:
            return  # its predecessor was dropped by the bound: it stays last
        keys = list(self._items)
        for key in keys[keys.index(previous) + 1 : -1]:
            self._items.move_to_end(key)  # the items after ``previous`` go after the new one

    def _account(self, item_id: str) -> None:
        size = len(orjson.dumps(self._items[item_id]))
        self.items_bytes += size - self._item_sizes.get(item_id, 0)
        self._item_sizes[item_id] = size
        while self.items_bytes > self.items_limit_bytes and len(self._items) > 1:
            oldest, _ = self._items.popitem(last=False)
            self.items_bytes -= self._item_sizes.pop(oldest, 0)
            self.dropped_items += 1

    def _deleted(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        if isinstance(item_id, str) and self._items.pop(item_id, None) is not None:
            self.items_bytes -= self._item_sizes.pop(item_id, 0)

    def _transcribed(self, event: dict[str, Any]) -> None:
        item = self._items.get(str(event.get("item_id")))
        transcript = event.get("transcript")
        if item is None or not isinstance(transcript, str):
            return
        for part in item.get("content") or []:
            if isinstance(part, dict) and part.get("type") == "input_audio":
                part["transcript"] = transcript
        self._account(str(event.get("item_id")))

    def _speech_stopped(self, event: dict[str, Any]) -> None:
        end_ms = event.get("audio_end_ms")
        if isinstance(end_ms, int | float):
            self._commit_until(int(end_ms * self._bytes_per_ms()))

    def _committed(self, event: dict[str, Any]) -> None:
        # With server VAD the cut was set by speech_stopped (audio after it stays pending);
        # a manual commit takes everything appended so far.
        if not self._vad_on():
            self._commit_until(self._stream_bytes)

    def _cleared(self, event: dict[str, Any]) -> None:
        self._commit_until(self._stream_bytes)

    def _vad_on(self) -> bool:
        audio_in = ((self.session or {}).get("audio") or {}).get("input") or {}
        return audio_in.get("turn_detection") is not None

    def _commit_until(self, stream_offset: int) -> None:
        """Drop pending audio before ``stream_offset`` (bytes since the session began)."""
        while self._pending:
            start, b64 = self._pending[0]
            end = start + _b64_len(b64)
            if end <= stream_offset:
                self._pending.popleft()
                self.pending_audio_bytes -= end - start
            elif start < stream_offset:
                cut = stream_offset - start
                rest = _decode(b64)[cut:]
                self._pending[0] = (stream_offset, base64.b64encode(rest).decode("ascii"))
                self.pending_audio_bytes -= cut
                return
            else:
                return


def _decode(b64: str) -> bytes:
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return b""


def _without_audio(item: dict[str, Any]) -> dict[str, Any]:
    clean = {k: v for k, v in item.items() if k != "object"}
    content = clean.get("content")
    if isinstance(content, list):
        clean["content"] = [
            {k: v for k, v in part.items() if k != "audio"} if isinstance(part, dict) else part
            for part in content
        ]
    return clean


def _creatable(item: dict[str, Any]) -> dict[str, Any] | None:
    """The ``conversation.item.create`` shape of a mirrored item, or None if it has no text.

    Audio cannot be re-created by a client (assistant audio never; user audio is gone), so
    audio parts become their transcripts: ``input_audio`` → ``input_text``, ``output_audio`` →
    ``output_text``.
    """
    kind = item.get("type")
    if kind in ("function_call", "function_call_output"):
        keep = ("id", "type", "call_id", "name", "arguments", "output")
        return {k: item[k] for k in keep if k in item}
    if kind != "message":
        return None
    parts: list[dict[str, Any]] = []
    for part in item.get("content") or []:
        if not isinstance(part, dict):
            continue
        ptype = part.get("type")
        if ptype in ("input_text", "output_text", "input_image"):
            parts.append(dict(part))
        elif ptype in ("input_audio", "output_audio") and part.get("transcript"):
            text_type = "input_text" if ptype == "input_audio" else "output_text"
            parts.append({"type": text_type, "text": part["transcript"]})
    if not parts:
        return None
    return {"id": item["id"], "type": "message", "role": item.get("role"), "content": parts}


_HANDLERS = {
    "session.created": Mirror._session,
    "session.updated": Mirror._session,
    "conversation.item.added": Mirror._item,
    "conversation.item.done": Mirror._item,
    "conversation.item.created": Mirror._item,
    "conversation.item.deleted": Mirror._deleted,
    "conversation.item.input_audio_transcription.completed": Mirror._transcribed,
    "input_audio_buffer.speech_stopped": Mirror._speech_stopped,
    "input_audio_buffer.committed": Mirror._committed,
    "input_audio_buffer.cleared": Mirror._cleared,
}
