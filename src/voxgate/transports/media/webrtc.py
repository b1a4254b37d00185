"""One WebRTC call as a :class:`~voxgate.session.ports.ClientConnection` (aiortc).

The caller's microphone arrives as Opus over RTP; aiortc decodes it and
:class:`~voxgate.transports.media.webrtc_audio.CallerAudio` turns each frame into an
``input_audio_buffer.append`` in the session's input format. Events travel on the
``oai-events`` data channel both ways, exactly as OpenAI sends them over WebRTC (no audio
deltas; ``output_audio_buffer.*`` instead; realtime-protocol.md §2.3, §9); the assistant's
audio goes out on :class:`~voxgate.transports.media.webrtc_audio.AssistantTrack`, paced in
real time, and barge-in truncates at what was sent (:mod:`.core`).

Endings: the data channel closing or the peer connection closing is a hang-up (the session
ends as a client close); ICE/DTLS failure is a lost client. With the session heartbeat on
(``ping_interval_s``), a caller whose media and events stop arriving is found even before ICE
consent expires (about 30 s in aiortc), because :attr:`heard` counts every frame.

Backpressure: events wait (``send_text``) while the data channel is not open yet or holds more
than ``DC_HIGH_BYTES``, and while the playout holds ``playout_limit_ms`` of audio.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Final

import orjson
from aiortc import (
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidStateError
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from voxgate.protocol.close import CloseCode
from voxgate.protocol.errors import SERVER_ERROR, error_event
from voxgate.protocol.extensions import append_b64
from voxgate.session.ports import PeerGone
from voxgate.transports.media.call import MediaCall
from voxgate.transports.media.core import Play, fit_event
from voxgate.transports.media.ledger import Cut
from voxgate.transports.media.webrtc_audio import AssistantTrack, CallerAudio, Heard, Playout

EVENTS_LABEL: Final = "oai-events"
#: RFC 8841's default when the SDP does not say (a-max-message-size absent)
DEFAULT_MAX_MESSAGE_BYTES: Final = 65_536
#: frames the caller's audio waits for before decoding (aiortc's own default is 4)
INPUT_JITTER_FRAMES: Final = 1
DC_HIGH_BYTES: Final = 256 * 1024
DC_LOW_BYTES: Final = 64 * 1024


class InvalidOffer(ValueError):
    """The SDP offer could not be answered (unparsable, or nothing voxgate can take)."""


class WebRTCCall(MediaCall):
    """See the module docstring. Create, :meth:`answer` the offer, then ``run_session``."""

    transport = "webrtc"

    def __init__(self, call_id: str, pc: RTCPeerConnection, *, playout_limit_ms: float) -> None:
        super().__init__(call_id)
        self.pc = pc
        self._dc: RTCDataChannel | None = None
        self._expects_events = True
        self._playout = Playout(playout_limit_ms)
        self.track = AssistantTrack(self._playout, self._on_frame)
        self._caller_audio = CallerAudio()
        self._changed = asyncio.Event()
        self._readers: set[asyncio.Task[None]] = set()
        pc.on("datachannel", self._on_datachannel)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)

    async def answer(self, offer_sdp: str) -> str:
        """Take the caller's offer; return the SDP answer (host candidates gathered).

        Raises:
            InvalidOffer: the offer is not valid SDP or has neither audio nor a data channel.
        """
        pc = self.pc
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise InvalidOffer(
                f"The SDP offer could not be parsed ({type(exc).__name__})."
            ) from None
        kinds = {t.kind for t in pc.getTransceivers()}
        self._expects_events = "m=application" in offer_sdp
        if "audio" not in kinds and not self._expects_events:
            raise InvalidOffer("The SDP offer has no audio and no data channel.")
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "audio":
                _shorten_jitter_buffer(transceiver.receiver, self.log)
        if "audio" in kinds:
            opus = [
                c for c in RTCRtpSender.getCapabilities("audio").codecs if c.name.lower() == "opus"
            ]
            pc.addTrack(self.track)
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "audio" and opus:
                    transceiver.setCodecPreferences(opus)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        local = pc.localDescription
        if local is None:  # pragma: no cover - aiortc always sets it
            raise InvalidOffer("no local description")
        return local.sdp

    # ------------------------------------------------------------------ aiortc callbacks

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != EVENTS_LABEL or self._dc is not None:
            self.log.info("webrtc.datachannel_ignored", label=channel.label)
            return
        self._dc = channel
        channel.bufferedAmountLowThreshold = DC_LOW_BYTES
        channel.on("message", self._on_message)
        channel.on("open", self._changed.set)
        channel.on("bufferedamountlow", self._changed.set)
        channel.on("close", self._on_dc_close)
        self._changed.set()

    def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self.from_caller(message)
        else:
            self._to_session(message)

    def _on_dc_close(self) -> None:
        self.log.info("webrtc.datachannel_closed")
        self.hang_up(PeerGone(CloseCode.NORMAL, "hang-up", clean=True))
        self._changed.set()

    def _on_state(self) -> None:
        state = self.pc.connectionState
        self.log.info("webrtc.connection_state", state=state)
        if state == "failed":
            self.hang_up(PeerGone(None, "ICE or DTLS failed"))
        elif state == "closed":
            self.hang_up(PeerGone(CloseCode.NORMAL, "hang-up", clean=True))
        self._changed.set()

    async def ping(self) -> None:
        """A caller that sends no audio (receive-only) proves it is alive by ICE consent.

        With a microphone, its frames are the proof (:attr:`heard`), so a caller that vanished
        is found by the session heartbeat long before ICE consent expires (30 s in aiortc).
        """
        if not self._readers and self.pc.connectionState == "connected":
            self._heard += 1

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio":
            return
        task = asyncio.get_running_loop().create_task(self._read(track), name="webrtc_caller_audio")
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)

    async def _read(self, track: MediaStreamTrack) -> None:
        convert = self._caller_audio.convert
        core = self.core
        try:
            while True:
                frame = await track.recv()
                wire = convert(frame, core.input_format)  # type: ignore[arg-type]
                if wire:
                    self.caller_audio(append_b64(base64.b64encode(wire).decode("ascii")))
        except MediaStreamError:
            self.log.info("webrtc.caller_track_ended")

    def _on_frame(self, heard: Heard, drained: bool) -> None:
        core = self.core
        for item_id, ms in heard:
            core.heard(item_id, ms)
        if drained:
            self._do(core.drained())
        if not self._playout.full:
            self._changed.set()

    # ------------------------------------------------------------------ MediaCall hooks

    def _caller_writable(self) -> bool:
        if self._playout.full:
            return False
        dc = self._dc
        if dc is None:
            return not self._expects_events
        return dc.readyState == "open" and dc.bufferedAmount < DC_HIGH_BYTES

    async def _wait_caller_writable(self) -> None:
        while not self._caller_writable():
            dc = self._dc
            if self._inbox.gone is not None or (dc is not None and dc.readyState == "closed"):
                raise PeerGone(self._close_code)
            self._changed.clear()
            await self._changed.wait()

    def _emit(self, text: str) -> None:
        dc = self._dc
        if dc is None or dc.readyState != "open":
            return
        limit = self._max_message_bytes()
        if len(text) * 4 > limit and len(text.encode()) > limit:
            fitted = fit_event(text, limit)
            self.log.info(
                "webrtc.event_too_large", size=len(text), limit=limit, fitted=bool(fitted)
            )
            text = fitted if fitted is not None else _too_large_error(len(text), limit)
        try:
            dc.send(text)
        except (ValueError, ConnectionError, InvalidStateError) as exc:
            self.log.warning("webrtc.send_failed", error=type(exc).__name__)

    def _max_message_bytes(self) -> int:
        # What the caller's SDP advertised (a-max-message-size; Chromium: 256 KiB).
        size = getattr(self.pc.sctp, "_remote_max_message_size", None)
        return size if isinstance(size, int) and size > 0 else DEFAULT_MAX_MESSAGE_BYTES

    def _play(self, play: Play) -> None:
        self._playout.push(play.item_id, play.audio, self.core.output_format)

    def _audio_done(self, item_id: str) -> None:
        self._playout.finish(item_id)

    def _stop_playback(self, cut: Cut) -> None:
        self._playout.clear()
        self._changed.set()

    async def _close_transport(self, code: int, reason: str) -> None:
        for task in list(self._readers):
            task.cancel()
        self._changed.set()
        self.track.stop()
        self.log.info(
            "webrtc.media",
            frames_sent=self.track.frames_sent,
            audio_frames_sent=self.track.audio_frames_sent,
        )
        await self.pc.close()


def _shorten_jitter_buffer(receiver: RTCRtpReceiver, log: Any) -> None:
    """Hold the caller's audio for one frame, not aiortc's four, before decoding it.

    aiortc releases an audio frame only once the four after it have arrived (``prefetch=4``):
    80 ms on every turn before the VAD hears the end of speech. A server feeding VAD and ASR
    wants the audio now; a late packet is dropped, which costs the recogniser 20 ms of sound,
    not a turn. The buffer is a private attribute of the pinned aiortc series; if it ever moves,
    the default stays and this says so once.
    """
    name = "_RTCRtpReceiver__jitter_buffer"
    current = getattr(receiver, name, None)
    if isinstance(current, JitterBuffer):
        setattr(
            receiver, name, JitterBuffer(capacity=current.capacity, prefetch=INPUT_JITTER_FRAMES)
        )
    elif not _jitter_warned:
        _jitter_warned.append(True)
        log.warning("webrtc.jitter_buffer_unchanged", reason="aiortc internals moved")


_jitter_warned: list[bool] = []


def _too_large_error(size: int, limit: int) -> str:
    return orjson.dumps(
        error_event(
            f"An event of {size} characters did not fit the data channel's maximum message size "
            f"({limit} bytes) and was not delivered.",
            code="voxgate_event_too_large",
            error_type=SERVER_ERROR,
        )
    ).decode()
