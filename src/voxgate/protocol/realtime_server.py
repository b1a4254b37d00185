"""The realtime server's per-connection protocol core: client events in, actions out.

Sans-I/O: no sockets, no asyncio, no clock. :class:`RealtimeCore` is fed parsed frames
(:meth:`RealtimeCore.receive_text`, :meth:`RealtimeCore.receive_binary`) and returns a list of
:data:`Action`. After each call the caller must perform the actions **in order**: ``Send`` an
event, ``Close`` the socket, or, for ``StartResponse``, produce that response's events (the
fake upstream through :meth:`RealtimeCore.advance`, the local engine through
:meth:`RealtimeCore.response_events`) until it is finished. Client events that arrive in
between are handled against the same state, which is how cancellation, barge-in and
``conversation_already_has_active_response`` happen.

It behaves as realtime-protocol.md describes the real server (§4–§7): session.update merge,
input audio buffer with commit/clear and a 100 ms minimum, conversation items, response
cycles. Shared by the fake upstream (:mod:`voxgate.testing.core`) and the local engine
(:mod:`voxgate.backends.local.engine`), which plug in what differs by overriding the hooks:

* :meth:`RealtimeCore._on_audio` — turn detection on appended audio (energy VAD in the fake;
  the engine hands audio to Silero in a worker thread and calls :meth:`on_speech_started` /
  :meth:`on_speech_stopped` itself);
* :meth:`RealtimeCore._reset_vad` — the turn detector must start over;
* :meth:`RealtimeCore._transcript_for` — the transcript of a committed turn;
* :meth:`RealtimeCore._plan` — what a response says (the fake's scripted steps; the engine
  returns no steps and streams the response itself).

Must not: do I/O, read the clock, or import asyncio.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from voxgate.protocol import b64, ids
from voxgate.protocol import conversation as cv
from voxgate.protocol import response_builder as rb
from voxgate.protocol import server_events as ev
from voxgate.protocol.close import CloseCode, close_reason
from voxgate.protocol.errors import INVALID_REQUEST, SERVER_ERROR, ClientEventError, error_event
from voxgate.protocol.events import unsupported_type_message
from voxgate.protocol.session_config import (
    apply_session_update,
    bytes_per_ms,
    duration_ms,
    format_type,
    input_format,
    output_format,
)

MIN_COMMIT_MS: Final = 100
MAX_APPEND_BYTES: Final = 15 * 1024 * 1024
_RESPONSE_KEYS: Final = frozenset(
    {
        "instructions",
        "output_modalities",
        "audio",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "metadata",
        "prompt",
        "conversation",
        "input",
    }
)


@dataclass(frozen=True)
class ResponseContext:
    """Everything a responder may look at for one response."""

    items: Sequence[Mapping[str, Any]]
    instructions: str
    tools: Sequence[Mapping[str, Any]]
    tool_choice: Any
    output_modalities: Sequence[str]
    metadata: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def latest_user_text(self) -> str | None:
        """Text of the latest user message (input text, or a transcribed audio turn)."""
        for item in reversed(self.items):
            if item.get("type") == "message" and item.get("role") == "user":
                for part in item.get("content") or []:
                    text = part.get("text") or part.get("transcript")
                    if text:
                        return str(text)
                return None
        return None


@dataclass(frozen=True)
class Send:
    event: dict[str, Any]


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True)
class StartResponse:
    response_id: str


Action = Send | Close | StartResponse


class InputAudio:
    """The input audio buffer: bytes appended since the last commit or clear.

    The core moves audio out of it on commit and clear and calls :meth:`committed_turn` /
    :meth:`cleared_chunk`, which keep nothing here; the fake upstream's ledger
    (:class:`voxgate.testing.core.AudioLedger`) overrides them to record where every byte went.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.total_appended = 0
        self.forgotten_bytes = 0  # silence before a turn dropped from the buffer

    def _append(self, data: bytes) -> None:
        self.buffer += data
        self.total_appended += len(data)

    def _take(self, n: int | None = None) -> bytes:
        n = len(self.buffer) if n is None else min(n, len(self.buffer))
        taken = bytes(self.buffer[:n])
        del self.buffer[:n]
        return taken

    def committed_turn(self, item_id: str, data: bytes) -> None:
        """Hook: ``data`` was committed as ``item_id`` (kept nowhere by the core)."""

    def cleared_chunk(self, data: bytes) -> None:
        """Hook: ``data`` was cleared (kept nowhere by the core)."""


