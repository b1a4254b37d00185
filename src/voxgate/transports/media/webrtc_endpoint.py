"""``POST /v1/realtime/calls``: a WebRTC call into a realtime session (realtime-protocol.md §2.3).

The body is the caller's SDP offer, either raw (``Content-Type: application/sdp``, what the
Agents SDK's WebRTC transport sends) or a multipart form with an ``sdp`` part and an optional
``session`` part (a session config, as in ``client_secrets``; what OpenAI's "unified" server
flow sends). The key is ``Authorization: Bearer`` (a server key or an ``ek_`` key). The reply is
**201** with the SDP answer and ``Location: /v1/realtime/calls/<call_id>``; the session then
runs through the hub like any WebSocket client's (same keys, limits, recovery, logs), with the
call attachable by a server WebSocket at ``/v1/realtime?call_id=<call_id>``.

A session config from a multipart ``session`` part is validated like ``client_secrets``' and
applied over the key's own (an ``ek_`` key's config first, the part's fields win).

Also: ``POST /v1/realtime/calls/<call_id>/hangup`` (server key) ends a call, as OpenAI's SIP
API does; ``OPTIONS`` answers CORS preflights (a page on another origin holding an ``ek_`` key
may call; no cookie is ever read, so ``*`` is safe).

Errors use OpenAI's HTTP error shape: 400 (bad SDP or session), 401 (key), 429 (limits).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import structlog
from aiohttp import BodyPartReader, web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from voxgate.auth.bearer import bearer_token
from voxgate.auth.grants import Grant
from voxgate.auth.requests import BODY_TIMEOUT_S, DEFAULT_BODY_TIMEOUT_S, error_response
from voxgate.protocol.close import CloseCode
from voxgate.protocol.errors import ClientEventError, FatalSessionError
from voxgate.protocol.ids import new_id
from voxgate.protocol.session_config import validate_session_config
from voxgate.session.ports import PeerGone
from voxgate.transports.hub import SessionHub, SessionRequest
from voxgate.transports.media.core import merge_config
from voxgate.transports.media.webrtc import InvalidOffer, WebRTCCall

log = structlog.get_logger("voxgate.session")

MAX_BODY_BYTES: Final = 256 * 1024
_CORS: Final = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Location",
}


@dataclass(frozen=True, slots=True)
class IceServer:
    """One STUN or TURN server for the gateway's side of every call."""

    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class WebRTCOptions:
    #: STUN/TURN servers for voxgate's candidates (none: host candidates only, fine on a
    #: public address or a LAN; see the README for NAT and TURN)
    ice_servers: tuple[IceServer, ...] = ()
    #: assistant audio held ahead of real time per call (its events wait beyond this)
    playout_limit_ms: float = 60_000.0
    #: how long admission may take before the answer (the session's slot, counted in)
    start_timeout_s: float = 10.0


