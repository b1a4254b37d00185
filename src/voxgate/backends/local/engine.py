"""The local engine's protocol state and shared resources.

Owns: :class:`EngineSession`, the shared sans-I/O realtime core
(:class:`~voxgate.protocol.realtime_server.RealtimeCore`) with the engine's hooks: appended
audio is handed to the caller for Silero VAD + ASR turn detection in a worker thread
(:meth:`EngineSession.take_audio`), committed turns are transcribed by the caller
(:meth:`EngineSession.take_transcriptions`), responses are streamed by the caller through
:meth:`~voxgate.protocol.realtime_server.RealtimeCore.response_events`; and
:class:`EngineResources`, what the sessions of one backend share (worker threads, the
speech recogniser, responder, limits), owned and closed by that backend. Conversation items
become :mod:`.responder` history here.

Sans-I/O like the core: the asyncio side lives in :mod:`voxgate.backends.local.connection`.
"""

from __future__ import annotations

import base64
import os
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

from voxgate.backends.local.asr import FinalDecode, Recognizer
from voxgate.backends.local.responder import (
    FunctionCall,
    FunctionCallOutput,
    HistoryItem,
    Message,
    Responder,
    Tool,
)
from voxgate.backends.local.tts import SpeechCache
from voxgate.backends.local.turns import PREPARE_LEAD_MS
from voxgate.protocol import server_events as ev
from voxgate.protocol.realtime_server import Action, RealtimeCore, Send

DEFAULT_MAX_TURN_S: Final = 30.0
MAX_PENDING_CHUNKS: Final = 4096


def engine_workers() -> int:
    """Worker threads for an engine: one per core the process may run on.

    That is ``taskset``/cgroup affinity, not the machine's count: a decode holds a core
    (pocketsphinx even holds the GIL), so more threads than cores only add switching.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 2


@dataclass(frozen=True)
class EngineLimits:
    """Per-session limits and timeouts of the local engine."""

    #: Longest user turn; input audio pending a manual commit is capped at the same length.
    max_turn_s: float = DEFAULT_MAX_TURN_S
    #: A response (responder + TTS) that has not finished by then fails.
    response_timeout_s: float = 60.0
    #: Longest wait for the responder's next piece (first one included).
    responder_piece_timeout_s: float = 20.0
    #: Longest wait for one sentence of TTS.
    tts_timeout_s: float = 10.0
    #: Longest wait for turn detection / transcription of a batch of audio.
    asr_timeout_s: float = 10.0
    #: Audio per ``response.output_audio.delta``.
    audio_delta_ms: int = 200
    #: Audio in a response's first delta: small, so playback can start as early as possible.
    first_audio_delta_ms: int = 40
    #: The answer to a turn is prepared this long before its silence window ends (0 = never).
    prepare_lead_ms: int = PREPARE_LEAD_MS
    #: Events between the engine and the relay (the relay's pace throttles TTS beyond it).
    outbox_events: int = 64
    #: Client events waiting for the engine.
    inbox_events: int = 256


@dataclass(frozen=True)
class EngineResources:
    """What all sessions of one local backend share (thread-safe or immutable).

    The backend owns these: :meth:`close` (from ``LocalBackend.aclose``) stops the worker
    threads and frees the recogniser's model; nothing here is process-wide.
    """

    executor: ThreadPoolExecutor
    asr: Recognizer
    responder: Responder
    final_decode: FinalDecode = "batch"
    limits: EngineLimits = EngineLimits()
    #: The TTS, with synthesised static sentences (knowledge-base answers) cached for all.
    speech_cache: SpeechCache = field(default_factory=SpeechCache)

    def close(self) -> None:
        """Stop the worker threads (queued work is cancelled, running work finishes), then
        free the recogniser's model. Blocking; idempotent."""
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.asr.close()


@dataclass(frozen=True, slots=True)
class ItemAudio:
    """An ``input_audio`` part of a created item, waiting for a transcript (wire format)."""

    item_id: str
    content_index: int
    audio: bytes


