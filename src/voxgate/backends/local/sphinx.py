"""Streaming speech recognition with pocketsphinx (its bundled US-English model, offline).

Owns: :class:`SphinxRecognizer` (``VOXGATE_ASR=pocketsphinx``, for the smallest installs):
a bounded pool of pocketsphinx decoders (:class:`DecoderPool`; one costs about a second and
~95 MB to create, so they are made up front by :meth:`SphinxRecognizer.warm` and reused with
``start_utt``/``end_utt``), and :class:`SphinxStream`, one session's recogniser: feed PCM16
chunks (16 kHz, or 24 kHz resampled inside) while the user speaks, read partial hypotheses,
and get a final transcript at the end of the utterance.

Final decode: ``"stream"`` returns the live decoder's hypothesis at ``end_utt`` (cheapest);
``"batch"`` re-decodes the buffered utterance in full-utterance mode, whose batch
cepstral-mean normalisation is noticeably more accurate on short turns, for about the same
CPU again. The utterance buffer is bounded by ``max_utterance_s``; audio past it is not kept
for the batch pass (the stream pass still sees it).

Threading: every method is blocking CPU work meant for a worker thread. A decoder is used by
one stream at a time (the pool hands it out exclusively); a :class:`SphinxStream` itself is
not thread-safe and belongs to one session. Must not: download models or share a decoder.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any, Final

import structlog
from pocketsphinx import Config, Decoder

from voxgate.backends.local.asr import (
    ASR_RATE_HZ,
    AsrBusyError,
    AsrError,
    FinalDecode,
    Transcript,
    UtteranceStream,
)
from voxgate.protocol.audio import Resampler

log = structlog.get_logger(__name__)

DEFAULT_POOL_SIZE: Final = 2
_ADAPT_CHUNK_BYTES: Final = 640  # 20 ms at 16 kHz, as sessions feed it
DEFAULT_DECODER_OPTIONS: Final[Mapping[str, Any]] = {
    # fwdflat is the slow second pass; the tree search plus the lattice best path is enough
    "fwdflat": False,
    "bestpath": True,
    # A narrower word beam (default 7e-29) and at most 3000 active HMMs per frame (default
    # 30000): ~35% less decoder CPU on our test speech for a word error rate within ~0.02
    # (bench/asr_wer.py); the CPU is what bounds how many users a core serves.
    "wbeam": 1e-20,
    "maxhmmpf": 3000,
    "loglevel": "FATAL",
}


class DecoderPool:
    """A bounded pool of pocketsphinx decoders sharing one configuration.

    Decoders are created on demand up to ``max_size`` and then reused; :meth:`acquire`
    blocks (up to ``timeout_s``) while all are lent out. Thread-safe.

    pocketsphinx adapts its live cepstral mean (CMN) as it decodes, so a pooled decoder's
    accuracy would depend on whatever the previous session said, and a fresh decoder's model
    default is poor on the first turn. :meth:`adapt` decodes some speech once and every
    utterance (``SphinxStream(reset_cmn=True)``) then starts from that mean: transcripts are
    reproducible and good from the first turn.
    """

    def __init__(
        self,
        *,
        max_size: int = DEFAULT_POOL_SIZE,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self.max_size = max_size
        self._options = dict(DEFAULT_DECODER_OPTIONS if options is None else options)
        self._free: list[Decoder] = []
        self._created = 0
        self._cond = threading.Condition()
        self._initial_cmn: str | None = None
        self._adapted_cmn: str | None = None
        self._closed = False
        # pocketsphinx model loading is not safe to run twice at once (it crashed when two
        # backends warmed up together), so decoder creation and adaptation are serialised.
        self._create_lock = threading.Lock()

    @property
    def initial_cmn(self) -> str | None:
        """The mean an utterance starts from: adapted, else a fresh decoder's (or None)."""
        return self._adapted_cmn or self._initial_cmn

    @property
    def created(self) -> int:
        """How many decoders exist (free or lent)."""
        return self._created

    def acquire(self, timeout_s: float = 10.0) -> Decoder:
        """Lend a decoder; create one if the pool is not full.

        Raises:
            AsrBusyError: none became free in time.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            if self._closed:
                raise AsrError("the pocketsphinx recogniser is closed")
            while not self._free and self._created >= self.max_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    raise AsrBusyError(timeout_s)
            if self._free:
                return self._free.pop()
            self._created += 1
        try:
            return self._new_decoder()
        except BaseException:
            with self._cond:
                self._created -= 1
                self._cond.notify()
            raise

    def prefill(self, count: int) -> int:
        """Create free decoders until ``count`` exist (at most ``max_size``). Blocking.

        Creating one takes ~0.3-1 s with the GIL held, which stalls every session of the
        process, so a server makes them before it takes calls rather than on a first turn.
        Returns how many were created.
        """
        made = 0
        while True:
            with self._cond:
                if self._created >= min(count, self.max_size):
                    return made
                self._created += 1
            try:
                decoder = self._new_decoder()
            except BaseException:
                with self._cond:
                    self._created -= 1
                    self._cond.notify()
                raise
            self.release(decoder)
            made += 1

    def release(self, decoder: Decoder) -> None:
        """Give a decoder back (it must not be mid-utterance)."""
        with self._cond:
            if self._closed:
                self._created -= 1
                return  # dropped: its memory goes with it
            self._free.append(decoder)
            self._cond.notify()

    def close(self) -> None:
        """Free the idle decoders; lent ones are freed when they come back."""
        with self._cond:
            self._closed = True
            self._created -= len(self._free)
            self._free.clear()
            self._cond.notify_all()

    def adapt(self, pcm16_16k: bytes) -> None:
        """Decode ``pcm16_16k`` (16 kHz speech) once and keep the resulting mean. Blocking."""
        with self._create_lock:
            if self._adapted_cmn is not None:
                return
        decoder = self.acquire()
        try:
            with self._create_lock:
                if self._adapted_cmn is not None:
                    return
                # after a full-utterance ("batch") decode a decoder must get a live mean
                # before streaming again, or pocketsphinx 5.1.1 crashes in process_raw
                if self._initial_cmn:
                    decoder.set_cmn(self._initial_cmn)
                decoder.start_utt()
                for i in range(0, len(pcm16_16k), _ADAPT_CHUNK_BYTES):
                    decoder.process_raw(pcm16_16k[i : i + _ADAPT_CHUNK_BYTES], False, False)
                self._adapted_cmn = decoder.get_cmn(True)
                decoder.end_utt()
        finally:
            self.release(decoder)

    def _new_decoder(self) -> Decoder:
        started = time.perf_counter()
        with self._create_lock:
            decoder = Decoder(Config(**self._options))
        with self._cond:
            if self._initial_cmn is None:
                self._initial_cmn = decoder.get_cmn(False)
        log.info("asr.decoder_created", elapsed_ms=round((time.perf_counter() - started) * 1000))
        return decoder


class SphinxRecognizer:
    """``VOXGATE_ASR=pocketsphinx``: a decoder pool behind the :class:`~.asr.Recognizer` API.

    Every utterance starts from the cepstral mean adapted at :meth:`warm` (see
    :class:`DecoderPool`), so results do not depend on what other sessions said.
    """

    name = "pocketsphinx"

    def __init__(self, *, decoders: int = DEFAULT_POOL_SIZE) -> None:
        self.pool = DecoderPool(max_size=decoders)

    def stream(
        self,
        *,
        input_rate_hz: int = ASR_RATE_HZ,
        final_decode: FinalDecode = "stream",
        max_utterance_s: float = 30.0,
        acquire_timeout_s: float = 10.0,
    ) -> UtteranceStream:
        return SphinxStream(
            self.pool,
            input_rate_hz=input_rate_hz,
            final_decode=final_decode,
            max_utterance_s=max_utterance_s,
            acquire_timeout_s=acquire_timeout_s,
            reset_cmn=True,
        )

    def warm(self, speech_16k: bytes) -> None:
        """Adapt the mean on ``speech_16k`` and create the whole pool (~0.8 s per decoder,
        with the GIL held: done before calls, not on a first turn)."""
        self.pool.adapt(speech_16k)
        self.pool.prefill(self.pool.max_size)

    def close(self) -> None:
        self.pool.close()


class SphinxStream:
    """One session's streaming recogniser.

    ``reset_cmn`` starts every utterance from the model's initial cepstral mean, making
    partials independent of what the pooled decoder heard before. Off by default: the live
    mean adapted on earlier audio gives better partials, and the ``"batch"`` final computes
    its own mean over the utterance anyway.

    Usage per utterance: :meth:`feed` chunks (the first call starts the utterance and
    borrows a decoder), read :meth:`partial` or the return of :meth:`feed`, then call
    :meth:`finish` for the final transcript (returns the decoder to the pool). Call
    :meth:`cancel` to drop an utterance, e.g. on ``input_audio_buffer.clear``.
    """

    def __init__(
        self,
        pool: DecoderPool,
        *,
        input_rate_hz: int = ASR_RATE_HZ,
        partial_interval_ms: float = 200.0,
        final_decode: FinalDecode = "batch",
        max_utterance_s: float = 30.0,
        acquire_timeout_s: float = 10.0,
        reset_cmn: bool = False,
    ) -> None:
        self._pool = pool
        self._reset_cmn = reset_cmn
        self._input_rate_hz = input_rate_hz
        self._partial_interval_ms = partial_interval_ms
        self._final_decode: FinalDecode = final_decode
        self._max_bytes = int(max_utterance_s * ASR_RATE_HZ) * 2
        self._acquire_timeout_s = acquire_timeout_s
        self._resampler = Resampler(input_rate_hz, ASR_RATE_HZ)
        self._decoder: Decoder | None = None
        self._audio = bytearray()
        self._fed_bytes = 0
        self._last_partial_ms = 0.0
        self._last_partial_text = ""

    @property
    def active(self) -> bool:
        """True between the first :meth:`feed` of an utterance and :meth:`finish`/:meth:`cancel`."""
        return self._decoder is not None

    @property
    def audio_ms(self) -> float:
        """Milliseconds of 16 kHz audio fed into the current utterance."""
        return self._fed_bytes / (2 * ASR_RATE_HZ) * 1000

    def feed(self, pcm16: bytes) -> Transcript | None:
        """Feed audio; returns a new partial transcript when one is due and changed.

        Raises:
            AsrBusyError: starting the utterance found no free decoder.
        """
        decoder = self._ensure_started()
        data = self._resampler.process(pcm16)
        if not data:
            return None
        decoder.process_raw(data, False, False)
        self._fed_bytes += len(data)
        if len(self._audio) + len(data) <= self._max_bytes:
            self._audio += data
        if self.audio_ms - self._last_partial_ms < self._partial_interval_ms:
            return None
        self._last_partial_ms = self.audio_ms
        partial = self.partial()
        if partial is None or partial.text == self._last_partial_text:
            return None
        self._last_partial_text = partial.text
        return partial

    def partial(self) -> Transcript | None:
        """The current hypothesis of an active utterance (None before any words)."""
        if self._decoder is None:
            return None
        hyp = self._decoder.hyp()
        text = hyp.hypstr if hyp is not None else ""
        return Transcript(text, False, self.audio_ms) if text else None

    def finish(self) -> Transcript:
        """End the utterance and return the final transcript (empty text if nothing heard)."""
        decoder = self._decoder
        if decoder is None:
            return Transcript("", True, 0.0)
        audio_ms = self.audio_ms
        try:
            tail = self._resampler.flush()
            if tail:
                decoder.process_raw(tail, False, False)
                self._audio += tail[: max(0, self._max_bytes - len(self._audio))]
            decoder.end_utt()
            if self._final_decode == "batch" and self._audio:
                decoder.start_utt()
                decoder.process_raw(bytes(self._audio), False, True)
                decoder.end_utt()
            hyp = decoder.hyp()
            text = hyp.hypstr if hyp is not None else ""
        finally:
            self._reset()
            self._pool.release(decoder)
        return Transcript(text, True, audio_ms)

    def cancel(self) -> None:
        """Drop the current utterance, if any, and return its decoder."""
        decoder = self._decoder
        if decoder is None:
            return
        try:
            decoder.end_utt()
        finally:
            self._resampler.flush()
            self._reset()
            self._pool.release(decoder)

    def _ensure_started(self) -> Decoder:
        if self._decoder is None:
            decoder = self._pool.acquire(self._acquire_timeout_s)
            try:
                # a reused decoder carries the last caller's cepstral mean; start each
                # utterance from the model's initial one so results do not depend on history
                if self._reset_cmn and self._pool.initial_cmn:
                    decoder.set_cmn(self._pool.initial_cmn)
                decoder.start_utt()
            except BaseException:
                self._pool.release(decoder)
                raise
            self._decoder = decoder
        return self._decoder

    def _reset(self) -> None:
        self._decoder = None
        self._audio = bytearray()
        self._fed_bytes = 0
        self._last_partial_ms = 0.0
        self._last_partial_text = ""