class _BadRequest(Exception):
    def __init__(self, message: str, *, param: str | None, code: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


class WebRTCEndpoint:
    """The calls routes; owns the running calls' tasks (see the module docstring)."""

    def __init__(self, hub: SessionHub, options: WebRTCOptions) -> None:
        self.hub = hub
        self.options = options
        self._calls: dict[str, WebRTCCall] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    def add_routes(self, app: web.Application) -> None:
        for prefix in ("/v1/realtime/calls", "/realtime/calls"):
            app.router.add_post(prefix, self.create)
            app.router.add_route("OPTIONS", prefix, self.preflight)
            app.router.add_post(prefix + "/{call_id}/hangup", self.hangup)
            app.router.add_route("OPTIONS", prefix + "/{call_id}/hangup", self.preflight)
        app.on_cleanup.append(self._cleanup)

    # ------------------------------------------------------------------ routes

    async def preflight(self, request: web.Request) -> web.Response:
        asked = request.headers.get("Access-Control-Request-Headers", "")
        return web.Response(
            status=204,
            headers={
                **_CORS,
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": asked or "Authorization, Content-Type",
                "Access-Control-Max-Age": "600",
            },
        )

    async def create(self, request: web.Request) -> web.Response:
        slog = log.bind(backend=self.hub.backend.name, transport="webrtc")
        try:
            offer, session_part = await _read_offer(request)
            req, grant = await self._admit(request, session_part)
        except _BadRequest as exc:
            return _error(exc.status, exc.message, exc.param, exc.code)
        except FatalSessionError as exc:
            self.hub.metrics.sessions_refused.labels(reason=exc.code or "auth").inc()
            return _refusal(exc)
        call_id = new_id("rtc", 24)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self._ice_servers()))
        call = WebRTCCall(call_id, pc, playout_limit_ms=self.options.playout_limit_ms)
        try:
            answer = await call.answer(offer)
        except InvalidOffer as exc:
            await pc.close()
            return _error(400, str(exc), "sdp", "invalid_offer")
        slog = slog.bind(call_id=call_id)
        slog.info("session.connected", path=request.path, model=req.model, peer=request.remote)
        task = asyncio.get_running_loop().create_task(
            self._run(call, req, grant, slog), name=f"call {call_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        refused = await self._wait_started(call, task)
        if refused is not None:
            return _refusal(refused)
        return web.Response(
            status=201,
            text=answer,
            content_type="application/sdp",
            headers={**_CORS, "Location": f"/v1/realtime/calls/{call_id}"},
        )

    async def hangup(self, request: web.Request) -> web.Response:
        token = bearer_token(request.headers.get("Authorization"))
        try:
            grant = self.hub.auth.authenticate(token, now=self.hub.clock())
        except FatalSessionError as exc:
            return _refusal(exc)
        if grant.kind != "server_key":
            return _error(401, "Hanging up a call takes a server key.", None, "invalid_api_key")
        call = self._calls.get(request.match_info["call_id"])
        if call is None:
            return _error(404, "No such call is running here.", "call_id", "call_not_found")
        call.hang_up(PeerGone(CloseCode.NORMAL, "hung up by the server", clean=True))
        return web.Response(status=200, body=b"{}", content_type="application/json", headers=_CORS)

    # ------------------------------------------------------------------ helpers

    async def _admit(
        self, request: web.Request, session_part: dict[str, Any] | None
    ) -> tuple[SessionRequest, Grant]:
        asked = request.query.get("model") or (session_part or {}).get("model")
        req = SessionRequest(
            credential=bearer_token(request.headers.get("Authorization")),
            model=asked if isinstance(asked, str) and asked else None,
            intent=None,
            extensions=False,
            transport="webrtc",
        )
        # A call always has a model: the key's, the request's, else the gateway's default.
        default = self.hub.settings.default_model
        grant = await self.hub.admit(dataclasses.replace(req, model=req.model or default))
        if session_part is not None:
            merged = merge_config(grant.session or {}, session_part)
            grant = dataclasses.replace(grant, session=merged)
        if not req.model and not (grant.session or {}).get("model"):
            req = dataclasses.replace(req, model=default)
        return req, grant

    async def _run(self, call: WebRTCCall, req: SessionRequest, grant: Grant, slog: Any) -> None:
        self._calls[call.call_id] = call
        try:
            await call.run_session(self.hub, req, grant, slog)
        except FatalSessionError as exc:
            slog.info("session.refused", code=exc.code, close_code=exc.close_code)
            self.hub.metrics.sessions_refused.labels(reason=exc.code or "limit").inc()
            call.refused = exc
        finally:
            self._calls.pop(call.call_id, None)

    async def _wait_started(
        self, call: WebRTCCall, task: asyncio.Task[Any]
    ) -> FatalSessionError | None:
        """Wait until the session is counted in; the refusal if the hub turned it away."""
        done, _ = await asyncio.wait(
            {task, call.started},
            timeout=self.options.start_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if task in done and not call.started.done():
            return call.refused or FatalSessionError(
                "The call could not be started.", code="server_error"
            )
        if not done:
            call.hang_up(PeerGone(None))
            return FatalSessionError(
                "The call could not be started in time.",
                code="voxgate_start_timeout",
                close_code=CloseCode.TRY_AGAIN_LATER,
            )
        return None

    def _ice_servers(self) -> list[RTCIceServer]:
        # An explicit empty list: aiortc's default is Google's public STUN server.
        return [
            RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
            for s in self.options.ice_servers
        ]

    async def _cleanup(self, app: web.Application) -> None:
        for call in list(self._calls.values()):
            call.hang_up(PeerGone(CloseCode.GOING_AWAY, "server shutting down", clean=True))
        tasks = list(self._tasks)
        if tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.gather(*tasks, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()


async def _read_offer(request: web.Request) -> tuple[str, dict[str, Any] | None]:
    """The SDP offer and the optional ``session`` part, read within the body timeout."""
    timeout_s = request.app.get(BODY_TIMEOUT_S, DEFAULT_BODY_TIMEOUT_S)
    ctype = request.content_type
    try:
        async with asyncio.timeout(timeout_s):
            if ctype.startswith("multipart/"):
                return await _read_multipart(request)
            if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
                raise _BadRequest("The SDP offer is too large.", param="sdp", code="invalid_offer")
            raw = await request.content.read(MAX_BODY_BYTES + 1)
    except TimeoutError:
        raise _BadRequest(
            f"The request body was not received within {timeout_s:g} seconds.",
            param=None,
            code="request_timeout",
            status=408,
        ) from None
    return _sdp_text(raw), None


async def _read_multipart(request: web.Request) -> tuple[str, dict[str, Any] | None]:
    reader = await request.multipart()
    sdp: str | None = None
    session: dict[str, Any] | None = None
    total = 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        data = await part.read(decode=True)
        total += len(data)
        if total > MAX_BODY_BYTES:
            raise _BadRequest("The request body is too large.", param=None, code="invalid_offer")
        name = part.name
        if name == "sdp":
            sdp = _sdp_text(bytes(data))
        elif name == "session":
            session = _session_part(bytes(data))
    if sdp is None:
        raise _BadRequest(
            "Missing required parameter: 'sdp'.", param="sdp", code="missing_required_parameter"
        )
    return sdp, session


def _sdp_text(raw: bytes) -> str:
    if len(raw) > MAX_BODY_BYTES:
        raise _BadRequest("The SDP offer is too large.", param="sdp", code="invalid_offer")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _BadRequest("The SDP offer is not text.", param="sdp", code="invalid_offer") from None
    if not text.lstrip().startswith("v=0"):
        raise _BadRequest(
            "The body must be an SDP offer (application/sdp), or a multipart form with an "
            "'sdp' part.",
            param="sdp",
            code="invalid_offer",
        )
    return text


def _session_part(raw: bytes) -> dict[str, Any]:
    try:
        session = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _BadRequest(
            "We could not parse the JSON of the 'session' part.",
            param="session",
            code="invalid_json",
        ) from None
    if not isinstance(session, dict):
        raise _BadRequest(
            "The 'session' part must be a JSON object.", param="session", code="invalid_type"
        )
    session.setdefault("type", "realtime")
    try:
        validate_session_config(session)
    except ClientEventError as exc:
        raise _BadRequest(exc.message, param=exc.param, code=exc.code or "invalid_value") from None
    return session


def _error(status: int, message: str, param: str | None, code: str | None) -> web.Response:
    response = error_response(status, message, param=param, code=code)
    response.headers.update(_CORS)
    return response


def _refusal(exc: FatalSessionError) -> web.Response:
    if exc.close_code == CloseCode.AUTH:
        status = 401
    elif exc.close_code == CloseCode.TRY_AGAIN_LATER:
        status = 429
    elif exc.close_code == CloseCode.BAD_REQUEST:
        status = 400
    else:
        status = 500
    return _error(status, exc.message, exc.param, exc.code)
