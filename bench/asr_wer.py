"""ASR word error rate and cost of the local engine's speech parts, on synthesised speech.

Synthesises ~20 utterances with voxgate's espeak-ng TTS at 24 kHz (with silence around them),
finds each turn with the VAD, recognises it with pocketsphinx at 16 kHz (20 ms chunks), and
prints WER per utterance and overall, ASR CPU seconds per audio second, decoder creation time,
and TTS time to first chunk (p50/p95) for one-sentence answers. Run:
``.venv/bin/python bench/asr_wer.py [--voice alloy] [--speed 0.8] [--final-decode batch]``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

from voxgate.backends.local.asr import AsrStream, DecoderPool
from voxgate.backends.local.tts import get_tts
from voxgate.backends.local.vad import SpeechStarted, SpeechStopped, VadStream
from voxgate.protocol.audio import Resampler
from voxgate.tools.knowledge import KnowledgeBase

UTTERANCES = [
    "What is a stop loss order?",
    "What is a limit order?",
    "How does a market order work?",
    "What is a trailing stop?",
    "Explain take profit orders.",
    "What is a margin call?",
    "How should I size my position?",
    "What is the spread?",
    "What is slippage?",
    "What is a stop limit order?",
    "What does leverage mean?",
    "What is liquidity?",
    "Tell me about short selling.",
    "What is a pip?",
    "What is a risk reward ratio?",
    "The weather is nice today.",
    "Please call me back tomorrow morning.",
    "I would like to open a new account.",
    "Thank you very much for your help.",
    "Can you repeat that please?",
]
ANSWERS = [e.body.split(". ")[0] + "." for e in KnowledgeBase.example().entries[:20]]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def recognise(pcm24: bytes, asr: AsrStream, vad: VadStream) -> tuple[str, float, float]:
    """VAD-gated recognition; returns (text, asr_cpu_s, audio_s fed to ASR)."""
    to16 = Resampler(24_000, 16_000)
    vad.reset()
    cpu = 0.0
    audio_s = 0.0
    text = ""
    step = 960  # 20 ms at 24 kHz
    pre: list[bytes] = []  # 300 ms of prefix padding (15 chunks), bounded
    for i in range(0, len(pcm24), step):
        chunk16 = to16.process(pcm24[i : i + step])
        events = vad.feed(chunk16)
        if any(isinstance(e, SpeechStarted) for e in events) and not asr.active:
            for old in pre:
                t = time.process_time()
                asr.feed(old)
                cpu += time.process_time() - t
                audio_s += len(old) / 32000
        if asr.active or vad.in_speech:
            t = time.process_time()
            asr.feed(chunk16)
            cpu += time.process_time() - t
            audio_s += len(chunk16) / 32000
        else:
            pre = [*pre[-14:], chunk16]
        if any(isinstance(e, SpeechStopped) for e in events) and asr.active:
            t = time.process_time()
            text = (text + " " + asr.finish().text).strip()
            cpu += time.process_time() - t
    if asr.active:
        t = time.process_time()
        text = (text + " " + asr.finish().text).strip()
        cpu += time.process_time() - t
    return text, cpu, audio_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voice", default="alloy")
    parser.add_argument("--speed", type=float, default=0.8)
    parser.add_argument("--final-decode", choices=["batch", "stream"], default="batch")
    args = parser.parse_args()

    tts = get_tts()
    pool = DecoderPool(max_size=1)
    t = time.perf_counter()
    pool.release(pool.acquire())
    creation_s = time.perf_counter() - t

    asr = AsrStream(pool, final_decode=args.final_decode)
    vad = VadStream()
    errors = ref_words = 0
    cpu_total = audio_total = 0.0
    print(f"{'WER':>6}  reference -> hypothesis")
    for sentence in UTTERANCES:
        speech = tts.synthesize_pcm16(sentence, rate=24_000, voice=args.voice, speed=args.speed)
        pcm = b"\0" * 48 * 600 + speech + b"\0" * 48 * 900
        hyp, cpu, audio_s = recognise(pcm, asr, vad)
        ref = words(sentence)
        err = edit_distance(ref, words(hyp))
        errors += err
        ref_words += len(ref)
        cpu_total += cpu
        audio_total += audio_s
        print(f"{err / len(ref):6.0%}  {sentence} -> {hyp}")
    print(f"overall WER: {errors / ref_words:.1%} ({errors}/{ref_words} words)")
    print(f"ASR CPU per audio second: {cpu_total / audio_total:.3f} ({args.final_decode} final)")
    print(f"decoder creation: {creation_s:.2f} s")

    firsts = []
    for answer in ANSWERS * 3:
        t = time.perf_counter()
        next(tts.stream(answer + " Second sentence follows here.", voice=args.voice))
        firsts.append((time.perf_counter() - t) * 1000)
    firsts.sort()
    p95 = firsts[int(0.95 * (len(firsts) - 1))]
    print(f"TTS time to first chunk: p50 {statistics.median(firsts):.1f} ms, p95 {p95:.1f} ms")


if __name__ == "__main__":
    main()
