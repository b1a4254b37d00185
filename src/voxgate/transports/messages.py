"""Proactive messages: find a user's live sessions and push something into them (issue 14).

HTTP, authenticated with a server key (``Authorization: Bearer <key>``):

* ``GET /v1/sessions?subject=user-42`` — the live sessions (of one subject, or all):
  ``{"object": "list", "data": [{"id", "subject", "node", "started_at", "resumable"}]}``.
* ``POST /v1/sessions/{id}/messages`` — ``{"text", "mode": "speak"|"context", "priority":
  "low"|"normal"|"high", "expires_in": seconds, "idempotency_key"}`` (or an
  ``Idempotency-Key`` header): 202 with the message record; 200 with the first record when
  the key was used before in that session.
* ``GET /v1/sessions/{id}/messages/{message_id}`` — the record: ``status`` ``queued`` →
  ``injecting`` → ``delivered``, or ``expired`` / ``dropped`` / ``failed`` with a ``reason``;
  ``?wait=S`` waits up to S seconds (at most 30) for a final status first.

The same from Python: ``app[MESSAGES]`` is a :class:`ProactiveMessages` (``sessions``,
``send``, ``get``, ``wait``). Where and when a message is injected is the session's
:class:`~voxgate.session.injector.Injector`'s to decide; this module only validates, finds the
session and keeps a bounded table of records. A session on another node is found through
:func:`locate`, the one place that knows about the owning node (issue 17 adds forwarding).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from voxgate.auth.bearer import bearer_token
from voxgate.auth.requests import RequestError, parse, read_body
from voxgate.auth.server_keys import ServerKeys
from voxgate.protocol.ids import new_id
from voxgate.session.injector import MessageRecord
from voxgate.session.runner import SessionRunner
from voxgate.store.base import SessionRecord
from voxgate.transports.hub import SessionHub
from voxgate.transports.routing import NodeGone, NodeRouter

MAX_TEXT_CHARS = 4096
MAX_WAIT_S = 30.0


class MessageRequest(BaseModel):
    """``POST /v1/sessions/{id}/messages``."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    mode: Literal["speak", "context"] = "speak"
    priority: Literal["low", "normal", "high"] = "normal"
    expires_in: float = Field(default=60.0, gt=0)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=256)


class SessionNotFound(LookupError):
    """No live session with this id (it ended, or never existed)."""


class SessionElsewhere(LookupError):
    """The session lives on another node of the deployment."""

    def __init__(self, node: str) -> None:
        super().__init__(node)
        self.node = node


async def locate(hub: SessionHub, session_id: str) -> SessionRunner | SessionRecord | None:
    """The session's runner on this node, its record when another node owns it, or None."""
    runner = hub.live(session_id)
    if runner is not None:
        return runner
    return await hub.store.session(session_id)


