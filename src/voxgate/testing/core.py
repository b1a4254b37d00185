"""The fake upstream's per-connection protocol core: client events in, actions out.

A thin layer on the shared sans-I/O core :class:`voxgate.protocol.realtime_server.RealtimeCore`
(which the local engine uses too). Sans-I/O: no sockets, no asyncio, no clock.
:class:`FakeSession` is fed parsed frames (:meth:`FakeSession.receive_text`,
:meth:`FakeSession.receive_binary`) and returns a list of :data:`Action`. After each call the
caller must perform the actions **in order**: ``Send`` an event, ``Close`` the socket, or, for
``StartResponse``, keep calling :meth:`FakeSession.advance` for that response (each call
returns the next batch of its events) until it reports done.

What the fake adds to the shared core: a deterministic energy VAD on audio time
(:mod:`voxgate.testing.vad`), transcripts from a :data:`~voxgate.testing.responder.Transcriber`,
and replies from a :data:`~voxgate.testing.responder.Responder` voiced as a 440 Hz tone.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from functools import partial
from typing import Any

from voxgate.protocol import response_builder as rb
from voxgate.protocol.events import CLIENT_EVENT_TYPES
from voxgate.protocol.realtime_server import (
    MAX_APPEND_BYTES,
    MIN_COMMIT_MS,
    Action,
    Close,
    InputAudio,
    RealtimeCore,
    ResponseContext,
    Send,
    StartResponse,
    Step,
)
from voxgate.protocol.session_config import input_format
from voxgate.testing import audio
from voxgate.testing.responder import (
    CallTool,
    Responder,
    Say,
    Transcriber,
    default_responder,
    default_transcriber,
)
from voxgate.testing.vad import EnergyVad, VadParams

__all__ = [
    "CLIENT_EVENT_TYPES",
    "MAX_APPEND_BYTES",
    "MIN_COMMIT_MS",
    "REPLY_MS_PER_WORD",
    "Action",
    "AudioLedger",
    "Close",
    "FakeSession",
    "Send",
    "StartResponse",
]

REPLY_MS_PER_WORD = 100


class AudioLedger(InputAudio):
    """Where every appended byte went, for assertions (bounded by ``cap_bytes``).

    Each byte lands in exactly one place: a committed turn (``committed``, in commit order), a
    cleared chunk (``cleared``), or the pending ``buffer``. Past ``cap_bytes`` of history the
    oldest committed/cleared entries are forgotten and counted in ``forgotten_bytes``.
    """

    def __init__(self, cap_bytes: int) -> None:
        super().__init__()
        self.cap_bytes = cap_bytes
        self.committed: list[tuple[str, bytes]] = []
        self.cleared: list[bytes] = []

    def committed_audio(self, item_id: str) -> bytes | None:
        return next((a for i, a in self.committed if i == item_id), None)

    def all_bytes(self) -> bytes:
        """Everything still recorded, in append order (committed + cleared + pending)."""
        return b"".join(a for _, a in self.committed) + b"".join(self.cleared) + self.buffer

    def committed_turn(self, item_id: str, data: bytes) -> None:
        self.committed.append((item_id, data))
        self._trim()

    def cleared_chunk(self, data: bytes) -> None:
        self.cleared.append(data)
        self._trim()

    def _trim(self) -> None:
        history = sum(len(a) for _, a in self.committed) + sum(len(a) for a in self.cleared)
        while history > self.cap_bytes and (self.committed or self.cleared):
            dropped = self.committed.pop(0)[1] if self.committed else self.cleared.pop(0)
            history -= len(dropped)
            self.forgotten_bytes += len(dropped)


class FakeSession(RealtimeCore):
    """One fake connection's state: the shared core plus energy VAD, scripted replies."""

    def __init__(
        self,
        session: dict[str, Any],
        *,
        responder: Responder = default_responder,
        transcriber: Transcriber = default_transcriber,
        audio_cap_bytes: int = 64 * 1024 * 1024,
        max_client_events: int = 100_000,
    ) -> None:
        self._responder = responder
        self._transcriber = transcriber
        self._vad: EnergyVad | None = None
        self._tone_phase = 0
        #: every parsed client event, in order (appends carry ``audio_len``, not the audio)
        self.client_events: deque[dict[str, Any]] = deque(maxlen=max_client_events)
        #: where every appended byte went (the core's input buffer, recording)
        self.ledger = AudioLedger(cap_bytes=audio_cap_bytes)
        super().__init__(session, audio=self.ledger)

    def _record(self, event: dict[str, Any]) -> None:
        if event.get("type") == "input_audio_buffer.append" and isinstance(event.get("audio"), str):
            # The bytes live in the audio ledger; keep the event list small.
            slim = {k: v for k, v in event.items() if k != "audio"}
            slim["audio_len"] = len(event["audio"])
            self.client_events.append(slim)
        else:
            self.client_events.append(event)

    # ---------------------------------------------------------------- hooks

    def _reset_vad(self) -> None:
        super()._reset_vad()
        td = self._turn_detection()
        if td is None:
            self._vad = None
            return
        self._vad = EnergyVad(
            VadParams.from_turn_detection(td),
            input_format(self.session),
            start_offset=self.stream_offset,
            start_ms=int(self.stream_ms),
        )

    def _on_audio(self, chunk: bytes) -> list[Action]:
        if self._vad is None:
            return []
        actions: list[Action] = []
        for vad_event in self._vad.feed(chunk):
            if vad_event.kind == "start":
                actions.extend(self.on_speech_started(vad_event.ms))
            else:
                actions.extend(self.on_speech_stopped(vad_event.ms))
                actions.extend(self.commit_turn(vad_event.end_offset))
        return actions

    def _transcript_for(self, item_id: str, data: bytes) -> str | None:
        if not self.transcription_enabled:
            return None
        return self._transcriber(data, input_format(self.session))

    def _plan(
        self,
        builder: rb.ResponseBuilder,
        ctx: ResponseContext,
        effective: Mapping[str, Any],
        out_fmt: Mapping[str, Any],
    ) -> deque[Step]:
        """Turn the responder's reply into steps; each step yields one small batch of events."""
        reply: list[Say | CallTool] = list(self._responder(ctx))
        steps: deque[Step] = deque()
        limit = effective.get("max_output_tokens", "inf")
        budget = limit if isinstance(limit, int) else None
        truncated = False
        for part in reply:
            if isinstance(part, CallTool):
                steps.append(partial(builder.function_call, part.name, part.arguments))
                continue
            words = [w for w in part.text.split(" ") if w]
            if budget is not None:
                truncated = truncated or len(words) > budget
                words, budget = words[:budget], max(0, budget - len(words))
            steps.append(builder.begin_message)
            for i, word in enumerate(words):
                chunk = word + (" " if i < len(words) - 1 else "")
                if builder.is_audio:
                    steps.append(partial(self._voice_step, builder, out_fmt, chunk))
                else:
                    steps.append(partial(builder.text, chunk))
            steps.append(builder.end_message)
        if truncated:
            steps.append(partial(builder.finish, "incomplete", reason="max_output_tokens"))
        else:
            steps.append(builder.finish)
        return steps

    def _voice_step(
        self, builder: rb.ResponseBuilder, fmt: Mapping[str, Any], transcript: str
    ) -> list[dict[str, Any]]:
        return builder.audio(self._voice(fmt), transcript)

    def _voice(self, fmt: Mapping[str, Any]) -> bytes:
        """Synthetic speech: a phase-continuous 440 Hz tone, one chunk per word."""
        chunk = audio.tone(REPLY_MS_PER_WORD, fmt, amplitude=0.3, phase_samples=self._tone_phase)
        self._tone_phase += len(chunk) // (2 if fmt.get("type") == "audio/pcm" else 1)
        return chunk
