"""Offline text-to-speech with espeak-ng (``espeakng-loader`` ships the library and voices).

Owns: the one libespeak-ng instance of the process (:func:`get_tts`), the OpenAI voice name →
espeak voice/pitch mapping, ``speed`` → words per minute, synthesis of one sentence to PCM16
at espeak's native rate (22 050 Hz) and conversion to the wire (24 kHz PCM16, or 8 kHz G.711
for ``audio/pcmu``/``audio/pcma``), :class:`SentenceSplitter`, which cuts streamed text
into speakable sentences so audio can start after the first one, and :class:`SpeechCache`,
a bounded LRU of synthesised static sentences (knowledge-base answers never change, so each
is synthesised once per voice, format and speed).

Threading: libespeak-ng keeps global state and is not thread-safe, so every call into it runs
under one lock held by the single :class:`EspeakTTS` instance; synthesis is a blocking CPU call
meant for a worker thread (``loop.run_in_executor``). The library is loaded lazily on first use,
never at import. Must not: download anything, play audio, or keep per-session state.
"""

from __future__ import annotations

import ctypes
import functools
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, Protocol

import espeakng_loader
import structlog

from voxgate.protocol.audio import AudioFormat, encode_output, rate_hz, resample_pcm16

log = structlog.get_logger(__name__)

# espeak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS: Final = 2
_INITIALIZE_DONT_EXIT: Final = 0x8000
_POS_CHARACTER: Final = 1
_CHARS_UTF8: Final = 1
_ENDPAUSE: Final = 0x1000
_PARAM_RATE: Final = 1
_PARAM_VOLUME: Final = 2
_PARAM_PITCH: Final = 3
_PARAM_RANGE: Final = 4
_EE_OK: Final = 0
_BUFFER_MS: Final = 100

DEFAULT_WPM: Final = 175
MIN_WPM: Final = 80
MAX_WPM: Final = 450
MAX_SENTENCE_CHARS: Final = 400
"""Longer text without punctuation is cut at a word boundary (keeps buffers bounded)."""


