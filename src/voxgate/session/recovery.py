"""Recovery: what an upstream reconnect needs beyond the mirror, and the fix-ups after one. Pure.

Issue #6. The session machine feeds this module every control frame it sends upstream and every
non-audio server event; the runner asks it for a replay when an upstream is lost. It owns:

* the :class:`~voxgate.session.mirror.Mirror` (config, items, audio), always in the *client's*
  ids and on the client's audio timeline;
* control events sent but not yet acknowledged (a cut between sending and the ack must neither
  lose them nor apply them twice): they are re-sent after the replay, at the same place in the
  audio stream, and forgotten after their ack, an error naming them, or ``ack_ttl_s``;
* the running responses, so a cut ends each one toward the client with a terminal
  ``response.done`` (status ``failed``, the cause in ``status_details.error``; never a new
  ``reason``, realtime-protocol.md §11);
* the user's turn in progress, so the new upstream's VAD events for audio the client already
  heard about are folded into the ones it saw (same item id, no second ``speech_started``);
* the id map (upstream → client) and the audio offset of the current upstream, applied to
  every server event that carries an item id or ``audio_*_ms``, and the reverse map applied to
  client events.

Nothing here does I/O or reads a clock; ``now`` comes from the caller. The rebuild itself
(which events to send a fresh upstream, in which order) is
:class:`~voxgate.session.replay_driver.ReplayDriver`'s, through the public methods below.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import orjson

from voxgate.protocol.ids import event_id as new_event_id
from voxgate.session.mirror import MIRRORED_TYPES, Mirror

#: Server event type → the client event type it acknowledges.
ACK_OF: dict[str, str] = {
    "session.updated": "session.update",
    "conversation.item.added": "conversation.item.create",
    "conversation.item.created": "conversation.item.create",
    "conversation.item.retrieved": "conversation.item.retrieve",
    "conversation.item.truncated": "conversation.item.truncate",
    "conversation.item.deleted": "conversation.item.delete",
    "input_audio_buffer.committed": "input_audio_buffer.commit",
    "input_audio_buffer.cleared": "input_audio_buffer.clear",
    "response.created": "response.create",
}
#: Client events kept until acknowledged (``response.cancel`` is not: after a cut the response
#: it aimed at is over anyway).
TRACKED_CLIENT_TYPES: frozenset[str] = frozenset(ACK_OF.values())
_SPEECH = (
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.timeout_triggered",
)
#: Server events this module must parse (everything else passes by its sniffed type only).
PARSED_SERVER_TYPES: frozenset[str] = frozenset(
    MIRRORED_TYPES
    | set(ACK_OF)
    | set(_SPEECH)
    | {"response.created", "response.done", "response.output_item.done", "error"}
)
_ID_FIELDS = ("item_id", "previous_item_id")
_MAX_PENDING = 64
_MAX_LOCAL_IDS = 512


@dataclass(slots=True)
class Sent:
    etype: str
    text: str
    client_event_id: str | None
    offset: int  # client audio position when it was sent (manual commits cut there)
    sent_at: float
    item_key: tuple[Any, Any, Any, Any] | None = None  # (id, type, role, first part type)


@dataclass(slots=True)
class _Response:
    body: dict[str, Any]
    client_requested: bool
    completed_outputs: int = 0


class Recovery:
    """Per-session recovery state. See the module docstring."""

    def __init__(self, mirror: Mirror, *, ack_ttl_s: float = 10.0) -> None:
        self.mirror = mirror
        #: the hot path records audio with these (the mirror's own methods: no wrapper frames)
        self.record_b64 = mirror.on_client_append
        self.record_pcm = mirror.on_client_audio
        self.ack_ttl_s = ack_ttl_s
        self._pending: deque[Sent] = deque()
        self._responses: dict[str, _Response] = {}
        self._turn_item: str | None = None  # the client's item id of the user turn in progress
        self._turn_stopped = False
        self._to_client: dict[str, str] = {}
        self._to_upstream: dict[str, str] = {}
        self._offset = 0  # client audio position of the current upstream's first byte
        self._offset_ms = 0
        self._swallow: set[str] = set()  # speech events the client already saw for this turn
        self._swallow_done: set[str] = set()  # item.done acks of replayed items still to come
        self.local_truncate_ids: set[str] = set()
        self._committed_ids: deque[str] = deque(maxlen=8)  # turns the input buffer committed
        self.reconnects = 0  # begin() calls: upstreams lost in this session

    # ------------------------------------------------------------------ state queries

    @property
    def response_active(self) -> bool:
        return bool(self._responses)

    def is_quiet(self, now: float) -> bool:
        """No response running, nobody speaking, nothing waiting for an ack: safe to move."""
        pending = self._pending
        while pending and now - pending[0].sent_at > self.ack_ttl_s:
            pending.popleft()
        return not self._responses and not self.mirror.speaking and not pending

    # ------------------------------------------------------------------ snapshots (issue 17)

    def running(self) -> list[tuple[str, bool, int]]:
        """Responses running now: ``(response JSON, client_requested, completed outputs)``."""
        return [
            (orjson.dumps(r.body).decode(), r.client_requested, r.completed_outputs)
            for r in self._responses.values()
        ]

    @property
    def turn(self) -> tuple[str | None, bool]:
        """The user turn in progress: its client item id, and whether VAD heard it end."""
        return self._turn_item, self._turn_stopped

    def restore(
        self,
        running: list[tuple[str, bool, int]],
        turn_item: str | None,
        turn_stopped: bool,
        speaking: bool,
    ) -> None:
        """Start from a snapshot: what was running when it was taken (a fresh upstream is then
        built by :meth:`begin` and the replay, exactly as after a lost upstream)."""
        for body_text, client_requested, completed in running:
            body = loads(body_text)
            if body is not None and isinstance(body.get("id"), str):
                self._responses[body["id"]] = _Response(body, client_requested, completed)
        self._turn_item, self._turn_stopped = turn_item, turn_stopped
        self.mirror.speaking = speaking

    # ------------------------------------------------------------------ client → upstream

    def sent_audio_bytes(self, pcm: bytes) -> None:
        """Raw audio from a binary frame is being sent upstream."""
        self.mirror.on_client_audio(pcm)

    def sent_audio_b64(self, audio_b64: str) -> None:
        """A plain append's base64 audio is being sent upstream (cut out by the caller)."""
        self.mirror.on_client_append(audio_b64)

    def sent_append(self, text: str) -> None:
        """An ``input_audio_buffer.append`` frame is being sent upstream."""
        b64 = _audio_field(text)
        if b64 is None:
            try:
                event = orjson.loads(text)
            except orjson.JSONDecodeError:
                return
            b64 = event.get("audio") if isinstance(event, dict) else None
            if not isinstance(b64, str):
                return
        self.mirror.on_client_append(b64)

    def sent_control(self, etype: str, text: str, now: float) -> tuple[str | None, str | None]:
        """A control event is about to go upstream.

        Returns ``(to_upstream, to_client)``: the text to send upstream (ids mapped; None to
        send nothing) and an answer voxgate gives the client itself (or None).
        """
        event: dict[str, Any] | None = None
        if self._to_upstream or (etype == "conversation.item.truncate" and self.local_truncate_ids):
            event = loads(text)
        if event is not None and etype == "conversation.item.truncate":
            local = self._local_truncate(event)
            if local is not None:
                return None, local
        if etype in TRACKED_CLIENT_TYPES:
            # kept in the client's ids: a re-send maps them to whichever upstream it goes to
            self._track(etype, text, event, now)
        if event is not None and self._to_upstream and remap(event, self._to_upstream):
            text = orjson.dumps(event).decode()
        return text, None

    def _track(self, etype: str, text: str, event: dict[str, Any] | None, now: float) -> None:
        pending = self._pending
        while pending and (
            len(pending) >= _MAX_PENDING or now - pending[0].sent_at > self.ack_ttl_s
        ):
            pending.popleft()
        if event is None:
            event = loads(text) or {}
        eid = event.get("event_id")
        key = None
        if etype == "conversation.item.create":
            raw = event.get("item")
            item: dict[str, Any] = raw if isinstance(raw, dict) else {}
            key = (item.get("id"), item.get("type", "message"), item.get("role"), _first_part(item))
        pending.append(
            Sent(
                etype,
                text,
                eid if isinstance(eid, str) else None,
                self.mirror.stream_bytes,
                now,
                key,
            )
        )

    def _local_truncate(self, event: dict[str, Any]) -> str | None:
        """Answer a truncate of an item the new upstream only has as text (or not at all)."""
        item_id = event.get("item_id")
        if item_id not in self.local_truncate_ids:
            return None
        return orjson.dumps(
            {
                "type": "conversation.item.truncated",
                "event_id": new_event_id(),
                "item_id": item_id,
                "content_index": event.get("content_index", 0),
                "audio_end_ms": event.get("audio_end_ms", 0),
            }
        ).decode()

    # ------------------------------------------------------------------ upstream → client

    def needs_parse(self, etype: str, text: str) -> bool:
        if etype in PARSED_SERVER_TYPES:
            return True
        return bool(self._to_client) and any(uid in text for uid in self._to_client)

    def on_server(self, etype: str, text: str, now: float) -> str | None:
        """A non-audio server event. Returns the text to forward (maybe rewritten) or None."""
        if not self.needs_parse(etype, text):
            return text
        event = loads(text)
        if event is None:
            return text
        changed = remap(event, self._to_client) if self._to_client else False
        if self._offset_ms and etype in _SPEECH:
            for key in ("audio_start_ms", "audio_end_ms"):
                if isinstance(event.get(key), int | float):
                    event[key] = int(event[key]) + self._offset_ms
                    changed = True
        forward = self._apply(etype, event)
        if not forward:
            return None
        return orjson.dumps(event).decode() if changed else text

    def _apply(self, etype: str, event: dict[str, Any]) -> bool:
        """Update state from one (client-id) server event; False means do not forward it."""
        mirror = self.mirror
        ack = ACK_OF.get(etype)
        popped = self._pop_ack(ack, event) if ack is not None else None
        if etype in MIRRORED_TYPES:
            item = event.get("item")
            item_id = item.get("id") if isinstance(item, dict) else None
            if etype == "conversation.item.done" and item_id in self._swallow_done:
                self._swallow_done.discard(item_id)
                return False
            mirror.on_server_event(etype, event)
        if etype == "input_audio_buffer.speech_started":
            return self._on_speech_started(event)
        if etype == "input_audio_buffer.speech_stopped":
            end_ms = event.get("audio_end_ms")
            if isinstance(end_ms, int | float):
                # exact bytes: the upstream's own ms (before the shift) from its first byte
                upstream_ms = int(end_ms) - self._offset_ms
                mirror.speech_stopped_at(self._offset + upstream_ms * mirror.bytes_per_ms)
            self._turn_stopped = True
            if "speech_stopped" in self._swallow:
                self._swallow.discard("speech_stopped")
                return False
        elif etype == "input_audio_buffer.committed":
            item_id = event.get("item_id")
            item_id = item_id if isinstance(item_id, str) else None
            if item_id is not None:
                self._committed_ids.append(item_id)
            if popped is not None:
                mirror.commit_until(popped.offset, item_id)
            elif mirror.vad_cut is not None:
                mirror.commit_until(mirror.vad_cut, item_id)
            else:
                mirror.commit_until(mirror.stream_bytes, item_id)
            self._turn_item, self._turn_stopped = None, False
            self._swallow.clear()
        elif etype == "input_audio_buffer.cleared":
            mirror.clear_pending()
            self._turn_item, self._turn_stopped = None, False
        elif etype == "response.created":
            body = event.get("response")
            if isinstance(body, dict) and isinstance(body.get("id"), str):
                self._responses[body["id"]] = _Response(body, client_requested=popped is not None)
        elif etype == "response.output_item.done":
            running = self._responses.get(str(event.get("response_id")))
            item = event.get("item")
            if running is not None and isinstance(item, dict) and item.get("status") == "completed":
                running.completed_outputs += 1
        elif etype == "response.done":
            body = event.get("response")
            if isinstance(body, dict):
                self._responses.pop(str(body.get("id")), None)
        elif etype == "error":
            err = event.get("error")
            eid = err.get("event_id") if isinstance(err, dict) else None
            if isinstance(eid, str):
                self._pending = deque(s for s in self._pending if s.client_event_id != eid)
        return True

    def _on_speech_started(self, event: dict[str, Any]) -> bool:
        self.mirror.speech_started()
        item_id = event.get("item_id")
        if "speech_started" in self._swallow:
            # The client already saw this turn start before the cut: keep its item id.
            self._swallow.discard("speech_started")
            if isinstance(item_id, str) and self._turn_item and item_id != self._turn_item:
                self._map(item_id, self._turn_item)
            return False
        self._turn_item = item_id if isinstance(item_id, str) else None
        self._turn_stopped = False
        return True

    def _pop_ack(self, client_type: str, event: dict[str, Any]) -> Sent | None:
        for i, sent in enumerate(self._pending):
            if sent.etype != client_type:
                continue
            if client_type == "conversation.item.create" and not _matches(
                sent, event, self._committed_ids
            ):
                continue
            del self._pending[i]
            return sent
        return None

    def _map(self, upstream_id: str, client_id: str) -> None:
        if len(self._to_client) >= _MAX_LOCAL_IDS:
            oldest = next(iter(self._to_client))
            self._to_upstream.pop(self._to_client.pop(oldest), None)
        self._to_client[upstream_id] = client_id
        self._to_upstream[client_id] = upstream_id

    # ------------------------------------------------------------------ reconnect

    def begin(self, code: str, message: str) -> tuple[list[str], bool]:
        """The upstream is gone. Returns the client events that end what was running, and
        whether to ask the new upstream for a response again (a VAD turn whose answer never
        produced anything)."""
        self.reconnects += 1
        out: list[str] = []
        retry = False
        for running in self._responses.values():
            body = dict(running.body)
            body.update(
                status="failed",
                status_details={
                    "type": "failed",
                    "error": {"type": "server_error", "code": code, "message": message},
                },
                output=[],
                usage=None,
            )
            out.append(
                orjson.dumps(
                    {"type": "response.done", "event_id": new_event_id(), "response": body}
                ).decode()
            )
            if not running.client_requested and running.completed_outputs == 0:
                retry = True
        self._responses.clear()
        for item_id in self.mirror.drop_unfinished_items():
            self.remember_local(item_id)
        self._swallow.clear()
        if self.mirror.speaking and self._turn_item:
            self._swallow.add("speech_started")
            if self._turn_stopped:
                self._swallow.add("speech_stopped")
        return out, retry

    def remember_local(self, item_id: str) -> None:
        """``item_id`` exists upstream only as text now: answer its truncates locally."""
        if len(self.local_truncate_ids) < _MAX_LOCAL_IDS:
            self.local_truncate_ids.add(item_id)

    def install(self, to_client: dict[str, str], offset: int, swallow_done: set[str]) -> int:
        """The new upstream is rebuilt: switch ids and the audio timeline over to it.

        Args:
            to_client: upstream id → client id for items the new upstream renamed.
            offset: client-timeline offset of the first audio byte the new upstream gets.
            swallow_done: upstream ids whose ``conversation.item.done`` acks are still to come
                (the client has those items already).

        Returns:
            The audio bytes re-sent (from ``offset`` to the stream end).
        """
        self._to_client, self._to_upstream = {}, {}
        for uid, cid in to_client.items():
            self._map(uid, cid)
        self._offset = offset
        self._offset_ms = offset // self.mirror.bytes_per_ms
        self._swallow_done |= {to_client.get(i, i) for i in swallow_done}
        return self.mirror.stream_bytes - offset

    def take_unacked(self) -> list[Sent]:
        """Control events sent but never acknowledged, oldest first (cleared here)."""
        taken = list(self._pending)
        self._pending.clear()
        return taken

    def resend(self, sent: Sent) -> str:
        """The text re-sending ``sent`` to the current upstream; it is pending again."""
        self._pending.append(sent)
        if not self._to_upstream:
            return sent.text
        event = loads(sent.text)
        if event is not None and remap(event, self._to_upstream):
            return orjson.dumps(event).decode()
        return sent.text


