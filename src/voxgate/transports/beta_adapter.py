"""A beta client's connection, as the GA session sees it (realtime-protocol.md §9).

:class:`BetaClientConnection` wraps any :class:`~voxgate.session.ports.ClientConnection` and
translates with one :class:`~voxgate.protocol.beta.BetaTranslator`: client frames to GA in
:meth:`receive` (and on the sink), server frames to beta in :meth:`write_text` /
:meth:`send_text`. The session, its machine, limits and redaction see a GA client; the upstream
speaks GA; only this wrapper knows the client is beta.

Hot path: the session's sink is offered only plain ``input_audio_buffer.append`` frames (the
same text in both shapes); anything else is queued for :meth:`receive`, which translates it,
so order is kept. A server audio delta is renamed at its head without parsing
(:meth:`~voxgate.protocol.beta.BetaTranslator.server_to_beta`).

``write_text`` never waits, so a GA frame that becomes two beta frames (``session.created`` +
``conversation.created``) is refused there and goes through ``send_text``; a GA frame beta
clients never saw (``conversation.item.done``) is taken and dropped. Beta clients get no
``voxgate.v1`` extensions (no resume): the hub admits them without.
"""

from __future__ import annotations

from voxgate.protocol.beta import BetaTranslator
from voxgate.session.ports import ClientConnection, FrameSink, PeerGone

_APPEND_HEADS = ('{"type":"input_audio_buffer.append"', '{"type": "input_audio_buffer.append"')


class BetaClientConnection:
    """See the module docstring."""

    def __init__(self, inner: ClientConnection, translator: BetaTranslator | None = None) -> None:
        self.inner = inner
        self.translator = translator or BetaTranslator()
        #: GA frames refused by ``write_text`` because they became several beta frames
        self.split_frames = 0
        self._held: tuple[str, list[str]] | None = None
        self._sink_for: FrameSink | None = None
        self._wrapped: FrameSink | None = None

    # ------------------------------------------------------------------ passthrough

    @property
    def heard(self) -> int:
        return self.inner.heard

    @property
    def close_code(self) -> int | None:
        return self.inner.close_code

    @property
    def writable(self) -> bool:
        return self.inner.writable

    async def ping(self) -> None:
        await self.inner.ping()

    async def close(self, code: int, reason: str = "") -> None:
        await self.inner.close(code, reason)

    def abort(self) -> None:
        self.inner.abort()

    async def send_bytes(self, data: bytes) -> None:
        raise PeerGone(None)  # beta clients never opted in to binary frames

    # ------------------------------------------------------------------ client → GA

    def set_sink(self, sink: FrameSink | None) -> None:
        if sink is None:
            self.inner.set_sink(None)
            return
        if self._sink_for is not sink:  # the session sets the same sink before every receive

            def appends_only(frame: str | bytes) -> bool:
                return type(frame) is str and frame.startswith(_APPEND_HEADS) and sink(frame)

            self._sink_for, self._wrapped = sink, appends_only
        self.inner.set_sink(self._wrapped)

    async def receive(self) -> str | bytes:
        frame = await self.inner.receive()
        if type(frame) is str:
            return self.translator.client_to_ga(frame)
        return frame

    # ------------------------------------------------------------------ GA → beta

    def write_text(self, text: str) -> bool:
        frames = self.translator.server_to_beta(text)
        if not frames:
            return True
        if len(frames) == 1 and self.inner.write_text(frames[0]):
            return True
        if len(frames) > 1:
            self.split_frames += 1
        # refused: the session sends the same text with send_text next; translate it once
        self._held = (text, frames)
        return False

    async def send_text(self, text: str) -> None:
        held, self._held = self._held, None
        frames = held[1] if held is not None and held[0] is text else None
        if frames is None:
            frames = self.translator.server_to_beta(text)
        for frame in frames:
            await self.inner.send_text(frame)
