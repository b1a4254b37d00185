"""Audio of a WebRTC call: the caller's Opus frames in, the assistant's voice out, in real time.

* :class:`CallerAudio` turns each decoded frame aiortc hands us (48 kHz, usually stereo s16)
  into the session's input format: downmix, resample (:class:`~voxgate.protocol.audio.Resampler`
  on soxr), G.711-encode when the session asks for ``audio/pcmu``/``audio/pcma``.
* :class:`Playout` holds the assistant's audio as 48 kHz mono PCM16, per item, bounded in
  milliseconds; :class:`AssistantTrack` is the outgoing ``MediaStreamTrack``: aiortc pulls a
  20 ms frame from it, it waits until that frame is due (a WebRTC track is real time: the
  receiver plays what arrives, it does not buffer seconds ahead) and reports which item's audio
  it carried, so the call knows what the caller has heard. With nothing queued it sends
  silence. It hands aiortc Opus packets it encoded itself (mono, 32 kbit/s, complexity 5, on
  the event loop: 0.1-0.5 ms a frame), so aiortc's own path is skipped: a stereo 96 kbit/s
  encoder run in a worker thread per frame, and a per-sample Python loop for the RTP audio
  level. A run of silence repeats one encoded silence packet instead of encoding it again.

"Heard" means sent on the wire: the browser's jitter buffer adds its 20-80 ms on top.
"""

from __future__ import annotations

import asyncio
import fractions
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, CodecContext, Packet

from voxgate.protocol.audio import Resampler, decode_input, encode_output
from voxgate.protocol.formats import FormatInfo

RATE_HZ: Final = 48_000
FRAME_MS: Final = 20
FRAME_SAMPLES: Final = RATE_HZ * FRAME_MS // 1000
_FRAME_BYTES: Final = FRAME_SAMPLES * 2
_TIME_BASE: Final = fractions.Fraction(1, RATE_HZ)
#: A track that fell this far behind its clock (a stalled loop) starts a new timeline rather
#: than bursting the backlog at the caller.
_MAX_LAG_S: Final = 0.2
_SILENCE: Final = bytes(_FRAME_BYTES)
OPUS_BIT_RATE: Final = 32_000
OPUS_COMPLEXITY: Final = 5
#: silent frames encoded before the last one is repeated (the encoder has settled by then)
_SILENCE_SETTLE_FRAMES: Final = 3

Heard = list[tuple[str, float]]
"""(item id, milliseconds of it) carried by one outgoing frame."""


class CallerAudio:
    """Decoded caller frames -> wire audio in the session's input format."""

    def __init__(self) -> None:
        self._resampler: Resampler | None = None

    def convert(self, frame: AudioFrame, fmt: FormatInfo) -> bytes:
        """One frame as ``fmt`` audio (may be empty while the resampler fills)."""
        pcm = _mono_pcm16(frame)
        rate = int(frame.sample_rate)
        res = self._resampler
        if res is None or res.in_rate_hz != rate or res.out_rate_hz != fmt.rate_hz:
            res = self._resampler = Resampler(rate, fmt.rate_hz)
        return encode_output(res.process(pcm), fmt.name)


def _mono_pcm16(frame: AudioFrame) -> bytes:
    arr = frame.to_ndarray()
    if arr.dtype.kind == "f":  # aiortc's Opus decoder gives s16; a float format is scaled
        arr = np.clip(np.rint(arr * 32767.0), -32768, 32767).astype(np.int16)
    channels = len(frame.layout.channels)
    if channels == 1:
        return bytes(arr.astype("<i2", copy=False).tobytes())
    if frame.format.is_planar:
        mixed = arr.astype(np.int32).sum(axis=0) // channels
    else:
        mixed = arr.reshape(-1, channels).astype(np.int32).sum(axis=1) // channels
    return bytes(mixed.astype("<i2").tobytes())


