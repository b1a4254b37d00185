"""backends/local/vad.py: server_vad decisions on synthesised speech padded with silence."""

from __future__ import annotations

import numpy as np
import pytest

from speech_fixtures import chunks, silence_pcm24k, synth_pcm24k
from voxgate.backends.local.vad import (
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    VadConfig,
    VadEvent,
    VadStream,
)
from voxgate.protocol.audio import resample_pcm16

UTTERANCE = "What is a stop loss order?"
TOLERANCE_MS = 120
END_TOLERANCE_MS = 200  # Silero's recurrent state lags the end of speech by ~100-150 ms


def _speech_extent_ms(pcm24: bytes) -> tuple[float, float]:
    samples = np.abs(np.frombuffer(pcm24, dtype="<i2").astype(np.int32))
    loud = np.nonzero(samples > 500)[0]
    return loud[0] / 24, loud[-1] / 24


def _run(stream: VadStream, pcm: bytes, chunk_ms: int, rate_hz: int) -> list[VadEvent]:
    events: list[VadEvent] = []
    for chunk in chunks(pcm, chunk_ms, rate_hz):
        events += stream.feed(chunk)
    return events


@pytest.mark.parametrize("chunk_ms", [10, 20, 100, 333])
def test_speech_padded_with_silence_gives_one_start_and_stop(chunk_ms: int) -> None:
    speech = synth_pcm24k(UTTERANCE)
    begin, end = _speech_extent_ms(speech)
    pcm = synth_pcm24k(UTTERANCE, lead_ms=1000, trail_ms=1500)
    config = VadConfig(prefix_padding_ms=300, silence_duration_ms=500)
    events = _run(VadStream(config, input_rate_hz=24_000), pcm, chunk_ms, 24_000)

    assert [e.type for e in events] == ["speech_started", "speech_stopped"]
    started, stopped = events
    assert isinstance(started, SpeechStarted)
    assert isinstance(stopped, SpeechStopped)
    assert started.audio_start_ms == pytest.approx(1000 + begin - 300, abs=TOLERANCE_MS)
    assert stopped.audio_end_ms == pytest.approx(1000 + end, abs=END_TOLERANCE_MS)
    assert stopped.decided_at_ms - stopped.audio_end_ms >= 500


def test_16khz_input_gives_the_same_decisions_as_24khz() -> None:
    pcm24 = synth_pcm24k(UTTERANCE, lead_ms=800, trail_ms=1000)
    pcm16 = resample_pcm16(pcm24, 24_000, 16_000)
    ev24 = _run(VadStream(input_rate_hz=24_000), pcm24, 20, 24_000)
    ev16 = _run(VadStream(input_rate_hz=16_000), pcm16, 20, 16_000)
    assert [e.type for e in ev16] == [e.type for e in ev24]
    for a, b in zip(ev16, ev24, strict=True):
        assert isinstance(a, SpeechStarted | SpeechStopped)
        assert (a.audio_start_ms if isinstance(a, SpeechStarted) else a.audio_end_ms) == (
            pytest.approx(
                b.audio_start_ms if isinstance(b, SpeechStarted) else b.audio_end_ms, abs=40
            )
        )


def test_silence_alone_never_starts_speech() -> None:
    assert _run(VadStream(input_rate_hz=24_000), silence_pcm24k(3000), 20, 24_000) == []


def test_prefix_padding_is_clamped_at_the_stream_start() -> None:
    pcm = synth_pcm24k(UTTERANCE, lead_ms=100, trail_ms=800)
    events = _run(
        VadStream(VadConfig(prefix_padding_ms=300), input_rate_hz=24_000), pcm, 20, 24_000
    )
    assert isinstance(events[0], SpeechStarted)
    assert events[0].audio_start_ms == 0


def test_start_ms_offsets_timestamps_and_reset_restarts() -> None:
    pcm = synth_pcm24k(UTTERANCE, lead_ms=1000, trail_ms=800)
    stream = VadStream(input_rate_hz=24_000, start_ms=5000)
    first = _run(stream, pcm, 20, 24_000)
    stream.reset(start_ms=0)
    second = _run(stream, pcm, 20, 24_000)
    assert isinstance(first[0], SpeechStarted)
    assert isinstance(second[0], SpeechStarted)
    assert first[0].audio_start_ms - second[0].audio_start_ms == pytest.approx(5000, abs=1)


def test_high_threshold_ignores_speech() -> None:
    pcm = synth_pcm24k(UTTERANCE, lead_ms=500, trail_ms=800)
    events = _run(VadStream(VadConfig(threshold=0.999), input_rate_hz=24_000), pcm, 20, 24_000)
    assert not any(isinstance(e, SpeechStarted) for e in events[1:])


