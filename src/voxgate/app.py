"""The aiohttp application factory: it only wires modules together.

Routes: the realtime WebSocket (``/v1/realtime``, ``/realtime``), its HTTP/SSE fallback
(``/v1/realtime/sse…``), key minting
(``/v1/realtime/client_secrets``, ``/v1/realtime/sessions``), WebRTC calls
(``/v1/realtime/calls``), phone media streams (``/v1/phone/twilio``), proactive messages
(``/v1/sessions…``), ``/healthz``, ``/readyz``, ``/metrics``, and the console at ``/`` when
present. Server tools (Python modules, MCP servers, the knowledge tool) are collected into one
registry here; every session gets a server side built from it (:func:`server_side_factory`).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from voxgate.auth import client_keys
from voxgate.auth import routes as key_routes
from voxgate.auth.grants import Authenticator, Grant
from voxgate.auth.requests import BODY_TIMEOUT_S
from voxgate.auth.server_keys import ServerKeys
from voxgate.backends.base import Backend
from voxgate.config import Settings
from voxgate.observability.health import DETAILS, BackendHealth
from voxgate.observability.metrics import Metrics
from voxgate.observability.session_trace import Observability, TimedBackend, build_tracer
from voxgate.protocol.ids import new_id
from voxgate.protocol.redaction import redact
from voxgate.session.ports import UpstreamTarget
from voxgate.session.server_side import ServerSide, ServerSideLimits
from voxgate.store.base import Store
from voxgate.store.memory import MemoryStore
from voxgate.tools.knowledge import KnowledgeLibrary
from voxgate.tools.knowledge_tool import knowledge_tool
from voxgate.tools.mcp import McpServers, parse_servers
from voxgate.tools.registry import ToolConfigError, ToolRegistry, load_lifespans, load_modules
from voxgate.transports.admin import SessionAdmin
from voxgate.transports.forwarded import forwarded_middleware, parse_networks
from voxgate.transports.handoff import Handoff
from voxgate.transports.hub import ServerSideFactory, SessionHub
from voxgate.transports.media.phone_endpoint import PhoneEndpoint, PhoneLines
from voxgate.transports.media.webrtc_endpoint import IceServer, WebRTCEndpoint, WebRTCOptions
from voxgate.transports.messages import ProactiveMessages
from voxgate.transports.routing import NodeRouter
from voxgate.transports.sse import SseEndpoint
from voxgate.transports.websocket import RealtimeEndpoint

_log = structlog.get_logger("voxgate.app")
METRICS = web.AppKey("voxgate.metrics", Metrics)
BACKEND = web.AppKey("voxgate.backend", Backend)
DRAINING = web.AppKey("voxgate.draining", list[bool])
ENDPOINT = web.AppKey("voxgate.endpoint", RealtimeEndpoint)
SSE = web.AppKey("voxgate.sse", SseEndpoint)
HEALTH = web.AppKey("voxgate.health", BackendHealth)
HUB = web.AppKey("voxgate.hub", SessionHub)
STORE = web.AppKey("voxgate.store", Store)
#: Called with the drain timeout (s) when draining starts (SIGTERM, Ctrl+C): the place to tell
#: opted-in (``voxgate.v1``) clients to reconnect elsewhere. ``serve`` calls them once.
DRAIN_HOOKS = web.AppKey("voxgate.drain_hooks", list[Callable[[float], None]])
#: Node-to-node calls (issue 17): ``app[ROUTER].handle(kind, handler)`` on every node,
#: ``app[ROUTER].call(record.node, kind, body, timeout_s=…)`` to reach a session's owner.
ROUTER = web.AppKey("voxgate.router", NodeRouter)
TOOLS = web.AppKey("voxgate.tools", ToolRegistry)
MESSAGES = web.AppKey("voxgate.messages", ProactiveMessages)
MCP = web.AppKey("voxgate.mcp", McpServers)


def build_backend(
    settings: Settings,
    knowledge: KnowledgeLibrary | None = None,
    vocabulary: list[str] | None = None,
) -> Backend:
    if settings.backend == "openai":
        from voxgate.backends.openai import OpenAIBackend

        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        openai = OpenAIBackend(
            url=settings.openai_url,
            api_key=key,
            max_frame_bytes=settings.max_upstream_frame_bytes,
        )
        openai.probe_model = settings.default_model
        return openai
    from voxgate.backends.local.backend import LocalBackend  # type: ignore[import-not-found,unused-ignore]

    backend: Backend = LocalBackend.from_settings(
        settings, knowledge=knowledge, vocabulary=vocabulary or ()
    )
    return backend


def _knowledge_tool_wanted(settings: Settings) -> bool:
    if settings.knowledge_tool != "auto":
        return settings.knowledge_tool == "on"
    return settings.knowledge_path is not None or settings.backend == "local"


def build_knowledge(settings: Settings) -> KnowledgeLibrary | None:
    """The notes the knowledge tool (and the local engine) answer from, if they are wanted."""
    if not _knowledge_tool_wanted(settings) and settings.backend != "local":
        return None
    if settings.knowledge_path:
        return KnowledgeLibrary(
            settings.knowledge_path, check_interval_s=settings.knowledge_reload_s
        )
    return KnowledgeLibrary.example()


def build_tools(settings: Settings, knowledge: KnowledgeLibrary | None) -> ToolRegistry:
    """Python tools (``VOXGATE_TOOLS``) and the knowledge tool; MCP tools join at startup.

    Raises:
        ToolConfigError: a module cannot be loaded, or two tools share a name.
    """
    registry = ToolRegistry(default_timeout_s=settings.tool_timeout_s)
    if settings.tools:
        for found in load_modules(settings.tools):
            registry.add(found)
    if knowledge is not None and _knowledge_tool_wanted(settings):
        registry.add(knowledge_tool(knowledge))
    return registry


def server_side_factory(
    registry: ToolRegistry, settings: Settings, known: tuple[str, ...]
) -> ServerSideFactory:
    """Builds each session's server side: the tools its key allows, its proactive queue."""
    limits = ServerSideLimits(
        concurrency=settings.tool_concurrency, max_pending=settings.tool_max_pending
    )

    def make(
        grant: Grant, target: UpstreamTarget, extensions: bool, slog: Any
    ) -> ServerSide | None:
        if target.intent == "transcription" and not target.model:
            return None  # no responses: nothing to call a tool or to speak
        tools = registry.select(grant.tools)
        return ServerSide(
            session_id=target.session_id,
            subject=grant.subject,
            metadata=grant.metadata,
            invoker=tools if len(tools) else None,
            extensions=extensions,
            log=slog,
            limits=limits,
            known_secrets=known,
        )

    return make