class Playout:
    """The assistant's audio waiting to be sent, as 48 kHz PCM16 per item (bounded)."""

    def __init__(self, limit_ms: float) -> None:
        self.limit_bytes = int(limit_ms * RATE_HZ * 2 / 1000)
        self._segments: deque[tuple[str, bytes]] = deque()
        self._head_offset = 0
        self.size_bytes = 0
        self._resampler: Resampler | None = None
        self._item: str | None = None

    @property
    def full(self) -> bool:
        return self.size_bytes >= self.limit_bytes

    @property
    def empty(self) -> bool:
        return self.size_bytes == 0

    def push(self, item_id: str, audio: bytes, fmt: FormatInfo) -> None:
        """Queue one delta (``fmt`` wire audio) of ``item_id``."""
        res = self._resampler
        if res is None or res.in_rate_hz != fmt.rate_hz:
            res = self._resampler = Resampler(fmt.rate_hz, RATE_HZ)
        elif self._item is not None and self._item != item_id:
            self._append(self._item, res.flush())  # the last item's filter tail is its own
        self._item = item_id
        self._append(item_id, res.process(decode_input(audio, fmt.name)))

    def finish(self, item_id: str) -> None:
        """``item_id``'s audio is complete: queue what the resampler's filter still holds."""
        res = self._resampler
        if res is not None and self._item == item_id:
            self._append(item_id, res.flush())
            self._item = None

    def _append(self, item_id: str, pcm: bytes) -> None:
        if pcm:
            self._segments.append((item_id, pcm))
            self.size_bytes += len(pcm)

    def pull(self) -> tuple[bytes, Heard]:
        """The next 20 ms (silence-padded) and which items it carries."""
        if not self._segments:
            return _SILENCE, []
        out = bytearray()
        heard: Heard = []
        while self._segments and len(out) < _FRAME_BYTES:
            item_id, pcm = self._segments[0]
            take = min(len(pcm) - self._head_offset, _FRAME_BYTES - len(out))
            out += pcm[self._head_offset : self._head_offset + take]
            self._head_offset += take
            heard.append((item_id, take / (RATE_HZ * 2 / 1000)))
            if self._head_offset >= len(pcm):
                self._segments.popleft()
                self._head_offset = 0
        self.size_bytes -= len(out)
        if len(out) < _FRAME_BYTES:
            out += bytes(_FRAME_BYTES - len(out))
        return bytes(out), heard

    def clear(self) -> None:
        """Drop everything queued and the resampler's history (barge-in)."""
        self._segments.clear()
        self._head_offset = 0
        self.size_bytes = 0
        self._resampler = None
        self._item = None


class AssistantTrack(MediaStreamTrack):
    """The outgoing audio track: 20 ms frames from a :class:`Playout`, paced in real time.

    ``on_frame(heard, drained)`` is called for every frame sent: the items it carried, and
    whether playback just ran dry (the queue emptied with this frame).
    """

    kind = "audio"

    def __init__(self, playout: Playout, on_frame: Callable[[Heard, bool], None]) -> None:
        super().__init__()
        self._playout = playout
        self._on_frame = on_frame
        self._clock = asyncio.get_running_loop()
        self._start: float | None = None
        self._n = 0
        self._encoder = _opus_encoder()
        self._silent_run = 0
        self._silence_packet = b""
        self.frames_sent = 0
        self.audio_frames_sent = 0

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        loop = self._clock
        now = loop.time()
        if self._start is None:
            self._start = now
        due = self._start + self._n * FRAME_MS / 1000
        if due > now:
            await asyncio.sleep(due - now)  # real-time pacing of the media clock
        elif now - due > _MAX_LAG_S:
            self._start = now - self._n * FRAME_MS / 1000
        playout = self._playout
        was_playing = not playout.empty
        pcm, heard = playout.pull()
        packet = self._encode(pcm, bool(heard))
        packet.pts = self._n * FRAME_SAMPLES
        packet.time_base = _TIME_BASE
        self._n += 1
        self.frames_sent += 1
        if heard:
            self.audio_frames_sent += 1
        if heard or was_playing:
            self._on_frame(heard, was_playing and playout.empty)
        return packet

    def _encode(self, pcm: bytes, sound: bool) -> Packet[Any]:
        if not sound and self._silent_run >= _SILENCE_SETTLE_FRAMES and self._silence_packet:
            return Packet(self._silence_packet)
        frame = AudioFrame.from_ndarray(
            np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE_HZ
        frame.pts = self._n * FRAME_SAMPLES
        frame.time_base = _TIME_BASE
        packets = self._encoder.encode(frame)
        self._silent_run = 0 if sound else self._silent_run + 1
        if not packets:  # libopus gives one packet per 20 ms frame; never seen otherwise
            return Packet(self._silence_packet or _SILENT_OPUS)
        data = bytes(packets[0])
        if not sound:
            self._silence_packet = data
        return Packet(data)


#: An Opus packet (TOC 0xF8: CELT fullband 20 ms, mono) whose frame is digital silence.
_SILENT_OPUS: Final = b"\xf8\xff\xfe"


def _opus_encoder() -> Any:
    codec = CodecContext.create("libopus", "w")
    codec.sample_rate = RATE_HZ
    codec.format = "s16"
    codec.layout = "mono"
    codec.bit_rate = OPUS_BIT_RATE
    # complexity 5 of 10: about 30 % cheaper than libopus's default, no audible loss for voice
    codec.options = {"application": "voip", "compression_level": str(OPUS_COMPLEXITY)}
    codec.time_base = _TIME_BASE
    return codec
