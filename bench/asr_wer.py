"""Word error rate and cost of every local recogniser, side by side, on the same clips.

Sets (tests/speech_sets.py): ``real`` (human recordings from Debian packages: 60 Asterisk
prompts at 8 kHz + 11 pocketsphinx-testdata clips at 16 kHz), ``espeak`` (the knowledge
base's 20 questions in 8 espeak-ng voices/speeds/pitches, 24 kHz) and ``ulaw`` (the espeak
set as 8 kHz μ-law). Recognisers: ``whisper`` (tiny.en, knowledge-base headings as the
prompt: the default), ``whisper-noprompt`` and ``pocketsphinx`` (stream final, as the engine
ran it before issue 13). Each clip gets 300 ms of silence before and 300 ms after, is fed in
20 ms chunks as a session would, and ``finish()`` is timed: that is the work left after
the end of speech (the engine does it during the silence window). ``commas+`` counts
transcripts with more commas than their reference (a sign the prompt's style leaked into
them: "What is a stop, loss order,"). Run:

``.venv/bin/python bench/asr_wer.py [--sets real,espeak,ulaw] [--recognisers …] [--out F]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from speech_sets import (  # noqa: E402
    Clip,
    espeak_trading_set,
    missing_packages,
    real_speech_set,
    ulaw_copy,
    wer,
)
from voxgate.backends.local.asr import Recognizer, make_recognizer  # noqa: E402
from voxgate.backends.local.tts import get_tts  # noqa: E402
from voxgate.tools.knowledge import KnowledgeBase  # noqa: E402

RECOGNISERS = ("whisper", "whisper-noprompt", "pocketsphinx")


def build(name: str) -> Recognizer:
    headings = [e.heading for e in KnowledgeBase.example().entries]
    if name == "pocketsphinx":
        return make_recognizer("pocketsphinx", workers=1, decoders=1)
    prompt = headings if name == "whisper" else []
    return make_recognizer("whisper", workers=1, prompt_words=prompt)


def run_clip(asr: Recognizer, clip: Clip) -> tuple[str, float, float]:
    """(hypothesis, finish ms, CPU s) for one clip fed in 20 ms chunks."""
    step = clip.rate_hz * 2 // 50
    pad = b"\0\0" * (clip.rate_hz * 3 // 10)
    pcm = pad + clip.pcm16 + pad
    stream = asr.stream(input_rate_hz=clip.rate_hz, final_decode="stream")
    cpu = time.process_time()
    for i in range(0, len(pcm), step):
        stream.feed(pcm[i : i + step])
    t = time.perf_counter()
    text = stream.finish().text
    finish_ms = (time.perf_counter() - t) * 1000
    return text, finish_ms, time.process_time() - cpu


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="real,espeak,ulaw")
    parser.add_argument("--recognisers", default=",".join(RECOGNISERS))
    parser.add_argument("--asterisk", type=int, default=60, help="Asterisk prompts in 'real'")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--show-errors", action="store_true")
    args = parser.parse_args()

    sets: dict[str, list[Clip]] = {}
    wanted = args.sets.split(",")
    if "real" in wanted:
        if missing_packages():
            sys.exit(f"install {', '.join(missing_packages())} (scripts/system-deps)")
        sets["real"] = real_speech_set(args.asterisk)
    if "espeak" in wanted or "ulaw" in wanted:
        espeak = espeak_trading_set()
        if "espeak" in wanted:
            sets["espeak"] = espeak
        if "ulaw" in wanted:
            sets["ulaw"] = [ulaw_copy(c) for c in espeak]

    results = []
    warm = get_tts().synthesize_pcm16("How do I place a limit order?", rate=16_000)
    for name in args.recognisers.split(","):
        asr = build(name)
        t = time.perf_counter()
        asr.warm(warm)
        load_s = time.perf_counter() - t
        for set_name, clips in sets.items():
            pairs, finish, cpu, audio_s, commas = [], [], 0.0, 0.0, 0
            for clip in clips:
                hyp, ms, cpu_s = run_clip(asr, clip)
                pairs.append((clip.reference, hyp))
                commas += hyp.count(",") > clip.reference.count(",")
                finish.append(ms)
                cpu += cpu_s
                audio_s += len(clip.pcm16) / (2 * clip.rate_hz)
                if args.show_errors and wer([(clip.reference, hyp)]) > 0:
                    print(f"  {name} {clip.name}: {clip.reference!r} -> {hyp!r}")
            row = {
                "recogniser": name,
                "set": set_name,
                "clips": len(clips),
                "wer": round(wer(pairs), 4),
                "extra_commas": commas,
                "finish_p50_ms": round(statistics.median(finish), 1),
                "finish_p95_ms": round(percentile(finish, 0.95), 1),
                "cpu_per_audio_s": round(cpu / audio_s, 3),
                "load_s": round(load_s, 2),
            }
            results.append(row)
            print(
                f"{name:17} {set_name:7} {len(clips):4} clips  WER {row['wer']:.3f}  "
                f"commas+ {commas:3}  "
                f"finish p50 {row['finish_p50_ms']:6.1f} ms p95 {row['finish_p95_ms']:6.1f} ms  "
                f"CPU/audio-s {row['cpu_per_audio_s']:.3f}",
                flush=True,
            )
        asr.close()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
