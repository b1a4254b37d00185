"""Behind a reverse proxy (issue 15): ``X-Forwarded-*`` from trusted proxies only."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from structlog.testing import capture_logs

from gateway_helpers import SERVER_KEY, fake_and_gateway, recv_json
from voxgate.auth.console import new_login_url
from voxgate.config import Settings
from voxgate.transports.forwarded import client_address, parse_networks

PROXY = {
    "X-Forwarded-For": "198.51.100.7, 203.0.113.9",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "voice.example.com",
}


def test_client_address_is_the_rightmost_untrusted_hop() -> None:
    nets = parse_networks(["127.0.0.1", "10.0.0.0/8"])
    assert client_address("198.51.100.7, 203.0.113.9", "127.0.0.1", nets) == "203.0.113.9"
    assert client_address("203.0.113.9, 10.1.2.3", "127.0.0.1", nets) == "203.0.113.9"
    assert client_address("10.1.2.3", "127.0.0.1", nets) == "10.1.2.3"
    assert client_address("", "127.0.0.1", nets) == "127.0.0.1"


def test_bad_proxy_address_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="forwarded_allow_ips"):
        Settings(forwarded_allow_ips="127.0.0.1,not-an-ip")


async def _csp_and_peer(**settings: object) -> tuple[str, str | None, int]:
    async with fake_and_gateway(**settings) as (_, gw), aiohttp.ClientSession() as http:
        async with http.get(f"{gw.http_url}/", headers=PROXY) as page:
            csp = page.headers["Content-Security-Policy"]
        # the console's login from the browser's origin (https://voice.example.com)
        token = parse_qs(urlsplit(new_login_url(gw.app, gw.http_url)).query)["login"][0]
        async with http.post(
            f"{gw.http_url}/console/api/login",
            json={"token": token},
            headers={**PROXY, "Origin": "https://voice.example.com"},
        ) as login:
            login_status = login.status
        with capture_logs() as logs:
            async with http.ws_connect(
                gw.realtime_url(), headers={**PROXY, "Authorization": f"Bearer {SERVER_KEY}"}
            ) as ws:
                assert (await recv_json(ws))["type"] == "session.created"
        peer = next(e["peer"] for e in logs if e["event"] == "session.connected")
    return csp, peer, login_status


async def test_trusted_proxy_headers_set_client_address_scheme_and_host() -> None:
    csp, peer, login = await _csp_and_peer(forwarded_allow_ips="127.0.0.1,::1")
    assert "connect-src 'self' wss://voice.example.com" in csp
    assert peer == "203.0.113.9"
    assert login == 200  # the origin check sees the scheme and host the browser used


async def test_without_trusted_proxies_the_headers_are_ignored() -> None:
    csp, peer, login = await _csp_and_peer()
    assert "wss://" not in csp
    assert peer == "127.0.0.1"
    assert login == 403