class TTSError(RuntimeError):
    """libespeak-ng failed to initialise or to synthesise (carries the espeak error code)."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- voices


@dataclass(frozen=True, slots=True)
class VoiceSettings:
    """espeak parameters for one OpenAI voice at one speed."""

    espeak_voice: str
    pitch: int
    pitch_range: int
    rate_wpm: int


_VOICES: Final[dict[str, tuple[str, int, int]]] = {
    # OpenAI name: (espeak voice+variant, pitch 0-100, range 0-100)
    "alloy": ("en-us+f2", 50, 50),
    "ash": ("en-us+m3", 40, 45),
    "ballad": ("en-gb-x-rp+m1", 45, 60),
    "coral": ("en-us+f4", 60, 60),
    "echo": ("en-us+m1", 45, 50),
    "sage": ("en+f3", 55, 45),
    "shimmer": ("en-us+f5", 65, 65),
    "verse": ("en-us+m7", 50, 70),
    "marin": ("en-us+f1", 55, 55),
    "cedar": ("en-us+m2", 38, 40),
}
DEFAULT_VOICE: Final = "alloy"


def voice_settings(voice: str = DEFAULT_VOICE, speed: float = 1.0) -> VoiceSettings:
    """Map an OpenAI voice name and ``speed`` (0.25–1.5, clamped) to espeak settings.

    Unknown names (including ``{"id": …}`` custom voices the caller flattened) use ``alloy``.
    """
    name, pitch, pitch_range = _VOICES.get(voice, _VOICES[DEFAULT_VOICE])
    speed = min(max(speed, 0.25), 1.5)
    wpm = min(max(round(DEFAULT_WPM * speed), MIN_WPM), MAX_WPM)
    return VoiceSettings(name, pitch, pitch_range, wpm)


def voice_names() -> list[str]:
    """The OpenAI voice names this engine maps."""
    return list(_VOICES)


# --------------------------------------------------------------------------- sentences

_ABBREVIATION_TEXT: Final = "mr mrs ms dr prof sr jr st vs etc e.g i.e inc ltd co approx no fig"
_ABBREVIATIONS: Final = frozenset(_ABBREVIATION_TEXT.split())
_BOUNDARY_RE: Final = re.compile(r"[.!?;:]+[\"')\]]*(?=\s)|\n\s*\n")


def _is_abbreviation(text: str, end: int) -> bool:
    word = text[:end].rstrip(".").rsplit(maxsplit=1)
    return bool(word) and word[-1].lower().lstrip("(\"'") in _ABBREVIATIONS


class SentenceSplitter:
    """Incremental sentence splitter for streamed text.

    :meth:`feed` text deltas as they arrive and speak each sentence it returns; call
    :meth:`flush` at the end for the rest. A sentence ends at ``. ! ? ; :`` followed by
    whitespace (not after a known abbreviation) or at a blank line; text longer than
    ``max_chars`` with no boundary is cut at the last space so the buffer stays bounded.
    """

    def __init__(self, *, max_chars: int = MAX_SENTENCE_CHARS) -> None:
        self._buf = ""
        self._max_chars = max_chars

    def feed(self, delta: str) -> list[str]:
        """Add text; return the sentences completed by it (maybe none)."""
        self._buf += delta
        out: list[str] = []
        start = 0
        for m in _BOUNDARY_RE.finditer(self._buf):
            if m.group().startswith(".") and _is_abbreviation(self._buf[start:], m.end() - start):
                continue
            sentence = self._buf[start : m.end()].strip()
            if sentence:
                out.append(sentence)
            start = m.end()
        self._buf = self._buf[start:]
        while len(self._buf) > self._max_chars:
            cut = self._buf.rfind(" ", 0, self._max_chars)
            cut = cut if cut > 0 else self._max_chars
            out.append(self._buf[:cut].strip())
            self._buf = self._buf[cut:]
        return [s for s in out if _speakable(s)]

    def flush(self) -> list[str]:
        """Return what is left (the last, unterminated sentence) and reset."""
        rest, self._buf = self._buf.strip(), ""
        return [rest] if _speakable(rest) else []


def _speakable(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def split_sentences(text: str, *, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """Split a whole text into sentences (see :class:`SentenceSplitter`)."""
    splitter = SentenceSplitter(max_chars=max_chars)
    return splitter.feed(text) + splitter.flush()


# --------------------------------------------------------------------------- the engine

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EspeakTTS:
    """The process's libespeak-ng instance. Use :func:`get_tts`; do not construct twice.

    All methods are blocking and thread-safe (serialised by one lock).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_Initialize.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        data_path = espeakng_loader.get_data_path().encode()
        rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, data_path, _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise TTSError("espeak_Initialize failed", code=rate)
        self.native_rate_hz: int = rate
        self._chunks: list[bytes] = []
        # ctypes must keep the callback object alive as long as the library may call it
        self._callback = _SynthCallback(self._on_audio)
        self._lib.espeak_SetSynthCallback(self._callback)
        self._current: VoiceSettings | None = None
        log.info("tts.initialised", native_rate_hz=rate)

    def _on_audio(self, wav: ctypes._Pointer[ctypes.c_short], n_samples: int, _: int) -> int:
        if n_samples > 0 and wav:
            self._chunks.append(ctypes.string_at(wav, n_samples * 2))
        return 0  # 0 = continue synthesis

    def _apply(self, settings: VoiceSettings) -> None:
        if settings == self._current:
            return
        err = self._lib.espeak_SetVoiceByName(settings.espeak_voice.encode())
        if err != _EE_OK:
            raise TTSError(f"unknown espeak voice {settings.espeak_voice!r}", code=err)
        for param, value in (
            (_PARAM_RATE, settings.rate_wpm),
            (_PARAM_PITCH, settings.pitch),
            (_PARAM_RANGE, settings.pitch_range),
            (_PARAM_VOLUME, 100),
        ):
            self._lib.espeak_SetParameter(param, value, 0)
        self._current = settings

    def synthesize_native(self, text: str, settings: VoiceSettings | None = None) -> bytes:
        """Synthesise ``text`` to PCM16 mono at :attr:`native_rate_hz`.

        Raises:
            TTSError: espeak rejected the voice or the text.
        """
        data = text.encode("utf-8") + b"\0"
        with self._lock:
            self._apply(settings or voice_settings())
            self._chunks = []
            err = self._lib.espeak_Synth(
                data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None
            )
            pcm, self._chunks = b"".join(self._chunks), []
        if err != _EE_OK:
            raise TTSError("espeak_Synth failed", code=err)
        return pcm

    def synthesize_pcm16(
        self, text: str, *, rate: int = 24_000, voice: str = DEFAULT_VOICE, speed: float = 1.0
    ) -> bytes:
        """Synthesise ``text`` to PCM16 mono at ``rate`` Hz."""
        native = self.synthesize_native(text, voice_settings(voice, speed))
        return resample_pcm16(native, self.native_rate_hz, rate)

    def synthesize(
        self,
        text: str,
        *,
        fmt: AudioFormat = "audio/pcm",
        voice: str = DEFAULT_VOICE,
        speed: float = 1.0,
    ) -> bytes:
        """Synthesise ``text`` straight to wire audio of ``fmt`` (§8 of the protocol doc)."""
        pcm = self.synthesize_pcm16(text, rate=rate_hz(fmt), voice=voice, speed=speed)
        return encode_output(pcm, fmt)

    def stream(
        self,
        text: str,
        *,
        fmt: AudioFormat = "audio/pcm",
        voice: str = DEFAULT_VOICE,
        speed: float = 1.0,
    ) -> Iterator[tuple[str, bytes]]:
        """Yield ``(sentence, wire audio)`` one sentence at a time.

        The first item is ready as soon as the first sentence is synthesised; the lock is
        released between sentences so other sessions interleave.
        """
        for sentence in split_sentences(text):
            yield sentence, self.synthesize(sentence, fmt=fmt, voice=voice, speed=speed)


