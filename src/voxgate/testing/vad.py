"""A deterministic energy VAD standing in for the server's turn detection (§3, §6.2).

Pure: works on *audio time* (bytes appended), never on the wall clock, so a test that appends
audio faster than real time gets the same events every run, as with the real server.

A 10 ms frame counts as speech when its RMS level (full scale 1.0) is at least
``threshold / 10``: the default threshold 0.5 means about -26 dBFS, so :func:`audio.tone`
at amplitude 0.5 is speech and :func:`audio.silence` is not. ``semantic_vad`` is approximated
by a silence window chosen from its ``eagerness`` (high 200 ms, auto/medium 500 ms, low 800 ms).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from voxgate.protocol.session_config import bytes_per_ms
from voxgate.testing.audio import frame_rms

FRAME_MS = 10
_EAGERNESS_SILENCE_MS = {"high": 200, "medium": 500, "auto": 500, "low": 800}


@dataclass(frozen=True)
class VadEvent:
    """``start``: ``ms`` is the speech start minus prefix padding (``audio_start_ms``).
    ``stop``: ``ms`` is where speech ended (``audio_end_ms``) and ``end_offset`` the absolute
    byte offset, in the stream fed so far, at which the turn is committed."""

    kind: Literal["start", "stop"]
    ms: int
    end_offset: int


@dataclass(frozen=True)
class VadParams:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 200

    @classmethod
    def from_turn_detection(cls, td: Mapping[str, Any]) -> VadParams:
        """Read a session's ``turn_detection`` object (server_vad or semantic_vad)."""
        if td.get("type") == "semantic_vad":
            eagerness = str(td.get("eagerness") or "auto")
            return cls(silence_duration_ms=_EAGERNESS_SILENCE_MS.get(eagerness, 500))
        return cls(
            threshold=float(td.get("threshold", 0.5)),
            prefix_padding_ms=int(td.get("prefix_padding_ms", 300)),
            silence_duration_ms=int(td.get("silence_duration_ms", 200)),
        )


class EnergyVad:
    """Feed appended audio with :meth:`feed`; it returns the start/stop events it detected."""

    def __init__(
        self, params: VadParams, fmt: Mapping[str, Any], *, start_offset: int = 0, start_ms: int = 0
    ) -> None:
        """``start_offset``/``start_ms``: where in the session's audio stream this VAD starts."""
        self.params = params
        self._fmt = dict(fmt)
        self._frame_bytes = bytes_per_ms(fmt) * FRAME_MS
        self._partial = b""
        self._offset = start_offset  # absolute bytes consumed into whole frames
        self._pos_ms = start_ms  # audio time at ``_offset``
        self.speaking = False
        self._silence_ms = 0
        self._speech_end_ms = 0

    @property
    def position_ms(self) -> int:
        return self._pos_ms

    def feed(self, data: bytes) -> list[VadEvent]:
        """Process ``data`` (any length); returns events in stream order."""
        buf = self._partial + data
        events: list[VadEvent] = []
        n_frames = len(buf) // self._frame_bytes
        for i in range(n_frames):
            frame = buf[i * self._frame_bytes : (i + 1) * self._frame_bytes]
            event = self._frame(frame_rms(frame, self._fmt) >= self.params.threshold / 10)
            if event is not None:
                events.append(event)
        self._partial = buf[n_frames * self._frame_bytes :]
        return events

    def _frame(self, is_speech: bool) -> VadEvent | None:
        start_ms = self._pos_ms
        self._pos_ms += FRAME_MS
        self._offset += self._frame_bytes
        if not self.speaking:
            if not is_speech:
                return None
            self.speaking, self._silence_ms, self._speech_end_ms = True, 0, self._pos_ms
            return VadEvent("start", max(0, start_ms - self.params.prefix_padding_ms), 0)
        if is_speech:
            self._silence_ms, self._speech_end_ms = 0, self._pos_ms
            return None
        self._silence_ms += FRAME_MS
        if self._silence_ms < self.params.silence_duration_ms:
            return None
        self.speaking = False
        return VadEvent("stop", self._speech_end_ms, self._offset)

    def reset(self) -> None:
        """Forget a turn in progress (after ``input_audio_buffer.clear`` or a manual commit).

        The stream position keeps counting: ``audio_start_ms`` is session-relative (§5).
        """
        self._pos_ms += int(len(self._partial) / max(1, bytes_per_ms(self._fmt)))
        self._offset += len(self._partial)
        self._partial = b""
        self.speaking = False
        self._silence_ms = 0
