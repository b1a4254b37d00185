"""Deterministic test audio for the fake upstream: tones, silence, G.711, frame energy.

Pure (numpy only). Formats are the GA session format objects (realtime-protocol.md §8):
``audio/pcm`` = 16-bit little-endian mono 24 kHz, ``audio/pcmu`` / ``audio/pcma`` = G.711
μ-law / A-law 8 kHz. Users call :func:`tone` and :func:`silence` to build input audio for their
own tests; the fake uses them for its synthetic replies and :func:`frame_rms` for its VAD.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from voxgate.protocol.session_config import PCM_FORMAT, format_type, sample_rate_hz

FloatArray = npt.NDArray[np.float64]


def tone(
    ms: float,
    fmt: Mapping[str, Any] | None = None,
    *,
    freq_hz: float = 440.0,
    amplitude: float = 0.5,
    phase_samples: int = 0,
) -> bytes:
    """A sine tone of ``ms`` milliseconds in ``fmt`` (default ``audio/pcm`` 24 kHz)."""
    fmt = fmt or PCM_FORMAT
    rate = sample_rate_hz(fmt)
    n = int(rate * ms / 1000)
    t = (np.arange(n) + phase_samples) / rate
    return encode(amplitude * np.sin(2 * np.pi * freq_hz * t), fmt)


def silence(ms: float, fmt: Mapping[str, Any] | None = None) -> bytes:
    """``ms`` milliseconds of digital silence in ``fmt``."""
    fmt = fmt or PCM_FORMAT
    return encode(np.zeros(int(sample_rate_hz(fmt) * ms / 1000)), fmt)


def b64(data: bytes) -> str:
    """Base64 text, as ``input_audio_buffer.append.audio`` carries it."""
    return base64.b64encode(data).decode("ascii")


def encode(samples: FloatArray, fmt: Mapping[str, Any] | None) -> bytes:
    """Float samples in [-1, 1] to bytes in ``fmt``."""
    clipped = np.clip(samples, -1.0, 1.0)
    kind = format_type(fmt)
    if kind == "audio/pcmu":
        return _mulaw_encode(clipped)
    if kind == "audio/pcma":
        return _alaw_encode(clipped)
    return (clipped * 32767).astype("<i2").tobytes()


def decode(data: bytes, fmt: Mapping[str, Any] | None) -> FloatArray:
    """Bytes in ``fmt`` to float samples in [-1, 1] (a trailing odd PCM byte is ignored)."""
    kind = format_type(fmt)
    if kind == "audio/pcmu":
        return _mulaw_decode(np.frombuffer(data, dtype=np.uint8))
    if kind == "audio/pcma":
        return _alaw_decode(np.frombuffer(data, dtype=np.uint8))
    usable = len(data) - (len(data) % 2)
    return np.frombuffer(data[:usable], dtype="<i2").astype(np.float64) / 32768.0


def frame_rms(data: bytes, fmt: Mapping[str, Any] | None) -> float:
    """Root-mean-square level of a chunk, full scale = 1.0 (0.0 for an empty chunk)."""
    samples = decode(data, fmt)
    if samples.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(samples * samples)))


# G.711 (ITU-T G.711, the classic Sun reference bit layout, vectorised).
_BIAS = 0x84
_CLIP = 32635


def _to_i16(x: FloatArray) -> npt.NDArray[np.int64]:
    return np.round(x * 32767).astype(np.int64)


def _highest_bit(v: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """floor(log2(v)) for v >= 1, 0 for v == 0."""
    out = np.zeros_like(v)
    nz = v > 0
    out[nz] = np.floor(np.log2(v[nz])).astype(np.int64)
    return out


def _mulaw_encode(x: FloatArray) -> bytes:
    s = _to_i16(x)
    sign = np.where(s < 0, 0x80, 0)
    mag = np.minimum(np.abs(s), _CLIP) + _BIAS
    exponent = np.minimum(_highest_bit(mag >> 7), 7)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return bytes((~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes())


def _mulaw_decode(b: npt.NDArray[np.uint8]) -> FloatArray:
    u = ~b.astype(np.int64) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    mag = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(u & 0x80, -mag, mag).astype(np.float64) / 32768.0


def _alaw_encode(x: FloatArray) -> bytes:
    s = _to_i16(x)
    sign = np.where(s >= 0, 0x80, 0)
    mag = np.minimum(np.abs(s), _CLIP)
    big = mag >= 256
    exponent = np.where(big, np.minimum(_highest_bit(mag >> 8) + 1, 7), 0)
    mantissa = np.where(big, (mag >> (exponent + 3)) & 0x0F, mag >> 4)
    val = (exponent << 4) | mantissa
    return ((val ^ (sign ^ 0x55)) & 0xFF).astype(np.uint8).tobytes()


def _alaw_decode(b: npt.NDArray[np.uint8]) -> FloatArray:
    a = b.astype(np.int64) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.float64) / 32768.0
