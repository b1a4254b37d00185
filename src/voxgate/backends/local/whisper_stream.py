"""Whisper as the engine's recogniser: utterance streams over one shared :class:`WhisperModel`.

Owns: :class:`WhisperRecognizer` (``VOXGATE_ASR=whisper``, the default), which owns the
model and closes it, and :class:`WhisperStream`, one session's utterance: audio is resampled
to 16 kHz and buffered (bounded by ``max_utterance_s``) while the user speaks; the final
transcript is one decode of the whole utterance when it ends (during the silence window, see
:mod:`.turns`).

Partial transcripts (``partial_interval_ms`` > 0): every that much audio the utterance so far
is decoded, and the words two consecutive decodes agree on (the newer one's last word
excluded: it may be cut off) become the partial. Each later decode, the final included, is
forced to start with the agreed words, so partials are always a prefix of the final. Each
partial decode costs about as much as a final, so they are off by default (docs).

A stream with less than :data:`~.asr.MIN_VOICED_MS` of voiced audio is not decoded at all,
and a decode Whisper judges to be silence or noise gives an empty final (no words).

Audio is resampled to 16 kHz in float32 (:class:`FloatResampler`), not through the
engine's PCM16 resampler: soxr dithers whenever it writes int16, with a fresh random seed
per stream, so the same audio gave a different decode from one session to the next (10 of
60 espeak questions changed words between two runs in one process).

Threading: blocking CPU work for a worker thread; a stream belongs to one session. Must
not: keep audio beyond its bound, or share a stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soxr

from voxgate.backends.local.asr import (
    ASR_RATE_HZ,
    MIN_VOICED_MS,
    FinalDecode,
    Transcript,
    voiced_ms,
)
from voxgate.backends.local.mel import Float32Array
from voxgate.backends.local.whisper import Recognition, WhisperModel, WhisperOptions

_EMPTY: Float32Array = np.zeros(0, dtype=np.float32)


def pcm16_to_float(pcm16: bytes | bytearray) -> Float32Array:
    """PCM16 little-endian → float32 samples in [-1, 1)."""
    samples = np.frombuffer(bytes(pcm16), dtype="<i2").astype(np.float32)
    out: Float32Array = samples / 32768.0
    return out


def float_to_pcm16(samples: Float32Array) -> bytes:
    """float32 samples → PCM16 little-endian (clipped; rounded, no dither)."""
    pcm: bytes = np.clip(np.rint(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()
    return pcm


class FloatResampler:
    """PCM16 chunks at ``in_rate_hz`` → float32 at 16 kHz, deterministically (no dither).

    An odd trailing byte is carried to the next chunk; :meth:`flush` drains the filter and
    starts over.
    """

    def __init__(self, in_rate_hz: int) -> None:
        self._in_rate_hz = in_rate_hz
        self._carry = b""
        self._stream = self._new_stream()

    def _new_stream(self) -> soxr.ResampleStream | None:
        if self._in_rate_hz == ASR_RATE_HZ:
            return None
        return soxr.ResampleStream(self._in_rate_hz, ASR_RATE_HZ, 1, dtype="float32")

    def process(self, pcm16: bytes) -> Float32Array:
        data = self._carry + pcm16
        usable = len(data) - len(data) % 2
        self._carry = data[usable:]
        samples = pcm16_to_float(data[:usable])
        if self._stream is None or not len(samples):
            return samples
        out: Float32Array = self._stream.resample_chunk(samples, last=False)
        return out

    def flush(self) -> Float32Array:
        self._carry = b""
        if self._stream is None:
            return _EMPTY
        out: Float32Array = self._stream.resample_chunk(_EMPTY, last=True)
        self._stream = self._new_stream()
        return out


class SnapshotJob:
    """A decode of an utterance so far, safe to run on any thread (see
    :meth:`WhisperStream.begin_snapshot`)."""

    __slots__ = ("_model", "abandoned", "agreed", "fed", "samples", "utterance")

    def __init__(
        self,
        model: WhisperModel,
        samples: Float32Array,
        agreed: str,
        utterance: int,
        fed: int,
    ) -> None:
        self._model = model
        self.samples = samples
        self.agreed = agreed
        self.utterance = utterance
        self.fed = fed
        self.abandoned = False

    def abandon(self) -> None:
        """(Any thread.) The result is no longer wanted: :meth:`run` stops at its next stage
        boundary (a stage in progress finishes: a CTranslate2 call cannot be interrupted)."""
        self.abandoned = True

    def _wanted(self) -> bool:
        return not self.abandoned

    def run(self) -> Recognition | None:
        """Decode (blocking CPU work); None when the audio is too quiet to be words.

        Raises:
            DecodeAbandoned: :meth:`abandon` was called before a stage began.
        """
        if not self.agreed and voiced_ms(float_to_pcm16(self.samples)) < MIN_VOICED_MS:
            return None
        prefix = " " + self.agreed if self.agreed else ""
        return self._model.recognize(self.samples, prefix=prefix, wanted=self._wanted)

    def text_of(self, rec: Recognition | None) -> str:
        """The transcript a :meth:`run` result stands for (agreed partials kept)."""
        if rec is None:
            return ""
        return rec.text if rec.text.startswith(self.agreed) else self.agreed


class WhisperStream:
    """One session's Whisper utterance (see the module docstring for partials)."""

    def __init__(
        self,
        model: WhisperModel,
        *,
        input_rate_hz: int = ASR_RATE_HZ,
        max_utterance_s: float = 30.0,
        partial_interval_ms: int = 0,
    ) -> None:
        self._model = model
        self._input_rate_hz = input_rate_hz
        self._resampler = FloatResampler(input_rate_hz)
        self._max_samples = int(max_utterance_s * ASR_RATE_HZ)
        self._partial_interval_ms = partial_interval_ms
        self._chunks: list[Float32Array] = []
        self._kept = 0  # samples in ``_chunks``
        self._fed = 0  # samples fed (kept or not)
        self._active = False
        self._next_partial_ms = float(partial_interval_ms)
        self._agreed = ""
        self._last_words: list[str] = []
        self._snapshot: tuple[int, str] | None = None  # (fed samples, text) at the last pause
        self._utterance = 0  # counts utterances, so a late snapshot cannot land in the next
        self.last: Recognition | None = None  # the newest decode (benchmarks read its scores)

    @property
    def active(self) -> bool:
        return self._active

    @property
    def audio_ms(self) -> float:
        return self._fed / ASR_RATE_HZ * 1000

    def feed(self, pcm16: bytes) -> Transcript | None:
        """Buffer audio; with partials on, decode when one is due (returns a new partial)."""
        self._active = True
        data = self._resampler.process(pcm16)
        self._keep(data)
        if self._partial_interval_ms <= 0 or self.audio_ms < self._next_partial_ms:
            return None
        self._next_partial_ms = self.audio_ms + self._partial_interval_ms
        return self._partial_decode()

    def partial(self) -> Transcript | None:
        return Transcript(self._agreed, False, self.audio_ms) if self._agreed else None

    def snapshot(self) -> Transcript:
        """What the utterance says so far, without ending it (the turn may be ending).

        If no audio is fed before :meth:`finish`, that returns this result without a
        second decode; if audio is fed (speech resumed), the final decodes it all.
        """
        job = self.begin_snapshot()
        return self.accept_snapshot(job, job.run())

    def begin_snapshot(self) -> SnapshotJob:
        """:meth:`snapshot` in two halves, so its decode can run on another thread.

        The job holds the utterance so far (no copy: the stream never writes into an array
        it handed out) and the shared, thread-safe model; :meth:`SnapshotJob.run` may run
        anywhere while this stream goes on being fed. :meth:`accept_snapshot`, back on the
        stream's own thread, makes the result the final if no audio came in between.
        """
        return SnapshotJob(self._model, self._samples(), self._agreed, self._utterance, self._fed)

    def accept_snapshot(self, job: SnapshotJob, rec: Recognition | None) -> Transcript:
        """Take the result of ``job`` (from :meth:`begin_snapshot`; ``rec`` its decode)."""
        text = job.text_of(rec)
        if job.utterance == self._utterance:
            self._snapshot = (job.fed, text)
            if rec is not None:
                self.last = rec
        return Transcript(text, False, job.fed / ASR_RATE_HZ * 1000)

    def finish(self) -> Transcript:
        if not self._active:
            return Transcript("", True, 0.0)
        audio_ms = self.audio_ms
        try:
            if self._snapshot is not None and self._snapshot[0] == self._fed:
                text = self._snapshot[1]
            else:
                self._keep(self._resampler.flush())
                text = self._final_text()
        finally:
            self._reset()
        return Transcript(text, True, audio_ms)

    def cancel(self) -> None:
        if self._active:
            self._resampler.flush()
        self._reset()

    # ------------------------------------------------------------------ internals

    def _keep(self, samples: Float32Array) -> None:
        self._fed += len(samples)
        room = self._max_samples - self._kept
        if room > 0 and len(samples):
            self._chunks.append(samples[:room])
            self._kept += min(room, len(samples))

    def _samples(self) -> Float32Array:
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0] if self._chunks else _EMPTY

    def _voiced_ms(self) -> int:
        return voiced_ms(float_to_pcm16(self._samples()))

    def _final_text(self) -> str:
        if not self._agreed and self._voiced_ms() < MIN_VOICED_MS:
            return ""
        rec = self._decode()
        return rec.text if rec.text.startswith(self._agreed) else self._agreed

    def _decode(self) -> Recognition:
        prefix = " " + self._agreed if self._agreed else ""
        self.last = self._model.recognize(self._samples(), prefix=prefix)
        return self.last

    def _partial_decode(self) -> Transcript | None:
        if not self._agreed and self._voiced_ms() < MIN_VOICED_MS:
            return None
        rec = self._decode()
        if not rec.speech:
            return None
        words = rec.text.split()
        agreed: list[str] = []
        for old, new in zip(self._last_words, words[:-1], strict=False):
            if old != new:
                break
            agreed.append(new)
        self._last_words = words
        text = " ".join(agreed)
        if len(text) <= len(self._agreed) or not text.startswith(self._agreed):
            return None
        self._agreed = text
        return Transcript(text, False, self.audio_ms)

    def _reset(self) -> None:
        self._active = False
        self._chunks = []
        self._kept = 0
        self._fed = 0
        self._next_partial_ms = float(self._partial_interval_ms)
        self._agreed = ""
        self._last_words = []
        self._snapshot = None
        self._utterance += 1
        self._resampler = FloatResampler(self._input_rate_hz)


