"""backends/local/tts.py: espeak-ng synthesis, formats, voices, sentence splitting."""

from __future__ import annotations

import threading

import pytest

from voxgate.backends.local.tts import (
    SentenceSplitter,
    SpeechCache,
    TTSError,
    get_tts,
    split_sentences,
    voice_names,
    voice_settings,
)
from voxgate.protocol import audio

SENTENCE = "A stop loss order closes a losing trade automatically."


def test_engine_is_one_per_process_at_native_rate() -> None:
    assert get_tts() is get_tts()
    assert get_tts().native_rate_hz == 22_050


def test_pcm_output_is_non_silent_24khz_speech() -> None:
    pcm = get_tts().synthesize(SENTENCE, fmt="audio/pcm")
    seconds = audio.bytes_to_ms(len(pcm), "audio/pcm") / 1000
    assert 1.5 < seconds < 8
    assert audio.rms_dbfs(pcm) > -35
    assert audio.peak(pcm) > 3000


@pytest.mark.parametrize("fmt", ["audio/pcmu", "audio/pcma"])
def test_g711_output_is_8khz_and_decodes_to_speech(fmt: audio.AudioFormat) -> None:
    wire = get_tts().synthesize(SENTENCE, fmt=fmt)
    pcm24 = get_tts().synthesize(SENTENCE, fmt="audio/pcm")
    # same duration: 8 bytes/ms against 48 bytes/ms
    assert audio.bytes_to_ms(len(wire), fmt) == pytest.approx(
        audio.bytes_to_ms(len(pcm24), "audio/pcm"), abs=5
    )
    assert audio.rms_dbfs(audio.decode_input(wire, fmt)) > -35


def test_speed_changes_duration() -> None:
    tts = get_tts()
    slow = tts.synthesize_pcm16(SENTENCE, speed=0.5)
    fast = tts.synthesize_pcm16(SENTENCE, speed=1.5)
    assert len(slow) > 1.5 * len(fast)


@pytest.mark.parametrize("voice", voice_names())
def test_every_openai_voice_maps_to_a_working_espeak_voice(voice: str) -> None:
    assert audio.rms_dbfs(get_tts().synthesize_pcm16("Hello there.", voice=voice)) > -40


def test_voice_settings_clamp_speed_and_default_unknown_voices() -> None:
    assert voice_settings("nonexistent") == voice_settings("alloy")
    assert voice_settings("alloy", 0.01).rate_wpm == voice_settings("alloy", 0.25).rate_wpm
    assert voice_settings("alloy", 9).rate_wpm == voice_settings("alloy", 1.5).rate_wpm
    assert voice_settings("ash").espeak_voice != voice_settings("coral").espeak_voice


def test_stream_yields_one_chunk_per_sentence() -> None:
    items = list(get_tts().stream("First sentence. Second one! Third?", fmt="audio/pcmu"))
    assert [s for s, _ in items] == ["First sentence.", "Second one!", "Third?"]
    assert all(len(chunk) > 800 for _, chunk in items)


def test_concurrent_synthesis_from_threads_is_serialised_and_correct() -> None:
    reference = get_tts().synthesize_pcm16("Thread safety.", voice="echo")
    results: list[bytes] = []
    lock = threading.Lock()

    def work() -> None:
        pcm = get_tts().synthesize_pcm16("Thread safety.", voice="echo")
        with lock:
            results.append(pcm)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # espeak output differs by a sample of noise between calls, so compare shape, not bytes
    assert len(results) == 4
    for pcm in results:
        assert abs(len(pcm) - len(reference)) <= 480
        assert audio.rms_dbfs(pcm) == pytest.approx(audio.rms_dbfs(reference), abs=1.0)


def test_split_sentences_respects_abbreviations_and_decimals() -> None:
    text = "Hello Mr. Smith. It costs 3.5 dollars! Really? e.g. this one.\n\nNew paragraph"
    assert split_sentences(text) == [
        "Hello Mr. Smith.",
        "It costs 3.5 dollars!",
        "Really?",
        "e.g. this one.",
        "New paragraph",
    ]


