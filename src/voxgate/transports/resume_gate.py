"""Resume handshakes: taking a live session back, and not letting anyone starve it (#7, #12.3).

A connection offering ``voxgate.v1`` + ``voxgate.resume`` takes back a live session instead of
starting one: its first frame is ``voxgate.session.resume {resume_token, received_events}``; a
key is optional (the token is the credential, so it works after the ``ek_`` key expired), but a
key of another subject is refused. Refusals are ``voxgate_resume_refused`` + close 4000; the
client then starts a fresh session.

Until that first frame arrives a handshake is unauthenticated, so it is held on a short leash:
a first-frame deadline (``resume_wait_s``), at most ``max_per_address`` pending from one
address and ``max_pending`` in all. At either bound a new handshake evicts the *oldest* pending
one (of that address, or of all) instead of being refused: a genuine client sends its resume
request within milliseconds of the upgrade, so a crowd of silent sockets, even from the
client's own address (a NAT, a shared office), never holds the slot a valid token needs; it
gets one, at the price of the longest-silent stranger.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

from voxgate.auth import resume as resume_tokens
from voxgate.protocol.errors import AuthError
from voxgate.protocol.extensions import ResumeRequestError, parse_resume_request
from voxgate.session.ports import ClientConnection, PeerGone
from voxgate.session.runner_types import ClientLink
from voxgate.transports.hub import SessionHub


class ResumeGate:
    """The bookkeeping of pending (unauthenticated) resume handshakes. No I/O."""

    def __init__(self, *, max_pending: int, max_per_address: int) -> None:
        self.max_pending = max_pending
        self.max_per_address = max_per_address
        self._pending: OrderedDict[int, tuple[str, Callable[[], None]]] = OrderedDict()
        self._per_address: dict[str, int] = {}
        self._next = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._pending)

    def pending_from(self, address: str) -> int:
        return self._per_address.get(address, 0)

    def enter(self, address: str, evict: Callable[[], None]) -> int:
        """Admit a handshake from ``address``, evicting the oldest one at a bound.

        ``evict`` ends the handshake at once (called when a newer one needs its place).
        Returns a ticket for :meth:`leave`.
        """
        if self._per_address.get(address, 0) >= self.max_per_address:
            oldest = next(t for t, (a, _) in self._pending.items() if a == address)
            self._evict(oldest)
        while len(self._pending) >= self.max_pending:
            self._evict(next(iter(self._pending)))
        self._next += 1
        ticket = self._next
        self._pending[ticket] = (address, evict)
        self._per_address[address] = self._per_address.get(address, 0) + 1
        return ticket

    def leave(self, ticket: int) -> None:
        """The handshake is over (it sent its request, failed, or was evicted)."""
        entry = self._pending.pop(ticket, None)
        if entry is not None:
            self._drop_address(entry[0])

    def _evict(self, ticket: int) -> None:
        address, evict = self._pending.pop(ticket)
        self._drop_address(address)
        self.evicted += 1
        evict()

    def _drop_address(self, address: str) -> None:
        count = self._per_address.get(address, 0) - 1
        if count > 0:
            self._per_address[address] = count
        else:
            self._per_address.pop(address, None)


async def read_resume_request(
    conn: ClientConnection, gate: ResumeGate, address: str, first_frame_s: float
) -> tuple[str, int] | str:
    """Wait (briefly) for the first frame; ``(token, received)`` or a refusal reason."""
    ticket = gate.enter(address, conn.abort)
    try:
        async with asyncio.timeout(first_frame_s):
            frame = await conn.receive()
        return parse_resume_request(frame)
    except (TimeoutError, PeerGone, ResumeRequestError):
        return "bad_request"
    finally:
        gate.leave(ticket)


async def resume_session(
    hub: SessionHub, conn: ClientConnection, token: str, received: int, credential: str | None
) -> str | None:
    """Check ``token`` and attach ``conn`` to its session; None once attached, else why not.

    On success it returns when the resumed connection leaves the session (it detached, or the
    session ended).
    """
    try:
        claims = resume_tokens.verify(hub.secret, token)
    except resume_tokens.ResumeTokenError as exc:
        return exc.reason
    state = hub.resume_state(claims.session_id)
    runner = hub.live(claims.session_id)
    if state is None or runner is None:
        if hub.handoff is not None:  # another node runs it, or ran it (issue 17)
            return await hub.handoff.adopt(conn, claims, received, credential)
        return "no_session"
    presented: str | None = None
    if credential:
        try:
            presented = hub.auth.authenticate(credential, now=hub.clock()).subject
        except AuthError:
            return "bad_key"
        if presented is None and state.subject is not None:
            presented = ""  # a server key names no subject: it is not this user's
    why = state.check(claims, presented_subject=presented)
    if why is not None:
        return why
    if not runner.can_resume(received):
        return "events_lost"
    why = await state.accepts(claims, presented_subject=presented)
    if why is not None:
        return why
    link = ClientLink(conn)
    why = await runner.resume(link, received, await state.consume())
    if why is not None:
        return why
    await link.done.wait()
    return None
