"""A WebRTC caller in Python (aiortc), for tests and benches: a real peer on real sockets.

Not a test module. :class:`Peer` offers audio (a microphone that plays given PCM16 24 kHz in
real time, then silence) and the ``oai-events`` data channel, POSTs the offer to voxgate's
``/v1/realtime/calls`` as the Agents SDK does (``application/sdp`` + bearer key), and records
what comes back: every data-channel event in order, and the received audio (48 kHz mono
PCM16, with how much of it was not silence). Waits are event driven with timeouts.
"""

from __future__ import annotations

import asyncio
import fractions
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import numpy as np
import soxr
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

RATE = 48_000
FRAME = 960
TIMEOUT_S = 20.0


class Microphone(MediaStreamTrack):
    """Plays queued PCM16 24 kHz speech in real time (20 ms frames), silence in between."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pcm48 = bytearray()
        self._clock = asyncio.get_running_loop()
        self._start: float | None = None
        self._n = 0
        self.spoken_frames = 0
        #: loop time each :meth:`say` began to leave the mic (its first frame was sent)
        self.said_at: list[float] = []
        self._fresh = False
        self.idle = asyncio.Event()
        self.idle.set()

    def say(self, pcm24k: bytes) -> None:
        samples = np.frombuffer(pcm24k, dtype="<i2").astype(np.float32) / 32768.0
        up = soxr.resample(samples, 24_000, RATE)
        self._pcm48 += (np.clip(up, -1, 1) * 32767).astype("<i2").tobytes()
        self._fresh = True
        self.idle.clear()

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        now = self._clock.time()
        if self._start is None:
            self._start = now
        due = self._start + self._n * 0.02
        if due > now:
            await asyncio.sleep(due - now)  # a microphone produces audio in real time
        chunk = bytes(self._pcm48[: FRAME * 2])
        del self._pcm48[: FRAME * 2]
        if chunk:
            self.spoken_frames += 1
            if self._fresh:
                self._fresh = False
                self.said_at.append(self._clock.time())
        else:
            self.idle.set()
        chunk += bytes(FRAME * 2 - len(chunk))
        frame = AudioFrame.from_ndarray(
            np.frombuffer(chunk, dtype="<i2").reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE
        frame.pts = self._n * FRAME
        frame.time_base = fractions.Fraction(1, RATE)
        self._n += 1
        return frame


class Peer:
    """One caller. ``async with Peer() as peer: await peer.call(url, key)``."""

    def __init__(
        self, *, mic: bool = True, keep_audio: bool = True, jitter_frames: int | None = None
    ) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.keep_audio = keep_audio
        #: frames aiortc's receive jitter buffer holds (None: its default, 4 = 80 ms)
        self.jitter_frames = jitter_frames
        self.mic = Microphone() if mic else None
        self.events: list[dict[str, Any]] = []
        self.received_pcm = bytearray()
        self.loud_frames = 0
        self.frames = 0
        self.call_id: str | None = None
        self.status: int | None = None
        self.error: dict[str, Any] | None = None
        self._changed = asyncio.Condition()
        self._readers: list[asyncio.Task[None]] = []
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        #: called for every received audio frame with whether it was sound (benches)
        self.on_frame: Callable[[bool], None] | None = None
        self.channel = self.pc.createDataChannel("oai-events")
        self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)

    async def __aenter__(self) -> Peer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def offer(self) -> str:
        """Add the microphone (or a receive-only transceiver) and make the SDP offer."""
        if self.mic is not None:
            self.pc.addTrack(self.mic)
        else:
            self.pc.addTransceiver("audio", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept(self, answer_sdp: str, location: str) -> None:
        self.call_id = location.rsplit("/", 1)[-1]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        if self.jitter_frames is not None:
            for transceiver in self.pc.getTransceivers():
                receiver = transceiver.receiver
                buffer = JitterBuffer(capacity=16, prefetch=self.jitter_frames)
                setattr(receiver, "_RTCRtpReceiver__jitter_buffer", buffer)  # noqa: B010

    async def call(self, url: str, key: str, *, session: dict[str, Any] | None = None) -> None:
        """Offer, POST, answer. Sets :attr:`status` (and :attr:`error` when refused)."""
        offer = await self.offer()
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession() as http:
            if session is None:
                headers["Content-Type"] = "application/sdp"
                resp = await http.post(url, data=offer, headers=headers)
            else:
                form = aiohttp.FormData()
                form.add_field("sdp", offer, content_type="application/sdp")
                form.add_field("session", json.dumps(session), content_type="application/json")
                resp = await http.post(url, data=form, headers=headers)
            async with resp:
                self.status = resp.status
                body = await resp.text()
                if resp.status != 201:
                    self.error = json.loads(body).get("error")
                    return
                location = resp.headers["Location"]
        await self.accept(body, location)

    def send(self, event: dict[str, Any]) -> None:
        self.channel.send(json.dumps(event))

    async def wait_open(self) -> None:
        if self.channel.readyState == "open":
            return
        opened = asyncio.Event()
        self.channel.on("open", opened.set)
        async with asyncio.timeout(TIMEOUT_S):
            await opened.wait()

    def of(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == event_type]

    async def wait_for(self, event_type: str, count: int = 1) -> list[dict[str, Any]]:
        async with asyncio.timeout(TIMEOUT_S), self._changed:
            await self._changed.wait_for(lambda: len(self.of(event_type)) >= count)
        return self.of(event_type)

    async def wait_until(self, probe: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(probe)

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        await self.pc.close()

    def _on_message(self, message: str | bytes) -> None:
        event = json.loads(message)
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._readers.append(asyncio.get_running_loop().create_task(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                arr = frame.to_ndarray()  # type: ignore[union-attr]
                channels = len(frame.layout.channels)  # type: ignore[union-attr]
                mono = arr.reshape(-1, channels).astype(np.int32).mean(axis=1).astype(np.int16)
                if self.keep_audio:
                    self.received_pcm += mono.astype("<i2").tobytes()
                self.frames += 1
                loud = bool(np.abs(mono).max(initial=0) > 1000)
                if loud:
                    self.loud_frames += 1
                if self.on_frame is not None:
                    self.on_frame(loud)
                else:
                    await self._notify()
        except MediaStreamError:
            pass


async def _hold(url: str, key: str) -> None:
    """Call, print the call id once the session is up, then hold the line until killed."""
    async with Peer() as peer:
        await peer.call(url, key)
        await peer.wait_for("session.created")
        print(peer.call_id, flush=True)  # the parent test reads it
        await asyncio.Event().wait()


if __name__ == "__main__":
    import sys

    asyncio.run(_hold(sys.argv[1], sys.argv[2]))
