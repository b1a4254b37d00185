"""backends/local/asr.py: pocketsphinx streaming recognition on synthesised speech."""

from __future__ import annotations

import pytest

from speech_fixtures import chunks, synth_pcm24k
from voxgate.backends.local.asr import AsrBusyError, AsrStream, DecoderPool, Transcript, get_pool
from voxgate.protocol.audio import resample_pcm16
from voxgate.tools.knowledge import KnowledgeBase


def _recognise(stream: AsrStream, pcm: bytes, rate_hz: int) -> tuple[list[Transcript], Transcript]:
    partials = [p for c in chunks(pcm, 20, rate_hz) if (p := stream.feed(c)) is not None]
    return partials, stream.finish()


def test_stop_loss_question_is_recognised_from_24khz_chunks() -> None:
    pcm = synth_pcm24k("What is a stop loss order?", lead_ms=300, trail_ms=300)
    partials, final = _recognise(AsrStream(input_rate_hz=24_000), pcm, 24_000)
    assert final.final
    assert "stop loss" in final.text
    assert partials, "expected partial hypotheses while speaking"
    assert all(not p.final and p.text for p in partials)
    assert final.audio_ms == pytest.approx(len(pcm) / 48, abs=50)


def test_16khz_input_and_stream_final_decode() -> None:
    pcm16 = resample_pcm16(synth_pcm24k("What is a stop loss order?", lead_ms=300), 24_000, 16_000)
    _, final = _recognise(AsrStream(final_decode="stream", reset_cmn=True), pcm16, 16_000)
    # the live-CMN single pass is the less accurate one: only require a transcript
    assert final.final
    assert final.text


def test_misrecognised_question_still_finds_the_knowledge_entry() -> None:
    pcm = synth_pcm24k("What is a stop loss order?", lead_ms=300, trail_ms=300)
    _, final = _recognise(AsrStream(input_rate_hz=24_000), pcm, 24_000)
    hits = KnowledgeBase.example().search(final.text)
    assert hits
    assert hits[0].entry.heading == "Stop loss order"


def test_finish_without_audio_is_an_empty_final() -> None:
    assert AsrStream().finish() == Transcript("", True, 0.0)


def test_decoders_are_reused_across_utterances() -> None:
    pool = get_pool()
    stream = AsrStream(input_rate_hz=24_000)
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
