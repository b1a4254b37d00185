"""The session mirror: what voxgate keeps to rebuild a session on a fresh upstream. Pure.

DESIGN.md principle 2, issue #6. It follows the *upstream's* view (the server events), not the
client's requests, so it holds only what the upstream accepted:

* the effective session config (``session.created`` / ``session.updated``);
* the conversation items in order, as text: user text, transcripts of user audio, assistant
  text and audio transcripts, function calls and their outputs (assistant audio is never kept);
* the audio of the most recent user audio turns (so a turn whose transcript is not known yet
  is replayed as audio, not lost);
* the input audio appended since the last commit, as raw audio in one byte ring.

Memory: nothing per frame. Pending audio is one :class:`~voxgate.session.audio_ring.AudioRing`
(its own private memory mapping outside the C heap, the oldest cut from its front, consumed
pages given back; positions are integers), items and the config are kept as serialised JSON
strings, so a long call adds no objects for the garbage collector to walk and no holes for the
allocator.

Audio positions are bytes on the *client's* timeline: every byte the client appended in the
session, in order. Callers translate a new upstream's ``audio_*_ms`` to it before feeding
events in (see :mod:`voxgate.session.recovery`).

Bounds and policy (every one counted):

* items: up to ``items_limit_bytes`` of JSON; past it the oldest items are dropped first
  (``dropped_items``); the config and its instructions are always kept;
* turn audio: up to ``turn_audio_limit_bytes``; past it the oldest turns keep only their
  transcripts ("oldest audio items become their transcripts");
* pending audio: up to ``audio_limit_bytes``, oldest dropped first (``dropped_audio_bytes``);
  sized in seconds of the session's input format (``audio_limit_s``), converted at every
  ``session.created``/``.updated``.
  With server VAD and nobody speaking only the newest ``idle_keep_bytes`` are kept: the
  upstream needs no more than its prefix padding before speech, so an idle session holds
  about a second of audio, not minutes of silence.

Commits are driven by the caller (:mod:`voxgate.session.recovery`), which knows each
upstream's place on the client's timeline: ``speech_stopped`` marks where a VAD turn ends
(:meth:`speech_stopped_at`), and the audio leaves pending only when ``committed`` confirms it
(:meth:`commit_until`), so a cut between the two does not lose the turn. A manual commit takes
what was appended before the client sent it.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from voxgate.protocol import b64
from voxgate.protocol.formats import PCM, input_info
from voxgate.session.audio_ring import AudioRing

_b64decode = b64.decode
_pybase64_decode = b64.pybase64_decode

#: Fields of a session object a client may not send back in ``session.update``.
_SERVER_ONLY = ("object", "id", "expires_at")
#: Replayed audio goes out in appends of this many milliseconds.
REPLAY_CHUNK_MS = 100


def b64_len(b64: str) -> int:
    """Decoded length of a (length-checked) base64 string, without decoding it."""
    n = len(b64)
    if n < 2:
        return 0
    return n * 3 // 4 - (b64[-1] == "=") - (b64[-2] == "=")


class Mirror:
    def __init__(
        self,
        *,
        items_limit_bytes: int = 512 * 1024,
        audio_limit_bytes: int = 2 * 1024 * 1024,
        turn_audio_limit_bytes: int = 1024 * 1024,
        idle_keep_ms: int = 1000,
        audio_limit_s: float | None = None,
        turn_audio_limit_s: float | None = None,
    ) -> None:
        """Bounds in bytes, or (``*_s``) in seconds of the session's input format: a seconds
        bound is converted at every ``session.created``/``.updated`` (44 s is 2 MiB of 24 kHz
        PCM16 and 344 KiB of G.711)."""
        self.items_limit_bytes = items_limit_bytes
        self.audio_limit_s = audio_limit_s
        self.turn_audio_limit_s = turn_audio_limit_s
        self.audio_limit_bytes = (
            int(audio_limit_s * PCM.bytes_per_s) if audio_limit_s else audio_limit_bytes
        )
        self.turn_audio_limit_bytes = (
            int(turn_audio_limit_s * PCM.bytes_per_s)
            if turn_audio_limit_s
            else turn_audio_limit_bytes
        )
        self.idle_keep_ms = idle_keep_ms
        # Serialised as exact-size str: orjson's bytes keep its 16 KiB working buffer.
        self._session: str | None = None  # the effective config
        self._order: list[str] = []  # item ids in conversation order
        self._items: dict[str, str] = {}  # item id -> serialised item (no audio)
        self.items_bytes = 0
        self.dropped_items = 0
        self._turn_audio: dict[str, bytes] = {}  # oldest first
        self.turn_audio_bytes = 0
        # pending input audio, oldest first, in its own mapping sized for the bound
        self._ring = AudioRing(self.audio_limit_bytes)
        self._ring_start = 0  # client-timeline offset of _ring[0]
        self.dropped_audio_bytes = 0
        self.stream_bytes = 0  # every input byte the client appended, on its timeline
        self._bpm = PCM.bytes_per_ms
        self._vad = True
        self._idle_keep_bytes = idle_keep_ms * self._bpm
        self._idle_bound = min(self._idle_keep_bytes, self.audio_limit_bytes)
        #: pending audio up to here needs no check (with VAD off nothing is ever idle, so the
        #: appends of a push-to-talk turn make no call until the limit itself)
        self._fast_bound = self._idle_bound
        self.speaking = False  # between speech_started and the turn's commit
        self._vad_cut: int | None = None

    # ------------------------------------------------------------------ inputs

    def on_client_append(self, audio_b64: str) -> None:
        """The client appended base64 audio (about to be sent upstream). Once per append
        frame: :meth:`on_client_audio`'s fast path is repeated here, not called."""
        try:
            raw = (
                _pybase64_decode(audio_b64, None, True)  # b64.decode's body, without its call
                if _pybase64_decode is not None
                else _b64decode(audio_b64)
            )
        except ValueError:
            return  # not base64: the upstream rejects it, so it never enters its buffer
        size = self._ring.append(raw)
        self.stream_bytes += len(raw)
        if size > self._fast_bound:
            self._bound_pending(size)

    def on_client_audio(self, raw: bytes) -> None:
        """The client appended raw audio (a binary frame). Amortised O(len(raw)), no objects."""
        size = self._ring.append(raw)
        self.stream_bytes += len(raw)
        if size > self._fast_bound:
            self._bound_pending(size)

    def _bound_pending(self, size: int) -> None:
        """Pending audio holds ``size`` bytes, over the fast bound: cut the oldest to fit."""
        ring = self._ring
        idle = self._vad and not self.speaking and self._vad_cut is None
        limit = self._idle_bound if idle else self.audio_limit_bytes
        if size > limit:
            excess = size - limit
            ring.drop_front(excess)
            self._ring_start += excess
            if not idle:
                self.dropped_audio_bytes += excess  # idle trimming drops only silence

    def on_server_event(self, etype: str, event: dict[str, Any]) -> None:
        """Every non-audio server event, in order. Unknown types are ignored."""
        handler = _HANDLERS.get(etype)
        if handler is not None:
            handler(self, event)

    def commit_until(self, stream_offset: int, item_id: str | None) -> None:
        """The upstream committed the audio before ``stream_offset`` as ``item_id``.

        The item enters the mirror now (its ``conversation.item.added`` follows and updates it
        in place): a cut between the two must not lose the turn.
        """
        audio = self._take_pending(stream_offset)
        self.speaking = False
        self._vad_cut = None
        if item_id is not None and audio:
            self._keep_turn_audio(item_id, audio)
            if item_id not in self._items:
                self._put(
                    item_id,
                    {
                        "id": item_id,
                        "type": "message",
                        "role": "user",
                        "status": "completed",
                        "content": [{"type": "input_audio", "transcript": None}],
                    },
                )
                self._order.append(item_id)
                self._trim_items()

    def clear_pending(self) -> None:
        self._take_pending(self.stream_bytes)
        self.speaking = False
        self._vad_cut = None

    def drop_unfinished_items(self) -> list[str]:
        """Forget items still ``in_progress`` (their response was cut short); return their ids."""
        gone = [i for i in self._order if self._item(i).get("status") == "in_progress"]
        for item_id in gone:
            self._forget(item_id)
        return gone

    # ------------------------------------------------------------------ views

    @property
    def session(self) -> dict[str, Any] | None:
        return orjson.loads(self._session) if self._session is not None else None

    @property
    def items(self) -> list[dict[str, Any]]:
        return [self._item(i) for i in self._order]

    @property
    def bytes_per_ms(self) -> int:
        return self._bpm

    @property
    def vad_on(self) -> bool:
        return self._vad

    @property
    def pending_audio_bytes(self) -> int:
        return len(self._ring)

    @property
    def pending_start(self) -> int:
        """Client-timeline offset of the first pending byte (the stream end when none)."""
        return self._ring_start

    def pending_audio(self) -> bytes:
        return self._ring.peek(0, len(self._ring))

    def pending_chunks(self, max_bytes: int | None = None) -> list[tuple[int, bytes]]:
        """Pending audio as ``(client offset, bytes)`` chunks of at most ``max_bytes``.

        The default chunk is :data:`REPLAY_CHUNK_MS` of the session's format, whole samples.
        """
        step = max_bytes or self._bpm * REPLAY_CHUNK_MS
        ring, start = self._ring, self._ring_start
        return [(start + i, ring.peek(i, i + step)) for i in range(0, len(ring), step)]

    def pending_frames(self) -> list[tuple[int, str]]:
        """:meth:`pending_chunks` as base64 (what a replay appends)."""
        return [(at, b64.encode(raw)) for at, raw in self.pending_chunks()]

    def memory_bytes(self) -> int:
        """What the mirror holds: items JSON + turn audio + pending audio."""
        return self.items_bytes + self.turn_audio_bytes + len(self._ring)

    def config_event(self) -> dict[str, Any] | None:
        """``session.update`` restoring the effective config, or None before session.created."""
        session = self.session
        if session is None:
            return None
        config = {k: v for k, v in session.items() if k not in _SERVER_ONLY}
        return {"type": "session.update", "session": config}

    def item_events(self) -> list[tuple[str, dict[str, Any], bool]]:
        """``conversation.item.create`` events rebuilding the conversation, in order.

        Returns ``(item_id, event, as_audio)`` triples; ``as_audio`` is True for an assistant
        audio message replayed as text (the upstream cannot truncate it any more). Items keep
        their ids; an item whose content cannot be re-created (assistant audio without a
        transcript) is skipped, and ``previous_item_id`` is not sent (order is the send order).
        """
        out: list[tuple[str, dict[str, Any], bool]] = []
        for item_id in self._order:
            item = self._item(item_id)
            creatable = _creatable(item, self._turn_audio.get(item_id))
            if creatable is not None:
                was_audio = any(
                    isinstance(p, dict) and p.get("type") == "output_audio"
                    for p in item.get("content") or []
                )
                out.append(
                    (item_id, {"type": "conversation.item.create", "item": creatable}, was_audio)
                )
        return out

    def replay_events(self) -> list[dict[str, Any]]:
        """Config, items, then pending audio in 100 ms appends (what a fresh upstream needs)."""
        events: list[dict[str, Any]] = []
        config = self.config_event()
        if config is not None:
            events.append(config)
        events.extend(event for _, event, _ in self.item_events())
        for _, chunk in self.pending_frames():
            events.append({"type": "input_audio_buffer.append", "audio": chunk})
        return events

    # ------------------------------------------------------------------ snapshots (issue 17)

    @property
    def config_text(self) -> str | None:
        """The effective config as kept (serialised JSON), for a snapshot."""
        return self._session

    def item_texts(self) -> list[tuple[str, str]]:
        """``(item id, serialised item)`` in conversation order: the kept strings themselves
        (a snapshot writer finds what changed by identity, without comparing text)."""
        return [(item_id, self._items[item_id]) for item_id in self._order]

    def turn_audio_of(self, item_id: str) -> bytes | None:
        """The audio kept for a user turn (replayed as audio until its transcript is known)."""
        return self._turn_audio.get(item_id)

    def restore(
        self,
        config_text: str | None,
        items: list[tuple[str, str]],
        turn_audio: dict[str, bytes],
        stream_bytes: int,
    ) -> None:
        """Start a fresh mirror from a snapshot (another node's session): its config, items
        in order, the audio of turns not transcribed yet, and the client's audio position
        (nothing pending: the client re-sends what came after it)."""
        if config_text is not None:
            self._on_session({"session": orjson.loads(config_text)})
        for item_id, text in items:
            if item_id not in self._items:
                self._order.append(item_id)
                self.items_bytes += len(text)
                self._items[item_id] = text
        for item_id, audio in turn_audio.items():
            self._keep_turn_audio(item_id, audio)
        self._ring.clear()
        self.stream_bytes = self._ring_start = stream_bytes
        self._trim_items()

    # ------------------------------------------------------------------ handlers

    def _on_session(self, event: dict[str, Any]) -> None:
        session = event.get("session")
        if not isinstance(session, dict):
            return
        self._session = orjson.dumps(session).decode()
        fmt = input_info(session)
        self._bpm = fmt.bytes_per_ms
        if self.audio_limit_s:
            self.audio_limit_bytes = int(self.audio_limit_s * fmt.bytes_per_s)
            self._ring.reserve(self.audio_limit_bytes)
        if self.turn_audio_limit_s:
            self.turn_audio_limit_bytes = int(self.turn_audio_limit_s * fmt.bytes_per_s)
        self._idle_keep_bytes = self.idle_keep_ms * self._bpm
        self._idle_bound = min(self._idle_keep_bytes, self.audio_limit_bytes)
        audio_in = (session.get("audio") or {}).get("input") or {}
        self._vad = audio_in.get("turn_detection") is not None
        self._fast_bound = self._idle_bound if self._vad else self.audio_limit_bytes

    def _on_item(self, event: dict[str, Any]) -> None:
        item = event.get("item")
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            return
        item_id: str = item["id"]
        clean = _without_audio(item)
        if item_id in self._items:
            _keep_known_transcripts(self._item(item_id), clean)
            self._put(item_id, clean)
        else:
            self._put(item_id, clean)
            self._insert(item_id, event.get("previous_item_id"))
        self._trim_items()

    def _insert(self, item_id: str, previous: Any) -> None:
        """Put a new item right after ``previous`` (null or ``root``: first), as the server did."""
        order = self._order
        if previous == "root" or (previous is None and not order):
            order.insert(0, item_id)
        elif previous is None or previous not in self._items or previous == item_id:
            order.append(item_id)  # a null previous_item_id on a later item means "appended";
            # an unknown one was dropped by the bound, so the new item goes last
        else:
            order.insert(order.index(previous) + 1, item_id)

    def _item(self, item_id: str) -> dict[str, Any]:
        item: dict[str, Any] = orjson.loads(self._items[item_id])
        return item

    def _put(self, item_id: str, item: dict[str, Any]) -> None:
        data = orjson.dumps(item).decode()
        old = self._items.get(item_id)
        self.items_bytes += len(data) - (len(old) if old is not None else 0)
        self._items[item_id] = data

    def _trim_items(self) -> None:
        while self.items_bytes > self.items_limit_bytes and len(self._order) > 1:
            self._forget(self._order[0])
            self.dropped_items += 1

    def _forget(self, item_id: str) -> None:
        data = self._items.pop(item_id, None)
        if data is not None:
            self.items_bytes -= len(data)
            self._order.remove(item_id)
        audio = self._turn_audio.pop(item_id, None)
        if audio is not None:
            self.turn_audio_bytes -= len(audio)

    def _on_deleted(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        if isinstance(item_id, str):
            self._forget(item_id)

    def _on_transcribed(self, event: dict[str, Any]) -> None:
        item_id = str(event.get("item_id"))
        transcript = event.get("transcript")
        if item_id not in self._items or not isinstance(transcript, str):
            return
        item = self._item(item_id)
        for part in item.get("content") or []:
            if isinstance(part, dict) and part.get("type") == "input_audio":
                part["transcript"] = transcript
        self._put(item_id, item)
        self._trim_items()

    def speech_started(self) -> None:
        self.speaking = True

    def speech_stopped_at(self, stream_offset: int) -> None:
        """VAD says the turn ends at ``stream_offset``; applied when the commit is confirmed."""
        self._vad_cut = stream_offset

    @property
    def vad_cut(self) -> int | None:
        return self._vad_cut

    def _take_pending(self, stream_offset: int) -> bytes:
        """Remove and return the pending audio before ``stream_offset``."""
        cut = min(max(0, stream_offset - self._ring_start), len(self._ring))
        taken = self._ring.take_front(cut)
        self._ring_start += cut
        return taken

    def _keep_turn_audio(self, item_id: str, audio: bytes) -> None:
        old = self._turn_audio.pop(item_id, None)
        if old is not None:
            self.turn_audio_bytes -= len(old)
        self._turn_audio[item_id] = audio
        self.turn_audio_bytes += len(audio)
        while self.turn_audio_bytes > self.turn_audio_limit_bytes and self._turn_audio:
            oldest = next(iter(self._turn_audio))
            self.turn_audio_bytes -= len(self._turn_audio.pop(oldest))


def _without_audio(item: dict[str, Any]) -> dict[str, Any]:
    clean = {k: v for k, v in item.items() if k != "object"}
    content = clean.get("content")
    if isinstance(content, list):
        clean["content"] = [
            {k: v for k, v in part.items() if k != "audio"} if isinstance(part, dict) else part
            for part in content
        ]
    return clean


def _keep_known_transcripts(old: dict[str, Any], new: dict[str, Any]) -> None:
    """``item.done`` for a user audio item may say ``transcript: null`` after we learnt it."""
    for before, after in zip(old.get("content") or [], new.get("content") or [], strict=False):
        if (
            isinstance(before, dict)
            and isinstance(after, dict)
            and after.get("type") == "input_audio"
            and after.get("transcript") is None
            and before.get("transcript")
        ):
            after["transcript"] = before["transcript"]


def _creatable(item: dict[str, Any], turn_audio: bytes | None) -> dict[str, Any] | None:
    """The ``conversation.item.create`` shape of a mirrored item, or None if it has no content.

    Assistant audio cannot be re-created by a client, so ``output_audio`` becomes
    ``output_text`` with its transcript. User audio is re-sent as audio while the mirror still
    has it (a turn whose transcript is not known yet), else as ``input_text`` with its
    transcript.
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
        elif ptype == "input_audio" and turn_audio is not None and not part.get("transcript"):
            parts.append(
                {"type": "input_audio", "audio": base64.b64encode(turn_audio).decode("ascii")}
            )
        elif ptype in ("input_audio", "output_audio") and part.get("transcript"):
            text_type = "input_text" if ptype == "input_audio" else "output_text"
            parts.append({"type": text_type, "text": part["transcript"]})
    if not parts:
        return None
    return {"id": item["id"], "type": "message", "role": item.get("role"), "content": parts}


_HANDLERS = {
    "session.created": Mirror._on_session,
    "session.updated": Mirror._on_session,
    "conversation.item.added": Mirror._on_item,
    "conversation.item.done": Mirror._on_item,
    "conversation.item.created": Mirror._on_item,
    "conversation.item.deleted": Mirror._on_deleted,
    "conversation.item.input_audio_transcription.completed": Mirror._on_transcribed,
}

#: Server event types the mirror reads (the machine parses only these, plus its own).
MIRRORED_TYPES: frozenset[str] = frozenset(_HANDLERS)
