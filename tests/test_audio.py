"""protocol/audio.py: G.711 tables, base64, durations, levels, streaming resampler."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from voxgate.protocol import audio

pcm_bytes = st.lists(st.integers(-32768, 32767), max_size=400).map(
    lambda xs: np.array(xs, dtype="<i2").tobytes()
)
codes = st.binary(max_size=400)

# Reference values from ITU-T G.711 / Sun g711.c (as CPython's audioop produced them).
ULAW_KNOWN = {0: 0xFF, 1000: 0xCE, -1000: 0x4E, 32767: 0x80, -32768: 0x00}
ALAW_KNOWN = {0: 0xD5, 1000: 0xFA, -1000: 0x7A, 32767: 0xAA, -32768: 0x2A}


@pytest.mark.parametrize(("sample", "code"), ULAW_KNOWN.items())
def test_ulaw_encodes_reference_values(sample: int, code: int) -> None:
    assert audio.pcm16_to_ulaw(np.array([sample], "<i2").tobytes()) == bytes([code])


@pytest.mark.parametrize(("sample", "code"), ALAW_KNOWN.items())
def test_alaw_encodes_reference_values(sample: int, code: int) -> None:
    assert audio.pcm16_to_alaw(np.array([sample], "<i2").tobytes()) == bytes([code])


@given(codes)
def test_ulaw_decode_encode_is_identity_up_to_signed_zero(data: bytes) -> None:
    pcm = audio.ulaw_to_pcm16(data)
    assert audio.ulaw_to_pcm16(audio.pcm16_to_ulaw(pcm)) == pcm


@given(codes)
def test_alaw_decode_encode_is_identity(data: bytes) -> None:
    assert audio.pcm16_to_alaw(audio.alaw_to_pcm16(data)) == data


@given(pcm_bytes)
@pytest.mark.parametrize(
    ("enc", "dec"),
    [(audio.pcm16_to_ulaw, audio.ulaw_to_pcm16), (audio.pcm16_to_alaw, audio.alaw_to_pcm16)],
)
def test_g711_round_trip_error_is_within_quantisation(
    enc: Callable[[bytes], bytes], dec: Callable[[bytes], bytes], pcm: bytes
) -> None:
    original = audio.pcm16_to_array(pcm).astype(np.int32)
    back = audio.pcm16_to_array(dec(enc(pcm))).astype(np.int32)
    assert len(enc(pcm)) == len(pcm) // 2
    # G.711 keeps 4 mantissa bits: error ≤ 1/16 of magnitude plus the smallest step
    assert np.all(np.abs(back - original) <= np.abs(original) // 16 + 16)


@given(st.binary(max_size=300))
def test_base64_round_trips(data: bytes) -> None:
    assert audio.b64decode(audio.b64encode(data)) == data


def test_b64decode_rejects_garbage_with_value_error() -> None:
    with pytest.raises(ValueError, match="base64"):
        audio.b64decode("not base64!!")


def test_bytes_per_ms_matches_protocol_section_8() -> None:
    assert audio.bytes_per_ms("audio/pcm") == 48
    assert audio.bytes_per_ms("audio/pcmu") == 8
    assert audio.bytes_per_ms("audio/pcma") == 8
    assert audio.bytes_to_ms(960, "audio/pcm") == 20
    assert audio.ms_to_bytes(20, "audio/pcmu") == 160


@given(st.integers(0, 100_000))
def test_ms_to_bytes_is_whole_samples(ms: int) -> None:
    assert audio.ms_to_bytes(ms, "audio/pcm") % 2 == 0
    assert audio.bytes_to_ms(audio.ms_to_bytes(ms, "audio/pcm"), "audio/pcm") == ms


def test_levels_of_silence_and_full_scale() -> None:
    assert audio.rms_dbfs(b"\0\0" * 100) == float("-inf")
    assert audio.peak(b"") == 0
    square = np.array([32767, -32767] * 50, dtype="<i2").tobytes()
    assert audio.peak(square) == 32767
    assert audio.rms_dbfs(square) == pytest.approx(0.0, abs=0.01)


def _tone(rate: int, seconds: float, hz: float = 440.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return audio.array_to_pcm16(0.5 * np.sin(2 * np.pi * hz * t))


@given(st.lists(st.integers(1, 2000), min_size=1, max_size=30))
def test_resampler_output_length_does_not_depend_on_chunking(sizes: list[int]) -> None:
    tone = _tone(24_000, 0.5)
    r = audio.Resampler(24_000, 16_000)
    out, pos = b"", 0
    for size in sizes:
        out += r.process(tone[pos : pos + size])
        pos += size
    out += r.process(tone[pos:]) + r.flush()
    assert abs(len(out) // 2 - 8000) <= 2


def test_resampler_keeps_a_tone_and_its_level() -> None:
    tone = _tone(22_050, 1.0)
    r = audio.Resampler(22_050, 24_000)
    out = b"".join(r.process(c) for c in [tone[i : i + 441] for i in range(0, len(tone), 441)])
    out += r.flush()
    arr = audio.pcm16_to_array(out).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(arr))
    assert np.argmax(spectrum) * 24_000 / len(arr) == pytest.approx(440, abs=2)
    assert audio.rms_dbfs(out) == pytest.approx(audio.rms_dbfs(tone), abs=0.5)


def test_same_rate_resampler_is_passthrough() -> None:
    r = audio.Resampler(16_000, 16_000)
    assert r.process(b"\1\2\3") == b"\1\2"
    assert r.process(b"\4") == b"\3\4"
    assert r.flush() == b""


def test_encode_output_and_decode_input_by_format() -> None:
    pcm = _tone(8_000, 0.1)
    assert audio.decode_input(audio.encode_output(pcm, "audio/pcmu"), "audio/pcmu") != pcm
    assert len(audio.encode_output(pcm, "audio/pcma")) == len(pcm) // 2
    assert audio.encode_output(pcm, "audio/pcm") == pcm
