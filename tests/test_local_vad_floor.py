"""backends/local/vad.py: inside a turn, the silence floor follows the turn's own level.

A tail far below the turn's loudest window (espeak's voices trail off at -46 to -49 dBFS for
50-100 ms) is silence, so the end of speech is where the words end; the same tail after quiet
speech is part of it. And the VAD's ggml runs on one OpenMP thread.
"""

from __future__ import annotations

import os

import numpy as np

from speech_fixtures import chunks, silence_pcm24k, synth_pcm24k
from voxgate.backends.local.vad import (
    RELATIVE_FLOOR_DB,
    WINDOW_MS,
    SpeechStopped,
    VadConfig,
    VadEvent,
    VadStream,
)

TAIL_MS = 96
TAIL_DBFS = -47.0


def _trimmed(text: str) -> np.ndarray:
    samples = np.frombuffer(synth_pcm24k(text), dtype="<i2").astype(np.float64) / 32768
    loud = np.nonzero(np.abs(samples) > 10 ** (-50 / 20))[0]
    return samples[int(loud[0]) : int(loud[-1]) + 1]


def _with_tail(speech: np.ndarray, peak_dbfs: float) -> tuple[bytes, float]:
    """500 ms of silence, ``speech`` scaled to a loudest 32 ms window of ``peak_dbfs``, a
    noise tail at :data:`TAIL_DBFS`, 1 s of silence; and where the speech ends (ms)."""
    win = 24_000 * 32 // 1000
    rms = max(
        float(np.sqrt(np.mean(speech[i : i + win] ** 2)))
        for i in range(0, len(speech) - win, win // 4)
    )
    speech = speech * 10 ** (peak_dbfs / 20) / rms
    tail = np.random.default_rng(7).standard_normal(24 * TAIL_MS) * 10 ** (TAIL_DBFS / 20)
    pcm = np.clip(np.rint(np.concatenate([speech, tail]) * 32768), -32768, 32767)
    lead = silence_pcm24k(500)
    return lead + pcm.astype("<i2").tobytes() + silence_pcm24k(1000), 500 + len(speech) / 24


def _words_end_ms(pcm: bytes) -> float:
    """End of the last 20 ms frame above -40 dBFS (bench/response_latency.py's end of speech)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768
    frame = 24_000 // 50
    loud = [
        i
        for i in range(0, len(samples) - frame + 1, frame)
        if np.sqrt(np.mean(samples[i : i + frame] ** 2)) > 10 ** (-40 / 20)
    ]
    return (loud[-1] + frame) / 24


def _stop(pcm: bytes) -> SpeechStopped:
    stream = VadStream(VadConfig(silence_duration_ms=200), input_rate_hz=24_000)
    events: list[VadEvent] = []
    for chunk in chunks(pcm):
        events += stream.feed(chunk)
    stops = [e for e in events if isinstance(e, SpeechStopped)]
    assert len(stops) == 1, events
    return stops[0]


def test_a_tail_far_below_the_turn_is_silence() -> None:
    assert TAIL_DBFS < -10 - RELATIVE_FLOOR_DB
    pcm, speech_end_ms = _with_tail(_trimmed("What is a stop loss order?"), peak_dbfs=-10)
    stop = _stop(pcm)
    # the end is placed where the words end (espeak's own fade and the tail are silence)
    words_end_ms = _words_end_ms(pcm)
    assert words_end_ms - 24 <= stop.audio_end_ms <= words_end_ms + 24
    assert stop.audio_end_ms < speech_end_ms
    assert stop.decided_at_ms - stop.audio_end_ms >= 200


def test_the_same_tail_after_quiet_speech_is_part_of_the_turn() -> None:
    """The end lands inside the tail's last Silero window (32 ms), not at the words' end.

    One window, not half: where the tail's end falls on the window grid depends on the
    speech's length, which espeak-ng varies from call to call within a process (a clean CI
    run ended 16.08 ms before the tail's end: 2,496 against 2,512.08)."""
    pcm, words_end_ms = _with_tail(_trimmed("What is a stop loss order?"), peak_dbfs=-30)
    stop = _stop(pcm)
    assert stop.audio_end_ms >= words_end_ms + TAIL_MS - WINDOW_MS


def test_the_next_turn_starts_from_the_absolute_floor_again() -> None:
    loud, _ = _with_tail(_trimmed("What is a stop loss order?"), peak_dbfs=-10)
    quiet, quiet_end = _with_tail(_trimmed("What is margin?"), peak_dbfs=-30)
    stream = VadStream(VadConfig(silence_duration_ms=200), input_rate_hz=24_000)
    events: list[VadEvent] = []
    for chunk in chunks(loud + quiet):
        events += stream.feed(chunk)
    stops = [e for e in events if isinstance(e, SpeechStopped)]
    assert len(stops) == 2, events
    # the quiet turn's tail counts as speech: the loud turn's floor did not carry over
    assert stops[1].audio_end_ms >= len(loud) / 48 + quiet_end + TAIL_MS - WINDOW_MS


def test_the_vad_runs_on_one_openmp_thread() -> None:
    assert os.environ.get("OMP_THREAD_LIMIT") == "1"