def loads(text: str) -> dict[str, Any] | None:
    try:
        event = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def _audio_field(text: str) -> str | None:
    """The ``audio`` string of an append frame without parsing it (None: use a full parse).

    Exact for the serialisers clients use (``"audio":"…"`` and ``"audio": "…"``): base64
    holds no quote, so the value ends at the next one; an escaped character means a full parse.
    """
    k = text.find('"audio"')
    if k < 0 or (k and text[k - 1] == "\\"):
        return None
    i = k + 7
    sep = text[i : i + 3]
    if sep.startswith(':"'):
        i += 2
    elif sep == ': "':
        i += 3
    else:
        return None
    j = text.find('"', i)
    if j < 0:
        return None
    value = text[i:j]
    return None if "\\" in value else value


def remap(event: dict[str, Any], mapping: dict[str, str]) -> bool:
    """Replace mapped ids in ``item_id``, ``previous_item_id`` and ``item.id``; True if any."""
    changed = False
    for key in _ID_FIELDS:
        value = event.get(key)
        if isinstance(value, str) and value in mapping:
            event[key] = mapping[value]
            changed = True
    item = event.get("item")
    if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"] in mapping:
        event["item"] = {**item, "id": mapping[item["id"]]}
        changed = True
    return changed


def _matches(sent: Sent, event: dict[str, Any], committed: Collection[str]) -> bool:
    """Whether ``conversation.item.added`` acknowledges this client ``item.create``."""
    item = event.get("item")
    if not isinstance(item, dict) or sent.item_key is None:
        return False
    want_id, want_type, want_role, want_part = sent.item_key
    if want_id is not None:
        return bool(item.get("id") == want_id)
    if item.get("status") == "in_progress" or item.get("id") in committed:
        return False  # a response's output item, or a turn the input buffer committed
    return bool(
        item.get("type", "message") == want_type
        and item.get("role") == want_role
        and _first_part(item) == want_part
    )


def _first_part(item: dict[str, Any]) -> Any:
    content = item.get("content")
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return content[0].get("type")
    return None
