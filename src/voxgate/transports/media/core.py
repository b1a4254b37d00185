"""What each event of a media call means for the call: the sans-I/O half of the adapters.

:class:`CallCore` sits between the session and a caller whose audio voxgate plays itself
(WebRTC, a phone line). It is fed the session's events (:meth:`CallCore.from_session`) and the
caller's control events (:meth:`CallCore.from_caller`), plus what playback reports
(:meth:`CallCore.heard`, :meth:`CallCore.heard_until`, :meth:`CallCore.drained`), and returns
actions the adapter must perform **in order**:

* :class:`Forward` — an event for the caller's event channel (the ``oai-events`` data
  channel) and any sideband, unchanged;
* :class:`Play` — assistant audio (session output format) to queue for the caller;
  :class:`AudioDone` — that item's audio is complete;
* :class:`StopPlayback` — drop everything queued now (barge-in);
* :class:`ToSession` — a client event for the session: what the caller sent, or the
  ``conversation.item.truncate`` voxgate sends on the caller's behalf after a cut.

What it does, as OpenAI does over WebRTC/SIP (realtime-protocol.md §6.4, §9): audio deltas
never reach the event channel (the audio is on the media stream); a response's first audio
emits ``output_audio_buffer.started``, its drained end ``output_audio_buffer.stopped``; when
the user starts speaking (``input_audio_buffer.speech_started`` with ``interrupt_response``)
or the caller sends ``output_audio_buffer.clear``, playback stops, the caller gets
``output_audio_buffer.cleared`` and the assistant item is truncated at what was heard. Late
audio of a cut response is discarded. An ``error`` answering voxgate's own truncate is
logged by the adapter, never forwarded (the caller did not send it).

Pure: no I/O, no clock, no asyncio.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

import orjson

from voxgate.protocol.formats import FORMATS, FormatInfo, input_format_type
from voxgate.protocol.ids import event_id, new_id
from voxgate.protocol.sniff import NotAnEvent, event_type, parse_event
from voxgate.transports.media.ledger import Cut, PlaybackLedger

#: ``event_id`` prefix of the truncates voxgate sends for the caller (their errors are ours).
CUT_EVENT_PREFIX: Final = "event_vgcut_"
_AUDIO_DELTA: Final = "response.output_audio.delta"


@dataclass(frozen=True, slots=True)
class Forward:
    text: str


@dataclass(frozen=True, slots=True)
class Play:
    response_id: str
    item_id: str
    audio: bytes  # in the session's output format
    audio_b64: str  # the same audio as it came (phone lines pass it through)


@dataclass(frozen=True, slots=True)
class AudioDone:
    """No more audio will come for this item: play out what a resampler still holds."""

    item_id: str


@dataclass(frozen=True, slots=True)
class StopPlayback:
    cut: Cut


@dataclass(frozen=True, slots=True)
class ToSession:
    text: str


CallAction: TypeAlias = Forward | Play | AudioDone | StopPlayback | ToSession
NONE: Final[tuple[CallAction, ...]] = ()


def output_format_type(session: Mapping[str, Any] | None) -> str:
    """``audio.output.format.type`` of a GA session object (``audio/pcm`` when unset)."""
    audio = session.get("audio") if isinstance(session, Mapping) else None
    out = audio.get("output") if isinstance(audio, Mapping) else None
    fmt = out.get("format") if isinstance(out, Mapping) else None
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    return kind if isinstance(kind, str) and kind in FORMATS else "audio/pcm"


def _interrupts(session: Mapping[str, Any]) -> bool:
    audio = session.get("audio")
    audio_in = audio.get("input") if isinstance(audio, Mapping) else None
    vad = audio_in.get("turn_detection") if isinstance(audio_in, Mapping) else None
    if not isinstance(vad, Mapping):
        return True  # no VAD: no speech_started either; output_audio_buffer.clear still cuts
    return vad.get("interrupt_response", True) is not False


def buffer_event(kind: Literal["started", "stopped", "cleared"], response_id: str) -> str:
    """``output_audio_buffer.<kind>`` as OpenAI sends it over WebRTC/SIP."""
    return orjson.dumps(
        {
            "type": f"output_audio_buffer.{kind}",
            "event_id": event_id(),
            "response_id": response_id,
        }
    ).decode()


def truncate_event(cut: Cut) -> str:
    """The ``conversation.item.truncate`` voxgate sends for the caller after a cut."""
    return orjson.dumps(
        {
            "type": "conversation.item.truncate",
            "event_id": new_id(CUT_EVENT_PREFIX.removesuffix("_"), 16),
            "item_id": cut.item_id,
            "content_index": 0,
            "audio_end_ms": cut.audio_end_ms,
        }
    ).decode()


class CallCore:
    """See the module docstring. One per call."""

    def __init__(self) -> None:
        self.ledger = PlaybackLedger()
        self.input_format: FormatInfo = FORMATS["audio/pcm"]
        self.output_format: FormatInfo = FORMATS["audio/pcm"]
        self.cuts = 0
        #: errors answering voxgate's own truncates (logged by the adapter, not forwarded)
        self.own_errors: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ session -> caller

    def from_session(self, text: str) -> tuple[CallAction, ...]:
        """One event the session sends to the caller."""
        try:
            etype = event_type(text)
        except NotAnEvent:
            return (Forward(text),)
        handler = _SESSION_HANDLERS.get(etype)
        if handler is None:
            return (Forward(text),)
        return handler(self, text)

    def _on_audio(self, text: str) -> tuple[CallAction, ...]:
        event = _parse(text)
        rid, iid, b64 = event.get("response_id"), event.get("item_id"), event.get("delta")
        if not (isinstance(rid, str) and isinstance(iid, str) and isinstance(b64, str)):
            return NONE
        if self.ledger.is_cleared(rid):
            return NONE  # late audio of a response the caller cut off
        try:
            audio = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            return NONE
        ms = len(audio) / self.output_format.bytes_per_ms
        first = self.ledger.queued(rid, iid, ms)
        play = Play(rid, iid, audio, b64)
        return (Forward(buffer_event("started", rid)), play) if first else (play,)

    def _on_audio_done(self, text: str) -> tuple[CallAction, ...]:
        event = _parse(text)
        rid, iid = event.get("response_id"), event.get("item_id")
        if isinstance(iid, str) and not (isinstance(rid, str) and self.ledger.is_cleared(rid)):
            return (Forward(text), AudioDone(iid))
        return (Forward(text),)

    def _on_speech_started(self, text: str) -> tuple[CallAction, ...]:
        if not self.ledger.interrupt:
            return (Forward(text),)
        return (Forward(text), *self._cut())

    def _on_response_done(self, text: str) -> tuple[CallAction, ...]:
        response = _parse(text).get("response")
        rid = response.get("id") if isinstance(response, dict) else None
        stopped = self.ledger.response_done(rid) if isinstance(rid, str) else []
        return (Forward(text), *(Forward(buffer_event("stopped", r)) for r in stopped))

    def _on_session(self, text: str) -> tuple[CallAction, ...]:
        session = _parse(text).get("session")
        if isinstance(session, dict):
            self.input_format = FORMATS[input_format_type(session)]
            self.output_format = FORMATS[output_format_type(session)]
            self.ledger.interrupt = _interrupts(session)
        return (Forward(text),)

    def _on_error(self, text: str) -> tuple[CallAction, ...]:
        event = _parse(text)
        err = event.get("error")
        source = err.get("event_id") if isinstance(err, dict) else None
        if isinstance(source, str) and source.startswith(CUT_EVENT_PREFIX):
            if len(self.own_errors) < 16:
                self.own_errors.append(err)  # type: ignore[arg-type]
            return NONE
        return (Forward(text),)

    # ------------------------------------------------------------------ caller -> session

    def from_caller(self, text: str) -> tuple[CallAction, ...]:
        """One text event from the caller's event channel or a sideband."""
        try:
            etype = event_type(text)
        except NotAnEvent:
            return (ToSession(text),)
        if etype == "output_audio_buffer.clear":
            return self._cut()
        return (ToSession(text),)

    # ------------------------------------------------------------------ playback reports

    def heard(self, item_id: str, ms: float) -> None:
        self.ledger.heard(item_id, ms)

    def heard_until(self, item_id: str, end_ms: float) -> None:
        self.ledger.heard_until(item_id, end_ms)

    def drained(self) -> tuple[CallAction, ...]:
        """Playback ran dry (all queued audio heard): ``stopped`` for every finished response."""
        stopped = self.ledger.drained(settle=True)
        return tuple(Forward(buffer_event("stopped", r)) for r in stopped)

    def _cut(self) -> tuple[CallAction, ...]:
        cut = self.ledger.cut()
        if cut is None:
            return NONE
        self.cuts += 1
        return (
            StopPlayback(cut),
            Forward(buffer_event("cleared", cut.response_id)),
            ToSession(truncate_event(cut)),
        )


