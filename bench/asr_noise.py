"""Calibrate Whisper's noise rejection: no-speech probability and mean log probability.

Decodes speech (the espeak trading set, short one-word replies in 8 voices, and the real
recordings when their Debian packages are installed) and noise (white, pink and brown noise
at three levels, clicks, mains hum, breath- and cough-like bursts) exactly as the engine does
(:class:`~voxgate.backends.local.whisper_stream.WhisperStream`: the voiced-audio gate, the
prompted decode, then the unprompted no-speech probe unless the decode was likely enough,
in which case the no-speech probability is reported as 0), and prints, for the default
thresholds (:class:`~voxgate.backends.local.whisper.WhisperOptions`), how many speech clips
would be dropped and how many noise clips would produce words, plus the score ranges.
Run: ``.venv/bin/python bench/asr_noise.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from speech_sets import (  # noqa: E402
    ESPEAK_VOICES,
    Clip,
    espeak_clip,
    espeak_trading_set,
    missing_packages,
    real_speech_set,
)
from voxgate.backends.local.whisper_stream import WhisperRecognizer  # noqa: E402
from voxgate.tools.knowledge import KnowledgeBase, asr_phrases  # noqa: E402

RATE = 16_000
SHORT_REPLIES = ("Yes.", "No.", "Hi.", "Okay.", "Stop.", "Thanks.")


def noise_clips(seed: int = 7) -> list[Clip]:
    """Noise that a VAD may let through, 0.4-1.5 s long, at -40, -30 and -20 dBFS RMS."""
    rng = np.random.default_rng(seed)
    clips = []
    for level_db in (-40, -30, -20):
        rms = 10 ** (level_db / 20)
        for seconds in (0.4, 1.5):
            n = int(seconds * RATE)
            t = np.arange(n) / RATE
            white = rng.normal(0, 1, n)
            pink = np.cumsum(white) - np.convolve(np.cumsum(white), np.ones(64) / 64, "same")
            kinds = {
                "white": white,
                "pink": pink,
                "brown": np.cumsum(white),
                "clicks": np.where(rng.random(n) < 0.003, 1.0, 0.0),
                "hum": np.sin(2 * np.pi * 50 * t) + 0.5 * np.sin(2 * np.pi * 150 * t),
                "breath": np.convolve(white, np.ones(8) / 8, "same") * np.sin(np.pi * t / t[-1]),
                "cough": white * np.exp(-t * 9),
            }
            for name, x in kinds.items():
                x = x - x.mean()
                x = x / (np.sqrt(np.mean(x**2)) or 1.0) * rms
                pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
                clips.append(Clip(f"{name}/{level_db}dB/{seconds}s", "", pcm, RATE))
    return clips


def decode(asr: WhisperRecognizer, clip: Clip) -> tuple[str, float, float]:
    """(final text, no-speech prob, mean log prob); probabilities are -1 when gated."""
    pad = b"\0\0" * (clip.rate_hz * 3 // 10)
    stream = asr.stream(input_rate_hz=clip.rate_hz)
    stream.feed(pad + clip.pcm16 + pad)
    text = stream.finish().text
    last = stream.last
    stream.last = None
    if last is None:
        return text, -1.0, -1.0
    # not probed (a likely decode): reported as 0
    return text, last.no_speech_prob or 0.0, last.avg_logprob


def main() -> None:
    phrases = asr_phrases(KnowledgeBase.example().entries)  # the engine's default prompt
    asr = WhisperRecognizer(workers=1, prompt_words=phrases)
    speech = espeak_trading_set() + [
        espeak_clip(w, v) for v in ESPEAK_VOICES for w in SHORT_REPLIES
    ]
    if not missing_packages():
        speech += real_speech_set()
    dropped, speech_nsp = [], []
    for clip in speech:
        text, nsp, logprob = decode(asr, clip)
        speech_nsp.append(nsp)
        if not text:
            dropped.append((clip.name, clip.reference, round(nsp, 3), round(logprob, 2)))
    heard, noise_nsp = [], []
    for clip in noise_clips():
        text, nsp, logprob = decode(asr, clip)
        noise_nsp.append(nsp)
        if text:
            heard.append((clip.name, text, round(nsp, 3), round(logprob, 2)))
    asr.close()
    gated = sum(1 for v in noise_nsp if v < 0)
    decoded = sorted(v for v in noise_nsp if v >= 0)
    print(f"speech clips: {len(speech)}, dropped as noise: {len(dropped)}")
    for row in dropped:
        print("  dropped", row)
    print(f"speech no-speech prob: p50 {np.median(speech_nsp):.3f}  max {max(speech_nsp):.3f}")
    print(f"noise clips: {len(noise_nsp)}, gated by energy: {gated}, produced words: {len(heard)}")
    for row in heard:
        print("  heard", row)
    if decoded:
        print(f"decoded noise no-speech prob: min {decoded[0]:.3f}  p50 {np.median(decoded):.3f}")


if __name__ == "__main__":
    main()
