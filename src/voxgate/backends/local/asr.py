"""Speech recognition for the local engine: the recogniser interface and what both share.

Owns: :class:`Recognizer` (one per backend: loads its model once, hands each session's
turn detector an :class:`UtteranceStream`, is closed with the backend), :class:`Transcript`,
the error tree (:class:`AsrError` → :class:`AsrBusyError`), :func:`make_recognizer` (the
``VOXGATE_ASR`` choice: ``whisper``, the default, in :mod:`.whisper`; ``pocketsphinx`` in
:mod:`.sphinx` for the smallest installs) and :func:`voiced_ms`, the energy gate that keeps
clicks and breaths from being transcribed at all.

An utterance stream is fed PCM16 chunks (16 kHz, or another rate resampled inside) while the
user speaks, may return partial transcripts (each a prefix of what follows), and gives the
final transcript at :meth:`UtteranceStream.finish`; an empty final means "no words" (noise,
silence, too short) and the engine then drops the turn.

Threading: every method is blocking CPU work for a worker thread; a stream belongs to one
session. Must not: download models, or keep state outside the recogniser object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol

import numpy as np

ASR_RATE_HZ: Final = 16_000
#: 20 ms frames at least this loud count as voiced for :func:`voiced_ms`.
VOICED_DBFS: Final = -45.0
#: An utterance with less voiced audio than this is not sent to the recogniser.
MIN_VOICED_MS: Final = 100

FinalDecode = Literal["stream", "batch"]
AsrKind = Literal["whisper", "pocketsphinx"]


class AsrError(RuntimeError):
    """Base of ASR failures."""


class DecodeAbandoned(AsrError):
    """A snapshot decode was given up between its stages (speech resumed meanwhile)."""


class AsrBusyError(AsrError):
    """No decoder became free within ``timeout_s`` (the pool is at ``max_size``)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"no free ASR decoder within {timeout_s} s")
        self.timeout_s = timeout_s


@dataclass(frozen=True, slots=True)
class Transcript:
    """A hypothesis: ``text``, ``final`` or partial, and audio seen (ms)."""

    text: str
    final: bool
    audio_ms: float


class UtteranceStream(Protocol):
    """One session's recogniser for one utterance at a time (see the module docstring)."""

    @property
    def active(self) -> bool:
        """True between the first :meth:`feed` of an utterance and :meth:`finish`/:meth:`cancel`."""
        ...

    @property
    def audio_ms(self) -> float:
        """Milliseconds of audio fed into the current utterance."""
        ...

    def feed(self, pcm16: bytes) -> Transcript | None:
        """Feed audio; returns a new partial transcript when one is due and changed."""
        ...

    def partial(self) -> Transcript | None:
        """The newest partial of an active utterance (None before any words)."""
        ...

    def finish(self) -> Transcript:
        """End the utterance and return its final transcript (empty: no words)."""
        ...

    def cancel(self) -> None:
        """Drop the current utterance, if any."""
        ...


class Recognizer(Protocol):
    """A backend's speech recogniser: owns its model(s); thread-safe."""

    name: str

    def stream(
        self,
        *,
        input_rate_hz: int = ASR_RATE_HZ,
        final_decode: FinalDecode = "stream",
        max_utterance_s: float = 30.0,
        acquire_timeout_s: float = 10.0,
    ) -> UtteranceStream:
        """A new utterance stream for one session (cheap; models are shared)."""
        ...

    def warm(self, speech_16k: bytes) -> None:
        """Load the model(s) now and decode ``speech_16k`` once (blocking)."""
        ...

    def close(self) -> None:
        """Release the model(s); streams made afterwards fail with :class:`AsrError`."""
        ...


def make_recognizer(
    kind: AsrKind,
    *,
    workers: int,
    model_path: str | Path | None = None,
    prompt_words: Sequence[str] = (),
    decoders: int = 4,
    partial_interval_ms: int = 0,
) -> Recognizer:
    """The recogniser ``VOXGATE_ASR`` names (nothing is loaded until :meth:`~Recognizer.warm`).

    Args:
        kind: ``whisper`` or ``pocketsphinx``.
        workers: decodes that may run at once (the engine's worker threads).
        model_path: a CTranslate2 Whisper folder (Whisper only; default the bundled tiny.en).
        prompt_words: vocabulary to bias Whisper with (knowledge-base headings, then
            ``Asked:`` questions).
        decoders: pocketsphinx decoder pool size.
        partial_interval_ms: Whisper partial decodes every this much speech (0 = none).
    """
    if kind == "pocketsphinx":
        from voxgate.backends.local.sphinx import SphinxRecognizer

        return SphinxRecognizer(decoders=decoders)
    from voxgate.backends.local.whisper_stream import WhisperRecognizer

    return WhisperRecognizer(
        model_path,
        workers=workers,
        prompt_words=prompt_words,
        partial_interval_ms=partial_interval_ms,
    )


def voiced_ms(pcm16: bytes | bytearray, rate_hz: int = ASR_RATE_HZ) -> int:
    """Milliseconds of 20 ms frames at or above :data:`VOICED_DBFS` in ``pcm16``."""
    frame = rate_hz // 50
    samples = np.frombuffer(bytes(pcm16), dtype="<i2")
    usable = len(samples) - len(samples) % frame
    if usable == 0:
        return 0
    frames = samples[:usable].astype(np.float64).reshape(-1, frame)
    rms = np.sqrt(np.mean(frames**2, axis=1)) / 32768.0
    floor = 10 ** (VOICED_DBFS / 20)
    return int(np.count_nonzero(rms >= floor)) * 20


def transcribe(
    recognizer: Recognizer, pcm16: bytes, *, input_rate_hz: int = ASR_RATE_HZ, chunk_ms: int = 20
) -> str:
    """Recognise a whole buffer by streaming it in ``chunk_ms`` chunks (tests and benches)."""
    stream = recognizer.stream(input_rate_hz=input_rate_hz, final_decode="batch")
    step = input_rate_hz * 2 * chunk_ms // 1000
    try:
        for i in range(0, len(pcm16), step):
            stream.feed(pcm16[i : i + step])
        return stream.finish().text
    finally:
        stream.cancel()