Step = Callable[[], list[dict[str, Any]]]


@dataclass
class ActiveResponse:
    """A running response: its builder, the fake's scripted steps, and what it answers."""

    builder: rb.ResponseBuilder
    steps: deque[Step]
    in_conversation: bool
    context: ResponseContext
    effective: dict[str, Any]


class RealtimeCore:
    """One connection's state: session config, conversation, audio buffer, responses.

    Args:
        session: the initial session object (``default_session(...)``).
        audio: the input buffer (the fake passes a ledger that records where audio went).
        max_buffer_bytes: pending input audio allowed before a commit; an append past it is
            rejected with ``voxgate_input_audio_buffer_full`` (None = no limit).
        check_audio: reject appends whose bytes cannot be the session's format (odd length
            for PCM16, a WAV header, printable text); the real server does not check.

    It records nothing for tests: the fake upstream overrides :meth:`_record` and passes a
    recording ``audio``.
    """

    def __init__(
        self,
        session: dict[str, Any],
        *,
        audio: InputAudio | None = None,
        max_buffer_bytes: int | None = None,
        check_audio: bool = False,
    ) -> None:
        self.session = session
        self.conversation = cv.Conversation()
        self.conversation_id = ids.conversation_id()
        #: False: ignore ``item.id`` in ``conversation.item.create`` and mint one (a stricter
        #: upstream than OpenAI's, for testing how a gateway maps ids after a reconnect)
        self.honour_item_ids = True
        self.audio = audio if audio is not None else InputAudio()
        self._max_buffer_bytes = max_buffer_bytes
        self._check_audio = check_audio
        self._active: dict[str, ActiveResponse] = {}
        self._vad_item_id: str | None = None
        self._stream_offset = 0  # bytes appended in the session (VAD coordinates)
        self._stream_ms = 0.0
        self._handlers: dict[str, Callable[[dict[str, Any], str | None], list[Action]]] = {
            "session.update": self.handle_session_update,
            "input_audio_buffer.append": self.handle_append,
            "input_audio_buffer.commit": self.handle_commit,
            "input_audio_buffer.clear": self.handle_clear,
            "conversation.item.create": self.handle_item_create,
            "conversation.item.retrieve": self.handle_item_retrieve,
            "conversation.item.delete": self.handle_item_delete,
            "conversation.item.truncate": self.handle_item_truncate,
            "response.create": self.handle_response_create,
            "response.cancel": self.handle_response_cancel,
        }
        self._reset_vad()

    # ---------------------------------------------------------------- entry points

    @property
    def is_realtime(self) -> bool:
        return self.session.get("type") == "realtime"

    @property
    def active_response_ids(self) -> list[str]:
        return list(self._active)

    def open(self) -> list[Action]:
        """The first server event: ``session.created`` (§6.1)."""
        return [Send(ev.session_created(self.session))]

    def receive_text(self, text: str) -> list[Action]:
        """Handle one text frame; a bad event becomes a non-fatal ``error`` (§7)."""
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError as exc:  # its messages name no internals (depth, range)
            return [
                Send(
                    error_event(
                        f"Invalid event: failed to parse JSON value ({exc.msg}).",
                        code="invalid_json",
                    )
                )
            ]
        if not isinstance(event, dict):
            return [
                Send(error_event("Invalid event: expected a JSON object.", code="invalid_json"))
            ]
        self._record(event)
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        try:
            handler = self._handler_for(event.get("type"), event_id)
            return handler(event, event_id)
        except ClientEventError as exc:
            return [Send(exc.to_event())]

    def receive_binary(self) -> list[Action]:
        return [
            Send(
                error_event(
                    "Expected a text WebSocket message; binary frames are not supported.",
                    code="invalid_event",
                )
            )
        ]

    def advance(self, response_id: str) -> tuple[list[Action], bool]:
        """The next batch of a running response's events, and whether it is now finished."""
        active = self._active.get(response_id)
        if active is None:
            return [], True
        events = active.steps.popleft()() if active.steps else []
        if not active.steps:
            self._active.pop(response_id, None)
        return [Send(e) for e in events], response_id not in self._active

    def fatal(
        self,
        code: str | None,
        message: str,
        *,
        close_code: int,
        error_type: str = INVALID_REQUEST,
    ) -> list[Action]:
        """An ``error`` event then a close frame whose reason is ``type.code`` (§7)."""
        self._active.clear()
        return [
            Send(error_event(message, code=code, error_type=error_type)),
            Close(close_code, close_reason(error_type, code)),
        ]

    def expire(self, minutes: float = 60) -> list[Action]:
        """The session hit its maximum length: ``session_expired`` then close 1001."""
        shown = int(minutes) if float(minutes).is_integer() else minutes
        return self.fatal(
            "session_expired",
            f"Your session hit the maximum duration of {shown} minutes.",
            close_code=CloseCode.GOING_AWAY,
        )

    # ---------------------------------------------------------------- dispatch

    def _record(self, event: dict[str, Any]) -> None:
        """Hook: a parsed client event (the fake upstream records them for assertions)."""

    def _handler_for(
        self, event_type: Any, event_id: str | None
    ) -> Callable[[dict[str, Any], str | None], list[Action]]:
        if event_type is None:
            raise ClientEventError(
                "Missing required parameter: 'type'.",
                code="missing_required_parameter",
                param="type",
                event_id=event_id,
            )
        handler = self._handlers.get(event_type) if isinstance(event_type, str) else None
        if handler is None:
            raise ClientEventError(
                unsupported_type_message(event_type),
                code="invalid_value",
                param="type",
                event_id=event_id,
            )
        return handler

    # ---------------------------------------------------------------- session

    def handle_session_update(self, event: dict[str, Any], event_id: str | None) -> list[Action]:
        if "session" not in event:
            raise _missing("session", event_id)
        before_td = self._turn_detection()
        before_fmt = input_format(self.session)
        self.session = apply_session_update(self.session, event["session"], event_id=event_id)
        if self._turn_detection() != before_td or input_format(self.session) != before_fmt:
            self._reset_vad()
        return [Send(ev.session_updated(self.session))]

    def _turn_detection(self) -> dict[str, Any] | None:
        td = ((self.session.get("audio") or {}).get("input") or {}).get("turn_detection")
        return dict(td) if isinstance(td, dict) else None

    def _reset_vad(self) -> None:
        """Hook: the turn detector must start over (config change, commit or clear).

        Overrides call this first; the stream position keeps counting (§5 ``audio_start_ms``).
        """
        self._vad_item_id = None

    # ---------------------------------------------------------------- input audio

    def handle_append(self, event: dict[str, Any], event_id: str | None) -> list[Action]:
        data = event.get("audio")
        if not isinstance(data, str):
            raise _missing("audio", event_id)
        try:
            chunk = b64.decode(data)
        except ValueError:
            raise ClientEventError(
                "Invalid 'audio'. Expected base64-encoded audio bytes.",
                code="invalid_value",
                param="audio",
                event_id=event_id,
            ) from None
        return self.append_chunk(chunk, event_id)

    def append_audio(self, chunk: bytes) -> list[Action]:
        """Raw input audio (a binary frame of an opted-in client): an append without base64."""
        try:
            return self.append_chunk(chunk, None)
        except ClientEventError as exc:
            return [Send(exc.to_event())]

    def append_chunk(self, chunk: bytes, event_id: str | None) -> list[Action]:
        """Append decoded audio to the input buffer; raises :class:`ClientEventError`."""
        if len(chunk) > MAX_APPEND_BYTES:
            raise ClientEventError(
                "Invalid 'audio': at most 15 MiB of audio per append.",
                code="invalid_value",
                param="audio",
                event_id=event_id,
            )
        fmt = input_format(self.session)
        if self._check_audio:
            _check_chunk(chunk, format_type(fmt), event_id)
        limit = self._max_buffer_bytes
        if limit is not None and len(self.audio.buffer) + len(chunk) > limit:
            raise ClientEventError(
                f"Input audio buffer is full: at most {duration_ms(limit, fmt) / 1000:.0f} s of "
                "audio may wait for a commit. Commit or clear the buffer.",
                code="voxgate_input_audio_buffer_full",
                param="audio",
                event_id=event_id,
            )
        self.audio._append(chunk)
        self._stream_offset += len(chunk)
        self._stream_ms += duration_ms(len(chunk), fmt)
        return self._on_audio(chunk)

    def _on_audio(self, chunk: bytes) -> list[Action]:
        """Hook: ``chunk`` was appended to the buffer (turn detection goes here)."""
        return []

    @property
    def stream_offset(self) -> int:
        """Bytes appended in the whole session (the coordinate of ``commit_turn``)."""
        return self._stream_offset

    @property
    def stream_ms(self) -> float:
        """Milliseconds of audio appended in the whole session."""
        return self._stream_ms

    def discard_buffered(self, keep_bytes: int) -> None:
        """Forget pending audio older than the last ``keep_bytes`` (silence before a turn)."""
        excess = len(self.audio.buffer) - max(0, keep_bytes)
        if excess > 0:
            del self.audio.buffer[:excess]
            self.audio.forgotten_bytes += excess

    def on_speech_started(self, audio_start_ms: int) -> list[Action]:
        """The turn detector heard speech start: ``speech_started``, and barge-in (§6.4)."""
        self._vad_item_id = ids.item_id()
        actions: list[Action] = [Send(ev.speech_started(audio_start_ms, self._vad_item_id))]
        td = self._turn_detection() or {}
        default = self._default_response_id()
        if default is not None and td.get("interrupt_response", True):
            actions.extend(self._cancel(default, "turn_detected"))
        return actions

    def on_speech_stopped(self, audio_end_ms: int) -> list[Action]:
        """The turn detector heard speech stop: ``speech_stopped``; :meth:`commit_turn` next."""
        if self._vad_item_id is None:
            self._vad_item_id = ids.item_id()
        return [Send(ev.speech_stopped(audio_end_ms, self._vad_item_id))]

    def commit_turn(self, end_offset: int, *, transcript: str | None = None) -> list[Action]:
        """Commit the buffer up to stream byte ``end_offset`` as the detected turn (§6.2).

        Then, with ``create_response``, start a response. ``transcript``, when given, is the
        turn's transcript (otherwise :meth:`_transcript_for` is asked).
        """
        item_id = self._vad_item_id or ids.item_id()
        self._vad_item_id = None
        buffer_start = self._stream_offset - len(self.audio.buffer)
        actions = self._commit(item_id, self.audio._take(end_offset - buffer_start), transcript)
        td = self._turn_detection() or {}
        if (
            self.is_realtime
            and td.get("create_response", True)
            and self._default_response_id() is None
        ):
            actions.extend(self._start_response({}, event_id=None))
        return actions

    def handle_commit(self, event: dict[str, Any], event_id: str | None) -> list[Action]:
        fmt = input_format(self.session)
        have_ms = duration_ms(len(self.audio.buffer), fmt)
        if have_ms < MIN_COMMIT_MS:
            raise ClientEventError(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {have_ms:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
                event_id=event_id,
            )
        item_id = self._vad_item_id or ids.item_id()
        taken = self.audio._take()
        self._reset_vad()
        return self._commit(item_id, taken, None)

    def _commit(self, item_id: str, data: bytes, transcript: str | None) -> list[Action]:
        previous = self.conversation.last_item_id
        item = ev.user_audio_item(item_id)
        self.conversation.insert(item)
        self.conversation.attach_audio(item_id, data)
        self.audio.committed_turn(item_id, data)
        actions: list[Action] = [
            Send(ev.buffer_committed(item_id, previous)),
            Send(ev.item_added(item, previous)),
            Send(ev.item_done(item, previous)),
        ]
        audio_ms = duration_ms(len(data), input_format(self.session))
        if transcript is None:
            transcript = self._transcript_for(item_id, data)
            if transcript is None:  # not transcribed, or the caller completes it later
                return actions
        return actions + self.complete_transcription(item_id, transcript, audio_ms)

    @property
    def transcription_enabled(self) -> bool:
        """Whether ``audio.input.transcription`` is on (transcription events are sent)."""
        audio_in = (self.session.get("audio") or {}).get("input") or {}
        return bool(audio_in.get("transcription"))

    def _transcript_for(self, item_id: str, data: bytes) -> str | None:
        """Hook: the transcript of a committed turn; None if there is none (transcription
        off) or the caller completes it later with :meth:`complete_transcription`."""
        return None

    def _transcript_deltas(self, item_id: str, transcript: str) -> list[str]:
        """Hook: the ``…transcription.delta`` texts still to send for a finished transcript."""
        words = transcript.split(" ")
        return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]

    def complete_transcription(
        self, item_id: str, transcript: str, audio_ms: float
    ) -> list[Action]:
        """Record a committed turn's transcript; with transcription on, send its events."""
        item = self.conversation.get(item_id)
        if item is not None and item.get("content"):
            item["content"][0]["transcript"] = transcript
        if not self.transcription_enabled:
            return []
        actions: list[Action] = [
            Send(ev.transcription_delta(item_id, d))
            for d in self._transcript_deltas(item_id, transcript)
            if d
        ]
        usage = ev.transcription_usage(audio_ms, transcript)
        actions.append(Send(ev.transcription_completed(item_id, transcript, usage)))
        return actions

    def fail_transcription(self, item_id: str, *, code: str, message: str) -> list[Action]:
        """A committed turn could not be transcribed (``…transcription.failed``)."""
        if not self.transcription_enabled:
            return []
        return [Send(ev.transcription_failed(item_id, code=code, message=message))]

    def handle_clear(self, event: dict[str, Any], event_id: str | None) -> list[Action]:
        cleared = self.audio._take()
        if cleared:
            self.audio.cleared_chunk(cleared)
        self._reset_vad()
        return [Send(ev.buffer_cleared())]

    # ---------------------------------------------------------------- conversation

    def handle_item_create(self, event: dict[str, Any], event_id: str | None) -> list[Action]:
        if "item" not in event:
            raise _missing("item", event_id)
        previous_req = event.get("previous_item_id")
        raw = event["item"]
        if not self.honour_item_ids and isinstance(raw, dict):
            raw = {k: v for k, v in raw.items() if k != "id"}
        item, previous = self.conversation.create(
            raw,
            previous_item_id=previous_req if isinstance(previous_req, str) else None,
            new_item_id=ids.item_id(),
            event_id=event_id,
        )
        return [Send(ev.item_added(item, previous)), Send(ev.item_done(item, previous))]

    def handle_item_retrieve(self, event: dict[str, Any], event_id: str | None) -> list[Action]:
        if "item_id" not in event:
            raise _missing("item_id", event_id)
        item = self.conversation.retrieve(event["item_id"], event_id=event_id)
        return [Send(ev.item_retrieved(item))]

    def handle_item_delete(self, event: dict[str, Any], event_id: str | None) -> list[Action]:
        if "item_id" not in event:
            raise _missing("item_id", event_id)
        self.conversation.delete(event["item_id"], event_id=event_id)
        return [Send(ev.item_deleted(event["item_id"]))]

    def handle_item_truncate(self, event: dict[str, Any], event_id: str | None) -> list[Action]:
        for key in ("item_id", "content_index", "audio_end_ms"):
            if key not in event:
                raise _missing(key, event_id)
        self.conversation.truncate(
            event["item_id"], event["content_index"], event["audio_end_ms"], event_id=event_id
        )
        return [
            Send(ev.item_truncated(event["item_id"], event["content_index"], event["audio_end_ms"]))
        ]

    # ---------------------------------------------------------------- responses

    def handle_response_create(self, event: dict[str, Any], event_id: str | None) -> list[Action]:
        params = event.get("response") or {}
        if not isinstance(params, dict):
            raise ClientEventError(
                "Invalid type for 'response': expected an object.",
                code="invalid_type",
                param="response",
                event_id=event_id,
            )
        if not self.is_realtime:
            raise ClientEventError(
                "Invalid value: 'response.create'. Responses are not supported in "
                "transcription sessions.",
                code="invalid_value",
                param="type",
                event_id=event_id,
            )
        return self._start_response(params, event_id=event_id)

    def handle_response_cancel(self, event: dict[str, Any], event_id: str | None) -> list[Action]:
        wanted = event.get("response_id")
        target = wanted if isinstance(wanted, str) else self._default_response_id()
        if target is None or target not in self._active:
            raise ClientEventError(
                "Cancellation failed: no active response found",
                code="response_cancel_not_active",
                event_id=event_id,
            )
        return self._cancel(target, "client_cancelled")

    def _default_response_id(self) -> str | None:
        return next((rid for rid, a in self._active.items() if a.in_conversation), None)

    def _cancel(self, response_id: str, reason: str) -> list[Action]:
        active = self._active.pop(response_id)
        return [Send(e) for e in active.builder.cancel(reason)]

    def active_response(self, response_id: str) -> ActiveResponse | None:
        """The running response with this id, or None once it finished or was cancelled."""
        return self._active.get(response_id)

    def response_events(
        self, response_id: str, make: Callable[[rb.ResponseBuilder], list[dict[str, Any]]]
    ) -> list[Action] | None:
        """Let ``make`` add to a running response; None if it is no longer running.

        The caller streams a response this way (instead of :meth:`advance`) and must stop
        producing it once this returns None (it was cancelled, e.g. by barge-in).
        """
        active = self._active.get(response_id)
        if active is None:
            return None
        events = make(active.builder)
        if active.builder.finished:
            self._active.pop(response_id, None)
        return [Send(e) for e in events]

    def fail_response(
        self, response_id: str, *, code: str, message: str, error_type: str = SERVER_ERROR
    ) -> list[Action]:
        """End a running response as ``failed`` (§11: never a new ``reason``) plus an ``error``."""
        active = self._active.pop(response_id, None)
        if active is None:
            return []
        events = active.builder.fail(code=code, message=message, error_type=error_type)
        events.append(error_event(message, code=code, error_type=error_type))
        return [Send(e) for e in events]

    def _start_response(self, params: dict[str, Any], *, event_id: str | None) -> list[Action]:
        effective = self._response_config(params, event_id)
        in_conversation = params.get("conversation", "auto") != "none"
        if in_conversation and (busy := self._default_response_id()) is not None:
            raise ClientEventError(
                f"Conversation already has an active response in progress: {busy}. Wait "
                "until the response is finished before creating a new one.",
                code="conversation_already_has_active_response",
                event_id=event_id,
            )
        context_items = self._context_items(params, event_id)
        modalities = list(effective["output_modalities"])
        out_fmt = output_format(effective)
        voice = ((effective.get("audio") or {}).get("output") or {}).get("voice", "alloy")
        ctx = ResponseContext(
            items=context_items,
            instructions=str(effective.get("instructions", "")),
            tools=effective.get("tools") or [],
            tool_choice=effective.get("tool_choice", "auto"),
            output_modalities=modalities,
            metadata=params.get("metadata"),
        )
        input_tokens = ev.estimate_text_tokens(ctx.instructions + json.dumps(context_items))
        builder = rb.ResponseBuilder(
            response_id=ids.response_id(),
            conversation=self.conversation if in_conversation else None,
            conversation_id=self.conversation_id,
            output_modalities=modalities,
            audio_output={"format": out_fmt, "voice": voice},
            max_output_tokens=effective.get("max_output_tokens", "inf"),
            metadata=params.get("metadata"),
            input_tokens=input_tokens,
            audio_bytes_per_ms=bytes_per_ms(out_fmt),
        )
        steps = self._plan(builder, ctx, effective, out_fmt)
        self._active[builder.response_id] = ActiveResponse(
            builder, steps, in_conversation, ctx, effective
        )
        actions: list[Action] = [Send(e) for e in builder.start()]
        actions.append(StartResponse(builder.response_id))
        return actions

    def _response_config(self, params: dict[str, Any], event_id: str | None) -> dict[str, Any]:
        """Validate ``response.create`` params by reusing the session schema (§4)."""
        for key in params:
            if key not in _RESPONSE_KEYS:
                raise ClientEventError(
                    f"Unknown parameter: 'response.{key}'.",
                    code="unknown_parameter",
                    param=f"response.{key}",
                    event_id=event_id,
                )
        if params.get("conversation", "auto") not in ("auto", "none"):
            raise ClientEventError(
                f"Invalid value: '{params.get('conversation')}'. Supported values are: "
                "'auto', 'none'.",
                code="invalid_value",
                param="response.conversation",
                event_id=event_id,
            )
        metadata = params.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise ClientEventError(
                "Invalid type for 'response.metadata': expected an object.",
                code="invalid_type",
                param="response.metadata",
                event_id=event_id,
            )
        keys = ("instructions", "output_modalities", "tools", "tool_choice", "prompt")
        overrides: dict[str, Any] = {
            k: params[k] for k in (*keys, "max_output_tokens", "audio") if k in params
        }
        try:
            return apply_session_update(
                self.session, {"type": "realtime", **overrides}, event_id=event_id
            )
        except ClientEventError as exc:
            param = exc.param.replace("session.", "response.", 1) if exc.param else None
            message = exc.message.replace("'session.", "'response.")
            raise ClientEventError(message, code=exc.code, param=param, event_id=event_id) from None

    def _context_items(self, params: dict[str, Any], event_id: str | None) -> list[dict[str, Any]]:
        given = params.get("input")
        if given is None:
            return self.conversation.snapshot()
        if not isinstance(given, list):
            raise ClientEventError(
                "Invalid type for 'response.input': expected an array.",
                code="invalid_type",
                param="response.input",
                event_id=event_id,
            )
        items: list[dict[str, Any]] = []
        for i, entry in enumerate(given):
            if isinstance(entry, dict) and entry.get("type") == "item_reference":
                found = self.conversation.get(str(entry.get("id")))
                if found is None:
                    raise ClientEventError(
                        f"Invalid 'response.input[{i}].id': no item with id '{entry.get('id')}'.",
                        code="invalid_value",
                        param=f"response.input[{i}].id",
                        event_id=event_id,
                    )
                items.append(dict(found))
            else:
                items.append(
                    cv.normalise_client_item(entry, new_item_id=ids.item_id(), event_id=event_id)
                )
        return items

    def _plan(
        self,
        builder: rb.ResponseBuilder,
        ctx: ResponseContext,
        effective: Mapping[str, Any],
        out_fmt: Mapping[str, Any],
    ) -> deque[Step]:
        """Hook: the steps of a new response for :meth:`advance` (none: caller streams it)."""
        return deque()


