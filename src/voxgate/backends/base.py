"""The upstream interface every backend implements (OpenAI over WebSocket, the local engine).

Pings are the runner's job (it answers PINGs it receives and sends its own when a peer is
idle), so upstream connections are opened without aiohttp's autoping and heartbeat.

An :class:`UpstreamConnection` looks like an aiohttp client WebSocket on purpose: the relay's
hot loop calls ``send_str`` and ``receive`` directly, with no adapter layer per frame, so an
aiohttp ``ClientWebSocketResponse`` *is* an upstream connection. The local engine implements the
same four members in process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """What to open upstream for one client session (never the client's credential)."""

    model: str | None
    intent: str | None
    session_id: str
    subject: str | None = None


class UpstreamConnectError(Exception):
    """Could not open the upstream (refused, DNS, TLS, HTTP status, timeout).

    ``detail`` is safe to show a client and to log (no URL credentials, no key).
    """

    def __init__(self, detail: str, *, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


class UpstreamConnection(Protocol):
    async def send_str(self, data: str, compress: int | None = None) -> None: ...

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage: ...  # noqa: ASYNC109

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool: ...

    async def ping(self, message: bytes = b"") -> None: ...

    async def pong(self, message: bytes = b"") -> None: ...

    @property
    def close_code(self) -> int | None: ...


class Backend(Protocol):
    name: str

    async def connect(self, target: UpstreamTarget) -> UpstreamConnection:
        """Open one upstream for one client session.

        Raises:
            UpstreamConnectError: the upstream could not be reached or refused the upgrade.
        """
        ...

    async def aclose(self) -> None:
        """Release process-wide resources (connection pools, models)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Safe-to-log description (no secrets)."""
        ...