def _parse(text: str) -> dict[str, Any]:
    try:
        return parse_event(text)[1]
    except NotAnEvent:
        return {}


_SESSION_HANDLERS = {
    _AUDIO_DELTA: CallCore._on_audio,
    "response.output_audio.done": CallCore._on_audio_done,
    "input_audio_buffer.speech_started": CallCore._on_speech_started,
    "response.done": CallCore._on_response_done,
    "session.created": CallCore._on_session,
    "session.updated": CallCore._on_session,
    "error": CallCore._on_error,
}


def fit_event(text: str, limit_bytes: int) -> str | None:
    """``text`` made to fit one data-channel message of ``limit_bytes``, or None.

    Only events carrying conversation audio get this large (``conversation.item.retrieved``
    returns an input item's audio); their ``audio`` fields become null, as for an item whose
    audio is not kept. Anything else that does not fit cannot be sent.
    """
    event = _parse(text)
    item = event.get("item")
    content = item.get("content") if isinstance(item, dict) else None
    changed = False
    for part in content if isinstance(content, list) else ():
        if isinstance(part, dict) and part.get("audio"):
            part["audio"] = None
            changed = True
    if not changed:
        return None
    out = orjson.dumps(event).decode()
    return out if len(out.encode()) <= limit_bytes else None


def merge_config(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` applied on ``base`` (nested objects merged, everything else replaced)."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            out[key] = merge_config(old, value)
        else:
            out[key] = value
    return out
