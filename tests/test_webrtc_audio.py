"""WebRTC call audio: caller frames to the session's format, the assistant's playout and track."""

from __future__ import annotations

import fractions

import numpy as np
from av import AudioFrame, CodecContext, Packet

from voxgate.protocol.audio import ulaw_to_pcm16
from voxgate.protocol.formats import FORMATS
from voxgate.transports.media.webrtc_audio import (
    FRAME_SAMPLES,
    AssistantTrack,
    CallerAudio,
    Heard,
    Playout,
)

PCM = FORMATS["audio/pcm"]
PCMU = FORMATS["audio/pcmu"]


def opus_like_frame(left: float, right: float, n: int = 960) -> AudioFrame:
    """What aiortc's Opus decoder hands over: 20 ms, 48 kHz, packed stereo s16."""
    t = np.arange(n) / 48_000
    tone = np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([tone * left, tone * right], axis=1).reshape(1, -1)
    frame = AudioFrame.from_ndarray(
        (stereo * 32767).astype(np.int16), format="s16", layout="stereo"
    )
    frame.sample_rate = 48_000
    frame.pts = 0
    frame.time_base = fractions.Fraction(1, 48_000)
    return frame


def test_caller_stereo_frames_become_mono_pcm_at_24k() -> None:
    audio = CallerAudio()
    out = b"".join(audio.convert(opus_like_frame(0.5, 0.5), PCM) for _ in range(10))
    # 200 ms at 24 kHz PCM16, less the resampler's start-up delay
    assert 8000 < len(out) <= 9600
    samples = np.frombuffer(out, dtype="<i2")
    assert 0.4 * 32767 < np.abs(samples[-2000:]).max() < 0.55 * 32767  # the downmix, not a sum


def test_caller_audio_follows_a_format_change_to_mulaw() -> None:
    audio = CallerAudio()
    for _ in range(5):
        audio.convert(opus_like_frame(0.5, 0.5), PCM)
    out = b"".join(audio.convert(opus_like_frame(0.5, 0.5), PCMU) for _ in range(10))
    assert 1000 < len(out) <= 1600  # 200 ms at 8 kHz, one byte per sample, less filter delay
    pcm = np.frombuffer(ulaw_to_pcm16(out), dtype="<i2")
    assert np.abs(pcm[-800:]).max() > 0.4 * 32767


def test_playout_attributes_each_frame_to_its_items() -> None:
    playout = Playout(limit_ms=10_000)
    playout.push("a", b"\x10\x00" * 240, PCM)  # 10 ms at 24 kHz
    playout.push("b", b"\x20\x00" * 2400, PCM)  # 100 ms
    playout.finish("b")  # response.output_audio.done: the filter's tail plays too
    heard: list[tuple[str, float]] = []
    frames = 0
    while not playout.empty:
        pcm, items = playout.pull()
        assert len(pcm) == FRAME_SAMPLES * 2
        heard.extend(items)
        frames += 1
    per_item: dict[str, float] = {}
    for item, ms in heard:
        per_item[item] = per_item.get(item, 0) + ms
    assert 9 < per_item["a"] <= 11  # a's resampler tail is flushed into a when b starts
    assert 99 < per_item["b"] <= 101
    assert frames in (5, 6)
    assert playout.pull() == (bytes(FRAME_SAMPLES * 2), [])  # then silence, no items


def test_playout_is_bounded_and_clears() -> None:
    playout = Playout(limit_ms=100)
    playout.push("a", b"\x01\x00" * 2400, PCM)
    assert not playout.full
    playout.push("a", b"\x01\x00" * 2400, PCM)
    assert playout.full
    playout.clear()
    assert playout.empty
    assert not playout.full


async def test_the_track_reports_what_each_frame_carried_and_when_it_ran_dry() -> None:
    playout = Playout(limit_ms=10_000)
    reports: list[tuple[Heard, bool]] = []
    track = AssistantTrack(playout, lambda heard, drained: reports.append((heard, drained)))
    tone = (np.sin(np.arange(1200) * 0.1) * 8000).astype("<i2").tobytes()
    playout.push("a", tone, PCM)  # 50 ms
    playout.finish("a")
    packets = [await track.recv() for _ in range(8)]
    assert [p.pts for p in packets] == [i * FRAME_SAMPLES for i in range(8)]
    # Opus the browser decodes: the tone, then silence (a repeated silence packet).
    decoder = CodecContext.create("libopus", "r")
    decoder.sample_rate, decoder.format, decoder.layout = 48_000, "s16", "stereo"
    peaks = [
        int(np.abs(f.to_ndarray()).max()) for p in packets for f in decoder.decode(Packet(bytes(p)))
    ]
    assert len(peaks) == 8
    assert min(peaks[:2]) > 4000
    assert max(peaks[-3:]) < 50
    assert bytes(packets[-1]) == bytes(packets[-2])
    heard_ms = sum(ms for heard, _ in reports for _, ms in heard)
    assert 49 < heard_ms <= 51
    assert [drained for _, drained in reports].count(True) == 1
    assert reports[-1][1] is True  # nothing reported for silence after it ran dry
    track.stop()
