"""Session snapshots: what another node needs to rebuild a session (issue 17). Pure.

A snapshot is taken from a live session's parts (the mirror, the recovery state, the replay
log) by :func:`take`, encoded for the store by :func:`encode` (a small head rewritten every
time, plus the conversation items by id, written only when they change), decoded by
:func:`decode`, and applied to a fresh recovery by :func:`restore`. The node that rebuilds the
session then opens an upstream through the ordinary reconnect path
(:meth:`~voxgate.session.machine.SessionMachine.rebuild` + the
:class:`~voxgate.session.replay_driver.ReplayDriver`): nothing here replays anything.

What a snapshot holds: the effective config, the conversation items (and the audio of user
turns whose transcript is not known yet), the responses running and the user turn in
progress, the client's audio position (audio after it is *not* kept: the client re-sends it
after ``voxgate.session.resumed`` says how much voxgate has), the replay log's position and a
bounded tail of the events a client may still ask for. Periodic snapshots keep only non-audio
events in that tail (output audio never goes to the store); a *final* snapshot (a live node
handing the session over) keeps the whole tail within its bound.

Bounds: ``max_bytes`` for items + turn audio (the oldest turn audio goes first, then the
oldest items, as the mirror does), ``replay_bytes`` for the tail. No I/O, no clock: callers
pass ``now``.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from voxgate.session.recovery import Recovery
from voxgate.session.replay import ReplayLog

VERSION = 1
#: Output audio: never kept in a periodic snapshot's tail.
_AUDIO_HEADS = (
    '{"type":"response.output_audio.delta"',
    '{"type": "response.output_audio.delta"',
)
#: Item hash fields for turn audio (item ids never start with it).
_AUDIO_FIELD = "audio:"
#: A replay-log scan for a periodic tail reads at most this many times ``replay_bytes``.
_SCAN_FACTOR = 8
#: Heads above this size are zlib-compressed (marker byte ``z``; plain JSON starts with ``{``).
_COMPRESS_ABOVE = 2048


class SnapshotError(ValueError):
    """Not a snapshot this version can read."""


@dataclass(frozen=True, slots=True)
class SessionMeta:
    """Who the session is for and what it may do: fixed for its life."""

    session_id: str
    subject: str | None
    key_id: str | None
    grant_kind: str
    model: str | None
    intent: str | None
    started_at: float  # unix seconds
    max_session_s: float


@dataclass(frozen=True, slots=True)
class Running:
    """A response running when the snapshot was taken."""

    body: str  # the response object, JSON
    client_requested: bool
    completed_outputs: int


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    meta: SessionMeta
    node: str
    taken_at: float  # unix seconds
    elapsed_s: float  # how long the session had run
    config: str | None
    items: tuple[tuple[str, str], ...]  # (item id, item JSON) in conversation order
    turn_audio: Mapping[str, bytes]
    running: tuple[Running, ...]
    turn_item: str | None
    turn_stopped: bool
    speaking: bool
    stream_bytes: int  # the client's audio position the rebuilt session continues from
    input_audio_bytes: int  # binary audio bytes of the client covered by the snapshot
    acked: int
    last_seq: int
    frames: tuple[tuple[int, str], ...]  # (seq, event) a client may still ask for
    final: bool = False

    def missed(self, received: int) -> list[str]:
        """The events after ``received`` this snapshot still has, in order."""
        return [text for seq, text in self.frames if seq > received]


@dataclass(slots=True)
class Encoded:
    """What to write: the head, items to put and item fields to drop (by id)."""

    head: bytes
    put: dict[str, bytes] = field(default_factory=dict)
    drop: list[str] = field(default_factory=list)


def take(
    meta: SessionMeta,
    *,
    node: str,
    recovery: Recovery,
    replay: ReplayLog,
    client_audio_bytes: int,
    now: float,
    final: bool,
    replay_bytes: int,
    max_bytes: int,
) -> SessionSnapshot:
    """A snapshot of a live session's parts (see the module docstring for the bounds)."""
    mirror = recovery.mirror
    items = mirror.item_texts()
    size = sum(len(text) for _, text in items)
    while size > max_bytes and len(items) > 1:
        size -= len(items.pop(0)[1])
    turn_audio: dict[str, bytes] = {}
    for item_id, text in reversed(items):  # newest first: the oldest audio goes first
        audio = mirror.turn_audio_of(item_id)
        if audio is None or '"transcript":null' not in text:
            continue
        if size + len(audio) * 4 // 3 > max_bytes:
            break
        turn_audio[item_id] = audio
        size += len(audio) * 4 // 3
    turn_item, turn_stopped = recovery.turn
    pending = mirror.stream_bytes - mirror.pending_start
    return SessionSnapshot(
        meta=meta,
        node=node,
        taken_at=now,
        elapsed_s=max(0.0, now - meta.started_at),
        config=mirror.config_text,
        items=tuple(items),
        turn_audio=turn_audio,
        running=tuple(Running(*r) for r in recovery.running()),
        turn_item=turn_item,
        turn_stopped=turn_stopped,
        speaking=mirror.speaking,
        stream_bytes=mirror.pending_start,
        input_audio_bytes=max(0, client_audio_bytes - pending),
        acked=replay.acked,
        last_seq=replay.last_seq,
        frames=tuple(_tail(replay, replay_bytes, final)),
        final=final,
    )