def test_two_utterances_give_two_turns() -> None:
    pcm = synth_pcm24k("What is slippage?", lead_ms=500, trail_ms=1000) + synth_pcm24k(
        "What is a margin call?", trail_ms=1000
    )
    events = _run(VadStream(input_rate_hz=24_000), pcm, 20, 24_000)
    assert [e.type for e in events] == ["speech_started", "speech_stopped"] * 2


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="threshold"):
        VadConfig(threshold=1.5)
    with pytest.raises(ValueError, match="durations"):
        VadConfig(silence_duration_ms=-1)


def _trimmed(text: str) -> bytes:
    """``text`` spoken, without espeak's own leading and trailing near-silence."""
    pcm = synth_pcm24k(text)
    samples = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
    loud = np.nonzero(samples > 100)[0]  # about -50 dBFS
    return pcm[2 * int(loud[0]) : 2 * (int(loud[-1]) + 1)]


def _events_with_gap(gap_ms: int, config: VadConfig) -> list[VadEvent]:
    pcm = (
        silence_pcm24k(500)
        + _trimmed("What is slippage?")
        + silence_pcm24k(gap_ms)
        + _trimmed("And what is a margin call?")
        + silence_pcm24k(1200)
    )
    return _run(VadStream(config, input_rate_hz=24_000), pcm, 20, 24_000)


def _last_loud_ms(pcm24: bytes) -> float:
    """End of the last 8 ms at or above the VAD's energy floor (-50 dBFS)."""
    samples = np.frombuffer(pcm24, dtype="<i2").astype(np.float64) / 32767
    frame = 24_000 * 8 // 1000
    loud = [
        i
        for i in range(0, len(samples) - frame + 1, frame)
        if np.sqrt(np.mean(samples[i : i + frame] ** 2)) >= 10 ** (-50 / 20)
    ]
    return (loud[-1] + frame) / 24


@pytest.mark.parametrize("silence_ms", [100, 200, 350])
def test_stop_follows_the_last_loud_frame_by_exactly_the_silence_window(silence_ms: int) -> None:
    pcm = synth_pcm24k(UTTERANCE, lead_ms=500, trail_ms=1000)
    config = VadConfig(silence_duration_ms=silence_ms)
    events = _run(VadStream(config, input_rate_hz=24_000), pcm, 20, 24_000)
    stopped = events[-1]
    assert isinstance(stopped, SpeechStopped)
    # the end of speech is where the signal fell under the floor (or earlier, if Silero
    # said so first), to within one 8 ms frame plus the resampler's sample of delay
    assert stopped.audio_end_ms <= _last_loud_ms(pcm) + 9
    assert stopped.audio_end_ms >= _speech_extent_ms(pcm)[1] - 40
    assert 0 <= stopped.decided_at_ms - stopped.audio_end_ms - silence_ms < 8


def test_decisions_do_not_depend_on_how_audio_is_chunked() -> None:
    pcm = synth_pcm24k(UTTERANCE, lead_ms=700, trail_ms=300) + synth_pcm24k(
        "What is a margin call?", trail_ms=900
    )
    config = VadConfig(silence_duration_ms=200, pause_ms=80)
    by_chunk = {
        ms: _run(VadStream(config, input_rate_hz=24_000), pcm, ms, 24_000)
        for ms in (8, 20, 96, 333)
    }
    assert by_chunk[8] == by_chunk[20] == by_chunk[96] == by_chunk[333]
    assert [e.type for e in by_chunk[20]].count("speech_stopped") == 2


def test_pause_hint_comes_before_the_stop_of_the_same_silence() -> None:
    pcm = synth_pcm24k(UTTERANCE, lead_ms=500, trail_ms=1000)
    events = _run(
        VadStream(VadConfig(silence_duration_ms=200, pause_ms=80), input_rate_hz=24_000),
        pcm,
        20,
        24_000,
    )
    assert [e.type for e in events] == ["speech_started", "speech_paused", "speech_stopped"]
    _, paused, stopped = events
    assert isinstance(paused, SpeechPaused)
    assert isinstance(stopped, SpeechStopped)
    assert paused.audio_end_ms == stopped.audio_end_ms
    assert 80 <= paused.at_ms - paused.audio_end_ms < 88


def test_a_gap_shorter_than_the_silence_window_pauses_and_resumes_one_turn() -> None:
    events = _events_with_gap(300, VadConfig(silence_duration_ms=600, pause_ms=150))
    types = [e.type for e in events]
    assert types == [
        "speech_started",
        "speech_paused",
        "speech_resumed",
        "speech_paused",
        "speech_stopped",
    ]
    resumed = events[2]
    assert isinstance(resumed, SpeechResumed)
    first_end = events[1]
    assert isinstance(first_end, SpeechPaused)
    # never before the second phrase; Silero's state needs ~100-150 ms to rise after a pause
    assert 300 <= resumed.at_ms - first_end.audio_end_ms < 300 + 160


def test_without_pause_ms_no_hints_are_given() -> None:
    events = _events_with_gap(300, VadConfig(silence_duration_ms=600))
    assert [e.type for e in events] == ["speech_started", "speech_stopped"]
