"""Streaming speech recognition with pocketsphinx (its bundled US-English model, offline).

Owns: :class:`DecoderPool`, a bounded, process-wide pool of pocketsphinx decoders (one costs
about a second and ~95 MB to create, so they are made lazily and reused with
``start_utt``/``end_utt``), and :class:`AsrStream`, one session's recogniser: feed PCM16
chunks (16 kHz, or 24 kHz resampled inside) while the user speaks, read partial hypotheses,
and get a final transcript at the end of the utterance.

Final decode: ``"stream"`` returns the live decoder's hypothesis at ``end_utt`` (cheapest);
``"batch"`` (default) re-decodes the buffered utterance in full-utterance mode, whose batch
cepstral-mean normalisation is noticeably more accurate on short turns, for about the same
CPU again. The utterance buffer is bounded by ``max_utterance_s``; audio past it is not kept
for the batch pass (the stream pass still sees it).

Threading: every method is blocking CPU work meant for a worker thread. A decoder is used by
one stream at a time (the pool hands it out exclusively); an :class:`AsrStream` itself is not
thread-safe and belongs to one session. Must not: download models or share a decoder.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import structlog
from pocketsphinx import Config, Decoder

from voxgate.protocol.audio import Resampler

log = structlog.get_logger(__name__)

ASR_RATE_HZ: Final = 16_000
DEFAULT_POOL_SIZE: Final = 2
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

FinalDecode = Literal["stream", "batch"]


class AsrError(RuntimeError):
    """Base of ASR failures."""


class AsrBusyError(AsrError):
    """No decoder became free within ``timeout_s`` (the pool is at ``max_size``)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"no free ASR decoder within {timeout_s} s")
        self.timeout_s = timeout_s


@dataclass(frozen=True, slots=True)
class Transcript:
    """A hypothesis: ``text`` (lower-case words), ``final`` or partial, and audio seen (ms)."""

    text: str
    final: bool
    audio_ms: float


class DecoderPool:
    """A bounded pool of pocketsphinx decoders sharing one configuration.

    Decoders are created on demand up to ``max_size`` and then reused; :meth:`acquire`
    blocks (up to ``timeout_s``) while all are lent out. Thread-safe.
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

    @property
    def initial_cmn(self) -> str | None:
        """The cepstral mean a fresh decoder starts with (None until one is created)."""
        return self._initial_cmn

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
            self._free.append(decoder)
            self._cond.notify()

    def _new_decoder(self) -> Decoder:
        started = time.perf_counter()
        decoder = Decoder(Config(**self._options))
        with self._cond:
            if self._initial_cmn is None:
                self._initial_cmn = decoder.get_cmn(False)
        log.info("asr.decoder_created", elapsed_ms=round((time.perf_counter() - started) * 1000))
        return decoder


@functools.cache
def get_pool() -> DecoderPool:
    """The process-wide decoder pool (models are large: one pool per process)."""
    return DecoderPool()


class AsrStream:
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
        pool: DecoderPool | None = None,
        *,
        input_rate_hz: int = ASR_RATE_HZ,
        partial_interval_ms: float = 200.0,
        final_decode: FinalDecode = "batch",
        max_utterance_s: float = 30.0,
        acquire_timeout_s: float = 10.0,
        reset_cmn: bool = False,
    ) -> None:
        self._pool = pool or get_pool()
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


def transcribe(pcm16: bytes, *, input_rate_hz: int = ASR_RATE_HZ, chunk_ms: int = 20) -> str:
    """Recognise a whole buffer by streaming it in ``chunk_ms`` chunks (tests and benches)."""
    stream = AsrStream(input_rate_hz=input_rate_hz)
    step = input_rate_hz * 2 * chunk_ms // 1000
    try:
        for i in range(0, len(pcm16), step):
            stream.feed(pcm16[i : i + step])
        return stream.finish().text
    finally:
        stream.cancel()