class ProactiveMessages:
    """The proactive API's core (HTTP routes and the Python API share it)."""

    def __init__(
        self,
        hub: SessionHub,
        *,
        max_expires_s: float = 3600.0,
        max_records: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.hub = hub
        #: issue 17: messages for a session on another node are forwarded to it
        self.router: NodeRouter | None = None
        self.max_expires_s = max_expires_s
        self._records: OrderedDict[str, MessageRecord] = OrderedDict()
        self._max_records = max_records
        self._clock = clock
        self._waiters: dict[str, asyncio.Event] = {}

    async def sessions(self, subject: str | None = None) -> list[dict[str, Any]]:
        """Live sessions of ``subject`` (all when None), oldest first."""
        return [
            {
                "object": "voxgate.session",
                "id": r.session_id,
                "subject": r.subject,
                "node": r.node,
                "started_at": r.started_at,
                "resumable": r.resumable,
            }
            for r in await self.hub.store.sessions(subject)
        ]

    async def send(
        self,
        session_id: str,
        text: str,
        *,
        mode: Literal["speak", "context"] = "speak",
        priority: Literal["low", "normal", "high"] = "normal",
        expires_in: float = 60.0,
        idempotency_key: str | None = None,
    ) -> MessageRecord:
        """Queue a message in a live session of this node; returns its record (the first
        one when ``idempotency_key`` was used before in that session).

        Raises:
            SessionNotFound: no such live session.
            SessionElsewhere: another node owns it.
            ValueError: ``expires_in`` over the limit, or an empty text.
        """
        record, _ = await self._send(
            session_id,
            text,
            mode=mode,
            priority=priority,
            expires_in=expires_in,
            idempotency_key=idempotency_key,
        )
        return record

    async def _send(
        self,
        session_id: str,
        text: str,
        *,
        mode: Literal["speak", "context"],
        priority: Literal["low", "normal", "high"],
        expires_in: float,
        idempotency_key: str | None,
    ) -> tuple[MessageRecord, bool]:
        if not text.strip():
            raise ValueError("text is empty")
        if not 0 < expires_in <= self.max_expires_s:
            raise ValueError(f"expires_in must be in (0, {self.max_expires_s:g}]")
        found = await locate(self.hub, session_id)
        if found is None:
            raise SessionNotFound(session_id)
        if isinstance(found, SessionRecord):
            raise SessionElsewhere(found.node)
        now = self._clock()
        record = MessageRecord(
            message_id=new_id("msg", 20),
            session_id=session_id,
            mode=mode,
            text=text.strip(),
            priority=priority,
            created_at=now,
            expires_at=now + expires_in,
            idempotency_key=idempotency_key,
            on_change=self._changed,
        )
        side = found.side
        if side is None:  # a session that takes no turns of voxgate's (transcription)
            record.move("dropped", "session_takes_no_messages")
            kept = record
        else:
            kept = side.submit(record)
        self._keep(kept)
        return kept, kept is record

    # ------------------------------------------------------------------ other nodes (issue 17)

    def use_router(self, router: NodeRouter) -> None:
        """Forward messages (and reads of their records) to the node that runs the session."""
        self.router = router
        router.handle("message.send", self._on_forwarded_send)
        router.handle("message.get", self._on_forwarded_get)

    async def _on_forwarded_send(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            record, fresh = await self._send(
                str(body["session_id"]),
                str(body["text"]),
                mode=body["mode"],
                priority=body["priority"],
                expires_in=float(body["expires_in"]),
                idempotency_key=body.get("idempotency_key"),
            )
        except SessionNotFound:
            return {"error": "session_not_found"}
        except SessionElsewhere:
            return {"error": "session_moving"}
        except (ValueError, KeyError) as exc:
            return {"error": "invalid_value", "message": str(exc)}
        return {"record": record.public(), "fresh": fresh}

    async def _on_forwarded_get(self, body: dict[str, Any]) -> dict[str, Any]:
        message_id = str(body.get("message_id"))
        wait_s = min(float(body.get("wait_s") or 0), MAX_WAIT_S)
        record = await self.wait(message_id, wait_s) if wait_s > 0 else self.get(message_id)
        return {"record": record.public() if record is not None else None}

    async def _forward(self, node: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """``kind`` on ``node``; ``{"error": "session_moving"}`` when it is gone."""
        if self.router is None:
            return {"error": "session_on_another_node"}
        try:
            return await self.router.call(node, kind, body, timeout_s=MAX_WAIT_S + 5.0)
        except (NodeGone, TimeoutError):
            return {"error": "session_moving"}

    def get(self, message_id: str) -> MessageRecord | None:
        return self._records.get(message_id)

    async def wait(self, message_id: str, timeout_s: float) -> MessageRecord | None:
        """The record once its status is final (delivered, expired, dropped, failed), or as it
        is after ``timeout_s``; None for an unknown id."""
        record = self._records.get(message_id)
        if record is None or record.final:
            return record
        event = self._waiters.setdefault(message_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await event.wait()
        return record

    def _changed(self, record: MessageRecord) -> None:
        if record.final:
            event = self._waiters.pop(record.message_id, None)
            if event is not None:
                event.set()

    def _keep(self, record: MessageRecord) -> None:
        self._records[record.message_id] = record
        self._records.move_to_end(record.message_id)
        while len(self._records) > self._max_records:
            self._records.popitem(last=False)

    # ------------------------------------------------------------------ HTTP

    def add_routes(self, app: web.Application, server_keys: ServerKeys) -> None:
        def authorised(request: web.Request) -> None:
            token = bearer_token(request.headers.get("Authorization"))
            if not server_keys.check(token):
                raise RequestError(
                    "Incorrect API key provided."
                    if token
                    else "Missing bearer authentication in header.",
                    param=None,
                    code="invalid_api_key",
                    status=401,
                )

        async def list_sessions(request: web.Request) -> web.Response:
            try:
                authorised(request)
            except RequestError as exc:
                return exc.response()
            subject = request.query.get("subject") or None
            return _json({"object": "list", "data": await self.sessions(subject)})

        async def post_message(request: web.Request) -> web.Response:
            session_id = request.match_info["session_id"]
            try:
                authorised(request)
                body = parse(MessageRequest, await read_body(request))
                if body.expires_in > self.max_expires_s:
                    raise RequestError(
                        f"Invalid 'expires_in': value above maximum value. Expected a value <= "
                        f"{self.max_expires_s:g}, but got {body.expires_in:g} instead.",
                        param="expires_in",
                        code="decimal_above_max_value",
                    )
                key = body.idempotency_key or request.headers.get("Idempotency-Key") or None
                if key is not None and len(key) > 256:
                    raise RequestError(
                        "Invalid 'Idempotency-Key': at most 256 characters.",
                        param="idempotency_key",
                        code="string_above_max_length",
                    )
                record, fresh = await self._send(
                    session_id,
                    body.text,
                    mode=body.mode,
                    priority=body.priority,
                    expires_in=body.expires_in,
                    idempotency_key=key,
                )
            except RequestError as exc:
                return exc.response()
            except SessionNotFound:
                return _not_found(session_id)
            except SessionElsewhere as exc:  # issue 17: the node that runs it takes it
                reply = await self._forward(
                    exc.node,
                    "message.send",
                    {
                        "session_id": session_id,
                        "text": body.text,
                        "mode": body.mode,
                        "priority": body.priority,
                        "expires_in": body.expires_in,
                        "idempotency_key": key,
                    },
                )
                return _forwarded(session_id, reply)
            except ValueError as exc:
                return RequestError(str(exc), param="text", code="invalid_value").response()
            return _json(record.public(), status=202 if fresh else 200)

        async def get_message(request: web.Request) -> web.Response:
            try:
                authorised(request)
            except RequestError as exc:
                return exc.response()
            message_id = request.match_info["message_id"]
            try:
                wait_s = min(float(request.query.get("wait", "0")), MAX_WAIT_S)
            except ValueError:
                wait_s = 0.0
            record = await self.wait(message_id, wait_s) if wait_s > 0 else self.get(message_id)
            if record is None and self.router is not None:  # kept by the session's node
                owner = await self.hub.store.session(request.match_info["session_id"])
                if owner is not None and owner.node not in ("", self.hub.node_id):
                    reply = await self._forward(
                        owner.node, "message.get", {"message_id": message_id, "wait_s": wait_s}
                    )
                    public = reply.get("record")
                    if (
                        isinstance(public, dict)
                        and public.get("session_id") == (request.match_info["session_id"])
                    ):
                        return _json(public)
            if record is None or record.session_id != request.match_info["session_id"]:
                return RequestError(
                    "No such message.", param=None, code="message_not_found", status=404
                ).response()
            return _json(record.public())

        app.router.add_get("/v1/sessions", list_sessions)
        app.router.add_post("/v1/sessions/{session_id}/messages", post_message)
        app.router.add_get("/v1/sessions/{session_id}/messages/{message_id}", get_message)


def _forwarded(session_id: str, reply: dict[str, Any]) -> web.Response:
    """The HTTP answer for a message another node took (or could not)."""
    record = reply.get("record")
    if isinstance(record, dict):
        return _json(record, status=202 if reply.get("fresh") else 200)
    error = reply.get("error")
    if error == "session_not_found":
        return _not_found(session_id)
    if error == "invalid_value":
        return RequestError(
            str(reply.get("message")), param="text", code="invalid_value"
        ).response()
    return RequestError(
        f"Session {session_id} is moving between nodes; try again in a moment.",
        param=None,
        code="session_moving",
        status=503,
    ).response()


def _not_found(session_id: str) -> web.Response:
    return RequestError(
        f"No live session {session_id!r} (it ended, or never existed).",
        param=None,
        code="session_not_found",
        status=404,
    ).response()


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
