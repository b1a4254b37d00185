"""The ``openai`` backend: one WebSocket per client session to ``VOXGATE_OPENAI_URL``.

It authenticates with the server's ``OPENAI_API_KEY``, never with the client's credential, and
never logs the key or a URL that could carry credentials (only scheme, host and path). The
socket is voxgate's own client (:mod:`voxgate.backends.ws_client`), which hands frames to the
session synchronously on the hot path; there is no connection pool and so no pool limit.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from voxgate.backends import ws_client
from voxgate.backends.base import UpstreamConnectError, UpstreamConnection, UpstreamTarget


def safe_url(url: str) -> str:
    """``scheme://host[:port]/path``: what may appear in logs and errors."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def upstream_url(base: str, target: UpstreamTarget) -> str:
    """The base URL with ``model`` or ``intent=transcription`` set from the target."""
    parts = urlsplit(base)
    query = dict(parse_qsl(parts.query))
    if target.intent == "transcription" and not target.model:
        query.pop("model", None)
        query["intent"] = "transcription"
    else:
        if target.model:
            query["model"] = target.model
        if target.intent:
            query["intent"] = target.intent
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


class OpenAIBackend:
    name = "openai"
    #: a lost connection can be replaced by a fresh one and the session replayed on it
    reconnectable = True
    #: the model ``probe`` asks for (``build_backend`` sets ``VOXGATE_DEFAULT_MODEL``)
    probe_model = "gpt-realtime"

    def __init__(
        self,
        *,
        url: str,
        api_key: str | None,
        max_frame_bytes: int = 32 * 1024 * 1024,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self._url = url
        self._api_key = api_key
        self._max_frame_bytes = max_frame_bytes
        self._connect_timeout_s = connect_timeout_s
        self._ssl: ssl.SSLContext | None = None

    async def connect(self, target: UpstreamTarget) -> UpstreamConnection:
        headers = {"Authorization": f"Bearer {self._api_key or ''}"}
        url = upstream_url(self._url, target)
        if self._ssl is None and url.startswith(("wss:", "https:")):
            self._ssl = ssl.create_default_context()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                return await ws_client.connect(
                    url, headers, max_message_bytes=self._max_frame_bytes, ssl_context=self._ssl
                )
        except ws_client.HandshakeError as exc:
            raise UpstreamConnectError(exc.detail, status=exc.status) from None
        except (TimeoutError, OSError) as exc:
            raise UpstreamConnectError(
                f"cannot connect to {safe_url(self._url)}: {type(exc).__name__}"
            ) from None

    async def aclose(self) -> None:
        """Nothing process-wide to release: every connection belongs to its session."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "url": safe_url(self._url), "key_set": bool(self._api_key)}

    async def probe(self) -> str | None:
        """Open one realtime session with the server's key and close it (``/readyz``).

        Returns:
            None when the upstream sent ``session.created``, else a problem code
            (:mod:`voxgate.backends.probe`).
        """
        from voxgate.backends.probe import probe_realtime

        target = UpstreamTarget(model=self.probe_model, intent=None, session_id="probe")
        return await probe_realtime(upstream_url(self._url, target), self._api_key)