def _check_chunk(chunk: bytes, fmt_type: str, event_id: str | None) -> None:
    """Reject bytes that cannot be audio of the session's format (see ``check_audio``)."""
    problem = None
    if chunk[:4] == b"RIFF" and chunk[8:12] == b"WAVE":
        problem = f"this is a WAV file; send raw {fmt_type} samples without a header"
    elif _looks_like_text(chunk):
        problem = f"the bytes are text, not {fmt_type} audio"
    elif fmt_type == "audio/pcm" and len(chunk) % 2:
        problem = f"audio/pcm is 16-bit samples, but {len(chunk)} bytes is an odd count"
    if problem is not None:
        raise ClientEventError(
            f"Invalid 'audio': {problem}.", code="invalid_value", param="audio", event_id=event_id
        )


def _looks_like_text(chunk: bytes) -> bool:
    # Printable ASCII with spaces and mostly letters: no plausible PCM16 or G.711 run looks so.
    head = chunk[:256]
    if len(head) < 16 or b" " not in head:
        return False
    if any((b < 0x20 and b not in (9, 10, 13)) or b > 0x7E for b in head):
        return False
    letters = sum(1 for b in head if 0x61 <= (b | 0x20) <= 0x7A or b == 0x20)
    return letters >= 0.6 * len(head)


def _missing(param: str, event_id: str | None) -> ClientEventError:
    return ClientEventError(
        f"Missing required parameter: '{param}'.",
        code="missing_required_parameter",
        param=param,
        event_id=event_id,
    )
