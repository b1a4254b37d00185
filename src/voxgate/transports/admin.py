"""Admin actions on live sessions, whichever node runs them (issue 17).

``DELETE /v1/sessions/{id}`` (server key): end a session now (close 1000, cause
``stopped_by_operator``). The API call may land on any node; the session's record in the store
names its owner and the request goes there through the :class:`~voxgate.transports.routing.
NodeRouter` (``stop``). Listing (``GET /v1/sessions``) is issue 14's route in
:mod:`voxgate.transports.messages`: it reads the shared registry, so it sees every node.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from voxgate.auth.bearer import bearer_token
from voxgate.auth.requests import RequestError
from voxgate.auth.server_keys import ServerKeys
from voxgate.store.base import RELEASED
from voxgate.transports.hub import SessionHub
from voxgate.transports.routing import NodeGone, NodeRouter

#: How long the owning node may take to confirm.
STOP_TIMEOUT_S = 5.0


class SessionAdmin:
    """The ``stop`` action on every node, and the HTTP route that reaches it."""

    def __init__(self, hub: SessionHub, router: NodeRouter) -> None:
        self.hub = hub
        self.router = router
        router.handle("stop", self._on_stop)

    async def _on_stop(self, body: dict[str, Any]) -> dict[str, Any]:
        runner = self.hub.live(str(body.get("session_id")))
        if runner is None:
            return {"stopped": False}
        runner.stop("stopped_by_operator", close_code=1000)
        return {"stopped": True}

    async def stop(self, session_id: str) -> tuple[bool, str | None]:
        """End ``session_id`` wherever it runs: (stopped, the node that ran it)."""
        record = await self.hub.store.session(session_id)
        node = record.node if record is not None else self.hub.node_id
        if node == RELEASED:
            return False, None
        try:
            reply = await self.router.call(
                node, "stop", {"session_id": session_id}, timeout_s=STOP_TIMEOUT_S
            )
        except (NodeGone, TimeoutError):
            return False, node
        return bool(reply.get("stopped")), node

    def add_routes(self, app: web.Application, server_keys: ServerKeys) -> None:
        async def delete_session(request: web.Request) -> web.Response:
            token = bearer_token(request.headers.get("Authorization"))
            if not server_keys.check(token):
                return RequestError(
                    "Incorrect API key provided." if token else "Missing bearer authentication.",
                    param=None,
                    code="invalid_api_key",
                    status=401,
                ).response()
            session_id = request.match_info["session_id"]
            stopped, node = await self.stop(session_id)
            if not stopped:
                return RequestError(
                    f"No live session {session_id!r} (it ended, or never existed).",
                    param=None,
                    code="session_not_found",
                    status=404,
                ).response()
            body = {"id": session_id, "object": "voxgate.session", "stopped": True, "node": node}
            return web.Response(
                body=orjson.dumps(body),
                content_type="application/json",
                headers={"Cache-Control": "no-store"},
            )

        app.router.add_delete("/v1/sessions/{session_id}", delete_session)
