"""Node-to-node calls over the store's per-node channels (issue 17): reach the node that owns a
session, whichever node an API call landed on.

A :class:`NodeRouter` listens on its node's channel (:meth:`Store.subscribe`) and runs the
handler registered for each message kind; :meth:`NodeRouter.call` sends a request to another
node and waits for its reply. Kinds in use: ``handoff`` (give a session up to the node its
client resumed on: :mod:`voxgate.transports.handoff`), ``stop`` (end a session: the admin API),
and whatever issue 14's proactive messages register (``router.handle("message", …)`` on every
node, ``router.call(record.node, "message", body)`` where the API call lands).

Wire form: one JSON object per message, ``{"k": kind, "id": request id, "from": node, "b":
body}``; a reply is ``{"k": "reply", "id": …, "b": body}``. Delivery is at most once (Redis
pub/sub), so :meth:`call` publishes again while no reply has come, and handlers must be
idempotent. A ``0`` from publish means nobody listens on that node's channel: the node is gone
(a killed process's connection is closed by the kernel at once), and :meth:`call` says so by
returning None instead of waiting. Bounds: at most ``max_inflight`` handlers run at once
(beyond it a request is answered ``{"error": "busy"}``); replies wait in a dict per call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog

from voxgate.protocol.ids import new_id
from voxgate.store.base import Store

log = structlog.get_logger("voxgate.routing")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
#: Publish again after this long without a reply (pub/sub may drop a message).
RETRY_S = 0.5


class NodeGone(LookupError):
    """The node does not listen on its channel (it died or shut down)."""


class NodeRouter:
    """See the module docstring."""

    def __init__(self, store: Store, node: str, *, max_inflight: int = 256) -> None:
        self.store = store
        self.node = node
        self.max_inflight = max_inflight
        self._handlers: dict[str, Handler] = {}
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False

    def handle(self, kind: str, handler: Handler) -> None:
        """Run ``handler(body)`` for every ``kind`` message to this node; its dict is the reply."""
        if kind == "reply":
            raise ValueError("'reply' is the router's own kind")
        self._handlers[kind] = handler

    async def start(self) -> None:
        if not self._started:
            self._started = True
            await self.store.subscribe(self.node, self._on_message)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()

    async def call(
        self, node: str, kind: str, body: dict[str, Any], *, timeout_s: float
    ) -> dict[str, Any]:
        """``node``'s reply to ``kind``/``body`` (this node's own handler runs directly).

        Raises:
            NodeGone: ``node`` is not listening (dead or gone).
            TimeoutError: it listens but did not reply within ``timeout_s``.
            LookupError: no handler for ``kind`` on this node (a local call).
        """
        if node == self.node:
            handler = self._handlers.get(kind)
            if handler is None:
                raise LookupError(kind)
            return await handler(body)
        loop = asyncio.get_running_loop()
        request_id = new_id("rq", 12)
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._waiting[request_id] = future
        message = orjson.dumps({"k": kind, "id": request_id, "from": self.node, "b": body})
        deadline = loop.time() + timeout_s
        try:
            while True:
                if await self.store.publish(node, message) == 0:
                    raise NodeGone(node)
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError(kind)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(RETRY_S, left)):
                        return await asyncio.shield(future)
        finally:
            self._waiting.pop(request_id, None)

    def _on_message(self, data: bytes) -> None:
        try:
            msg = orjson.loads(data)
            kind, request_id, body = msg["k"], str(msg["id"]), msg["b"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("routing.bad_message", size=len(data))
            return
        if kind == "reply":
            future = self._waiting.get(request_id)
            if future is not None and not future.done():
                future.set_result(body if isinstance(body, dict) else {})
            return
        sender = msg.get("from")
        if not isinstance(sender, str):
            return
        if len(self._tasks) >= self.max_inflight:
            self._spawn(self._reply(sender, request_id, {"error": "busy"}))
            return
        handler = self._handlers.get(kind)
        if handler is None:
            self._spawn(self._reply(sender, request_id, {"error": "unknown_kind"}))
            return
        self._spawn(self._serve(handler, sender, request_id, body))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, handler: Handler, sender: str, request_id: str, body: Any) -> None:
        try:
            reply = await handler(body if isinstance(body, dict) else {})
        except Exception as exc:  # a handler bug must not take the channel down
            log.error("routing.handler_failed", error=repr(exc))
            reply = {"error": "handler_failed"}
        await self._reply(sender, request_id, reply)

    async def _reply(self, sender: str, request_id: str, body: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):  # the caller publishes again if this is lost
            await self.store.publish(
                sender, orjson.dumps({"k": "reply", "id": request_id, "b": body})
            )
