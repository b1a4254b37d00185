"""backends/local/sphinx.py (VOXGATE_ASR=pocketsphinx): streaming recognition on espeak speech."""

from __future__ import annotations

import pytest

from speech_fixtures import chunks, synth_pcm24k
from voxgate.backends.local.asr import AsrBusyError, AsrError, Transcript, voiced_ms
from voxgate.backends.local.sphinx import DecoderPool, SphinxRecognizer
from voxgate.backends.local.sphinx import SphinxStream as AsrStream
from voxgate.protocol.audio import resample_pcm16
from voxgate.tools.knowledge import KnowledgeBase


@pytest.fixture(scope="module")
def pool() -> DecoderPool:
    return DecoderPool(max_size=2)


def _recognise(stream: AsrStream, pcm: bytes, rate_hz: int) -> tuple[list[Transcript], Transcript]:
    partials = [p for c in chunks(pcm, 20, rate_hz) if (p := stream.feed(c)) is not None]
    return partials, stream.finish()


def test_stop_loss_question_is_recognised_from_24khz_chunks(pool: DecoderPool) -> None:
    pcm = synth_pcm24k("What is a stop loss order?", lead_ms=300, trail_ms=300)
    partials, final = _recognise(AsrStream(pool, input_rate_hz=24_000), pcm, 24_000)
    assert final.final
    assert "stop loss" in final.text
    assert partials, "expected partial hypotheses while speaking"
    assert all(not p.final and p.text for p in partials)
    assert final.audio_ms == pytest.approx(len(pcm) / 48, abs=50)


def test_16khz_input_and_stream_final_decode(pool: DecoderPool) -> None:
    pcm16 = resample_pcm16(synth_pcm24k("What is a stop loss order?", lead_ms=300), 24_000, 16_000)
    _, final = _recognise(AsrStream(pool, final_decode="stream", reset_cmn=True), pcm16, 16_000)
    # the live-CMN single pass is the less accurate one: only require a transcript
    assert final.final
    assert final.text


def test_misrecognised_question_still_finds_the_knowledge_entry(pool: DecoderPool) -> None:
    pcm = synth_pcm24k("What is a stop loss order?", lead_ms=300, trail_ms=300)
    _, final = _recognise(AsrStream(pool, input_rate_hz=24_000), pcm, 24_000)
    hits = KnowledgeBase.example().search(final.text)
    assert hits
    assert hits[0].entry.heading == "Stop loss order"


def test_finish_without_audio_is_an_empty_final(pool: DecoderPool) -> None:
    assert AsrStream(pool).finish() == Transcript("", True, 0.0)


def test_decoders_are_reused_across_utterances(pool: DecoderPool) -> None:
    stream = AsrStream(pool, input_rate_hz=24_000)
    pcm = synth_pcm24k("What is slippage?", lead_ms=200)
    _recognise(stream, pcm, 24_000)
    created = pool.created
    _recognise(stream, pcm, 24_000)
    assert pool.created == created
    assert not stream.active


def test_cancel_returns_the_decoder() -> None:
    pool = DecoderPool(max_size=1)
    stream = AsrStream(pool)
    stream.feed(b"\0\0" * 320)
    assert stream.active
    stream.cancel()
    assert not stream.active
    other = AsrStream(pool, acquire_timeout_s=0.01)
    other.feed(b"\0\0" * 320)  # would raise AsrBusyError if cancel had leaked the decoder
    other.cancel()


def test_full_pool_raises_busy_instead_of_waiting_forever() -> None:
    pool = DecoderPool(max_size=1)
    holder = AsrStream(pool)
    holder.feed(b"\0\0" * 320)
    try:
        with pytest.raises(AsrBusyError):
            AsrStream(pool, acquire_timeout_s=0.05).feed(b"\0\0" * 320)
    finally:
        holder.cancel()


def test_prefill_creates_free_decoders_up_to_the_pool_size() -> None:
    pool = DecoderPool(max_size=2)
    assert pool.prefill(5) == 2
    assert pool.created == 2
    assert pool.prefill(2) == 0
    first, second = pool.acquire(), pool.acquire()
    assert pool.created == 2  # lent from the prefilled ones, none made on demand
    pool.release(first)
    pool.release(second)


def test_a_closed_recogniser_frees_its_decoders_and_refuses_new_utterances() -> None:
    asr = SphinxRecognizer(decoders=1)
    asr.pool.prefill(1)
    assert asr.pool.created == 1
    asr.close()
    assert asr.pool.created == 0
    with pytest.raises(AsrError):
        asr.stream().feed(b"\0\0" * 320)


def test_voiced_ms_counts_loud_20ms_frames_only() -> None:
    quiet = b"\1\0" * 16_000  # one second at about -90 dBFS
    loud = synth_pcm24k("What is a stop loss order?")
    assert voiced_ms(quiet) == 0
    assert voiced_ms(loud, 24_000) > 500
