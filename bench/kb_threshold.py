"""Calibrate the knowledge responder's confidence thresholds on recognised speech.

Recognises the espeak trading set (20 knowledge-base questions in 8 voices, each with the
entry that answers it) and off-topic sentences (espeak, 8 voices) with the default Whisper
recogniser, and the real-speech Asterisk prompts (all off-topic for trading notes); then,
for each pair of thresholds, counts what the responder would do with each transcript:
answer right, answer *wrong* (read out a different entry: the failure issue 13 is about),
ask "did you mean …?", or say it does not know. Writes the transcripts to
``tests/data/kb_calibration.json`` (``--write``) so tests check the chosen thresholds
without running the recogniser. Run: ``.venv/bin/python bench/kb_threshold.py [--write]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from asr_wer import build, run_clip  # noqa: E402
from speech_sets import (  # noqa: E402
    ESPEAK_VOICES,
    EXPECTED_ENTRY,
    OFF_TOPIC,
    asterisk_set,
    espeak_clip,
    espeak_trading_set,
    missing_packages,
)
from voxgate.backends.local.responder import KnowledgeResponder, Verdict  # noqa: E402
from voxgate.tools.knowledge import KnowledgeBase  # noqa: E402

DATA = REPO / "tests" / "data" / "kb_calibration.json"


def transcripts() -> list[dict[str, str | None]]:
    asr = build("whisper")
    rows: list[dict[str, str | None]] = []
    for clip in espeak_trading_set():
        rows.append({"heard": run_clip(asr, clip)[0], "expected": EXPECTED_ENTRY[clip.reference]})
    for voice in ESPEAK_VOICES:
        for text in OFF_TOPIC:
            rows.append({"heard": run_clip(asr, espeak_clip(text, voice))[0], "expected": None})
    if not missing_packages():
        for clip in asterisk_set(60):
            rows.append({"heard": run_clip(asr, clip)[0], "expected": None})
    asr.close()
    return rows


def outcome(verdict: Verdict, expected: str | None) -> str:
    if verdict.kind == "answer":
        return "right" if verdict.heading == expected else "wrong"
    return verdict.kind


def tally(rows: list[dict[str, str | None]], responder: KnowledgeResponder) -> dict[str, int]:
    counts = {"right": 0, "wrong": 0, "did_you_mean": 0, "dont_know": 0}
    for row in rows:
        counts[outcome(responder.judge(row["heard"] or ""), row["expected"])] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {DATA.name}")
    parser.add_argument("--from-file", action="store_true", help="reuse the stored transcripts")
    args = parser.parse_args()
    rows = json.loads(DATA.read_text()) if args.from_file else transcripts()
    if args.write:
        DATA.parent.mkdir(exist_ok=True)
        DATA.write_text(json.dumps(rows, indent=1) + "\n")
    kb = KnowledgeBase.example()
    on_topic = sum(1 for r in rows if r["expected"])
    print(f"{len(rows)} transcripts, {on_topic} on topic")
    print(f"{'answer at':>9} {'margin':>6}  right  wrong  did-you-mean  dont-know")
    for answer_at in (0.3, 0.4, 0.5, 0.6, 0.7):
        for margin in (0.0, 0.05, 0.1, 0.15, 0.2):
            counts = tally(rows, KnowledgeResponder(kb, answer_score=answer_at, margin=margin))
            print(
                f"{answer_at:9.2f} {margin:6.2f}  {counts['right']:5}  {counts['wrong']:5}  "
                f"{counts['did_you_mean']:12}  {counts['dont_know']:9}"
            )


if __name__ == "__main__":
    main()