def session_ttl_s(settings: Settings) -> float:
    """How long a session's shared keys outlive their last refresh: long enough for a client
    whose node died to come back within its grace period (issue 17)."""
    return max(settings.resume_grace_s, settings.node_heartbeat_s * 3) + 30.0


def build_store(settings: Settings, node_id: str = "node") -> Store:
    """The shared-state store: in memory unless ``VOXGATE_REDIS_URL`` is set."""
    if settings.redis_url:
        from voxgate.store.redis import RedisStore

        return RedisStore(
            settings.redis_url,
            node=node_id,
            prefix=settings.redis_prefix,
            session_ttl_s=session_ttl_s(settings),
            node_ttl_s=settings.node_heartbeat_s * 3,
        )
    return MemoryStore()


def known_secrets(settings: Settings, signing_secret: bytes) -> tuple[str, ...]:
    """Exact secret strings to mask in logs and error messages."""
    values = list(settings.api_key_values())
    if settings.openai_api_key:
        values.append(settings.openai_api_key.get_secret_value())
    values.append(signing_secret.hex())
    if settings.secret:
        values.append(settings.secret.get_secret_value())
    return tuple(v for v in values if len(v) >= 6)


def webrtc_options(settings: Settings) -> WebRTCOptions:
    """WebRTC calls' STUN/TURN servers and playout bound, from the settings."""
    password = settings.webrtc_turn_password
    servers = tuple(
        IceServer(
            urls=(url,),
            username=settings.webrtc_turn_username if url.startswith("turn") else None,
            credential=password.get_secret_value() if password and url.startswith("turn") else None,
        )
        for url in settings.webrtc_ice_servers
    )
    return WebRTCOptions(ice_servers=servers, playout_limit_ms=settings.webrtc_playout_max_s * 1000)


