"""Audio formats of the Realtime wire (realtime-protocol.md §8) and the conversions between them.

Owns: PCM16 <-> G.711 μ-law / A-law (table based, vectorised with numpy), base64 helpers,
bytes <-> milliseconds per wire format, level helpers (RMS, peak) and :class:`Resampler`, a
streaming wrapper over ``soxr.ResampleStream``.

Pure: no I/O, no clock, no logging, no module-level mutable state (the G.711 tables are
read-only numpy arrays built once at import). A :class:`Resampler` holds per-stream filter
state, so each audio stream owns its own instance; it is not shared between threads.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

import numpy as np
import numpy.typing as npt
import soxr

from voxgate.protocol.formats import FORMATS
from voxgate.protocol.formats import AudioFormat as AudioFormat

PCM_RATE_HZ: Final = FORMATS["audio/pcm"].rate_hz
"""Sample rate of ``audio/pcm`` on the wire (§8)."""
G711_RATE_HZ: Final = FORMATS["audio/pcmu"].rate_hz
"""Sample rate of ``audio/pcmu`` and ``audio/pcma`` (§8)."""

Int16Array = npt.NDArray[np.int16]


# --------------------------------------------------------------------------- formats


def rate_hz(fmt: AudioFormat) -> int:
    """Sample rate of a wire format (24 000 for ``audio/pcm``, 8 000 for G.711)."""
    return FORMATS[fmt].rate_hz


def bytes_per_ms(fmt: AudioFormat) -> int:
    """Bytes per millisecond: 48 for ``audio/pcm``, 8 for ``audio/pcmu``/``audio/pcma``."""
    return FORMATS[fmt].bytes_per_ms


def bytes_to_ms(n_bytes: int, fmt: AudioFormat) -> float:
    """Duration in milliseconds of ``n_bytes`` of audio in ``fmt``."""
    return n_bytes / bytes_per_ms(fmt)


def ms_to_bytes(ms: float, fmt: AudioFormat) -> int:
    """Whole-sample byte count for ``ms`` milliseconds of ``fmt`` (rounded down to a sample)."""
    row = FORMATS[fmt]
    size = row.sample_bytes
    samples = int(ms * row.rate_hz / 1000)
    return samples * size


def pcm16_bytes_to_ms(n_bytes: int, rate: int) -> float:
    """Duration in milliseconds of ``n_bytes`` of mono PCM16 at ``rate`` Hz."""
    return n_bytes * 1000 / (2 * rate)


# --------------------------------------------------------------------------- base64


def b64encode(data: bytes) -> str:
    """Encode audio bytes for a JSON ``audio``/``delta`` field."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Decode a base64 audio field strictly.

    Raises:
        ValueError: ``text`` is not valid base64 (``binascii.Error`` is a ``ValueError``).
    """
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError("invalid base64 audio") from exc


# --------------------------------------------------------------------------- PCM16 arrays


def pcm16_to_array(data: bytes | bytearray | memoryview) -> Int16Array:
    """View little-endian PCM16 bytes as an int16 array (copy-free; an odd tail byte is dropped)."""
    n = len(data) // 2
    return np.frombuffer(data, dtype="<i2", count=n).astype(np.int16, copy=False)


def array_to_pcm16(samples: npt.NDArray[np.generic]) -> bytes:
    """Little-endian PCM16 bytes from an int16 array (or floats in [-1, 1], clipped)."""
    if samples.dtype.kind == "f":
        scaled = np.clip(np.asarray(samples, dtype=np.float64) * 32767.0, -32768, 32767)
        return np.rint(scaled).astype("<i2").tobytes()
    return np.asarray(samples).astype("<i2", copy=False).tobytes()


def rms_dbfs(pcm16: bytes | bytearray | memoryview) -> float:
    """RMS level of PCM16 audio in dBFS (``-inf`` for silence or empty input)."""
    arr = pcm16_to_array(pcm16)
    if arr.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(arr.astype(np.float64)))))
    return 20.0 * float(np.log10(rms / 32768.0)) if rms > 0 else float("-inf")


def peak(pcm16: bytes | bytearray | memoryview) -> int:
    """Largest absolute sample value of PCM16 audio (0 for empty input)."""
    arr = pcm16_to_array(pcm16)
    if arr.size == 0:
        return 0
    return int(np.max(np.abs(arr.astype(np.int32))))


# --------------------------------------------------------------------------- G.711 tables


def _all_int16() -> npt.NDArray[np.int32]:
    # index i of an encode table is the int16 sample whose uint16 bit pattern is i
    return np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    """μ-law encoder table (ITU-T G.711 on 14-bit magnitude, as Sun's ``linear2ulaw``)."""
    s = _all_int16() >> 2
    mask = np.where(s < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(s), 8159) + 0x21
    seg_end = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
    seg = np.searchsorted(seg_end, mag, side="left").astype(np.int32)
    uval = (np.minimum(seg, 7) << 4) | ((mag >> (np.minimum(seg, 7) + 1)) & 0x0F)
    uval = np.where(seg >= 8, 0x7F, uval)
    return ((uval ^ mask) & 0xFF).astype(np.uint8)


def _build_ulaw_decode() -> Int16Array:
    """μ-law decoder table (Sun reference ``ulaw2linear``)."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _build_alaw_encode() -> npt.NDArray[np.uint8]:
    """A-law encoder table (ITU-T G.711, Sun reference ``linear2alaw``)."""
    s = _all_int16() >> 3
    mask = np.where(s >= 0, 0xD5, 0x55)
    mag = np.where(s >= 0, s, -s - 1)
    seg_end = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)
    seg = np.searchsorted(seg_end, mag, side="left").astype(np.int32)
    shift = np.where(seg < 2, 1, seg)
    aval = (np.minimum(seg, 7) << 4) | ((mag >> shift) & 0x0F)
    aval = np.where(seg >= 8, 0x7F, aval)
    return ((aval ^ mask) & 0xFF).astype(np.uint8)


def _build_alaw_decode() -> Int16Array:
    """A-law decoder table (Sun reference ``alaw2linear``)."""
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


def _frozen(arr: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    arr.flags.writeable = False
    return arr


_ULAW_ENC: Final = _frozen(_build_ulaw_encode())
_ULAW_DEC: Final = _frozen(_build_ulaw_decode())
_ALAW_ENC: Final = _frozen(_build_alaw_encode())
_ALAW_DEC: Final = _frozen(_build_alaw_decode())


def _pcm_index(pcm16: bytes | bytearray | memoryview) -> npt.NDArray[np.uint16]:
    return np.frombuffer(pcm16, dtype="<u2", count=len(pcm16) // 2)


def pcm16_to_ulaw(pcm16: bytes | bytearray | memoryview) -> bytes:
    """Encode little-endian PCM16 to G.711 μ-law, one byte per sample (rate unchanged)."""
    return bytes(_ULAW_ENC[_pcm_index(pcm16)].tobytes())


def ulaw_to_pcm16(ulaw: bytes | bytearray | memoryview) -> bytes:
    """Decode G.711 μ-law to little-endian PCM16 (rate unchanged)."""
    codes = np.frombuffer(ulaw, dtype=np.uint8)
    return bytes(_ULAW_DEC[codes].astype("<i2").tobytes())


def pcm16_to_alaw(pcm16: bytes | bytearray | memoryview) -> bytes:
    """Encode little-endian PCM16 to G.711 A-law, one byte per sample (rate unchanged)."""
    return bytes(_ALAW_ENC[_pcm_index(pcm16)].tobytes())


def alaw_to_pcm16(alaw: bytes | bytearray | memoryview) -> bytes:
    """Decode G.711 A-law to little-endian PCM16 (rate unchanged)."""
    codes = np.frombuffer(alaw, dtype=np.uint8)
    return bytes(_ALAW_DEC[codes].astype("<i2").tobytes())


# --------------------------------------------------------------------------- resampling


class Resampler:
    """Streaming PCM16 mono resampler over ``soxr.ResampleStream``.

    Feed chunks of any size (an odd trailing byte is carried to the next call); the output
    keeps soxr's filter state between chunks, so chunk boundaries leave no clicks. Call
    :meth:`flush` at the end of the stream to drain the filter delay. Not thread-safe:
    one instance per stream.
    """

    def __init__(self, in_rate_hz: int, out_rate_hz: int, *, quality: str = "HQ") -> None:
        if in_rate_hz <= 0 or out_rate_hz <= 0:
            raise ValueError("sample rates must be positive")
        self.in_rate_hz = in_rate_hz
        self.out_rate_hz = out_rate_hz
        self._carry = b""
        self._stream: soxr.ResampleStream | None = None
        if in_rate_hz != out_rate_hz:
            self._stream = soxr.ResampleStream(
                in_rate_hz, out_rate_hz, 1, dtype="int16", quality=quality
            )

    def process(self, pcm16: bytes | bytearray | memoryview) -> bytes:
        """Resample one chunk of PCM16; returns whatever output is ready (maybe empty)."""
        data = self._carry + bytes(pcm16)
        usable = len(data) - (len(data) % 2)
        self._carry = data[usable:]
        if self._stream is None:
            return data[:usable]
        if usable == 0:
            return b""
        arr = np.frombuffer(data, dtype="<i2", count=usable // 2).astype(np.int16)
        out = self._stream.resample_chunk(arr, last=False)
        return np.asarray(out, dtype="<i2").tobytes()

    def flush(self) -> bytes:
        """End the stream: return the filter's remaining output. The instance is then reset."""
        self._carry = b""
        if self._stream is None:
            return b""
        out = self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        self._stream.clear()
        return np.asarray(out, dtype="<i2").tobytes()


def resample_pcm16(pcm16: bytes, in_rate_hz: int, out_rate_hz: int) -> bytes:
    """Resample a whole PCM16 buffer in one call (convenience over :class:`Resampler`)."""
    if in_rate_hz == out_rate_hz:
        return pcm16[: len(pcm16) - len(pcm16) % 2]
    arr = pcm16_to_array(pcm16)
    out = soxr.resample(arr, in_rate_hz, out_rate_hz, quality="HQ")
    return np.asarray(out, dtype="<i2").tobytes()


def encode_output(pcm16_at_rate: bytes, fmt: AudioFormat) -> bytes:
    """Convert PCM16 already at ``rate_hz(fmt)`` to the wire encoding of ``fmt``."""
    if fmt == "audio/pcmu":
        return pcm16_to_ulaw(pcm16_at_rate)
    if fmt == "audio/pcma":
        return pcm16_to_alaw(pcm16_at_rate)
    return pcm16_at_rate


def decode_input(wire: bytes, fmt: AudioFormat) -> bytes:
    """Convert wire audio in ``fmt`` to PCM16 at ``rate_hz(fmt)``."""
    if fmt == "audio/pcmu":
        return ulaw_to_pcm16(wire)
    if fmt == "audio/pcma":
        return alaw_to_pcm16(wire)
    return wire[: len(wire) - len(wire) % 2]
