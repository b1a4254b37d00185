"""The audio formats of the Realtime wire, in one table (realtime-protocol.md §8). Pure.

Every fact about a wire format (sample rate, bytes per sample, so bytes per millisecond and per
second) lives here and nowhere else: the session mirror sizes its buffers with it, the client
pacer charges audio by it (G.711 is 8 bytes per millisecond, PCM16 48), config validation and
the local engine convert with it. No numpy, no I/O: :mod:`voxgate.protocol.audio` holds the
conversions that need them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

AudioFormat = Literal["audio/pcm", "audio/pcmu", "audio/pcma"]
DEFAULT_FORMAT: Final[AudioFormat] = "audio/pcm"


@dataclass(frozen=True, slots=True)
class FormatInfo:
    """One wire format: ``rate_hz`` samples per second of ``sample_bytes`` bytes, mono."""

    name: AudioFormat
    rate_hz: int
    sample_bytes: int

    @property
    def bytes_per_ms(self) -> int:
        return self.rate_hz * self.sample_bytes // 1000

    @property
    def bytes_per_s(self) -> int:
        return self.rate_hz * self.sample_bytes

    @property
    def b64_chars_per_s(self) -> float:
        """Characters of base64 per second of audio (what an ``append`` frame carries)."""
        return self.bytes_per_s * 4 / 3


FORMATS: Final[Mapping[str, FormatInfo]] = {
    "audio/pcm": FormatInfo("audio/pcm", 24_000, 2),
    "audio/pcmu": FormatInfo("audio/pcmu", 8_000, 1),
    "audio/pcma": FormatInfo("audio/pcma", 8_000, 1),
}
PCM: Final = FORMATS["audio/pcm"]


def info(fmt_type: str | None) -> FormatInfo:
    """The table row for a format ``type`` (``audio/pcm`` when absent or unknown)."""
    return FORMATS.get(fmt_type or DEFAULT_FORMAT, PCM)


def _format_type(session: Mapping[str, Any] | None, direction: str) -> str:
    if not isinstance(session, Mapping):
        return DEFAULT_FORMAT
    audio = session.get("audio")
    side = audio.get(direction) if isinstance(audio, Mapping) else None
    fmt = side.get("format") if isinstance(side, Mapping) else None
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    return kind if isinstance(kind, str) and kind in FORMATS else DEFAULT_FORMAT


def input_format_type(session: Mapping[str, Any] | None) -> str:
    """``audio.input.format.type`` of a GA session object (``audio/pcm`` when unset)."""
    return _format_type(session, "input")


def input_info(session: Mapping[str, Any] | None) -> FormatInfo:
    """The input format's row for a GA session object."""
    return FORMATS[_format_type(session, "input")]


def output_info(session: Mapping[str, Any] | None) -> FormatInfo:
    """The output format's row for a GA session object."""
    return FORMATS[_format_type(session, "output")]
