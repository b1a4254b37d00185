"""Word error rate and cost of every local recogniser, side by side, on the same clips.

Sets (tests/speech_sets.py): ``real`` (human recordings from Debian packages: 60 Asterisk
prompts at 8 kHz + 11 pocketsphinx-testdata clips at 16 kHz), ``espeak`` (the knowledge
base's 20 questions in 8 espeak-ng voices/speeds/pitches, 24 kHz) and ``ulaw`` (the espeak
set as 8 kHz μ-law), ``real-ulaw`` (the real set as a phone line carries it: 8 kHz μ-law;
not in the default run). Recognisers: ``whisper`` (tiny.en, knowledge-base headings and
``Asked:`` questions as the prompt: the default), ``whisper-noprompt`` and ``pocketsphinx``
(stream final, as the engine ran it before issue 13). Each clip gets 300 ms of silence
before and 300 ms after, is fed in 20 ms chunks as a session would, and ``finish()`` is
timed: that is the work left after the end of speech (the engine does it during the silence
window). ``commas+`` counts
transcripts with more commas than their reference (a sign the prompt's style leaked into
them: "What is a stop, loss order,"). Run:

``.venv/bin/python bench/asr_wer.py [--sets real,espeak,ulaw] [--recognisers …] [--out F]``

``--vad``: each clip (24 kHz PCM, 400 ms of silence before, 1.5 s after) goes through the
engine's turn detector instead, as a session's audio would (server_vad defaults: the VAD
places the end of speech and the transcript is the pause-time snapshot decode), and the
transcript is every turn's, joined. This is the check that the VAD does not cut words
(``finish`` is then the time :meth:`TurnDetector.feed` took for the chunk ending the last
turn; ``end+`` the p50 of where the VAD put the end of speech after the clip's last 20 ms
frame above -40 dBFS).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import soxr

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
from voxgate.backends.local.turns import TurnDetector, TurnEnded  # noqa: E402
from voxgate.protocol.session_config import server_vad_defaults  # noqa: E402
from voxgate.tools.knowledge import KnowledgeBase, asr_phrases  # noqa: E402

RECOGNISERS = ("whisper", "whisper-noprompt", "pocketsphinx")


def build(name: str) -> Recognizer:
    phrases = asr_phrases(KnowledgeBase.example().entries)  # the engine's default prompt
    if name == "pocketsphinx":
        return make_recognizer("pocketsphinx", workers=1, decoders=1)
    prompt = phrases if name == "whisper" else []
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


def speech_end_ms(samples: np.ndarray, rate_hz: int) -> float:
    """End of the last 20 ms frame above -40 dBFS (bench/response_latency.py's end of speech)."""
    frame = rate_hz // 50
    last = 0
    for i in range(0, len(samples) - frame + 1, frame):
        if float(np.sqrt(np.mean(samples[i : i + frame] ** 2))) > 10 ** (-40 / 20):
            last = i + frame
    return last * 1000 / rate_hz


def run_clip_vad(asr: Recognizer, clip: Clip) -> tuple[str, float, float, float]:
    """(hypothesis, ms of the feed that ended the last turn, CPU s, VAD end - clip end ms)
    for one clip streamed through the turn detector in 20 ms chunks."""
    lead_ms, trail_ms, rate = 400, 1500, 24_000
    samples = np.frombuffer(clip.pcm16, dtype="<i2").astype(np.float32) / 32768
    if clip.rate_hz != rate:
        samples = soxr.resample(samples, clip.rate_hz, rate)
    pcm16 = np.clip(np.rint(samples * 32768), -32768, 32767).astype("<i2").tobytes()
    pcm = b"\0\0" * (rate * lead_ms // 1000) + pcm16 + b"\0\0" * (rate * trail_ms // 1000)
    detector = TurnDetector(
        server_vad_defaults(), "audio/pcm", start_ms=0, recognizer=asr, final_decode="stream"
    )
    texts: list[str] = []
    end_ms, finish_ms = float("nan"), 0.0
    cpu = time.process_time()
    step = rate * 2 // 50
    for i in range(0, len(pcm), step):
        t = time.perf_counter()
        ended = [e for e in detector.feed(pcm[i : i + step]) if isinstance(e, TurnEnded)]
        if ended:
            finish_ms = (time.perf_counter() - t) * 1000
            texts += [e.transcript for e in ended if e.transcript]
            end_ms = ended[-1].audio_end_ms - lead_ms - speech_end_ms(samples, rate)
    detector.close()
    return " ".join(texts), finish_ms, time.process_time() - cpu, end_ms


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
    parser.add_argument("--vad", action="store_true", help="through the turn detector")
    args = parser.parse_args()

    sets: dict[str, list[Clip]] = {}
    wanted = args.sets.split(",")
    if "real" in wanted or "real-ulaw" in wanted:
        if missing_packages():
            sys.exit(f"install {', '.join(missing_packages())} (scripts/system-deps)")
        real = real_speech_set(args.asterisk)
        if "real" in wanted:
            sets["real"] = real
        if "real-ulaw" in wanted:
            sets["real-ulaw"] = [ulaw_copy(c) for c in real]
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
            ends: list[float] = []
            for clip in clips:
                if args.vad:
                    hyp, ms, cpu_s, end = run_clip_vad(asr, clip)
                    ends.append(end)
                else:
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
            if args.vad:
                row["vad_end_after_clip_end_p50_ms"] = round(statistics.median(ends), 1)
            results.append(row)
            print(
                f"{name:17} {set_name:7} {len(clips):4} clips  WER {row['wer']:.3f}  "
                f"commas+ {commas:3}  "
                f"finish p50 {row['finish_p50_ms']:6.1f} ms p95 {row['finish_p95_ms']:6.1f} ms  "
                f"CPU/audio-s {row['cpu_per_audio_s']:.3f}"
                + (f"  end+ {row['vad_end_after_clip_end_p50_ms']} ms" if args.vad else ""),
                flush=True,
            )
        asr.close()
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
