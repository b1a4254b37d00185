"""ReplayDriver: rebuild a session on a fresh upstream, one server event at a time. Pure.

Issue #6. The runner opens a new upstream and feeds every text frame it sends to
:meth:`ReplayDriver.on_text`, sending what it returns, in order, until ``done``; then the
machine flushes what the client sent meanwhile. Steps: wait for ``session.created`` (swallowed:
the client has one) → send the mirrored config and wait for ``session.updated`` → send every
item and wait for their acks (ids compared, so a changed id is mapped) → send a
``response.create`` if a VAD turn lost its answer, the uncommitted audio and the unacknowledged
control events, interleaved at their audio positions → done. It reads the mirror and talks to
:class:`~voxgate.session.recovery.Recovery` only through its public methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from voxgate.protocol import b64
from voxgate.protocol.extensions import append_b64
from voxgate.session.reconnect import NEVER_RETRIED_CODES
from voxgate.session.recovery import Recovery, loads

_REPLAY_EVENT_PREFIX = "event_vgreplay_"


@dataclass(slots=True)
class ReplayStats:
    replayed_items: int = 0
    audio_resent_bytes: int = 0
    resent_events: int = 0
    state_restored: bool = True
    notes: list[str] = field(default_factory=list)


class ReplayDriver:
    """Rebuild the session on a fresh upstream, one server event at a time. Pure.

    Caller's duty: feed every text frame of the new upstream to :meth:`on_text` and send what
    it returns, in order, until ``done``; then the machine flushes what the client sent
    meanwhile. Steps: wait for ``session.created`` (swallowed: the client has one) → send the
    mirrored config and wait for ``session.updated`` → send every item and wait for their acks
    (ids compared, so a changed id is mapped) → send a ``response.create`` if a VAD turn lost
    its answer, the uncommitted audio and the unacknowledged control events, interleaved at
    their audio positions → done.
    """

    def __init__(self, recovery: Recovery, *, retry_response: bool) -> None:
        """Args: recovery: the session's state; retry_response: ask for the lost answer."""
        self._rec = recovery
        self._retry = retry_response
        self.stats = ReplayStats()
        self.done = False
        self.fatal: tuple[str, str] | None = None  # (error code, message) of a fatal error
        self._state = "created"
        self._items = recovery.mirror.item_events()
        self._acked = 0
        self._to_client: dict[str, str] = {}
        self._swallow_done: set[str] = set()

    def on_text(self, text: str) -> list[str]:
        event = loads(text)
        if event is None:
            return []
        etype = event.get("type")
        if etype == "error":
            return self._on_error(event)
        if self._state == "created" and etype == "session.created":
            config = self._rec.mirror.config_event()
            if config is None:
                return self._send_items()
            self._state = "updated"
            config["event_id"] = _REPLAY_EVENT_PREFIX + "config"
            return [orjson.dumps(config).decode()]
        if self._state == "updated" and etype == "session.updated":
            session = event.get("session")
            if isinstance(session, dict):
                self._rec.mirror.on_server_event("session.updated", event)
            return self._send_items()
        if self._state == "items" and etype in (
            "conversation.item.added",
            "conversation.item.created",
        ):
            item = event.get("item")
            if isinstance(item, dict) and self._acked < len(self._items):
                wanted = self._items[self._acked][0]
                got = item.get("id")
                if isinstance(got, str) and got != wanted:
                    self._to_client[got] = wanted
                if etype == "conversation.item.added" and isinstance(got, str):
                    self._swallow_done.add(got)
            return self._item_acked()
        if etype == "conversation.item.done":
            item = event.get("item")
            if isinstance(item, dict):
                self._swallow_done.discard(str(item.get("id")))
        return []

    def _on_error(self, event: dict[str, Any]) -> list[str]:
        raw = event.get("error")
        err: dict[str, Any] = raw if isinstance(raw, dict) else {}
        code = err.get("code") if isinstance(err.get("code"), str) else None
        if code in NEVER_RETRIED_CODES:
            self.fatal = (code or "server_error", str(err.get("message") or ""))
            return []
        eid = err.get("event_id")
        self.stats.state_restored = False
        self.stats.notes.append(f"{code}:{eid}")
        if self._state == "updated" and eid == _REPLAY_EVENT_PREFIX + "config":
            return self._send_items()
        if self._state == "items" and isinstance(eid, str) and eid.startswith(_REPLAY_EVENT_PREFIX):
            return self._item_acked()
        return []

    def _send_items(self) -> list[str]:
        self._state = "items"
        if not self._items:
            return self._finish()
        out = []
        for n, (_, event, was_audio) in enumerate(self._items):
            out.append(orjson.dumps({**event, "event_id": f"{_REPLAY_EVENT_PREFIX}{n}"}).decode())
            if was_audio:
                self._rec.remember_local(self._items[n][0])
        return out

    def _item_acked(self) -> list[str]:
        self._acked += 1
        if self._acked < len(self._items):
            return []
        return self._finish()

    def _finish(self) -> list[str]:
        rec = self._rec
        mirror = rec.mirror
        self.stats.replayed_items = len(self._items)
        offset = mirror.pending_start
        self.stats.audio_resent_bytes = rec.install(self._to_client, offset, self._swallow_done)
        out: list[str] = []
        if self._retry:
            out.append('{"type":"response.create"}')
        controls = rec.take_unacked()
        ci = 0
        for start, chunk in mirror.pending_chunks():
            end = start + len(chunk)
            while ci < len(controls) and controls[ci].offset < end:
                cut = max(controls[ci].offset - start, 0)
                if cut:  # the audio before the control goes first, exactly as it was sent
                    out.append(append_b64(b64.encode(chunk[:cut])))
                    chunk, start = chunk[cut:], start + cut
                out.append(rec.resend(controls[ci]))
                ci += 1
            if chunk:
                out.append(append_b64(b64.encode(chunk)))
        out.extend(rec.resend(c) for c in controls[ci:])
        self.stats.resent_events = len(controls)
        self._state = "done"
        self.done = True
        return out
