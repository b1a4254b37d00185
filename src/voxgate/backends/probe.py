"""Reachability probes behind ``/readyz`` and the start-up check of ``voxgate serve``.

Owns: :func:`probe_realtime` (open a realtime WebSocket as a session would, read the first
event, close 1000) and :func:`probe_http` (one GET to an OpenAI-compatible server), each
returning None when all is well or one problem code. Probes are bounded by a timeout, send the
server's own key only to the URL it is configured for, and never put a key or a URL with
credentials in what they return.

Must not: cache or rate-limit (:class:`voxgate.observability.health.BackendHealth` does), or
be called per session.
"""

from __future__ import annotations

import asyncio
from typing import Final

import aiohttp
import orjson

from voxgate.observability.health import (
    LLM_UNREACHABLE,
    UPSTREAM_AUTH_FAILED,
    UPSTREAM_REFUSED,
    UPSTREAM_UNREACHABLE,
)

PROBE_TIMEOUT_S: Final = 5.0
#: The real server closes with 3000 after ``invalid_api_key`` (realtime-protocol.md §7).
_AUTH_CLOSE_CODE: Final = 3000
_FIRST_EVENT_MAX_BYTES: Final = 1024 * 1024


async def probe_realtime(
    url: str, api_key: str | None, *, timeout_s: float = PROBE_TIMEOUT_S
) -> str | None:
    """Open ``url`` with ``api_key`` and read the first event, as a session start would.

    Returns:
        None after ``session.created``; ``upstream_auth_failed`` for a refused key (HTTP
        401/403, an ``invalid_api_key`` error or close 3000); ``upstream_refused`` for any
        other error event; ``upstream_unreachable`` for everything else (DNS, TCP, TLS,
        timeout, another HTTP status, a close without an event).
    """
    headers = {"Authorization": f"Bearer {api_key or ''}"}
    try:
        async with (
            asyncio.timeout(timeout_s),
            aiohttp.ClientSession() as http,
            http.ws_connect(
                url, headers=headers, heartbeat=None, max_msg_size=_FIRST_EVENT_MAX_BYTES
            ) as ws,
        ):
            msg = await ws.receive()
    except aiohttp.WSServerHandshakeError as exc:
        return UPSTREAM_AUTH_FAILED if exc.status in (401, 403) else UPSTREAM_UNREACHABLE
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
        return UPSTREAM_UNREACHABLE
    if msg.type == aiohttp.WSMsgType.TEXT:
        return _first_event_problem(msg.data)
    if msg.type == aiohttp.WSMsgType.CLOSE and msg.data == _AUTH_CLOSE_CODE:
        return UPSTREAM_AUTH_FAILED
    return UPSTREAM_UNREACHABLE


def _first_event_problem(text: str) -> str | None:
    try:
        event = orjson.loads(text)
    except orjson.JSONDecodeError:
        return UPSTREAM_REFUSED
    if not isinstance(event, dict):
        return UPSTREAM_REFUSED
    if event.get("type") == "session.created":
        return None
    error = event.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    # A missing key is ``code: null`` with an authentication message (§7).
    if code == "invalid_api_key" or (event.get("type") == "error" and code is None):
        return UPSTREAM_AUTH_FAILED
    return UPSTREAM_REFUSED


async def probe_http(url: str, *, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """GET ``url``: any answer below 500 means the server is up (None); else ``llm_unreachable``."""
    try:
        async with (
            asyncio.timeout(timeout_s),
            aiohttp.ClientSession() as http,
            http.get(url, allow_redirects=False) as resp,
        ):
            status = resp.status
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
        return LLM_UNREACHABLE
    return None if status < 500 else LLM_UNREACHABLE


def models_url(chat_completions_url: str) -> str:
    """``…/v1/chat/completions`` → ``…/v1/models`` (cheap on every OpenAI-compatible server)."""
    base = chat_completions_url.rstrip("/").removesuffix("/chat/completions")
    return base + "/models"
