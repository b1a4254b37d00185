"""Speech test sets with reference transcripts, and word error rate (tests and bench/).

Not a test module. Three kinds of clip:

* :func:`espeak_trading_set`: the knowledge base's questions spoken by espeak-ng at test
  time (voxgate's own TTS) in several voices, speeds and pitches; :func:`ulaw_copy` makes
  the 8 kHz μ-law telephone version of any clip.
* :func:`asterisk_set`: real human recordings, the Asterisk PBX prompts (Allison Smith, 8 kHz)
  with the transcripts their Debian package ships (``asterisk-core-sounds-en`` +
  ``-wav``; CC-BY-SA-3.0).
* :func:`pocketsphinx_set`: CMU's test recordings from Debian's ``pocketsphinx-testdata``
  (LibriVox read speech, spoken card names, "go forward ten meters"; 16 kHz).

The Debian packages are installed by ``scripts/system-deps``; :func:`missing_packages` says
which are absent so a test can skip with the reason.
"""

from __future__ import annotations

import gzip
import re
import wave
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from voxgate.backends.local.tts import VoiceSettings, get_tts, voice_settings
from voxgate.protocol.audio import pcm16_to_ulaw, resample_pcm16, ulaw_to_pcm16

ASTERISK_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
ASTERISK_WAVS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
SPHINX_DATA = Path("/usr/share/pocketsphinx/test/data")

#: The console's example questions (web/static/index.html and the issue's three).
CONSOLE_QUESTIONS = (
    "What is a stop loss order?",
    "What is a limit order?",
    "How do I size a position?",
)
#: Questions about the example knowledge base, as a user would ask them, and the entry
#: (heading) that answers each.
EXPECTED_ENTRY = {
    "What is a stop loss order?": "Stop loss order",
    "What is a limit order?": "Limit order",
    "How do I size a position?": "Position sizing",
    "What is a market order?": "Market order",
    "What is a trailing stop?": "Trailing stop",
    "What is a take profit order?": "Take profit order",
    "What is a margin call?": "Margin call",
    "What is leverage?": "Leverage",
    "What is the spread?": "Spread",
    "What is slippage?": "Slippage",
    "What is a stop limit order?": "Stop limit order",
    "What is liquidity?": "Liquidity",
    "What is volatility?": "Volatility",
    "Where should I place a stop loss?": "Where to place a stop loss",
    "What is a risk reward ratio?": "Risk reward ratio",
    "How do I move my stop to break even?": "Moving a stop to break even",
    "What is a trading journal?": "Trading journal",
    "What is revenge trading?": "Revenge trading",
    "What is a daily loss limit?": "Daily loss limit",
    "What is support and resistance?": "Support and resistance",
}
TRADING_QUESTIONS = tuple(EXPECTED_ENTRY)
#: Things users say that the example notes do not answer.
OFF_TOPIC = (
    "What is the weather like on Mars?",
    "Please call me back tomorrow morning.",
    "I would like to open a new account.",
    "Thank you very much for your help.",
    "Can you repeat that please?",
    "Who won the football game last night?",
    "How do I bake a chocolate cake?",
    "What time is it in Tokyo?",
)
#: (espeak voice, pitch, words per minute): men's and women's voices, US and UK, slow to fast.
ESPEAK_VOICES: tuple[VoiceSettings, ...] = (
    voice_settings("alloy", 0.8),
    voice_settings("ash", 1.0),
    voice_settings("ballad", 0.9),
    voice_settings("coral", 1.1),
    voice_settings("echo", 1.0),
    voice_settings("sage", 0.9),
    VoiceSettings("en-us+m3", 25, 30, 160),
    VoiceSettings("en-us+f3", 80, 70, 190),
)

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


@dataclass(frozen=True, slots=True)
class Clip:
    """One recording: PCM16 mono at ``rate_hz`` and what is said in it."""

    name: str
    reference: str
    pcm16: bytes
    rate_hz: int


def missing_packages() -> list[str]:
    """Debian packages the real-speech sets need that are not installed."""
    missing = []
    if not ASTERISK_TEXT.exists():
        missing.append("asterisk-core-sounds-en")
    if not (ASTERISK_WAVS / "goodbye.wav").exists():
        missing.append("asterisk-core-sounds-en-wav")
    if not (SPHINX_DATA / "librivox" / "transcription").exists():
        missing.append("pocketsphinx-testdata")
    return missing


# --------------------------------------------------------------------------- WER


