"""``GET /v1/phone/twilio``: a Twilio Media Stream into a realtime session.

Point a ``<Connect><Stream url="wss://HOST/v1/phone/twilio">`` at it (README, "Phone calls").
Twilio cannot set headers and drops query strings, so the stream says who it is with TwiML
``<Parameter>``s, delivered in its ``start`` message:

* ``key`` (required): a server key, or an ``ek_`` key your TwiML webhook minted for this call;
* ``to`` (optional): the called number (``{{To}}`` in a TwiML Bin), which picks the line;
* ``model`` (optional).

Which config a call gets: an ``ek_`` key's own session config if it carries one (the key
binds, as everywhere), else the line's from ``VOXGATE_PHONE_LINES`` (the ``to`` number, else
``"*"``), else the defaults. Either way both formats are forced to ``audio/pcmu`` (what the
phone network carries; audio is passed through unconverted). A server WebSocket may attach to
the call with ``/v1/realtime?call_id=<CallSid>``.

A stream that is refused (bad key, limits, no ``start`` within ``START_TIMEOUT_S``) is closed
(Twilio ends the stream; the caller hears whatever the TwiML does next) and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any, Final

import orjson
import structlog
from aiohttp import web

from voxgate.auth.bearer import bearer_token
from voxgate.protocol.close import CloseCode
from voxgate.protocol.errors import ClientEventError, FatalSessionError
from voxgate.protocol.ids import new_id
from voxgate.protocol.session_config import validate_session_config
from voxgate.session.ports import PeerGone
from voxgate.transports.hub import SessionHub, SessionRequest
from voxgate.transports.media.core import merge_config
from voxgate.transports.media.phone import PhoneCall
from voxgate.transports.ws_adapter import AiohttpClientConnection, GatewayWebSocket

log = structlog.get_logger("voxgate.session")

START_TIMEOUT_S: Final = 5.0
MAX_FRAME_BYTES: Final = 64 * 1024
_PCMU: Final = {"type": "audio/pcmu"}
PHONE_AUDIO: Final[dict[str, Any]] = {
    "type": "realtime",
    "audio": {"input": {"format": _PCMU}, "output": {"format": _PCMU}},
}


class PhoneLines:
    """``VOXGATE_PHONE_LINES``: called number (or ``"*"``) -> session config, validated once."""

    def __init__(self, lines: Mapping[str, Mapping[str, Any]]) -> None:
        self._lines: dict[str, dict[str, Any]] = {}
        for number, config in lines.items():
            session = {"type": "realtime", **config}
            try:
                validate_session_config(session, param=f"phone_lines[{number!r}]")
            except ClientEventError as exc:
                raise ValueError(f"VOXGATE_PHONE_LINES: {exc.message}") from None
            self._lines[number] = session

    def config_for(self, to: str | None) -> dict[str, Any]:
        return dict(self._lines.get(to or "", self._lines.get("*", {})))


class PhoneEndpoint:
    """Serves Twilio Media Streams through the hub (see the module docstring)."""

    def __init__(self, hub: SessionHub, lines: PhoneLines) -> None:
        self.hub = hub
        self.lines = lines

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/phone/twilio", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = GatewayWebSocket(compress=False, max_msg_size=MAX_FRAME_BYTES, heartbeat=None)
        await ws.prepare(request)
        conn = AiohttpClientConnection(ws, request)
        slog = log.bind(backend=self.hub.backend.name, transport="phone", peer=request.remote)
        start = await _read_start(conn)
        if start is None:
            slog.info("session.refused", code="phone_no_start")
            await conn.close(CloseCode.POLICY, "expected a Twilio 'start' message")
            return ws
        params = start.get("customParameters") or {}
        params = params if isinstance(params, dict) else {}
        stream_sid = str(start.get("streamSid") or new_id("MZ"))
        call_sid = start.get("callSid")
        call_id = call_sid if isinstance(call_sid, str) and call_sid else new_id("rtc", 24)
        slog = slog.bind(call_id=call_id, stream_sid=stream_sid)
        try:
            req, grant = await self._admit(request, params)
            call = PhoneCall(call_id, conn, stream_sid)
            slog.info("session.connected", path=request.path, line=params.get("to"))
            await self._run(call, req, grant, slog)
        except FatalSessionError as exc:
            slog.info("session.refused", code=exc.code, close_code=exc.close_code)
            self.hub.metrics.sessions_refused.labels(reason=exc.code or "auth").inc()
            await conn.close(exc.close_code, exc.reason)
        return ws

    async def _admit(
        self, request: web.Request, params: Mapping[str, Any]
    ) -> tuple[SessionRequest, Any]:
        key = params.get("key")
        credential = key if isinstance(key, str) and key else None
        credential = credential or bearer_token(request.headers.get("Authorization"))
        model = params.get("model")
        req = SessionRequest(
            credential=credential,
            model=model if isinstance(model, str) and model else None,
            intent=None,
            extensions=False,
            transport="phone",
        )
        default = self.hub.settings.default_model
        grant = await self.hub.admit(dataclasses.replace(req, model=req.model or default))
        to = params.get("to")
        base = grant.session or self.lines.config_for(to if isinstance(to, str) else None)
        session = merge_config(base, PHONE_AUDIO)
        grant = dataclasses.replace(grant, session=session)
        if not req.model and not session.get("model"):
            req = dataclasses.replace(req, model=default)
        return req, grant

    async def _run(self, call: PhoneCall, req: SessionRequest, grant: Any, slog: Any) -> None:
        pump = asyncio.get_running_loop().create_task(call.pump(), name="phone_pump")
        try:
            await call.run_session(self.hub, req, grant, slog)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


async def _read_start(conn: AiohttpClientConnection) -> dict[str, Any] | None:
    """Skip ``connected``; the ``start`` message's body (with ``streamSid``), or None."""
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:
                frame = await conn.receive()
                try:
                    message = orjson.loads(frame)
                except orjson.JSONDecodeError:
                    return None
                if not isinstance(message, dict):
                    return None
                kind = message.get("event")
                if kind == "connected":
                    continue
                if kind != "start" or not isinstance(message.get("start"), dict):
                    return None
                start: dict[str, Any] = dict(message["start"])
                start.setdefault("streamSid", message.get("streamSid"))
                return start
    except (TimeoutError, PeerGone):
        return None