def _tail(replay: ReplayLog, replay_bytes: int, final: bool) -> list[tuple[int, str]]:
    if replay_bytes <= 0:
        return []
    if final:
        return replay.newest(replay_bytes)
    kept: list[tuple[int, str]] = []
    size = 0
    for seq, text in reversed(replay.newest(replay_bytes * _SCAN_FACTOR)):
        if text.startswith(_AUDIO_HEADS):
            continue
        size += len(text)
        if size > replay_bytes:
            break
        kept.append((seq, text))
    kept.reverse()
    return kept


def restore(snapshot: SessionSnapshot, recovery: Recovery) -> None:
    """Make a fresh recovery (and its mirror) what the snapshot describes."""
    recovery.mirror.restore(
        snapshot.config, list(snapshot.items), dict(snapshot.turn_audio), snapshot.stream_bytes
    )
    recovery.restore(
        [(r.body, r.client_requested, r.completed_outputs) for r in snapshot.running],
        snapshot.turn_item,
        snapshot.turn_stopped,
        snapshot.speaking,
    )


# ---------------------------------------------------------------------- encoding


def encode(snapshot: SessionSnapshot, written: Mapping[str, str | bytes] | None) -> Encoded:
    """The store's form of ``snapshot``; ``written`` is what the store holds already (item id
    or ``audio:<id>`` → the value last written), so only changed items are put. Items are
    compared by identity: the mirror makes a new string whenever an item changes."""
    written = written or {}
    out = Encoded(head=_head(snapshot))
    wanted: dict[str, str | bytes] = dict(snapshot.items)
    for item_id, audio in snapshot.turn_audio.items():
        wanted[_AUDIO_FIELD + item_id] = audio
    for key, value in wanted.items():
        if written.get(key) is not value:
            out.put[key] = value.encode() if isinstance(value, str) else value
    out.drop = [key for key in written if key not in wanted]
    return out


def written_after(snapshot: SessionSnapshot) -> dict[str, str | bytes]:
    """What the store holds after ``snapshot`` was written (the next :func:`encode`'s base)."""
    held: dict[str, str | bytes] = dict(snapshot.items)
    for item_id, audio in snapshot.turn_audio.items():
        held[_AUDIO_FIELD + item_id] = audio
    return held


def _head(s: SessionSnapshot) -> bytes:
    m = s.meta
    body: dict[str, Any] = {
        "v": VERSION,
        "id": m.session_id,
        "sub": m.subject,
        "kid": m.key_id,
        "kind": m.grant_kind,
        "model": m.model,
        "intent": m.intent,
        "started": m.started_at,
        "max_s": m.max_session_s,
        "node": s.node,
        "at": s.taken_at,
        "elapsed": s.elapsed_s,
        "config": s.config,
        "order": [item_id for item_id, _ in s.items],
        "running": [[r.body, r.client_requested, r.completed_outputs] for r in s.running],
        "turn": [s.turn_item, s.turn_stopped, s.speaking],
        "stream": s.stream_bytes,
        "audio_in": s.input_audio_bytes,
        "acked": s.acked,
        "last": s.last_seq,
        "frames": [[seq, text] for seq, text in s.frames],
        "final": s.final,
    }
    data = orjson.dumps(body)
    if len(data) > _COMPRESS_ABOVE:
        return b"z" + zlib.compress(data, 1)
    return data


def decode(head: bytes, items: Mapping[str, bytes]) -> SessionSnapshot:
    """A snapshot from the store's form.

    Raises:
        SnapshotError: another version, or not a snapshot.
    """
    try:
        raw = zlib.decompress(head[1:]) if head[:1] == b"z" else head
        body = orjson.loads(raw)
        if not isinstance(body, dict) or body.get("v") != VERSION:
            raise SnapshotError("unknown snapshot version")
        meta = SessionMeta(
            session_id=str(body["id"]),
            subject=body["sub"],
            key_id=body["kid"],
            grant_kind=str(body["kind"]),
            model=body["model"],
            intent=body["intent"],
            started_at=float(body["started"]),
            max_session_s=float(body["max_s"]),
        )
        kept = [(i, items[i].decode()) for i in body["order"] if i in items]
        turn_audio = {
            key[len(_AUDIO_FIELD) :]: value
            for key, value in items.items()
            if key.startswith(_AUDIO_FIELD)
        }
        turn_item, turn_stopped, speaking = body["turn"]
        return SessionSnapshot(
            meta=meta,
            node=str(body["node"]),
            taken_at=float(body["at"]),
            elapsed_s=float(body["elapsed"]),
            config=body["config"],
            items=tuple(kept),
            turn_audio=turn_audio,
            running=tuple(Running(str(b), bool(c), int(n)) for b, c, n in body["running"]),
            turn_item=turn_item,
            turn_stopped=bool(turn_stopped),
            speaking=bool(speaking),
            stream_bytes=int(body["stream"]),
            input_audio_bytes=int(body["audio_in"]),
            acked=int(body["acked"]),
            last_seq=int(body["last"]),
            frames=tuple((int(seq), str(text)) for seq, text in body["frames"]),
            final=bool(body["final"]),
        )
    except (KeyError, TypeError, ValueError, zlib.error, orjson.JSONDecodeError) as exc:
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(f"malformed snapshot: {type(exc).__name__}") from None
