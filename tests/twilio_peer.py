"""A Twilio Media Streams peer for tests: what Twilio's side of ``<Connect><Stream>`` does.

Not a test module. :class:`TwilioStream` opens the WebSocket, sends ``connected`` and ``start``
(with ``customParameters``), then the caller's voice as μ-law 8 kHz in 20 ms ``media`` frames,
in real time (silence when there is nothing to say). What the server sends is *played* in real
time after a jitter delay: a ``mark`` is echoed only when the audio queued before it has been
played, and ``clear`` drops the queued audio and echoes every pending mark at once (as Twilio
documents). It records everything needed to check what the caller heard.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import soxr

from voxgate.protocol.audio import pcm16_to_ulaw

FRAME_BYTES = 160  # 20 ms of μ-law at 8 kHz
SILENCE = b"\xff" * FRAME_BYTES
JITTER_MS = 60  # a phone network's playout delay before the first frame of a burst


def ulaw_8k(pcm24k: bytes) -> bytes:
    """PCM16 24 kHz speech as the μ-law 8 kHz a phone line carries."""
    samples = np.frombuffer(pcm24k, dtype="<i2").astype(np.float32) / 32768.0
    down = np.clip(soxr.resample(samples, 24_000, 8_000), -1, 1)
    return pcm16_to_ulaw((down * 32767).astype("<i2").tobytes())


@dataclass
class Mark:
    name: str
    received_before: int  # media bytes received before this mark (the whole call)
    acked: bool = False
    cleared: bool = False


@dataclass
class Played:
    """What the caller heard, as the test checks it."""

    bytes: int = 0
    marks: list[Mark] = field(default_factory=list)
    clears: list[int] = field(default_factory=list)  # media bytes received when each came
    #: the last mark acknowledged as played before each clear (None: none yet)
    last_acked_at_clear: list[Mark | None] = field(default_factory=list)


class TwilioStream:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, *, stream_sid: str = "MZtest") -> None:
        self.ws = ws
        self.stream_sid = stream_sid
        self.to_say: deque[bytes] = deque()
        self.sent_payloads: list[str] = []
        self.received_payloads: list[str] = []
        self.received_bytes = 0
        self.queue: deque[bytes | Mark] = deque()
        self.played = Played()
        self.closed = asyncio.Event()
        self._changed = asyncio.Condition()
        self._loop = asyncio.get_running_loop()
        self._audio_ready = asyncio.Event()

    async def start(self, params: dict[str, str], *, call_sid: str = "CAtest") -> None:
        await self.ws.send_str(
            json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        )
        await self.ws.send_str(
            json.dumps(
                {
                    "event": "start",
                    "sequenceNumber": "1",
                    "streamSid": self.stream_sid,
                    "start": {
                        "accountSid": "ACtest",
                        "streamSid": self.stream_sid,
                        "callSid": call_sid,
                        "tracks": ["inbound"],
                        "customParameters": params,
                        "mediaFormat": {
                            "encoding": "audio/x-mulaw",
                            "sampleRate": 8000,
                            "channels": 1,
                        },
                    },
                }
            )
        )

    def say(self, ulaw: bytes) -> None:
        for i in range(0, len(ulaw), FRAME_BYTES):
            self.to_say.append(ulaw[i : i + FRAME_BYTES].ljust(FRAME_BYTES, b"\xff"))

    async def run(self) -> None:
        """Send, receive and play until the server closes the stream."""
        async with asyncio.TaskGroup() as tg:
            sender = tg.create_task(self._send_media())
            player = tg.create_task(self._play())
            try:
                await self._receive()
            finally:
                sender.cancel()
                player.cancel()
                self.closed.set()

    async def stop(self) -> None:
        await self.ws.send_str(json.dumps({"event": "stop", "streamSid": self.stream_sid}))

    async def wait_until(self, probe: Any, timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(probe)

    # ------------------------------------------------------------------ internals

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _send_media(self) -> None:
        start = self._loop.time()
        n = 0
        while True:
            chunk = self.to_say.popleft() if self.to_say else SILENCE
            payload = base64.b64encode(chunk).decode()
            self.sent_payloads.append(payload)
            await self.ws.send_str(
                json.dumps(
                    {
                        "event": "media",
                        "sequenceNumber": str(n + 2),
                        "streamSid": self.stream_sid,
                        "media": {
                            "track": "inbound",
                            "chunk": str(n + 1),
                            "timestamp": str(n * 20),
                            "payload": payload,
                        },
                    }
                )
            )
            n += 1
            await asyncio.sleep(max(0.0, start + n * 0.02 - self._loop.time()))  # a real-time mic

    async def _receive(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            kind = event.get("event")
            assert event.get("streamSid") == self.stream_sid
            if kind == "media":
                payload = event["media"]["payload"]
                self.received_payloads.append(payload)
                data = base64.b64decode(payload)
                self.received_bytes += len(data)
                self.queue.append(data)
                self._audio_ready.set()
            elif kind == "mark":
                mark = Mark(event["mark"]["name"], self.received_bytes)
                self.played.marks.append(mark)
                self.queue.append(mark)
                self._audio_ready.set()
            elif kind == "clear":
                acked = [m for m in self.played.marks if m.acked]
                self.played.last_acked_at_clear.append(acked[-1] if acked else None)
                self.played.clears.append(self.received_bytes)
                pending = [m for m in self.queue if isinstance(m, Mark)]
                self.queue.clear()
                for mark in pending:  # Twilio echoes the marks of cleared audio at once
                    mark.cleared = True
                    await self._echo(mark)
            await self._notify()

    async def _echo(self, mark: Mark) -> None:
        await self.ws.send_str(
            json.dumps({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": mark.name}})
        )

    async def _play(self) -> None:
        """Play the queue in real time; a mark is acknowledged when reached."""
        while True:
            await self._audio_ready.wait()
            self._audio_ready.clear()
            await asyncio.sleep(JITTER_MS / 1000)  # network and playout delay of a burst
            start = self._loop.time()
            played_ms = 0.0
            while self.queue:
                head = self.queue.popleft()
                if isinstance(head, Mark):
                    head.acked = True
                    await self._echo(head)
                    await self._notify()
                    continue
                self.played.bytes += len(head)
                played_ms += len(head) / 8
                await asyncio.sleep(max(0.0, start + played_ms / 1000 - self._loop.time()))