def _number_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + _number_words(rest))
    rest = n % 1000
    return _number_words(n // 1000) + " thousand" + ("" if rest == 0 else " " + _number_words(rest))


def normalise(text: str) -> list[str]:
    """Words for WER: lower case, digits spelled out, punctuation and hyphens dropped."""
    text = text.lower().replace("-", " ").replace("&", " and ")
    text = re.sub(r"\d+", lambda m: " " + _number_words(int(m.group())) + " ", text)
    return re.findall(r"[a-z']+", text.replace("'s ", "'s ").replace("’", "'"))


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def wer(pairs: Iterable[tuple[str, str]]) -> float:
    """Word error rate of ``(reference, hypothesis)`` pairs (errors / reference words)."""
    errors = words = 0
    for ref, hyp in pairs:
        r = normalise(ref)
        errors += edit_distance(r, normalise(hyp))
        words += len(r)
    return errors / max(words, 1)


# --------------------------------------------------------------------------- sets


def espeak_clip(text: str, voice: VoiceSettings, *, rate_hz: int = 24_000) -> Clip:
    """``text`` spoken by espeak-ng (the engine's own TTS, shared by the process).

    Not a pure function: within one process espeak-ng says the same text in the same voice
    differently on every call (2026-12-04: three calls for "How do I size a position?" in
    alloy at 0.8, three different hashes; the first call in a fresh process gave the same
    audio in 2 of 3 processes), so a clip depends on what the process synthesised before it.
    """
    tts = get_tts()
    pcm = resample_pcm16(tts.synthesize_native(text, voice), tts.native_rate_hz, rate_hz)
    name = f"{voice.espeak_voice}/{voice.pitch}/{voice.rate_wpm}"
    return Clip(name, text, pcm, rate_hz)


def espeak_trading_set(
    questions: Sequence[str] = TRADING_QUESTIONS, voices: Sequence[VoiceSettings] = ESPEAK_VOICES
) -> list[Clip]:
    """Every question in every voice (24 kHz, the ``audio/pcm`` wire rate)."""
    return [espeak_clip(q, v) for v in voices for q in questions]


def ulaw_copy(clip: Clip) -> Clip:
    """The clip as a phone line carries it: 8 kHz, μ-law coded and decoded back to PCM16."""
    narrow = resample_pcm16(clip.pcm16, clip.rate_hz, 8000)
    return Clip(clip.name + "/ulaw", clip.reference, ulaw_to_pcm16(pcm16_to_ulaw(narrow)), 8000)


def _read_wav(path: Path) -> tuple[bytes, int]:
    with wave.open(str(path), "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit mono")
        return wav.readframes(wav.getnframes()), wav.getframerate()


def asterisk_set(limit: int = 60, *, min_words: int = 3) -> list[Clip]:
    """``limit`` Asterisk prompts spread evenly over the alphabet (plain speech only)."""
    prompts: list[tuple[str, str]] = []
    with gzip.open(ASTERISK_TEXT, "rt", encoding="utf-8") as f:
        for line in f:
            name, sep, text = line.partition(":")
            text = text.strip()
            if not sep or line.startswith(";") or "/" in name or "[" in text:
                continue
            if len(text.split()) >= min_words and (ASTERISK_WAVS / f"{name}.wav").exists():
                prompts.append((name, text))
    prompts.sort()
    step = max(1, len(prompts) // max(limit, 1))
    clips = []
    for name, text in prompts[::step][:limit]:
        pcm, rate = _read_wav(ASTERISK_WAVS / f"{name}.wav")
        clips.append(Clip(f"asterisk/{name}", text, pcm, rate))
    return clips


def pocketsphinx_set() -> list[Clip]:
    """The 11 transcribed recordings of ``pocketsphinx-testdata`` (16 kHz)."""
    clips = []
    for folder, listing in (("librivox", "transcription"), ("cards", "cards.transcription")):
        for line in (SPHINX_DATA / folder / listing).read_text().splitlines():
            m = re.match(r"<s>(.*)</s>\s*\((\S+)\)", line.strip())
            if m:
                pcm, rate = _read_wav(SPHINX_DATA / folder / f"{m.group(2)}.wav")
                clips.append(Clip(f"{folder}/{m.group(2)}", m.group(1).strip(), pcm, rate))
    raw = (SPHINX_DATA / "goforward.raw").read_bytes()
    clips.append(Clip("goforward", "go forward ten meters", raw, 16_000))
    return clips


def real_speech_set(asterisk: int = 60) -> list[Clip]:
    """Human recordings: Asterisk prompts (8 kHz) and pocketsphinx-testdata (16 kHz)."""
    return asterisk_set(asterisk) + pocketsphinx_set()
