"""The half every media-call adapter shares: a :class:`ClientConnection` around a caller.

:class:`MediaCall` is what the session sees of a WebRTC call or a phone line. Frames for the
session (the caller's events, its audio turned into ``input_audio_buffer.append``, voxgate's
truncates after a cut) go through one bounded :class:`~voxgate.session.delivery.Delivery`,
so they reach the session's sink or queue in arrival order. Events from the session go
through the sans-I/O :class:`~voxgate.transports.media.core.CallCore`, whose actions the
subclass performs: its transport's ``_emit`` (the event channel), ``_play`` and
``_stop_playback``. Sidebands (:mod:`.sideband`) attached by ``?call_id=`` get every event
the event channel gets and may send events like the caller.

Bounds: the inbox holds ``inbox_limit`` frames; caller audio is dropped (counted) once it holds
``inbox_limit - CONTROL_RESERVE`` (real-time audio the session cannot take in time is worth
less than the next frame), and a caller whose *control* events overflow the reserve as well is
disconnected (1008). At most ``MAX_SIDEBANDS`` sidebands per call.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

import structlog

from voxgate.auth.grants import Grant
from voxgate.protocol.close import CloseCode
from voxgate.protocol.errors import INVALID_REQUEST, SERVER_ERROR, AuthError, FatalSessionError
from voxgate.session.actions import EndSession
from voxgate.session.delivery import Delivery
from voxgate.session.ports import ClientConnection, FrameSink, PeerGone
from voxgate.transports.media.core import (
    AudioDone,
    CallAction,
    CallCore,
    Forward,
    Play,
    StopPlayback,
    ToSession,
)
from voxgate.transports.media.ledger import Cut
from voxgate.transports.media.sideband import Sideband

log = structlog.get_logger("voxgate.session")

INBOX_LIMIT: Final = 512
CONTROL_RESERVE: Final = 128
MAX_SIDEBANDS: Final = 4


class MediaCall:
    """Shared adapter half; subclasses implement the transport hooks at the bottom."""

    transport: str = "media"

    def __init__(self, call_id: str, *, inbox_limit: int = INBOX_LIMIT) -> None:
        self.call_id = call_id
        self.core = CallCore()
        self.log: Any = log.bind(call_id=call_id, transport=self.transport)
        self._inbox = Delivery(inbox_limit)
        self._audio_limit = max(1, inbox_limit - CONTROL_RESERVE)
        self._heard = 0
        self._close_code: int | None = None
        self._closed = False
        self._sidebands: set[Sideband] = set()
        loop = asyncio.get_running_loop()
        #: set when the session starts reading this call (it was admitted and counted in)
        self.started: asyncio.Future[None] = loop.create_future()
        self.ended = asyncio.Event()
        #: why the hub turned the session away before it started (limits), if it did
        self.refused: FatalSessionError | None = None
        self.audio_frames_in = 0
        self.audio_frames_dropped = 0

    # ------------------------------------------------------------------ ClientConnection

    @property
    def heard(self) -> int:
        return self._heard

    @property
    def close_code(self) -> int | None:
        return self._close_code

    async def receive(self) -> str | bytes:
        return await self._inbox.receive()

    def set_sink(self, sink: FrameSink | None) -> None:
        self._inbox.sink = sink
        if sink is not None and not self.started.done():
            self.started.set_result(None)

    @property
    def writable(self) -> bool:
        return not self._closed and self._caller_writable()

    def write_text(self, text: str) -> bool:
        if not self.writable:
            return False
        self._from_session(text)
        return True

    async def send_text(self, text: str) -> None:
        if self._closed:
            raise PeerGone(self._close_code)
        await self._wait_caller_writable()
        if self._closed:
            raise PeerGone(self._close_code)
        self._from_session(text)

    async def send_bytes(self, data: bytes) -> None:
        """Never used: media calls do not opt in to binary frames."""

    async def ping(self) -> None:
        """Liveness is the media itself: ``heard`` counts every frame the caller sends."""

    def abort(self) -> None:
        self.hang_up(PeerGone(None))

    async def close(self, code: int, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        self._close_code = code
        self._inbox.end(PeerGone(code, reason, clean=True), drop_queued=True)
        for sideband in list(self._sidebands):
            sideband.end(code, reason)
        with contextlib.suppress(Exception):
            await self._close_transport(code, reason)
        self.ended.set()
        self.log.info(
            "call.closed",
            code=int(code),
            audio_frames_in=self.audio_frames_in,
            audio_frames_dropped=self.audio_frames_dropped,
            cuts=self.core.cuts,
            own_errors=[e.get("code") for e in self.core.own_errors],
        )

    # ------------------------------------------------------------------ running

    async def run_session(self, hub: Any, req: Any, grant: Grant, slog: Any) -> EndSession:
        """Run this call's session through the hub; the call is attachable meanwhile.

        Raises:
            FatalSessionError: the hub refused the session (limits) before it started.
        """
        hub.register_call(self.call_id, self)
        try:
            end: EndSession = await hub.run(self, req, grant, slog)
            return end
        finally:
            hub.unregister_call(self.call_id)
            await self.close(CloseCode.NORMAL)

    def hang_up(self, gone: PeerGone) -> None:
        """The caller left (hang-up, ICE failure, stream stopped): the session ends."""
        if not self._closed:
            self._inbox.end(gone)

    async def attach(self, conn: ClientConnection, grant: Grant, slog: Any) -> None:
        """Serve a sideband WebSocket on this call until it leaves or the call ends.

        Raises:
            FatalSessionError: not a server key (3000), or too many sidebands (1013).
        """
        if grant.kind != "server_key":
            raise AuthError(
                "Attaching to a call (call_id) takes a server key, not an ephemeral key.",
                code="invalid_api_key",
            )
        if self._closed:
            raise FatalSessionError(
                "This call has ended.",
                code="call_not_found",
                close_code=CloseCode.BAD_REQUEST,
                error_type=INVALID_REQUEST,
                param="call_id",
            )
        if len(self._sidebands) >= MAX_SIDEBANDS:
            raise FatalSessionError(
                f"This call already has {MAX_SIDEBANDS} sideband connections.",
                code="voxgate_sideband_limit",
                close_code=CloseCode.TRY_AGAIN_LATER,
                error_type=SERVER_ERROR,
            )
        sideband = Sideband(conn, to_session=self._from_sideband, log=slog)
        self._sidebands.add(sideband)
        slog.info("sideband.attached", call_id=self.call_id, sidebands=len(self._sidebands))
        try:
            await sideband.run()
        finally:
            self._sidebands.discard(sideband)
            slog.info("sideband.detached", sent=sideband.sent, received=sideband.received)

    # ------------------------------------------------------------------ plumbing

    def from_caller(self, text: str) -> None:
        """A control event from the caller's event channel (synchronous)."""
        self._heard += 1
        self._do(self.core.from_caller(text))

    def caller_audio(self, append_text: str) -> None:
        """The caller's audio as an ``input_audio_buffer.append`` frame (synchronous)."""
        self._heard += 1
        self.audio_frames_in += 1
        if self._closed:
            return
        if len(self._inbox) >= self._audio_limit or not self._inbox.put_nowait(append_text):
            self.audio_frames_dropped += 1
            if self.audio_frames_dropped in (1, 100, 1000):
                self.log.warning("call.audio_dropped", dropped=self.audio_frames_dropped)

    def _from_sideband(self, frame: str | bytes) -> None:
        if isinstance(frame, str):
            self._do(self.core.from_caller(frame))
        else:
            self._to_session(frame)

    def _from_session(self, text: str) -> None:
        self._do(self.core.from_session(text))

    def _do(self, actions: tuple[CallAction, ...]) -> None:
        for action in actions:
            if isinstance(action, Forward):
                self._emit(action.text)
                for sideband in self._sidebands:
                    sideband.push(action.text)
            elif isinstance(action, Play):
                self._play(action)
            elif isinstance(action, AudioDone):
                self._audio_done(action.item_id)
            elif isinstance(action, StopPlayback):
                self.log.info(
                    "call.barge_in",
                    item_id=action.cut.item_id,
                    audio_end_ms=action.cut.audio_end_ms,
                )
                self._stop_playback(action.cut)
            elif isinstance(action, ToSession):
                self._to_session(action.text)

    def _to_session(self, frame: str | bytes) -> None:
        if self._closed or self._inbox.put_nowait(frame):
            return
        self.log.warning("call.inbox_overflow", queued=len(self._inbox))
        self.hang_up(PeerGone(CloseCode.POLICY, "caller events overflowed", clean=False))

    # ------------------------------------------------------------------ transport hooks

    def _caller_writable(self) -> bool:
        """Whether an event or audio for the caller can be taken now."""
        raise NotImplementedError

    async def _wait_caller_writable(self) -> None:
        """Wait until :meth:`_caller_writable` (raise PeerGone if the caller is gone)."""
        raise NotImplementedError

    def _emit(self, text: str) -> None:
        """Send one event on the caller's event channel (if it has one)."""
        raise NotImplementedError

    def _play(self, play: Play) -> None:
        raise NotImplementedError

    def _audio_done(self, item_id: str) -> None:
        """The item's audio is complete (a transport that resamples flushes it)."""

    def _stop_playback(self, cut: Cut) -> None:
        raise NotImplementedError

    async def _close_transport(self, code: int, reason: str) -> None:
        raise NotImplementedError
