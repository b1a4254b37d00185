"""The HTTP/SSE fallback: a Realtime session for networks that block WebSockets.

Routes (every one answers errors in OpenAI's HTTP error shape)::

    POST   /v1/realtime/sse?model=…&intent=…   create; Authorization: Bearer <server key|ek_>
                                               → 201 {id, token, events, send, audio, …}
    GET    /v1/realtime/sse/{id}/events         the server events, text/event-stream;
                                               Last-Event-ID: N resumes after event N
    POST   /v1/realtime/sse/{id}/send           client events: a JSON array (or one object)
    POST   /v1/realtime/sse/{id}/audio          raw input audio (the session's input format)
    DELETE /v1/realtime/sse/{id}                end the session (1000)

The last four take ``Authorization: Bearer <token>``, the ``vgs_`` token the create call
returned (it stays valid for the session's life, unlike an ``ek_`` key). POSTs may carry
``X-Voxgate-Batch: <n>`` (1, 2, 3 … per session, one counter for both): a batch number seen
before is acknowledged and not applied again, so a client may retry a POST whose answer it
lost without doubling anything.

Each open event stream is one :class:`~voxgate.transports.sse_leg.SseLeg` attached to the
session through the :class:`~voxgate.transports.hub.SessionHub` like any transport: the first
stream starts the session (``hub.run``); a later one (a dropped stream, ``Last-Event-ID: N``)
resumes it through the same replay log and checks as a ``voxgate.v1`` WebSocket
(:func:`~voxgate.transports.resume_gate.resume_session`, with the resume token the session
keeps here). Client frames that arrive while no stream is attached wait (bounded) for the next.

A session lives on one node: a deployment routes ``/v1/realtime/sse/{id}/…`` by ``id``
(sticky), or runs one node per SSE client population.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import structlog
from aiohttp import web

from voxgate.auth.bearer import bearer_token
from voxgate.auth.requests import RequestError, read_body
from voxgate.protocol.close import CloseCode
from voxgate.protocol.errors import FatalSessionError
from voxgate.protocol.ids import new_id
from voxgate.session.ports import PeerGone
from voxgate.transports.hub import SessionHub, SessionRequest
from voxgate.transports.resume_gate import resume_session
from voxgate.transports.sse_leg import SseLeg

log = structlog.get_logger("voxgate.session")

PREFIX: Final = "/v1/realtime/sse"
TOKEN_PREFIX: Final = "vgs_"  # noqa: S105 (a prefix, not a secret)
#: A created session must open its event stream within this long.
START_WITHIN_S: Final = 30.0
#: Largest POST body (events or audio).
MAX_BODY_BYTES: Final = 4 * 1024 * 1024
#: Ended sessions remembered so a late request hears why (not 404).
ENDED_KEPT: Final = 1024
_STATUS = {3000: 401, 4000: 400, 1013: 503}


@dataclass(eq=False)
class SseSession:
    """One HTTP-fallback session (the transport's side; the session itself is the hub's)."""

    id: str
    token: str
    request: SessionRequest
    grant: Any
    created_at: float
    leg: SseLeg | None = None
    started: bool = False
    started_streaming: bool = False
    pending: deque[str | bytes] = field(default_factory=deque)
    last_batch: int = 0
    resume_token: str | None = None
    session_id: str | None = None  # the hub's id, once the session said it
    ended: tuple[int, str] | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    expiry: asyncio.TimerHandle | None = None

    def on_control(self, text: str) -> None:
        """``voxgate.session.resumable`` / ``.resumed``: keep the newest token on the server."""
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            return
        token = event.get("resume_token")
        if isinstance(token, str):
            self.resume_token = token
        sid = event.get("session_id")
        if isinstance(sid, str):
            self.session_id = sid


class SseEndpoint:
    """The routes above, over one hub (see the module docstring)."""

    def __init__(self, hub: SessionHub) -> None:
        self.hub = hub
        s = hub.settings
        self.heartbeat_s = float(getattr(s, "sse_heartbeat_s", 15.0))
        self.pending_frames = int(getattr(s, "sse_pending_frames", 512))
        self.max_sessions = int(s.max_sessions)
        self._sessions: dict[str, SseSession] = {}
        self._ended: OrderedDict[str, tuple[int, str]] = OrderedDict()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(PREFIX, self.create)
        app.router.add_get(PREFIX + "/{id}/events", self.events)
        app.router.add_post(PREFIX + "/{id}/send", self.send)
        app.router.add_post(PREFIX + "/{id}/audio", self.audio)
        app.router.add_delete(PREFIX + "/{id}", self.delete)

    # ------------------------------------------------------------------ create

    async def create(self, request: web.Request) -> web.Response:
        query = request.query
        req = SessionRequest(
            credential=bearer_token(request.headers.get("Authorization")),
            model=query.get("model") or None,
            intent=query.get("intent") or None,
            extensions=True,  # voxgate's own transport: gateway events, binary audio, resume
            transport="sse",
        )
        try:
            grant = await self.hub.admit(req)
        except FatalSessionError as exc:
            self.hub.metrics.sessions_refused.labels(reason=exc.code or "auth").inc()
            return _refusal(exc)
        if len(self._sessions) >= self.max_sessions:
            return _error(503, "Too many HTTP sessions are open. Try again later.", "voxgate_busy")
        sse_id = new_id("sse", 24)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        session = SseSession(sse_id, token, req, grant, time.monotonic())
        self._sessions[sse_id] = session
        session.expiry = asyncio.get_running_loop().call_later(
            START_WITHIN_S, self._expire_unstarted, session
        )
        base = f"{PREFIX}/{sse_id}"
        body = {
            "object": "voxgate.sse_session",
            "id": sse_id,
            "token": token,
            "events": base + "/events",
            "send": base + "/send",
            "audio": base + "/audio",
            "heartbeat_s": self.heartbeat_s,
            "start_within_s": START_WITHIN_S,
        }
        log.info("sse.created", sse_id=sse_id, model=req.model, intent=req.intent)
        return _json(body, status=201)

    def _expire_unstarted(self, session: SseSession) -> None:
        if not session.started and self._sessions.get(session.id) is session:
            self._end(session, (CloseCode.GOING_AWAY, "voxgate_sse_not_started"))

    # ------------------------------------------------------------------ the event stream

    async def events(self, request: web.Request) -> web.StreamResponse:
        session = self._find(request)
        if isinstance(session, web.Response):
            return session
        last = request.headers.get("Last-Event-ID", "").strip()
        if last and not last.isdigit():
            return _error(400, "Last-Event-ID must be an event id of this stream.", "invalid_value")
        leg = SseLeg(
            first_seq=int(last or 0) + 1,
            limit_frames=2 * self.pending_frames,  # its own bound + the backlog it inherits
            on_control=session.on_control,
        )
        self._attach(session, leg)
        if not session.started:
            session.started = True
            if session.expiry is not None:
                session.expiry.cancel()
            attach = self._spawn(session, self._run(session, leg))
        else:
            attach = self._spawn(session, self._resume(session, leg, int(last or 0)))
        started = asyncio.ensure_future(leg.started.wait())
        try:
            await asyncio.wait({started, attach}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            started.cancel()
        if not leg.started.is_set():
            return self._not_attached(session, leg, attach)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # nginx: pass events on as they come
            }
        )
        session.started_streaming = True
        await response.prepare(request)
        await self._stream(response, leg)
        return response

    def _attach(self, session: SseSession, leg: SseLeg) -> None:
        """``leg`` is the session's stream from now on; what the old one had not handed to
        the session, and what waited meanwhile, goes to the new one first, in order."""
        old, session.leg = session.leg, leg
        carried: list[str | bytes] = old.drop() if old is not None else []
        carried.extend(session.pending)
        session.pending.clear()
        for frame in carried:  # fits: the leg holds two backlogs (see ``events``)
            leg.inbound.put_nowait(frame)

    async def _run(self, session: SseSession, leg: SseLeg) -> str | None:
        slog = log.bind(backend=self.hub.backend.name, transport="sse", sse_id=session.id)
        try:
            end = await self.hub.run(leg, session.request, session.grant, slog)
        except FatalSessionError as exc:
            self.hub.metrics.sessions_refused.labels(reason=exc.code or "limit").inc()
            self._end(session, (exc.close_code, exc.reason))
            return exc.code or "refused"
        self._end(session, (int(end.close_code), end.reason))
        return None

    async def _resume(self, session: SseSession, leg: SseLeg, received: int) -> str | None:
        token = session.resume_token
        why = "no_session" if token is None else None
        if token is not None:
            why = await resume_session(self.hub, leg, token, received, None)
        outcome = "resumed" if why is None else why
        self.hub.metrics.resumes.labels(outcome=outcome).inc()
        if why is not None:
            log.info("sse.resume_refused", sse_id=session.id, why=why, last_event_id=received)
            if session.leg is leg:
                session.leg = None
                session.pending.extend(leg.drop())
        return why

    def _not_attached(
        self, session: SseSession, leg: SseLeg, attach: asyncio.Task[str | None]
    ) -> web.Response:
        why = attach.result() if not attach.cancelled() else "cancelled"
        if session.ended is not None and not session.started_streaming:
            code, reason = session.ended
            code_name = reason.rsplit(".", 1)[-1] or "voxgate_session_ended"
            return _error(
                _STATUS.get(code, 410), f"The session ended ({reason or code}).", code_name
            )
        return _error(
            409,
            "This stream cannot be resumed (the session ended, or events after "
            "Last-Event-ID are gone). Start a new session.",
            "voxgate_resume_refused" if why else "voxgate_session_ended",
        )

    async def _stream(self, response: web.StreamResponse, leg: SseLeg) -> None:
        try:
            while (chunk := await leg.next_chunk(self.heartbeat_s)) is not None:
                await response.write(chunk.encode())
                leg.flushed(chunk)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            leg.drop()
            raise
        finally:
            if leg.gone is None and leg.close_code is None:
                leg.drop()  # the stream ended without the session ending: detach it

    # ------------------------------------------------------------------ client → session

    async def send(self, request: web.Request) -> web.Response:
        session = self._find(request)
        if isinstance(session, web.Response):
            return session
        try:
            body = await read_body(request)
        except RequestError as exc:
            return exc.response()
        events = body if isinstance(body, list) else [body]
        frames: list[str | bytes] = []
        for event in events:
            if not isinstance(event, dict):
                return _error(400, "Each event must be a JSON object.", "invalid_event")
            frames.append(orjson.dumps(event).decode())
        return await self._deliver(request, session, frames)

    async def audio(self, request: web.Request) -> web.Response:
        session = self._find(request)
        if isinstance(session, web.Response):
            return session
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return _error(413, f"At most {MAX_BODY_BYTES} bytes of audio per request.", None)
        data = await request.read()
        return await self._deliver(request, session, [data] if data else [])

    async def _deliver(
        self, request: web.Request, session: SseSession, frames: list[str | bytes]
    ) -> web.Response:
        batch = request.headers.get("X-Voxgate-Batch", "").strip()
        if batch:
            if not batch.isdigit():
                return _error(400, "X-Voxgate-Batch must be a positive integer.", "invalid_value")
            if int(batch) <= session.last_batch:
                return _json({"accepted": 0, "duplicate": True}, status=202)
            session.last_batch = int(batch)
        for frame in frames:
            while True:
                leg = session.leg
                if leg is None or leg.gone is not None:
                    if len(session.pending) >= self.pending_frames:
                        return _error(
                            503,
                            "No event stream is attached and the backlog is full.",
                            "voxgate_backlog",
                        )
                    session.pending.append(frame)
                    break
                await leg.inbound.put(frame)  # waits while the session is behind
                # put() returns at once when it queued the frame, so a leg that ended meanwhile
                # means it was not taken: hand it to the next stream (or the backlog)
                if leg.gone is None:
                    break
            if session.ended is not None:
                return _error(410, "The session ended.", "voxgate_session_ended")
        return _json({"accepted": len(frames)}, status=202)

    async def delete(self, request: web.Request) -> web.Response:
        session = self._find(request)
        if isinstance(session, web.Response):
            return session
        if session.leg is not None and session.leg.gone is None:
            session.leg.end_from_client()
        elif session.session_id is not None and (runner := self.hub.live(session.session_id)):
            runner.stop("client_closed", CloseCode.NORMAL)
        else:
            self._end(session, (CloseCode.NORMAL, ""))
        return _json({"deleted": True}, status=200)

    # ------------------------------------------------------------------ bookkeeping

    def _find(self, request: web.Request) -> SseSession | web.Response:
        sse_id = request.match_info["id"]
        session = self._sessions.get(sse_id)
        token = bearer_token(request.headers.get("Authorization")) or ""
        if session is None:
            ended = self._ended.get(sse_id)
            if ended is not None:
                return _error(410, "The session ended.", "voxgate_session_ended")
            return _error(404, "No such session.", "voxgate_no_session")
        if not hmac.compare_digest(token.encode(), session.token.encode()):
            return _error(401, "This session's token is required.", "invalid_api_key")
        return session

    def _spawn(self, session: SseSession, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        session.tasks.add(task)
        task.add_done_callback(session.tasks.discard)
        return task

    def _end(self, session: SseSession, ended: tuple[int, str]) -> None:
        session.ended = ended
        if self._sessions.pop(session.id, None) is not None:
            self._ended[session.id] = ended
            while len(self._ended) > ENDED_KEPT:
                self._ended.popitem(last=False)
        if session.expiry is not None:
            session.expiry.cancel()
        log.info("sse.ended", sse_id=session.id, close_code=int(ended[0]))

    def stop_all(self) -> None:
        for session in list(self._sessions.values()):
            if not session.started:
                self._end(session, (CloseCode.GOING_AWAY, "server_shutdown"))


def _json(body: dict[str, Any], *, status: int) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _error(status: int, message: str, code: str | None) -> web.Response:
    return RequestError(message, param=None, code=code, status=status).response()


def _refusal(exc: FatalSessionError) -> web.Response:
    return _error(_STATUS.get(exc.close_code, 400), exc.message, exc.code)


__all__ = ["PREFIX", "PeerGone", "SseEndpoint", "SseSession"]
