"""The client-facing Realtime endpoint: ``GET /v1/realtime`` and ``GET /realtime``.

Like the real server, the upgrade always succeeds (101) and auth, model and shape are checked
right after it: a failure is an ``error`` event plus an immediate close with the real server's
code (3000 auth, 4000 model/shape; realtime-protocol.md §1.1, §7). The selected subprotocol is
``voxgate.v1`` or ``realtime``; a key-bearing subprotocol is never selected, echoed or logged.

This module is only the aiohttp adapter: it upgrades, wraps the socket in an
:class:`~voxgate.transports.ws_adapter.AiohttpClientConnection`, and hands it to the
:class:`~voxgate.transports.hub.SessionHub` (new sessions) or to
:mod:`~voxgate.transports.resume_gate` (a ``voxgate.v1`` client taking its session back).
"""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from aiohttp import web

from voxgate.protocol.beta import BETA_SUBPROTOCOL
from voxgate.protocol.close import CloseCode
from voxgate.protocol.errors import INVALID_REQUEST, AuthError, FatalSessionError
from voxgate.protocol.extensions import REALTIME_SUBPROTOCOL, SUBPROTOCOL
from voxgate.session.ports import ClientConnection, PeerGone
from voxgate.transports.beta_adapter import BetaClientConnection
from voxgate.transports.hub import SessionHub, SessionRequest
from voxgate.transports.negotiate import ConnectRequest, negotiate, offered_subprotocols
from voxgate.transports.resume_gate import ResumeGate, read_resume_request, resume_session
from voxgate.transports.ws_adapter import AiohttpClientConnection, GatewayWebSocket

log = structlog.get_logger("voxgate.session")


class RealtimeEndpoint:
    """Upgrades realtime WebSockets and runs each session through the hub."""

    def __init__(self, hub: SessionHub) -> None:
        self.hub = hub
        s = hub.settings
        self._gate = ResumeGate(
            max_pending=s.resume_max_pending, max_per_address=s.resume_max_pending_per_address
        )

    # drain and shutdown are the hub's; kept here for the app and the tests that use them
    @property
    def active_sessions(self) -> int:
        return self.hub.active_sessions

    def end_detached(self) -> int:
        return self.hub.end_detached()

    def stop_all(self, cause: str = "server_shutdown") -> None:
        self.hub.stop_all(cause)

    async def wait_idle(self, timeout_s: float) -> bool:
        return await self.hub.wait_idle(timeout_s)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        offered = offered_subprotocols(request.headers.get("Sec-WebSocket-Protocol"))
        req = negotiate(request.query, request.headers, offered)
        s = self.hub.settings
        # A beta client (§9) is served through a translating wrapper when beta is enabled; the
        # hub then sees a GA client without extensions (beta and voxgate.v1 do not combine, so
        # voxgate.v1 is never selected for it).
        beta = req.beta_header and getattr(s, "beta_clients", True)
        selected = req.selected_subprotocol
        if beta and selected == SUBPROTOCOL:
            selected = REALTIME_SUBPROTOCOL if REALTIME_SUBPROTOCOL in offered else None
        if beta and selected is None and BETA_SUBPROTOCOL in offered:
            selected = BETA_SUBPROTOCOL  # a beta browser client that offered no "realtime"
        ws = GatewayWebSocket(
            protocols=[selected] if selected else (),
            compress=False,
            max_msg_size=s.max_frame_bytes,
            heartbeat=None,  # the session clock's heartbeat costs nothing per frame
            autoping=False,
        )
        await ws.prepare(request)
        conn: ClientConnection = AiohttpClientConnection(ws, request)
        if beta:
            conn = BetaClientConnection(conn)
        if req.resume and not beta:
            await self._resume(conn, request, req)
            return ws
        slog = log.bind(backend=self.hub.backend.name)
        slog.info(
            "session.connected",
            path=request.path,
            model=req.model,
            intent=req.intent,
            extensions=req.extensions and not beta,
            beta=req.beta_header,
            peer=request.remote,
        )
        # The beta SDK always puts a model in the URL; a beta ?intent=transcription session
        # is a transcription session all the same (§9), so the model goes.
        model = None if beta and req.intent == "transcription" else req.model
        session_req = SessionRequest(
            credential=req.credential,
            model=model,
            intent=req.intent,
            extensions=req.extensions and not beta,
            call_id=req.call_id,
            beta_header=req.beta_header and not beta,
            transport="websocket-beta" if beta else "websocket",
        )
        try:
            grant = await self.hub.admit(session_req)
            await self.hub.run(conn, session_req, grant, slog)
        except FatalSessionError as exc:
            await self._refuse(conn, exc, slog)
        return ws

    async def _resume(
        self, conn: ClientConnection, request: web.Request, req: ConnectRequest
    ) -> None:
        slog = log.bind(conn="resume")
        s = self.hub.settings
        got = await read_resume_request(conn, self._gate, request.remote or "?", s.resume_wait_s)
        if isinstance(got, str):
            await self._refuse_resume(conn, slog, got)
            return
        token, received = got
        why = await resume_session(self.hub, conn, token, received, req.credential)
        if why is not None:
            await self._refuse_resume(conn, slog, why)
            return
        self.hub.metrics.resumes.labels(outcome="resumed").inc()

    async def _refuse_resume(self, conn: ClientConnection, slog: Any, why: str) -> None:
        self.hub.metrics.resumes.labels(outcome=why).inc()
        await self._refuse(
            conn,
            FatalSessionError(
                "This session cannot be resumed (it ended, the token was already used or is "
                "not valid, or events it missed are gone). Start a new session.",
                code="voxgate_resume_refused",
                close_code=CloseCode.BAD_REQUEST,
                error_type=INVALID_REQUEST,
            ),
            slog.bind(refused_because=why),
        )

    async def _refuse(self, conn: ClientConnection, exc: FatalSessionError, slog: Any) -> None:
        """The real server's refusal: the ``error`` event, then the close frame (§7)."""
        slog.info("session.refused", code=exc.code, close_code=exc.close_code)
        self.hub.metrics.sessions_refused.labels(reason=exc.code or "auth").inc()
        try:  # noqa: SIM105
            await conn.send_text(orjson.dumps(exc.to_event()).decode())
        except PeerGone:
            pass  # the client is already gone
        await conn.close(exc.close_code, exc.reason)


__all__ = ["AuthError", "GatewayWebSocket", "RealtimeEndpoint"]
