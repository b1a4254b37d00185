"""Synthesised speech for tests: voxgate's own espeak-ng TTS, cached per test session.

Not a test module. ``synth_pcm24k("What is a stop loss order?", lead_ms=500)`` returns PCM16
mono 24 kHz (the ``audio/pcm`` wire format) with optional leading/trailing silence; the
clean utterance is also written once as a WAV into a per-session temp dir (handy when a test
fails and you want to listen). Voice ``alloy`` at speed 0.8 is the one pocketsphinx
recognises best among the mapped voices (bench/asr_wer.py).
"""

from __future__ import annotations

import functools
import hashlib
import tempfile
import wave
from pathlib import Path

from voxgate.backends.local.tts import get_tts

RATE_HZ = 24_000
DEFAULT_VOICE = "alloy"
DEFAULT_SPEED = 0.8


@functools.cache
def _cache_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="voxgate-speech-"))


@functools.cache
def _utterance(text: str, voice: str, speed: float) -> bytes:
    pcm = get_tts().synthesize_pcm16(text, rate=RATE_HZ, voice=voice, speed=speed)
    digest = hashlib.sha256(f"{voice}|{speed}|{text}".encode()).hexdigest()[:16]
    with wave.open(str(_cache_dir() / f"{digest}.wav"), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE_HZ)
        wav.writeframes(pcm)
    return pcm


def silence_pcm24k(ms: int) -> bytes:
    """``ms`` milliseconds of digital silence at 24 kHz PCM16."""
    return b"\0\0" * (RATE_HZ * ms // 1000)


def synth_pcm24k(
    text: str,
    *,
    lead_ms: int = 0,
    trail_ms: int = 0,
    voice: str = DEFAULT_VOICE,
    speed: float = DEFAULT_SPEED,
) -> bytes:
    """``text`` spoken as PCM16 mono 24 kHz, padded with ``lead_ms``/``trail_ms`` of silence."""
    return silence_pcm24k(lead_ms) + _utterance(text, voice, speed) + silence_pcm24k(trail_ms)


def synth_wav24k(text: str, *, voice: str = DEFAULT_VOICE, speed: float = DEFAULT_SPEED) -> Path:
    """Path of the cached WAV (24 kHz, mono, 16-bit) of ``text``."""
    _utterance(text, voice, speed)
    digest = hashlib.sha256(f"{voice}|{speed}|{text}".encode()).hexdigest()[:16]
    return _cache_dir() / f"{digest}.wav"


def chunks(pcm: bytes, chunk_ms: int = 20, rate_hz: int = RATE_HZ) -> list[bytes]:
    """Split PCM16 into ``chunk_ms`` pieces, as a client would send them."""
    step = rate_hz * 2 * chunk_ms // 1000
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]