class WhisperRecognizer:
    """``VOXGATE_ASR=whisper``: the :class:`~.asr.Recognizer` over one :class:`WhisperModel`.

    Args:
        model_path: a CTranslate2 Whisper folder (None: the bundled, hash-pinned tiny.en).
        workers: decodes that may run at once (one CPU thread each).
        prompt_words: knowledge-base headings, then ``Asked:`` questions, for the decoder prompt.
        partial_interval_ms: partial decodes every this much audio (0 = final only).
        options: decoding settings.
    """

    name = "whisper"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        workers: int = 1,
        prompt_words: Sequence[str] = (),
        partial_interval_ms: int = 0,
        options: WhisperOptions | None = None,
    ) -> None:
        self.model = WhisperModel(
            model_path, workers=workers, prompt_words=prompt_words, options=options
        )
        self.partial_interval_ms = partial_interval_ms

    def stream(
        self,
        *,
        input_rate_hz: int = ASR_RATE_HZ,
        final_decode: FinalDecode = "stream",
        max_utterance_s: float = 30.0,
        acquire_timeout_s: float = 10.0,
    ) -> WhisperStream:
        """A new utterance stream (``final_decode``/``acquire_timeout_s`` do not apply)."""
        return WhisperStream(
            self.model,
            input_rate_hz=input_rate_hz,
            max_utterance_s=max_utterance_s,
            partial_interval_ms=self.partial_interval_ms,
        )

    def warm(self, speech_16k: bytes) -> None:
        """Load (and verify) the model and decode ``speech_16k`` once."""
        self.model.load()
        self.model.recognize(pcm16_to_float(speech_16k))

    def close(self) -> None:
        self.model.close()
