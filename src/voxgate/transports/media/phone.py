"""One phone call over Twilio Media Streams as a :class:`~voxgate.session.ports.ClientConnection`.

Twilio's protocol (public): JSON text frames over a WebSocket. Twilio sends ``connected``,
``start`` (stream and call ids, ``customParameters`` from the TwiML), ``media`` (20 ms of
μ-law 8 kHz, base64, per frame), ``mark`` (a name we sent, echoed once the audio before it has
been *played* to the caller), ``dtmf`` and ``stop``. We send ``media`` (the assistant's
audio), ``mark`` and ``clear`` (drop whatever Twilio still has queued).

The session runs in ``audio/pcmu`` both ways, so the audio is never converted: the payload of
each ``media`` frame becomes the ``audio`` of an ``input_audio_buffer.append`` as is, and each
``response.output_audio.delta`` goes out as a ``media`` frame with the same base64, followed by
a ``mark`` naming how much of its item has then been sent. Marks coming back say what the
caller has heard; on barge-in (:mod:`.core`) voxgate sends ``clear`` and truncates the item at
the last mark that came back before it (Twilio then echoes the remaining marks at once; those
are ignored). If a client changed the output format anyway, audio is converted to μ-law.
"""

from __future__ import annotations

import base64
from collections import OrderedDict, deque
from typing import Any, Final

import orjson

from voxgate.protocol.audio import Resampler, decode_input, pcm16_to_ulaw
from voxgate.protocol.close import CloseCode
from voxgate.protocol.extensions import append_b64
from voxgate.session.ports import ClientConnection, PeerGone
from voxgate.transports.media.call import MediaCall
from voxgate.transports.media.core import Play
from voxgate.transports.media.ledger import Cut

MARK_PREFIX: Final = "vg"
_ULAW_BYTES_PER_MS: Final = 8
_MAX_TRACKED_ITEMS: Final = 64


class PhoneCall(MediaCall):
    """See the module docstring. ``pump()`` reads Twilio's frames until the stream ends."""

    transport = "phone"

    def __init__(self, call_id: str, conn: ClientConnection, stream_sid: str) -> None:
        super().__init__(call_id)
        self._ws = conn
        self.stream_sid = stream_sid
        self._marks: deque[tuple[int, str, float]] = deque()  # (seq, item id, end ms) in flight
        self._seq = 0
        self._void_upto = 0  # marks up to this seq were cleared: their echo means nothing
        self._sent_ms: OrderedDict[str, float] = OrderedDict()
        self._pending: deque[str] = deque()  # frames for Twilio waiting for the socket
        self._resampler: Resampler | None = None
        self.marks_acked = 0
        self.dtmf: list[str] = []

    # ------------------------------------------------------------------ Twilio -> session

    async def pump(self) -> None:
        """Read the stream until it stops; every ending becomes the caller's hang-up."""
        try:
            while True:
                frame = await self._ws.receive()
                if isinstance(frame, str):
                    self._on_frame(frame)
        except PeerGone as gone:
            self.hang_up(gone)

    def _on_frame(self, text: str) -> None:
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            return
        if not isinstance(message, dict):
            return
        kind = message.get("event")
        if kind == "media":
            media = message.get("media")
            if isinstance(media, dict) and media.get("track", "inbound") == "inbound":
                payload = media.get("payload")
                if isinstance(payload, str) and payload:
                    self.caller_audio(append_b64(payload))
        elif kind == "mark":
            mark = message.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if isinstance(name, str):
                self._on_mark(name)
        elif kind == "stop":
            self.hang_up(PeerGone(CloseCode.NORMAL, "stream stopped", clean=True))
        elif kind == "dtmf":
            digit = (message.get("dtmf") or {}).get("digit")
            if isinstance(digit, str) and len(self.dtmf) < 64:
                self.dtmf.append(digit)

    def _on_mark(self, name: str) -> None:
        self._heard += 1
        if not name.startswith(MARK_PREFIX) or not name[len(MARK_PREFIX) :].isdigit():
            return
        seq = int(name[len(MARK_PREFIX) :])
        if seq <= self._void_upto:
            return  # echoed by a clear: that audio was never played
        self.marks_acked += 1
        core = self.core
        while self._marks and self._marks[0][0] <= seq:
            _, item_id, end_ms = self._marks.popleft()
            core.heard_until(item_id, end_ms)
        if not self._marks:
            self._do(core.drained())

    # ------------------------------------------------------------------ MediaCall hooks

    def _caller_writable(self) -> bool:
        return not self._pending and self._ws.writable

    async def _wait_caller_writable(self) -> None:
        # What one earlier event could not write at once waits here, so a congested socket
        # holds back the session by one event's frames at most.
        while self._pending:
            await self._ws.send_text(self._pending.popleft())  # PeerGone ends the session

    def _emit(self, text: str) -> None:
        """A phone line has no event channel (sidebands get the events)."""

    def _play(self, play: Play) -> None:
        fmt = self.core.output_format
        payload = play.audio_b64 if fmt.name == "audio/pcmu" else self._to_ulaw(play.audio)
        ms = len(play.audio) / fmt.bytes_per_ms
        sent = self._sent_ms.pop(play.item_id, 0.0) + ms
        self._sent_ms[play.item_id] = sent
        while len(self._sent_ms) > _MAX_TRACKED_ITEMS:
            self._sent_ms.popitem(last=False)
        self._seq += 1
        self._marks.append((self._seq, play.item_id, sent))
        self._write(self._frame({"event": "media", "media": {"payload": payload}}))
        self._write(self._frame({"event": "mark", "mark": {"name": f"{MARK_PREFIX}{self._seq}"}}))

    def _stop_playback(self, cut: Cut) -> None:
        self._void_upto = self._seq
        self._marks.clear()
        self._pending.clear()  # cut audio never sent: nothing of it to clear or to mark
        self._write(self._frame({"event": "clear"}))

    async def _close_transport(self, code: int, reason: str) -> None:
        await self._ws.close(code, reason)

    # ------------------------------------------------------------------ helpers

    def _frame(self, body: dict[str, Any]) -> str:
        return orjson.dumps({"streamSid": self.stream_sid, **body}).decode()

    def _write(self, text: str) -> None:
        if self._pending or not self._ws.write_text(text):
            self._pending.append(text)

    def _to_ulaw(self, audio: bytes) -> str:
        fmt = self.core.output_format
        res = self._resampler
        if res is None or res.in_rate_hz != fmt.rate_hz:
            res = self._resampler = Resampler(fmt.rate_hz, 8000)
        ulaw = pcm16_to_ulaw(res.process(decode_input(audio, fmt.name)))
        return base64.b64encode(ulaw).decode("ascii")