def test_splitter_streams_deltas_and_bounds_its_buffer() -> None:
    splitter = SentenceSplitter(max_chars=50)
    out: list[str] = []
    for delta in ["The first", " sentence. The sec", "ond", " one"]:
        out += splitter.feed(delta)
    assert out == ["The first sentence."]
    assert splitter.flush() == ["The second one"]
    long = splitter.feed("word " * 40)
    assert long
    assert all(len(s) <= 50 for s in long)
    assert splitter.flush()


def test_splitter_drops_punctuation_only_pieces() -> None:
    assert split_sentences("... !!! ?") == []


class CountingTTS:
    """A stand-in synthesiser: ``len(text) * 10`` bytes per call, counted."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, float]] = []

    def synthesize(
        self,
        text: str,
        *,
        fmt: audio.AudioFormat = "audio/pcm",
        voice: str = "alloy",
        speed: float = 1.0,
    ) -> bytes:
        self.calls.append((text, fmt, voice, speed))
        if not text:
            raise TTSError("nothing to say", code=-1)
        return text.encode()[:1] * (len(text) * 10)


def test_speech_cache_synthesises_each_sentence_once_per_voice_format_and_speed() -> None:
    tts = CountingTTS()
    cache = SpeechCache(lambda: tts)
    assert cache.get(SENTENCE, fmt="audio/pcm", voice="alloy", speed=1.0) is None
    first = cache.synthesize(SENTENCE, fmt="audio/pcm", voice="alloy", speed=1.0)
    assert cache.synthesize(SENTENCE, fmt="audio/pcm", voice="alloy", speed=1.0) == first
    assert cache.get(SENTENCE, fmt="audio/pcm", voice="alloy", speed=1.0) == first
    cache.synthesize(SENTENCE, fmt="audio/pcmu", voice="alloy", speed=1.0)
    cache.synthesize(SENTENCE, fmt="audio/pcm", voice="echo", speed=1.0)
    cache.synthesize(SENTENCE, fmt="audio/pcm", voice="alloy", speed=1.2)
    assert len(tts.calls) == 4
    assert (cache.hits, cache.misses) == (2, 4)


def test_speech_cache_evicts_least_recently_used_beyond_its_byte_bound() -> None:
    tts = CountingTTS()
    cache = SpeechCache(lambda: tts, max_bytes=1000)  # sentences of 10 chars = 100 bytes
    for i in range(10):
        cache.synthesize(f"sentence{i:02d}", fmt="audio/pcm", voice="alloy", speed=1.0)
    assert cache.size_bytes == 1000
    cache.get("sentence00", fmt="audio/pcm", voice="alloy", speed=1.0)  # now most recent
    cache.synthesize("sentence10", fmt="audio/pcm", voice="alloy", speed=1.0)
    assert cache.size_bytes == 1000
    assert cache.get("sentence00", fmt="audio/pcm", voice="alloy", speed=1.0) is not None
    assert cache.get("sentence01", fmt="audio/pcm", voice="alloy", speed=1.0) is None
    cache.synthesize("x" * 30, fmt="audio/pcm", voice="alloy", speed=1.0)  # > max/4: not kept
    assert cache.get("x" * 30, fmt="audio/pcm", voice="alloy", speed=1.0) is None


def test_speech_cache_keeps_nothing_when_synthesis_fails() -> None:
    cache = SpeechCache(CountingTTS)
    with pytest.raises(TTSError):
        cache.synthesize("", fmt="audio/pcm", voice="alloy", speed=1.0)
    assert cache.size_bytes == 0


def test_speech_cache_over_espeak_keeps_the_wire_audio() -> None:
    cache = SpeechCache()
    wire = cache.synthesize(SENTENCE, fmt="audio/pcmu", voice="alloy", speed=1.0)
    assert cache.get(SENTENCE, fmt="audio/pcmu", voice="alloy", speed=1.0) is wire
    direct = get_tts().synthesize(SENTENCE, fmt="audio/pcmu", voice="alloy", speed=1.0)
    # espeak-ng is not bit-exact run to run; the same sentence has the same length
    assert len(wire) == pytest.approx(len(direct), rel=0.05)
    assert audio.rms_dbfs(audio.decode_input(wire, "audio/pcmu")) > -35