@functools.cache
def get_tts() -> EspeakTTS:
    """The process-wide engine (libespeak-ng is global state: one initialisation only)."""
    return EspeakTTS()


# --------------------------------------------------------------------------- cache


class Synthesizer(Protocol):
    """What the engine needs from a TTS: one sentence to wire audio (blocking)."""

    def synthesize(
        self, text: str, *, fmt: AudioFormat = "audio/pcm", voice: str = ..., speed: float = ...
    ) -> bytes: ...


DEFAULT_CACHE_BYTES: Final = 32 * 1024 * 1024
"""~11 minutes of 24 kHz PCM16: every sentence of a few hundred notes in one or two voices."""


class SpeechCache:
    """The engine's TTS: a synthesiser plus a bounded LRU of wire audio for static sentences,
    keyed by text, format, voice and speed.

    Thread-safe: :meth:`get` is a dictionary look-up (fine on the event loop);
    :meth:`synthesize` is blocking on a miss (a worker thread's job). Two threads missing
    the same key both synthesise it; the result is the same, so either copy is kept. Entries
    are evicted least-recently-used beyond ``max_bytes``; a sentence bigger than a quarter of
    it is synthesised but not kept.

    Args:
        tts: returns the synthesiser; called on each use, so an engine can load lazily
            (default: the process's espeak-ng, :func:`get_tts`).
        max_bytes: audio kept, in bytes.
    """

    def __init__(
        self,
        tts: Callable[[], Synthesizer] = lambda: get_tts(),
        *,
        max_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self._tts = tts
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str, str, float], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, text: str, *, fmt: AudioFormat, voice: str, speed: float) -> bytes | None:
        """The cached audio, or None (counts a hit; a miss is counted by :meth:`synthesize`)."""
        key = (text, fmt, voice, speed)
        with self._lock:
            audio = self._entries.get(key)
            if audio is not None:
                self._entries.move_to_end(key)
                self.hits += 1
            return audio

    def synthesize(
        self, text: str, *, fmt: AudioFormat, voice: str, speed: float, cache: bool = True
    ) -> bytes:
        """The cached audio, synthesised (blocking) and kept if it was not there.

        With ``cache=False`` (text that will not come again) the synthesiser is called and
        nothing is looked up or kept.

        Raises:
            TTSError: synthesis failed (nothing is cached).
        """
        if not cache:
            return self._tts().synthesize(text, fmt=fmt, voice=voice, speed=speed)
        cached = self.get(text, fmt=fmt, voice=voice, speed=speed)
        if cached is not None:
            return cached
        audio = self._tts().synthesize(text, fmt=fmt, voice=voice, speed=speed)
        with self._lock:
            self.misses += 1
            key = (text, fmt, voice, speed)
            if len(audio) > self.max_bytes // 4 or key in self._entries:
                return audio
            self._entries[key] = audio
            self._bytes += len(audio)
            while self._bytes > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self._bytes -= len(old)
        return audio
