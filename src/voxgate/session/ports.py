"""The session's two seams: what it needs from a client connection and from an upstream.

A session runner talks to its client through a :class:`ClientConnection` and to its backend
through an :class:`UpstreamConnection`; one adapter per transport implements them (aiohttp's
server WebSocket in :mod:`voxgate.transports.ws_adapter`, voxgate's own WebSocket client in
:mod:`voxgate.backends.ws_client`, the in-process local engine in
:mod:`voxgate.backends.local.connection`; WebRTC, phone and HTTP fallbacks are further adapters).
No transport type crosses this line: frames are ``str`` (a text frame, one JSON event) or
``bytes`` (a binary frame), and every way a connection can end is one :class:`PeerGone`.

Two ways in, one order. ``receive()`` is the general path. While the session is waiting in
``receive()`` with nothing queued, a connection may instead hand a frame to the *sink* the
session installed (:meth:`Connection.set_sink`), synchronously, from the transport's own
callback: the hot path of a relay, with no task switch per frame. The sink returns False for
anything it does not take whole, and the connection then queues that frame for ``receive()``;
once something is queued, nothing reaches the sink until the queue is empty and the session is
waiting again, so frames are always handled in arrival order.

Writes have the same two speeds: ``write_text`` sends now and never waits (False: the peer is
congested or gone, use ``send_text``), ``send_text`` waits for the peer's buffer to drain.
This module only declares; it does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

FrameSink = Callable[[str | bytes], bool]
"""Takes one data frame synchronously; returns False to have it queued for ``receive()``."""

EncodedFrameSink = Callable[[bytes, bytes], bool]
"""Takes one text frame still encoded as it arrived, and its payload (``frame[4:]``, which the
source has already cut to check it); returns False to have it decoded and go the ordinary way
(the :data:`FrameSink`, else ``receive()``). See :class:`EncodedTextSource`."""

#: An encoded text frame: ``0x81`` (FIN, text), ``126`` (16-bit length), the length, then the
#: payload, ASCII, from this offset: a WebSocket text frame of 126..65535 bytes as a server
#: sends it (unmasked), which is how an upstream's audio deltas arrive and how a client's
#: connection sends them on.
ENCODED_TEXT_PAYLOAD = 4


class PeerGone(Exception):
    """The connection is over: closed by the peer, by us, or lost.

    Args:
        code: the close code the peer sent (None: no close frame, the connection was lost).
        reason: the close reason the peer sent (never shown to a client unredacted).
        clean: True when a close frame was received (a deliberate close, not a loss).
    """

    def __init__(self, code: int | None = None, reason: str = "", *, clean: bool = False) -> None:
        super().__init__(f"peer gone (code={code}, clean={clean})")
        self.code = code
        self.reason = reason
        self.clean = clean


class Connection(Protocol):
    """What a session needs from any peer connection."""

    @property
    def heard(self) -> int:
        """Control frames (pings, pongs) received so far: proof of life besides data frames."""
        ...

    @property
    def close_code(self) -> int | None: ...

    async def receive(self) -> str | bytes:
        """The next data frame. Pings are answered and counted inside.

        Raises:
            PeerGone: the connection ended.
        """
        ...

    @property
    def writable(self) -> bool:
        """Whether :meth:`write_text` (and ``write_audio``) would send right now."""
        ...

    async def send_text(self, text: str) -> None:
        """Send one text frame, waiting while the peer's buffer is full.

        Raises:
            PeerGone: the connection ended.
        """
        ...

    def write_text(self, text: str) -> bool:
        """Send one text frame now if the peer is not congested; False: nothing was sent."""
        ...

    def set_sink(self, sink: FrameSink | None) -> None:
        """Deliver frames to ``sink`` synchronously while nothing is queued (None: stop)."""
        ...

    async def ping(self) -> None:
        """Send a ping (never raises: a dead peer is found by the heartbeat)."""
        ...

    async def close(self, code: int, reason: str = "") -> None:
        """Close with ``code``/``reason`` (never raises; idempotent)."""
        ...


class ClientConnection(Connection, Protocol):
    """A client-facing connection (the caller of the Realtime API)."""

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary frame (opted-in clients only). Raises :class:`PeerGone`."""
        ...

    def abort(self) -> None:
        """Drop the connection at once (a stalled or half-open socket); a blocked send fails."""
        ...


class UpstreamConnection(Connection, Protocol):
    """A connection to the backend (OpenAI over WebSocket, or the in-process local engine)."""

    @property
    def accepts_audio_bytes(self) -> bool:
        """Whether :meth:`write_audio` takes raw input audio (no base64 round trip)."""
        ...

    def write_audio(self, pcm: bytes) -> bool:
        """Append raw input audio now (only if ``accepts_audio_bytes``); False: congested."""
        ...


@runtime_checkable
class EncodedTextSource(Protocol):
    """An upstream that can hand over a text frame without decoding it (voxgate's WebSocket
    client): the relay's audio deltas then reach a client connection that writes encoded
    frames (:class:`EncodedTextWriter`) with no decode, no encode and no copy.

    The source offers only whole frames in the :data:`ENCODED_TEXT_PAYLOAD` layout whose
    payload is ASCII (so valid UTF-8), under the same rule as the sink: only while the session
    waits in ``receive()`` with nothing queued; a declined frame is decoded and goes on the
    ordinary way, in order.
    """

    def set_encoded_sink(self, sink: EncodedFrameSink | None) -> None: ...


@runtime_checkable
class EncodedTextWriter(Protocol):
    """A client connection that can send an encoded text frame as it is (see
    :class:`EncodedTextSource`)."""

    def write_encoded(self, frame: bytes) -> bool:
        """Send the frame now if the peer is not congested; False: nothing was sent."""
        ...


class ResumeIssuer(Protocol):
    """Issues one session's resume tokens: single use, every new token voids the last."""

    async def issue(self) -> str: ...


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """What to open upstream for one client session (never the client's credential)."""

    model: str | None
    intent: str | None
    session_id: str
    subject: str | None = None


class UpstreamConnectError(Exception):
    """Could not open the upstream (refused, DNS, TLS, HTTP status, timeout).

    ``detail`` is safe to show a client and to log (no URL credentials, no key).
    """

    def __init__(self, detail: str, *, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class Backend(Protocol):
    name: str
    #: a lost connection can be replaced by a fresh one and the session replayed on it
    reconnectable: bool

    async def connect(self, target: UpstreamTarget) -> UpstreamConnection:
        """Open one upstream for one client session.

        Raises:
            UpstreamConnectError: the upstream could not be reached or refused the upgrade.
        """
        ...

    async def aclose(self) -> None:
        """Release process-wide resources (connection pools, models, worker threads)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Safe-to-log description (no secrets)."""
        ...
