"""Turn detection for the local engine: Silero VAD plus the ASR utterance stream.

Owns: :class:`TurnDetector`, one session's listener. It takes the session's appended input
audio (wire format), decides ``server_vad`` turns with :class:`~.vad.VadStream` and streams
each turn's audio, prefix padding included, into an :class:`~.asr.UtteranceStream` of the
backend's recogniser (Whisper or pocketsphinx), so partial transcripts can be ready while the
user speaks and the final one right after the turn ends. A turn whose final transcript is
empty (noise, silence, too short: the recogniser heard no words) ends with
``TurnEnded.transcript == ""`` and the engine drops it.
It returns plain event objects; the engine maps them onto the protocol core.

Hiding the end-of-turn cost: a turn ends only after ``silence_duration_ms`` of silence, but
after :func:`pause_ms_for` of it the detector already finishes the ASR utterance (``stream``
final) and reports :class:`TurnPaused` with the transcript, so the caller can prepare the
answer while the rest of the silence window runs. If speech resumes (:class:`TurnResumed`) a
new utterance starts from shortly before the resumption and the turn's transcript is the
utterances joined; if it does not, the turn ends: :class:`TurnStopped` when the VAD decides
(the caller sends ``speech_stopped``), then :class:`TurnEnded` with the transcript, at once if
the pause's decode is done, else (``defer_end``) from :meth:`TurnDetector.finish_turn`. Pauses
are engine-internal: nothing about them reaches the protocol.

Threading: every method is blocking CPU work for a worker thread; one detector belongs to one
session and is driven by one worker at a time. Bounded: the audio history kept outside a
turn is ``prefix_padding_ms`` plus a little; a turn longer than ``max_turn_ms`` is ended
there. Must not: touch the event loop, the clock or the protocol state.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

from voxgate.backends.local.asr import (
    AsrError,
    FinalDecode,
    Recognizer,
    Transcript,
    UtteranceStream,
)
from voxgate.backends.local.vad import (
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    VadConfig,
    VadEvent,
    VadStream,
)
from voxgate.protocol.audio import AudioFormat, decode_input, rate_hz

DEFAULT_MAX_TURN_MS: Final = 30_000
_EAGERNESS_SILENCE_MS: Final = {"high": 200, "medium": 500, "auto": 500, "low": 800}
_HISTORY_SLACK_MS: Final = 200
_FEED_MS: Final = 20
#: The answer is prepared this long before the silence window ends (at least a quarter of it
#: has to be silence first): the Whisper decode of the utterance (~110-170 ms in a busy
#: server), the knowledge search and the first sentence's TTS.
PREPARE_LEAD_MS: Final = 150
#: Windows this short (the API's default 200 ms among them) leave too little time after
#: their lead: their snapshot starts after :data:`EARLY_PAUSE_MS` of silence instead, which
#: inner gaps of words reach too (the snapshot is then given up when speech resumes, before
#: its encoder or decoder stage, whichever comes next).
SHORT_WINDOW_MS: Final = 250
EARLY_PAUSE_MS: Final = 24
#: Threads for snapshot decodes off the detector's path (:func:`snapshot_executor`). They mostly
#: wait: the recogniser runs as many decodes at once as it has workers and queues the rest.
_SNAPSHOT_THREADS_PER_CORE: Final = 4
#: When speech resumes after a pause, the new utterance starts this far back at least (Silero
#: needs ~100-150 ms to score a new onset; never before the pause), or ``prefix_padding_ms``.
_RESUME_LOOKBACK_MS: Final = 200


@dataclass(frozen=True, slots=True)
class TurnStarted:
    """Speech began at ``audio_start_ms`` (session audio time, prefix padding included)."""

    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class TurnPartial:
    """A new partial hypothesis of the turn in progress."""

    text: str


@dataclass(frozen=True, slots=True)
class TurnPaused:
    """The turn may be ending: ``transcript`` is what it would be (engine-internal hint)."""

    transcript: str


@dataclass(frozen=True, slots=True)
class TurnResumed:
    """Speech came back after a :class:`TurnPaused`: what was prepared may not apply."""


@dataclass(frozen=True, slots=True)
class TurnStopped:
    """The VAD decided the turn ended at ``audio_end_ms`` (``speech_stopped``), at
    ``decided_at_ms``; its :class:`TurnEnded` (the transcript) follows, at once or from
    :meth:`TurnDetector.finish_turn` when the decode was still running."""

    audio_end_ms: int
    decided_at_ms: int


@dataclass(frozen=True, slots=True)
class TurnEnded:
    """The turn ended at ``audio_end_ms``; decided at ``decided_at_ms`` (session audio time).

    ``error`` is set (and ``transcript`` empty) when speech recognition failed.
    """

    audio_end_ms: int
    decided_at_ms: int
    transcript: str
    audio_ms: float
    error: str | None = None


TurnEvent = TurnStarted | TurnPartial | TurnPaused | TurnResumed | TurnStopped | TurnEnded


class SnapshotJob(Protocol):
    """A decode of the utterance so far that may run on any thread (Whisper's
    :meth:`~.whisper_stream.WhisperStream.begin_snapshot`)."""

    def run(self) -> Any: ...

    def abandon(self) -> None: ...


_executor_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def snapshot_executor() -> Executor:
    """The process's threads for snapshot decodes (created on first use, shared by all
    detectors; a decode holds a core only while the recogniser has a worker free)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
            _executor = ThreadPoolExecutor(
                max_workers=max(2, cores * _SNAPSHOT_THREADS_PER_CORE),
                thread_name_prefix="voxgate-snapshot",
            )
        return _executor


