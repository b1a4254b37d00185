"""The aiohttp application factory: it only wires modules together.

Routes: the realtime WebSocket (``/v1/realtime``, ``/realtime``), its HTTP/SSE fallback
(``/v1/realtime/sse…``), key minting
(``/v1/realtime/client_secrets``, ``/v1/realtime/sessions``), WebRTC calls
(``/v1/realtime/calls``), phone media streams (``/v1/phone/twilio``), ``/healthz``,
``/readyz``, ``/metrics``, and the console at ``/`` when present.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from voxgate.auth import client_keys
from voxgate.auth import routes as key_routes
from voxgate.auth.grants import Authenticator
from voxgate.auth.requests import BODY_TIMEOUT_S
from voxgate.auth.server_keys import ServerKeys
from voxgate.backends.base import Backend
from voxgate.config import Settings
from voxgate.observability.health import DETAILS, BackendHealth
from voxgate.observability.metrics import Metrics
from voxgate.store.base import Store
from voxgate.store.memory import MemoryStore
from voxgate.transports.forwarded import forwarded_middleware, parse_networks
from voxgate.transports.hub import SessionHub
from voxgate.transports.media.phone_endpoint import PhoneEndpoint, PhoneLines
from voxgate.transports.media.webrtc_endpoint import IceServer, WebRTCEndpoint, WebRTCOptions
from voxgate.transports.sse import SseEndpoint
from voxgate.transports.websocket import RealtimeEndpoint

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


def build_backend(settings: Settings) -> Backend:
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

    backend: Backend = LocalBackend.from_settings(settings)
    return backend


def build_store(settings: Settings) -> Store:
    """The shared-state store: in memory unless ``VOXGATE_REDIS_URL`` is set."""
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
    backend = backend or build_backend(settings)
    metrics = Metrics()
    secrets_known = known_secrets(settings, secret)
    health = BackendHealth(getattr(backend, "probe", None))
    store = build_store(settings)
    hub = SessionHub(
        backend=backend,
        authenticator=Authenticator(server_keys, secret, settings.max_session_s),
        store=store,
        metrics=metrics,
        settings=settings,
        known_secrets=secrets_known,
        secret=secret,
        on_upstream_auth_failed=health.note_upstream_auth_failed,
    )
    endpoint = RealtimeEndpoint(hub)
    sse = SseEndpoint(hub)

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

    async def _close_backend(app: web.Application) -> None:
        app[METRICS].gc.uninstall()
        await app[BACKEND].aclose()
        await app[STORE].aclose()

    async def _end_sessions(app: web.Application) -> None:
        app[ENDPOINT].stop_all()
        app[SSE].stop_all()

    app.on_shutdown.append(_end_sessions)
    app.on_cleanup.append(_close_backend)
    return app


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