class EngineSession(RealtimeCore):
    """The realtime core with the local engine's hooks (see the module docstring).

    After each :meth:`receive_text` the caller must, in this order: perform the actions;
    if :attr:`detector_stale`, rebuild the turn detector; feed :meth:`take_audio` to it and
    apply its events (:meth:`on_speech_started`, :meth:`partial_transcript`,
    :meth:`on_speech_stopped` + :meth:`commit_turn`); transcribe :meth:`take_transcriptions`
    and apply :meth:`complete_transcription`; transcribe :meth:`take_item_audio` and apply
    :meth:`complete_item_transcription`; stop the responses in :meth:`take_cancelled`.
    """

    def __init__(self, session: dict[str, Any], *, max_buffer_bytes: int) -> None:
        self.detector_stale = True
        self._new_audio: deque[bytes] = deque()
        self._to_transcribe: deque[tuple[str, bytes]] = deque()
        self._item_audio: deque[ItemAudio] = deque()
        self._cancelled: list[str] = []
        self._partial_sent: dict[str, str] = {}
        super().__init__(session, max_buffer_bytes=max_buffer_bytes, check_audio=True)

    # ---------------------------------------------------------------- hooks

    def _reset_vad(self) -> None:
        super()._reset_vad()
        self.detector_stale = True

    def _on_audio(self, chunk: bytes) -> list[Action]:
        # One client event appends one chunk and the caller drains after each event, so
        # this holds at most a handful; the bound is a guard against a caller bug.
        if len(self._new_audio) < MAX_PENDING_CHUNKS:
            self._new_audio.append(chunk)
        return []

    def _transcript_for(self, item_id: str, data: bytes) -> str | None:
        self._to_transcribe.append((item_id, data))
        return None

    def _transcript_deltas(self, item_id: str, transcript: str) -> list[str]:
        sent = self._partial_sent.pop(item_id, "")
        if sent and transcript.startswith(sent):
            return [transcript[len(sent) :]]
        return [] if sent else [transcript]

    def _cancel(self, response_id: str, reason: str) -> list[Action]:
        self._cancelled.append(response_id)
        return super()._cancel(response_id, reason)

    def handle_item_create(self, event: dict[str, Any], event_id: str | None) -> list[Action]:
        """``conversation.item.create``; its ``input_audio`` parts are queued for a transcript.

        The caller transcribes them before the next client event (as for manual commits),
        so a ``response.create`` that follows answers what the audio says.
        """
        actions = super().handle_item_create(event, event_id)
        added = next(
            (
                a.event["item"]
                for a in actions
                if isinstance(a, Send) and a.event.get("type") == "conversation.item.added"
            ),
            None,
        )
        item = self.conversation.get(str(added["id"])) if added is not None else None
        if item is None or item.get("type") != "message" or item.get("role") != "user":
            return actions
        for index, part in enumerate(item.get("content") or []):
            data = part.get("audio")
            if part.get("type") == "input_audio" and part.get("transcript") is None and data:
                # conversation.create validated the base64 already
                self._item_audio.append(ItemAudio(item["id"], index, base64.b64decode(data)))
        return actions

    # ---------------------------------------------------------------- for the caller

    @property
    def turn_detection(self) -> dict[str, Any] | None:
        return self._turn_detection()

    @property
    def current_turn_item_id(self) -> str | None:
        """The item id the turn in progress will get (after ``speech_started``)."""
        return self._vad_item_id

    def drop_turn(self, end_offset: int) -> list[Action]:
        """The detected turn had no words (noise, silence): forget it, commit nothing.

        Its ``speech_started``/``speech_stopped`` were sent; no item, transcript or response
        follows, so a client shows no phantom turn. The audio up to stream byte
        ``end_offset`` leaves the input buffer.
        """
        self._vad_item_id = None
        self.discard_buffered(max(0, self.stream_offset - end_offset))
        return []

    def take_audio(self) -> list[bytes]:
        """Audio appended since the last call, in order (for the turn detector)."""
        out = list(self._new_audio)
        self._new_audio.clear()
        return out

    def take_transcriptions(self) -> list[tuple[str, bytes]]:
        """Manually committed turns ``(item_id, wire audio)`` waiting for a transcript."""
        out = list(self._to_transcribe)
        self._to_transcribe.clear()
        return out

    def take_item_audio(self) -> list[ItemAudio]:
        """``input_audio`` parts of created items waiting for a transcript, in order."""
        out = list(self._item_audio)
        self._item_audio.clear()
        return out

    def complete_item_transcription(
        self, clip: ItemAudio, transcript: str, audio_ms: float
    ) -> list[Action]:
        """Store a created item's audio transcript; with transcription on, send its events."""
        item = self.conversation.get(clip.item_id)
        parts = (item.get("content") or []) if item is not None else []
        if clip.content_index >= len(parts):
            return []  # the item was deleted meanwhile
        parts[clip.content_index]["transcript"] = transcript
        if not self.transcription_enabled:
            return []
        usage = ev.transcription_usage(audio_ms, transcript)
        index = clip.content_index
        actions: list[Action] = []
        if transcript:
            actions.append(
                Send(ev.transcription_delta(clip.item_id, transcript, content_index=index))
            )
        actions.append(
            Send(ev.transcription_completed(clip.item_id, transcript, usage, content_index=index))
        )
        return actions

    def fail_item_transcription(self, clip: ItemAudio, *, code: str, message: str) -> list[Action]:
        """A created item's audio could not be transcribed (``…transcription.failed``)."""
        if not self.transcription_enabled:
            return []
        event = ev.transcription_failed(
            clip.item_id, code=code, message=message, content_index=clip.content_index
        )
        return [Send(event)]

    def take_cancelled(self) -> list[str]:
        """Responses the core cancelled since the last call (their producers must stop)."""
        out, self._cancelled = self._cancelled, []
        return out

    def partial_transcript(self, text: str) -> list[Action]:
        """A partial hypothesis of the turn in progress → ``…transcription.delta`` (§6.2).

        Only text that extends what was already sent goes out, so the deltas of an item
        concatenate to a prefix of its final transcript.
        """
        item_id = self._vad_item_id
        if item_id is None or not self.transcription_enabled:
            return []
        sent = self._partial_sent.get(item_id, "")
        if not text.startswith(sent) or len(text) == len(sent):
            return []
        delta = text[len(sent) :]
        if len(self._partial_sent) > 8:  # turns whose final never came (cleared)
            self._partial_sent.clear()
        self._partial_sent[item_id] = text
        return [Send(ev.transcription_delta(item_id, delta))]


def history_of(items: Sequence[Mapping[str, Any]]) -> tuple[list[HistoryItem], str | None]:
    """Conversation items → responder history, and the latest user text if it is the last."""
    history: list[HistoryItem] = []
    for item in items:
        kind = item.get("type")
        if kind == "message":
            text = " ".join(
                str(part.get("text") or part.get("transcript") or "")
                for part in item.get("content") or []
            ).strip()
            role = item.get("role")
            if text and role in ("user", "assistant", "system"):
                history.append(Message(role, text))
        elif kind == "function_call":
            history.append(
                FunctionCall(
                    str(item.get("call_id")), str(item.get("name")), str(item.get("arguments"))
                )
            )
        elif kind == "function_call_output":
            history.append(FunctionCallOutput(str(item.get("call_id")), str(item.get("output"))))
    last = history[-1] if history else None
    user_text = last.text if isinstance(last, Message) and last.role == "user" else None
    return history, user_text


def tools_of(tools: Sequence[Mapping[str, Any]], tool_choice: Any) -> list[Tool]:
    """The function tools a response may call (none when ``tool_choice`` is ``"none"``)."""
    if tool_choice == "none":
        return []
    return [Tool.from_realtime(t) for t in tools if t.get("type") == "function" and t.get("name")]