@dataclass(slots=True)
class _PendingSnapshot:
    """A snapshot decode started at a pause; ``announced`` once its TurnPaused went out."""

    job: SnapshotJob
    future: Future[Any]
    announced: bool = False


def pause_ms_for(silence_duration_ms: int, lead_ms: int = PREPARE_LEAD_MS) -> int:
    """Silence after which a turn's answer is prepared: ``lead_ms`` before the turn would end,
    but not before a quarter of the window; a short window's after :data:`EARLY_PAUSE_MS`
    (0 when ``lead_ms`` is 0: no preparation).

    Only short windows start early: a longer one's answer is ready in time from its lead,
    and Whisper's transcript of the same audio moves with where the snapshot ends (the
    console's 500 ms window at 324 instead of 350 ms changed 5 of 12 recorded questions).
    """
    if lead_ms <= 0:
        return 0
    if silence_duration_ms <= SHORT_WINDOW_MS:
        return min(EARLY_PAUSE_MS, silence_duration_ms // 2)
    return max(silence_duration_ms - lead_ms, silence_duration_ms // 4)


def vad_config(
    turn_detection: Mapping[str, Any], *, prepare_lead_ms: int = PREPARE_LEAD_MS
) -> VadConfig:
    """Map a session's ``turn_detection`` (server_vad or semantic_vad) to Silero settings.

    ``semantic_vad`` has no semantic model here: its ``eagerness`` picks a silence window.
    """
    if turn_detection.get("type") == "semantic_vad":
        eagerness = str(turn_detection.get("eagerness") or "auto")
        silence = _EAGERNESS_SILENCE_MS.get(eagerness, 500)
        return VadConfig(
            silence_duration_ms=silence, pause_ms=pause_ms_for(silence, prepare_lead_ms)
        )
    threshold = float(turn_detection.get("threshold", 0.5))
    silence = max(0, int(turn_detection.get("silence_duration_ms", 200)))
    return VadConfig(
        threshold=min(max(threshold, 0.01), 0.99),
        prefix_padding_ms=max(0, int(turn_detection.get("prefix_padding_ms", 300))),
        silence_duration_ms=silence,
        pause_ms=pause_ms_for(silence, prepare_lead_ms),
    )


class TurnDetector:
    """VAD + streaming ASR over one session's input audio (blocking; one thread at a time).

    Args:
        turn_detection: the session's ``audio.input.turn_detection`` object.
        fmt: the session's input format type (``audio/pcm``, ``audio/pcmu``, ``audio/pcma``).
        start_ms: session audio time of the first byte this detector will see.
        recognizer: the backend's speech recogniser.
        final_decode: how the utterance stream computes the final transcript. With ``batch``
            the utterance is not finished at a pause (the batch pass wants all of it), so
            :class:`TurnPaused` carries the live hypothesis instead.
        max_turn_ms: a turn is ended after this much speech.
        acquire_timeout_s: longest wait for a free decoder when a turn starts.
        prepare_lead_ms: :class:`TurnPaused` comes this long before a turn would end
            (see :func:`pause_ms_for`; 0 = never).
        executor: where snapshot decodes run (default :func:`snapshot_executor`).
        defer_end: when the VAD ends a turn whose transcript is not ready yet (its snapshot
            decode still running, or a final decode to do), :meth:`feed` returns at the
            :class:`TurnStopped` and the caller gets the :class:`TurnEnded` (and whatever the
            rest of that audio brought) from :meth:`finish_turn`, so ``speech_stopped`` does
            not wait for the decode. Off: :class:`TurnEnded` follows in the same call.
        on_snapshot_done: called (on the decoding thread) when a snapshot decode finishes,
            so the caller can :meth:`poll` for its :class:`TurnPaused` at once instead of
            at the next :meth:`feed` (up to one audio chunk later).

    Snapshot decodes (Whisper, ``stream``) run off the caller's thread: the pause starts
    one and :meth:`feed` goes on detecting, so the silence window is timed while the decode
    runs (a decode takes about as long as the window's rest, and it used to hold the VAD,
    and with it ``speech_stopped``, back by that much). :class:`TurnPaused` is returned by
    the first :meth:`feed` (or :meth:`poll`) after the decode finished; the end of a turn
    waits for it.
    """

    def __init__(
        self,
        turn_detection: Mapping[str, Any],
        fmt: str,
        *,
        start_ms: int,
        recognizer: Recognizer,
        final_decode: FinalDecode = "batch",
        max_turn_ms: int = DEFAULT_MAX_TURN_MS,
        acquire_timeout_s: float = 2.0,
        prepare_lead_ms: int = PREPARE_LEAD_MS,
        executor: Executor | None = None,
        defer_end: bool = False,
        on_snapshot_done: Callable[[], None] | None = None,
    ) -> None:
        self.fmt = cast(AudioFormat, fmt)
        self.config = vad_config(turn_detection, prepare_lead_ms=prepare_lead_ms)
        rate = rate_hz(self.fmt)
        self._bytes_per_ms = rate * 2 / 1000
        self._vad = VadStream(self.config, input_rate_hz=rate, start_ms=start_ms)
        self._asr = recognizer.stream(
            input_rate_hz=rate,
            final_decode=final_decode,
            max_utterance_s=max_turn_ms / 1000,
            acquire_timeout_s=acquire_timeout_s,
        )
        self._final_decode = final_decode
        self._max_turn_ms = max_turn_ms
        self._history = bytearray()  # decoded PCM16 at ``rate``
        self._history_start_ms = float(start_ms)
        self._turn_start_ms: float | None = None
        self._asr_error: str | None = None
        self._asr_fed_ms = 0.0  # session time up to which the turn's audio went to the ASR
        self._segments: list[str] = []  # transcripts of utterances finished at pauses
        self._asr_paused = False  # the utterance was finished at a pause; nothing is fed
        self._executor = executor
        self._pending: _PendingSnapshot | None = None  # a snapshot decode off this thread
        self._defer_end = defer_end
        self._on_snapshot_done = on_snapshot_done
        # A turn end reported (TurnStopped) but not finished: the stop and the VAD events
        # that followed it in the same audio (see finish_turn).
        self._deferred: tuple[SpeechStopped, list[VadEvent]] | None = None

    @property
    def in_turn(self) -> bool:
        return self._turn_start_ms is not None

    @property
    def prefix_padding_ms(self) -> int:
        return self.config.prefix_padding_ms

    @property
    def end_pending(self) -> bool:
        """A :class:`TurnStopped` went out whose :class:`TurnEnded` :meth:`finish_turn` gives."""
        return self._deferred is not None

    def feed_many(self, chunks: Iterable[bytes]) -> list[TurnEvent]:
        """:meth:`feed` several wire chunks as one (decisions do not depend on chunking)."""
        return self.feed(b"".join(chunks))

    def feed(self, wire: bytes) -> list[TurnEvent]:
        """Process one appended wire chunk; return the turn events it completed.

        A turn end left pending (:attr:`end_pending`) is finished first.
        """
        events = self.finish_turn() if self._deferred is not None else []
        pcm = decode_input(wire, self.fmt)
        self._history += pcm
        events += self._detect(self._vad.feed(pcm))
        return events

    def poll(self) -> list[TurnEvent]:
        """The :class:`TurnPaused` of a snapshot decode that finished since the last call
        (cheap, never blocks; [] when there is none or a turn end is pending)."""
        events: list[TurnEvent] = []
        if self._deferred is None:
            self._settle_snapshot(events, wait=False)
        return events

    def finish_turn(self) -> list[TurnEvent]:
        """After a deferred :class:`TurnStopped`: wait for the turn's transcript and return
        its :class:`TurnEnded`, then the events of the audio after it (which may stop the
        next turn and leave that one pending in turn). Blocking; [] when nothing is pending.
        """
        if self._deferred is None:
            return []
        stop, rest = self._deferred
        self._deferred = None
        events: list[TurnEvent] = []
        self._settle_snapshot(events, wait=True)
        events.append(self._end_turn(stop.audio_end_ms, stop.decided_at_ms))
        return events + self._detect(rest)

    def _detect(self, vad_events: list[VadEvent]) -> list[TurnEvent]:
        """Turn events from the VAD's decisions on the audio just added to the history."""
        events: list[TurnEvent] = []
        for k, vad_event in enumerate(vad_events):
            if isinstance(vad_event, SpeechStarted):
                events.append(TurnStarted(vad_event.audio_start_ms))
                self._start_turn(vad_event.audio_start_ms)
            elif self._turn_start_ms is None:
                continue
            elif isinstance(vad_event, SpeechPaused):
                paused = self._pause(vad_event.at_ms)
                if paused is not None:
                    events.append(paused)
            elif isinstance(vad_event, SpeechResumed):
                self._resume(vad_event.at_ms)
                events.append(TurnResumed())
            else:
                events.append(TurnStopped(vad_event.audio_end_ms, vad_event.decided_at_ms))
                if self._defer_end and not self._end_ready():
                    self._deferred = (vad_event, vad_events[k + 1 :])
                    return events
                self._settle_snapshot(events, wait=True)
                events.append(self._end_turn(vad_event.audio_end_ms, vad_event.decided_at_ms))
        self._settle_snapshot(events, wait=False)
        end_ms = self._history_start_ms + len(self._history) / self._bytes_per_ms
        if self._turn_start_ms is not None and not self._asr_paused:
            partial = self._asr_feed_until(end_ms)
            if partial is not None:
                events.append(TurnPartial(" ".join((*self._segments, partial))))
        if self._turn_start_ms is not None and end_ms - self._turn_start_ms >= self._max_turn_ms:
            self._settle_snapshot(events, wait=True)
            events.append(TurnStopped(int(end_ms), int(end_ms)))
            events.append(self._end_turn(int(end_ms), int(end_ms)))
            # Speech that goes on becomes the next turn (the VAD starts over from here).
            self._vad.reset(start_ms=int(end_ms))
        self._trim_history()
        return events

    def close(self) -> None:
        """Drop a turn in progress (a pocketsphinx decoder goes back to its pool)."""
        self._deferred = None
        self._drop_snapshot()
        self._asr.cancel()
        self._turn_start_ms = None

    # ------------------------------------------------------------------ internals

    def _start_turn(self, audio_start_ms: int) -> None:
        self._turn_start_ms = float(audio_start_ms)
        self._asr_error = None
        self._asr_fed_ms = float(audio_start_ms)
        self._segments = []
        self._asr_paused = False

    def _pause(self, at_ms: int) -> TurnPaused | None:
        """Silence may end the turn: finish the utterance now (``stream``) and say what it is.

        A stream that can decode without ending the utterance (Whisper's ``snapshot``) does
        that instead: if speech resumes, the utterance goes on (gap included), so the final
        decode hears the whole turn at once rather than pieces of it. One that can run that
        decode elsewhere (``begin_snapshot``) starts it and returns None: the
        :class:`TurnPaused` follows from :meth:`_settle_snapshot`.
        """
        partial = self._asr_feed_until(at_ms)
        if self._final_decode == "batch" or self._asr_error is not None:
            text = partial if partial is not None else self._live_text()
            return TurnPaused(" ".join((*self._segments, text)).strip())
        begin = getattr(self._asr, "begin_snapshot", None)
        if begin is not None and self._asr.active:
            self._drop_snapshot()
            job = cast(SnapshotJob, begin())
            executor = self._executor or snapshot_executor()
            self._pending = _PendingSnapshot(job, executor.submit(job.run))
            if self._on_snapshot_done is not None:
                done = self._on_snapshot_done
                self._pending.future.add_done_callback(lambda _future: done())
            self._asr_paused = True
            return None
        snapshot = getattr(self._asr, "snapshot", None)
        if snapshot is not None and self._asr.active:
            try:
                text = snapshot().text
            except AsrError as exc:
                self._asr_error = str(exc)
                text = ""
            self._asr_paused = True
            return TurnPaused(" ".join(t for t in (*self._segments, text) if t))
        self._segments.append(self._finish_utterance())
        self._asr_paused = True
        return TurnPaused(self._joined())

    def _settle_snapshot(self, events: list[TurnEvent], *, wait: bool) -> None:
        """Announce the pending snapshot's :class:`TurnPaused` once its decode is done
        (``wait``: block until it is; the turn is ending and needs the transcript)."""
        pending = self._pending
        if pending is None or pending.announced or not (wait or pending.future.done()):
            return
        pending.announced = True
        try:
            rec = pending.future.result()
        except (AsrError, RuntimeError) as exc:
            self._asr_error = str(exc)
            events.append(TurnPaused(""))
            return
        text = self._asr.accept_snapshot(pending.job, rec).text  # type: ignore[attr-defined]
        events.append(TurnPaused(" ".join(t for t in (*self._segments, text) if t)))

    def _end_ready(self) -> bool:
        """Whether the turn's transcript is known without waiting: the utterance was
        decoded (or finished) at the pause and that decode, if it ran elsewhere, is done."""
        pending = self._pending
        if pending is not None and not pending.announced and not pending.future.done():
            return False
        return self._asr_paused

    def _drop_snapshot(self) -> None:
        """Forget the pending snapshot: unqueued if it has not started, else given up at its
        next stage (the stage running finishes unheard: it cannot be interrupted)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.future.cancel()
            pending.job.abandon()

    def _resume(self, at_ms: int) -> None:
        self._drop_snapshot()
        if self._asr_paused and getattr(self._asr, "snapshot", None) is not None:
            self._asr_paused = False  # the same utterance goes on from the pause
        elif self._asr_paused:
            # A new utterance from just before the resumption (never before the pause).
            lookback = max(_RESUME_LOOKBACK_MS, self.config.prefix_padding_ms)
            self._asr_fed_ms = max(self._asr_fed_ms, at_ms - lookback)
            self._asr_paused = False

    def _live_text(self) -> str:
        live = self._asr.partial()
        return live.text if live is not None else ""

    def _joined(self) -> str:
        return " ".join(t for t in self._segments if t)

    def _asr_feed_until(self, ms: float) -> str | None:
        """Feed the turn's audio from where the ASR is up to session time ``ms``."""
        if ms <= self._asr_fed_ms:
            return None
        start = max(0, int((self._asr_fed_ms - self._history_start_ms) * self._bytes_per_ms) & ~1)
        stop = max(start, int((ms - self._history_start_ms) * self._bytes_per_ms) & ~1)
        self._asr_fed_ms = ms
        pcm = bytes(self._history[start:stop])
        if self._asr_error is not None or not pcm:
            return None
        try:
            partial = _feed_chunked(self._asr, pcm, self._bytes_per_ms)
        except AsrError as exc:
            self._asr_error = str(exc)
            return None
        return partial.text if partial is not None else None

    def _finish_utterance(self) -> str:
        """End the ASR utterance; an error is kept for :meth:`_end_turn`. Returns its text."""
        if not self._asr.active:
            return ""
        try:
            return self._asr.finish().text
        except (AsrError, RuntimeError) as exc:
            self._asr.cancel()
            self._asr_error = str(exc)
            return ""

    def _end_turn(self, audio_end_ms: int, decided_at_ms: int) -> TurnEnded:
        start = self._turn_start_ms if self._turn_start_ms is not None else audio_end_ms
        self._turn_start_ms = None
        if not self._asr_paused:
            self._asr_feed_until(decided_at_ms)
            self._segments.append(self._finish_utterance())
        elif self._asr.active:  # paused on a snapshot: the final is that decode
            self._segments.append(self._finish_utterance())
        self._asr_paused = False
        self._pending = None
        error, self._asr_error = self._asr_error, None
        transcript = self._joined()
        self._segments = []
        if error is not None:
            self._asr.cancel()
            return TurnEnded(audio_end_ms, decided_at_ms, "", audio_end_ms - start, error)
        return TurnEnded(audio_end_ms, decided_at_ms, transcript, decided_at_ms - start)

    def _trim_history(self) -> None:
        if self._turn_start_ms is not None:
            return  # the turn's audio is bounded by max_turn_ms
        keep = int((self.config.prefix_padding_ms + _HISTORY_SLACK_MS) * self._bytes_per_ms) & ~1
        excess = len(self._history) - keep
        if excess > 0:
            del self._history[:excess]
            self._history_start_ms += excess / self._bytes_per_ms


def transcribe_turn(
    wire: bytes, fmt: str, *, recognizer: Recognizer, final_decode: FinalDecode = "batch"
) -> tuple[str, float]:
    """Transcribe a whole committed turn (manual commits); returns ``(text, audio_ms)``.

    Raises:
        AsrError: no decoder became free.
    """
    audio_fmt = cast(AudioFormat, fmt)
    stream = recognizer.stream(input_rate_hz=rate_hz(audio_fmt), final_decode=final_decode)
    try:
        _feed_chunked(stream, decode_input(wire, audio_fmt), rate_hz(audio_fmt) * 2 / 1000)
        final = stream.finish()
    finally:
        stream.cancel()
    return final.text, final.audio_ms


def _feed_chunked(stream: UtteranceStream, pcm: bytes, bytes_per_ms: float) -> Transcript | None:
    """Feed ``pcm`` in 20 ms pieces: pocketsphinx 5.1.1 can crash on one large live-mode
    buffer after a full-utterance decode on the same decoder (seen with pooled decoders)."""
    step = int(_FEED_MS * bytes_per_ms) & ~1
    latest: Transcript | None = None
    for i in range(0, len(pcm), step):
        latest = stream.feed(pcm[i : i + step]) or latest
    return latest