def create_app(settings: Settings, backend: Backend | None = None) -> web.Application:
    """Build the application. ``backend`` overrides the one named in ``settings`` (tests)."""
    secret = (
        settings.secret.get_secret_value().encode() if settings.secret else secrets.token_bytes(32)
    )
    server_keys = ServerKeys(settings.api_key_values())
    knowledge = build_knowledge(settings)
    registry = build_tools(settings, knowledge)
    mcp = McpServers(parse_servers(settings.mcp_servers))
    backend = backend or build_backend(settings, knowledge, registry.vocabulary())
    metrics = Metrics()
    secrets_known = known_secrets(settings, secret)
    health = BackendHealth(getattr(backend, "probe", None))
    node_id = settings.node_id or new_id("node", 8)
    store = build_store(settings, node_id)
    observability = Observability(metrics, build_tracer(settings.traces))
    hub = SessionHub(
        node_id=node_id,
        backend=TimedBackend(backend, observability),
        authenticator=Authenticator(server_keys, secret, settings.max_session_s),
        store=store,
        metrics=metrics,
        settings=settings,
        known_secrets=secrets_known,
        secret=secret,
        on_upstream_auth_failed=health.note_upstream_auth_failed,
        server_side=server_side_factory(registry, settings, secrets_known),
    )
    messages = ProactiveMessages(
        hub,
        max_expires_s=settings.message_max_expires_s,
        max_records=settings.message_records,
    )
    endpoint = RealtimeEndpoint(hub)
    sse = SseEndpoint(hub)
    router = NodeRouter(store, node_id)  # node-to-node calls (issue 17)
    hub.observability = observability
    messages.use_router(router)  # proactive messages reach the session's node
    admin = SessionAdmin(hub, router)
    if store.shared:  # several nodes: snapshots, hand-offs, adoption
        hub.handoff = Handoff(hub, store, router, session_ttl_s=session_ttl_s(settings))

    middlewares: list[Middleware] = []
    if settings.forwarded_allow_ips:  # behind a reverse proxy (docs/ways-in.md)
        middlewares.append(forwarded_middleware(parse_networks(settings.forwarded_allow_ips)))
    app = web.Application(client_max_size=1024 * 1024, middlewares=middlewares)
    app[METRICS] = metrics
    app[BACKEND] = backend
    app[DRAINING] = [False]
    app[ENDPOINT] = endpoint
    app[SSE] = sse
    app[HEALTH] = health
    app[HUB] = hub
    app[STORE] = store
    app[DRAIN_HOOKS] = []
    app[ROUTER] = router
    if hub.handoff is not None:
        app[DRAIN_HOOKS].append(hub.handoff.migrate_all)
    app[TOOLS] = registry
    app[MESSAGES] = messages
    app[MCP] = mcp
    app[key_routes.UNKNOWN_TOOLS] = registry.unknown
    app[BODY_TIMEOUT_S] = settings.http_request_timeout_s
    app[key_routes.SERVER_KEYS] = server_keys
    app[key_routes.SIGNING_SECRET] = secret
    app[key_routes.MAX_SESSION_S] = settings.max_session_s
    app[key_routes.DEFAULT_MODEL] = settings.default_model
    app[key_routes.MAX_KEY_CHARS] = client_keys.max_key_chars(settings.max_header_bytes)

    app.router.add_get("/v1/realtime", endpoint.handle)
    app.router.add_get("/realtime", endpoint.handle)
    key_routes.add_routes(app)
    sse.add_routes(app)  # the HTTP/SSE fallback (/v1/realtime/sse…)
    WebRTCEndpoint(hub, webrtc_options(settings)).add_routes(app)
    PhoneEndpoint(hub, PhoneLines(settings.phone_lines)).add_routes(app)
    messages.add_routes(app, server_keys)
    admin.add_routes(app, server_keys)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    try:
        from voxgate.web.routes import (  # type: ignore[import-not-found,unused-ignore]
            add_routes as add_console_routes,
        )
    except ImportError:  # the console is optional until it ships
        pass
    else:
        add_console_routes(app)

    async def _start_mcp(app: web.Application) -> None:
        for found in await app[MCP].start():
            try:
                app[TOOLS].add(found)
            except ToolConfigError as exc:  # a name clash: that tool stays out
                _log.error("tools.refused", error=redact(str(exc), secrets_known))

    async def _close_backend(app: web.Application) -> None:
        await app[MCP].aclose()
        app[METRICS].gc.uninstall()
        await app[BACKEND].aclose()
        await app[STORE].aclose()

    async def _end_sessions(app: web.Application) -> None:
        app[ENDPOINT].stop_all()
        app[SSE].stop_all()

    async def _join(app: web.Application) -> None:
        await app[ROUTER].start()
        if hub.handoff is not None:
            await hub.handoff.start()

    async def _leave(app: web.Application) -> None:
        if hub.handoff is not None:
            await hub.handoff.aclose()
        await app[ROUTER].aclose()

    app.on_startup.append(_join)
    app.on_cleanup.insert(0, _leave)  # before the store closes

    app.on_startup.append(_start_mcp)
    for hook in load_lifespans(settings.tools) if settings.tools else []:
        app.cleanup_ctx.append(_lifespan(hook))
    app.on_shutdown.append(_end_sessions)
    app.on_cleanup.append(_close_backend)
    return app


def _lifespan(hook: Any) -> Callable[[web.Application], Any]:
    """A tools module's ``voxgate_lifespan(messages)`` as an aiohttp cleanup context."""

    async def context(app: web.Application) -> Any:
        async with contextlib.asynccontextmanager(hook)(app[MESSAGES]):
            yield

    return context


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    """Ready: not draining and the backend's (cached) probe passes; else 503 saying why."""
    if request.app[DRAINING][0]:
        return web.json_response({"status": "draining"}, status=503)
    problem = await request.app[HEALTH].check()
    described = request.app[BACKEND].describe()
    if problem is None:
        return web.json_response({"status": "ready", **described})
    body = {"status": "not_ready", "problem": problem, "detail": DETAILS.get(problem), **described}
    return web.json_response(body, status=503)


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")
