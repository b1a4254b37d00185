"""The client-facing Realtime endpoint: ``GET /v1/realtime`` and ``GET /realtime``.

Like the real server, the upgrade always succeeds (101) and auth, model and shape are checked
right after it: a failure is an ``error`` event plus an immediate close with the real server's
code (3000 auth, 4000 model/shape; realtime-protocol.md §1.1, §7). The selected subprotocol is
``voxgate.v1`` or ``realtime``; a key-bearing subprotocol is never selected, echoed or logged.

A connection offering ``voxgate.v1`` + ``voxgate.resume`` takes back a live session instead of
starting one (issue #7): its first frame is ``voxgate.session.resume {resume_token,
received_events}``; a key is optional (the token is the credential, so it works after the
``ek_`` key expired), but a key of another subject is refused. Refusals are
``voxgate_resume_refused`` + close 4000; the client then starts a fresh session.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from aiohttp import web

from voxgate.auth import resume as resume_tokens
from voxgate.auth.grants import Authenticator, Grant
from voxgate.auth.resume import ResumeState
from voxgate.backends.base import Backend, UpstreamTarget
from voxgate.observability.metrics import Metrics
from voxgate.protocol.close import CloseCode
from voxgate.protocol.errors import INVALID_REQUEST, AuthError, FatalSessionError
from voxgate.protocol.extensions import ResumeRequestError, parse_resume_request
from voxgate.protocol.ids import new_id
from voxgate.session.limits import SessionLimits
from voxgate.session.machine import SessionMachine
from voxgate.session.mirror import Mirror
from voxgate.session.reconnect import ReconnectPolicy
from voxgate.session.recovery import Recovery
from voxgate.session.runner import ClientLink, RunnerConfig, SessionRunner
from voxgate.transports.negotiate import ConnectRequest, negotiate, offered_subprotocols

log = structlog.get_logger("voxgate.session")
#: Unauthenticated connections allowed to wait for their resume request at once.
_MAX_PENDING_RESUMES = 256


class GatewayWebSocket(web.WebSocketResponse):
    """aiohttp's server WebSocket, telling the client *why* before an oversized-frame close.

    aiohttp closes with 1009 on its own when a frame passes ``max_msg_size``; this adds the
    OpenAI-shaped ``error`` event and a close reason, so the client is not left guessing.
    """

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        if code == CloseCode.MESSAGE_TOO_BIG and not message and not self.closed:
            limit = self._max_msg_size
            event = {
                "type": "error",
                "event_id": new_id("event"),
                "error": {
                    "type": INVALID_REQUEST,
                    "code": "voxgate_frame_too_large",
                    "message": f"A WebSocket frame exceeded the maximum of {limit} bytes.",
                    "param": None,
                    "event_id": None,
                },
            }
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.send_str(orjson.dumps(event).decode())
            message = b"invalid_request_error.voxgate_frame_too_large"
        return await super().close(code=code, message=message, drain=drain)


class RealtimeEndpoint:
    """Accepts realtime sessions and runs each with a :class:`SessionRunner`."""

    def __init__(
        self,
        *,
        backend: Backend,
        authenticator: Authenticator,
        metrics: Metrics,
        settings: Any,
        known_secrets: tuple[str, ...],
        secret: bytes = b"",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._backend = backend
        self._auth = authenticator
        self._metrics = metrics
        self._settings = settings
        self._known = known_secrets
        self._clock = clock
        self._limits = SessionLimits(settings.max_sessions, settings.max_sessions_per_subject)
        self._secret = secret
        #: live resumable sessions by id (bounded by the session limit)
        self._resumable: dict[str, tuple[SessionRunner, ResumeState]] = {}
        self._runners: set[SessionRunner] = set()
        self._resuming = 0  # resume handshakes waiting for their first frame
        reconnectable = bool(getattr(backend, "reconnectable", False))
        self._policy = ReconnectPolicy(
            attempts=settings.reconnect_attempts,
            base_delay_s=settings.reconnect_base_delay_s,
            max_delay_s=settings.reconnect_max_delay_s,
            connect_timeout_s=settings.reconnect_connect_timeout_s,
        )
        #: recovery (mirror, reconnect, recycle) for backends that can be reconnected
        self._recover = reconnectable and self._policy.attempts > 0
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def active_sessions(self) -> int:
        return self._active

    def end_detached(self) -> int:
        """End every session whose client is away (draining: nobody will resume here)."""
        ended = 0
        for runner, _ in list(self._resumable.values()):
            if not runner.attached:
                runner.stop("draining")
                ended += 1
        return ended

    def stop_all(self, cause: str = "server_shutdown") -> None:
        """Ask every live session to end now (1001 going away: clients may reconnect)."""
        for runner in list(self._runners):
            runner.stop(cause)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no session is running (drain); False if ``timeout_s`` passed first."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def handle(self, request: web.Request) -> web.StreamResponse:
        offered = offered_subprotocols(request.headers.get("Sec-WebSocket-Protocol"))
        req = negotiate(request.query, request.headers, offered)
        s = self._settings
        ws = GatewayWebSocket(
            protocols=[req.selected_subprotocol] if req.selected_subprotocol else (),
            compress=False,
            max_msg_size=s.max_frame_bytes,
            heartbeat=None,  # the session runner's heartbeat costs nothing per frame
            autoping=False,
        )
        await ws.prepare(request)
        if req.resume:
            return await self._handle_resume(ws, request, req)
        session_id = new_id("vg", 16)
        slog = log.bind(session_id=session_id, backend=self._backend.name)
        slog.info(
            "session.connected",
            path=request.path,
            model=req.model,
            intent=req.intent,
            extensions=req.extensions,
            peer=request.remote,
        )
        try:
            grant = self._admit(req)
        except FatalSessionError as exc:
            return await self._refuse(ws, exc, slog)
        target = self._target(req, grant, session_id)
        slog = slog.bind(auth=grant.kind, subject_set=grant.subject is not None)
        resume = (
            ResumeState(self._secret, session_id=session_id, subject=grant.subject)
            if req.extensions and s.resume_grace_s > 0 and self._secret
            else None
        )
        machine = SessionMachine(
            embedded_session=grant.session,
            extensions=req.extensions,
            prebuffer_limit_bytes=s.prebuffer_bytes,
            coalesce_window_s=s.error_coalesce_window_s,
            known_secrets=self._known,
            recovery=self._recovery(),
        )
        runner = SessionRunner(
            client=ClientLink(ws, _aborter(request)),
            backend=self._backend,
            machine=machine,
            target=target,
            config=self._runner_config(grant),
            log=slog,
            resume=resume,
        )
        try:
            self._limits.acquire(grant.subject)
        except FatalSessionError as exc:
            return await self._refuse(ws, exc, slog)
        self._metrics.sessions_active.inc()
        self._active += 1
        self._idle.clear()
        if resume is not None:
            self._resumable[session_id] = (runner, resume)
        self._runners.add(runner)
        try:
            end = await runner.run()
        finally:
            self._runners.discard(runner)
            self._resumable.pop(session_id, None)
            self._limits.release(grant.subject)
            self._active -= 1
            if self._active == 0:
                self._idle.set()
            self._metrics.sessions_active.dec()
            self._metrics.record_session(runner.stats)
        self._metrics.sessions_total.labels(cause=end.cause.split(":")[0]).inc()
        return ws

    def _recovery(self) -> Recovery | None:
        if not self._recover:
            return None
        s = self._settings
        return Recovery(
            Mirror(
                items_limit_bytes=s.mirror_items_bytes,
                audio_limit_bytes=s.mirror_audio_bytes,
                turn_audio_limit_bytes=s.mirror_turn_audio_bytes,
            )
        )

    def _runner_config(self, grant: Grant) -> RunnerConfig:
        s = self._settings
        reconnect = self._recover
        return RunnerConfig(
            ready_timeout_s=s.ready_timeout_s,
            max_session_s=grant.max_session_s,
            ping_interval_s=s.ping_interval_s,
            client_send_timeout_s=s.client_send_timeout_s,
            reconnect=self._policy if reconnect else None,
            recycle_after_s=(s.upstream_max_session_s or None) if reconnect else None,
            resume_grace_s=s.resume_grace_s,
            replay_bytes=s.replay_bytes,
            client_events_per_s=s.client_max_events_per_s,
            client_events_burst=s.client_events_burst,
            client_audio_multiple=s.client_max_audio_realtime,
            client_audio_burst_s=s.client_audio_burst_s,
        )

    async def _handle_resume(
        self, ws: web.WebSocketResponse, request: web.Request, req: ConnectRequest
    ) -> web.WebSocketResponse:
        """Take back a live session: verify the token, replay what the client missed."""
        slog = log.bind(conn="resume")
        if self._resuming >= _MAX_PENDING_RESUMES:
            return await self._refuse_resume(ws, slog, "too_many_pending")
        self._resuming += 1
        try:
            return await self._resume_checked(ws, request, req, slog)
        finally:
            self._resuming -= 1

    async def _resume_checked(
        self, ws: web.WebSocketResponse, request: web.Request, req: ConnectRequest, slog: Any
    ) -> web.WebSocketResponse:
        try:
            msg = await ws.receive(timeout=self._settings.resume_wait_s)
            token, received = parse_resume_request(msg.data if msg.data is not None else b"")
        except (TimeoutError, ResumeRequestError, TypeError):
            return await self._refuse_resume(ws, slog, "bad_request")
        try:
            claims = resume_tokens.verify(self._secret, token)
        except resume_tokens.ResumeTokenError as exc:
            return await self._refuse_resume(ws, slog, exc.reason)
        slog = log.bind(session_id=claims.session_id, conn="resume")
        entry = self._resumable.get(claims.session_id)
        if entry is None:
            return await self._refuse_resume(ws, slog, "no_session")
        runner, state = entry
        presented: str | None = None
        if req.credential:
            try:
                presented = self._auth.authenticate(req.credential, now=self._clock()).subject
            except AuthError:
                return await self._refuse_resume(ws, slog, "bad_key")
            if presented is None and state.subject is not None:
                presented = ""  # a server key names no subject: it is not this user's
        why = state.accepts(claims, presented_subject=presented)
        if why is not None:
            return await self._refuse_resume(ws, slog, why)
        link = ClientLink(ws, _aborter(request))
        why = await runner.resume(link, received)
        if why is not None:
            return await self._refuse_resume(ws, slog, why)
        self._metrics.resumes.labels(outcome="resumed").inc()
        await link.done.wait()
        return ws

    async def _refuse_resume(
        self, ws: web.WebSocketResponse, slog: Any, why: str
    ) -> web.WebSocketResponse:
        self._metrics.resumes.labels(outcome=why).inc()
        return await self._refuse(
            ws,
            FatalSessionError(
                "This session cannot be resumed (it ended, the token was already used or is "
                "not valid, or events it missed are gone). Start a new session.",
                code="voxgate_resume_refused",
                close_code=CloseCode.BAD_REQUEST,
                error_type=INVALID_REQUEST,
            ),
            slog.bind(refused_because=why),
        )

    async def _refuse(
        self, ws: web.WebSocketResponse, exc: FatalSessionError, slog: Any
    ) -> web.WebSocketResponse:
        """The real server's refusal: the ``error`` event, then the close frame (§7)."""
        slog.info("session.refused", code=exc.code, close_code=exc.close_code)
        self._metrics.sessions_refused.labels(reason=exc.code or "auth").inc()
        await ws.send_str(orjson.dumps(exc.to_event()).decode())
        await ws.close(code=exc.close_code, message=exc.reason.encode())
        return ws

    def _admit(self, req: ConnectRequest) -> Grant:
        if req.beta_header:
            raise FatalSessionError(
                "The beta Realtime API shape is disabled; remove the 'OpenAI-Beta: realtime=v1' "
                "header and use the GA events.",
                code="beta_api_shape_disabled",
                close_code=CloseCode.BAD_REQUEST,
                error_type=INVALID_REQUEST,
            )
        grant = self._auth.authenticate(req.credential, now=self._clock())
        if not (req.model or req.intent == "transcription" or req.call_id or grant.session):
            raise FatalSessionError(
                "You must provide a model parameter (e.g. ?model=gpt-realtime), or "
                "?intent=transcription.",
                code="missing_model",
                close_code=CloseCode.BAD_REQUEST,
                error_type=INVALID_REQUEST,
            )
        if req.call_id:
            raise FatalSessionError(
                "Attaching to WebRTC/SIP calls (call_id) is not supported by this gateway.",
                code="invalid_value",
                close_code=CloseCode.BAD_REQUEST,
                error_type=INVALID_REQUEST,
                param="call_id",
            )
        return grant

    def _target(self, req: ConnectRequest, grant: Grant, session_id: str) -> UpstreamTarget:
        embedded = grant.session or {}
        intent = req.intent
        model = req.model
        if embedded.get("type") == "transcription":
            intent, model = "transcription", None
        elif not model and intent != "transcription":
            model = embedded.get("model") or self._settings.default_model
        return UpstreamTarget(
            model=model, intent=intent, session_id=session_id, subject=grant.subject
        )


def _aborter(request: web.Request) -> Callable[[], None] | None:
    """How to drop a client's TCP connection at once (a stalled or half-open socket)."""
    transport = request.transport
    return transport.abort if transport is not None else None


__all__ = ["AuthError", "GatewayWebSocket", "RealtimeEndpoint"]
