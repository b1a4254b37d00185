"""Behind a reverse proxy: take the client's address and scheme from ``X-Forwarded-*``.

Only when the connection comes from a proxy the operator named (``VOXGATE_FORWARDED_ALLOW_IPS``,
addresses or networks): then ``X-Forwarded-For`` gives the client's address (the rightmost
entry that is not itself a trusted proxy), ``X-Forwarded-Proto`` the scheme the browser used
(so the console's origin check, its cookies' ``Secure`` flag and its content security policy
see ``https``), and ``X-Forwarded-Host`` the host it asked for. From anyone else the headers
are ignored: a client cannot claim another address (which per-address limits and logs use).

The middleware hands the handler a clone of the request (aiohttp's ``request.clone``); the
WebSocket upgrade and the event stream work on it unchanged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SCHEMES: Final = frozenset({"http", "https"})


def parse_networks(values: Iterable[str]) -> list[Network]:
    """``["127.0.0.1", "10.0.0.0/8", "::1"]`` → networks.

    Raises:
        ValueError: an entry that is no address or network.
    """
    return [ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip()]


def _trusted(address: str | None, networks: list[Network]) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(forwarded_for: str, peer: str, networks: list[Network]) -> str:
    """The rightmost address of ``X-Forwarded-For`` that is not a trusted proxy (a client may
    have put anything on the left; each trusted proxy appends what it saw)."""
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            return hop
    return hops[0] if hops else peer


def forwarded_middleware(networks: list[Network]) -> Middleware:
    """The aiohttp middleware for the proxies in ``networks`` (see the module docstring)."""

    @web.middleware
    async def forwarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _trusted(request.remote, networks):
            return await handler(request)
        changes: dict[str, str] = {}
        forwarded_for = request.headers.get("X-Forwarded-For")
        if forwarded_for:
            changes["remote"] = client_address(forwarded_for, request.remote or "", networks)
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        if proto in _SCHEMES:
            changes["scheme"] = proto
        host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
        if host:
            changes["host"] = host
        return await handler(request.clone(**changes) if changes else request)  # type: ignore[arg-type,unused-ignore]

    return forwarded
