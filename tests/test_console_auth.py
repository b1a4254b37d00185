"""Console login: one-time token, HttpOnly SameSite=Strict cookie + CSRF, then ek_ keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from yarl import URL

from gateway_helpers import fake_and_gateway, recv_json
from voxgate.auth.console import (
    CONSOLE_AUTH,
    COOKIE_NAME,
    CSRF_HEADER,
    ConsoleAuth,
    new_login_url,
)
from voxgate.testing import FakeRealtimeServer
from voxgate.testing.gateway import RunningGateway

Gateway = tuple[FakeRealtimeServer, RunningGateway]


@pytest.fixture
async def stack() -> AsyncIterator[Gateway]:
    async with fake_and_gateway() as pair:
        yield pair


def _token(gw: RunningGateway) -> str:
    url = new_login_url(gw.app, gw.http_url)
    return parse_qs(urlsplit(url).query)["login"][0]


def _http() -> aiohttp.ClientSession:
    # unsafe=True: aiohttp's jar otherwise ignores cookies set by an IP-address host.
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _login(http: aiohttp.ClientSession, gw: RunningGateway) -> str:
    async with http.post(gw.http_url + "/console/api/login", json={"token": _token(gw)}) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    csrf = body["csrf_token"]
    assert isinstance(csrf, str)
    return csrf


async def test_login_url_has_a_fresh_token_each_time(stack: Gateway) -> None:
    _, gw = stack
    first, second = new_login_url(gw.app, gw.http_url), new_login_url(gw.app, gw.http_url)
    assert first.startswith(gw.http_url + "/?login=")
    assert first != second


async def test_login_token_is_single_use(stack: Gateway) -> None:
    _, gw = stack
    token = _token(gw)
    async with _http() as http:
        url = gw.http_url + "/console/api/login"
        async with http.post(url, json={"token": token}) as first:
            assert first.status == 200
        async with http.post(url, json={"token": token}) as second:
            assert second.status == 401
            assert (await second.json())["error"]["code"] == "login_token_invalid"
        async with http.post(url, json={"token": "made-up"}) as forged:
            assert forged.status == 401


async def test_session_cookie_attributes_are_explicit(stack: Gateway) -> None:
    _, gw = stack
    async with _http() as http:
        url = gw.http_url + "/console/api/login"
        async with http.post(url, json={"token": _token(gw)}) as resp:
            assert resp.status == 200
            raw = resp.headers.getall("Set-Cookie")
            body = await resp.json()
    assert len(raw) == 1
    cookie = SimpleCookie()
    cookie.load(raw[0])
    morsel = cookie[COOKIE_NAME]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/"
    assert not morsel["secure"]  # plain http here; Secure is set when served over https
    assert int(morsel["max-age"]) > 0
    assert body["csrf_token"] != morsel.value


async def test_key_endpoint_refuses_without_cookie(stack: Gateway) -> None:
    _, gw = stack
    async with _http() as http:
        csrf = await _login(http, gw)
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.post(
            gw.http_url + "/console/api/key", headers={CSRF_HEADER: csrf}, json={}
        ) as resp:
            assert resp.status == 401
            assert "value" not in await resp.json()


@pytest.mark.parametrize("csrf", [None, "", "wrong-token"])
async def test_key_endpoint_refuses_without_matching_csrf(stack: Gateway, csrf: str | None) -> None:
    _, gw = stack
    async with _http() as http:
        await _login(http, gw)
        headers = {} if csrf is None else {CSRF_HEADER: csrf}
        async with http.post(gw.http_url + "/console/api/key", headers=headers, json={}) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "csrf_failed"


async def test_key_endpoint_refuses_cross_origin(stack: Gateway) -> None:
    _, gw = stack
    async with _http() as http:
        csrf = await _login(http, gw)
        headers = {CSRF_HEADER: csrf, "Origin": "http://evil.example"}
        async with http.post(gw.http_url + "/console/api/key", headers=headers, json={}) as resp:
            assert resp.status == 403


async def test_key_from_cookie_and_csrf_opens_a_realtime_session(stack: Gateway) -> None:
    fake, gw = stack
    async with _http() as http:
        csrf = await _login(http, gw)
        async with http.post(
            gw.http_url + "/console/api/key",
            headers={CSRF_HEADER: csrf},
            json={"session": {"type": "realtime", "instructions": "Answer briefly."}},
        ) as resp:
            assert resp.status == 200, await resp.text()
            key = (await resp.json())["value"]
        assert key.startswith("ek_")
        async with http.ws_connect(
            gw.realtime_url(""),
            protocols=["realtime", "voxgate.v1", f"openai-insecure-api-key.{key}"],
        ) as ws:
            assert ws.protocol == "voxgate.v1"
            created = await recv_json(ws)
            assert created["type"] == "session.created"
            assert created["session"]["instructions"] == "Answer briefly."
    await fake.wait_for_connection()


async def test_session_endpoint_returns_csrf_for_a_reloaded_page(stack: Gateway) -> None:
    _, gw = stack
    async with _http() as http:
        csrf = await _login(http, gw)
        async with http.get(gw.http_url + "/console/api/session") as resp:
            assert resp.status == 200
            assert (await resp.json())["csrf_token"] == csrf
        async with http.post(
            gw.http_url + "/console/api/logout", headers={CSRF_HEADER: csrf}
        ) as resp:
            assert resp.status == 200
        async with http.get(gw.http_url + "/console/api/session") as resp:
            assert resp.status == 401


async def test_server_key_holder_can_mint_a_new_login_link(stack: Gateway) -> None:
    _, gw = stack
    async with aiohttp.ClientSession() as http:
        url = gw.http_url + "/console/api/login_tokens"
        async with http.post(url) as refused:
            assert refused.status == 401
        auth = {"Authorization": f"Bearer {gw.server_key}"}
        async with http.post(url, headers=auth) as resp:
            assert resp.status == 200
            token = (await resp.json())["token"]
        async with http.post(gw.http_url + "/console/api/login", json={"token": token}) as r:
            assert r.status == 200


def test_login_tokens_are_capped_and_expire_and_cookies_expire() -> None:
    now = [1000.0]
    auth = ConsoleAuth(max_login_tokens=3, login_ttl_s=10, session_ttl_s=100, clock=lambda: now[0])
    tokens = [auth.new_login_token() for _ in range(5)]
    assert auth.counts() == (3, 0)
    assert auth.redeem(tokens[0]) is None  # evicted as oldest
    cookies = [auth.redeem(t) for t in tokens[2:]]
    assert all(c is not None for c in cookies)
    assert auth.counts() == (0, 0)
    late = auth.new_login_token()
    now[0] += 11
    assert auth.redeem(late) is None
    cookie, session = cookies[0]  # type: ignore[misc]
    assert auth.session(cookie) == session
    now[0] += 90
    assert auth.session(cookie) is None  # the cookie's own expiry


def test_a_cookie_is_refused_after_logout_or_any_change() -> None:
    auth = ConsoleAuth(secret=b"s" * 32)
    redeemed = auth.redeem(auth.new_login_token())
    assert redeemed is not None
    cookie = redeemed[0]
    for i in range(len(cookie)):
        changed = cookie[:i] + ("A" if cookie[i] != "A" else "B") + cookie[i + 1 :]
        assert auth.session(changed) is None, i
    auth.logout(cookie)
    assert auth.session(cookie) is None
    assert auth.counts() == (0, 1)


async def test_with_a_shared_secret_the_console_stays_signed_in_across_a_restart() -> None:
    """Issue 12 item 13: a new process with the same VOXGATE_SECRET accepts the cookie."""
    async with fake_and_gateway() as (_, before), _http() as http:
        csrf = await _login(http, before)
    async with fake_and_gateway() as (_, after), _http() as browser:
        browser.cookie_jar.update_cookies(http.cookie_jar.filter_cookies(URL(before.http_url)))
        async with browser.get(after.http_url + "/console/api/session") as resp:
            assert resp.status == 200
            assert (await resp.json())["csrf_token"] == csrf
        async with browser.post(
            after.http_url + "/console/api/key", headers={CSRF_HEADER: csrf}, json={}
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["value"].startswith("ek_")


async def test_without_a_shared_secret_a_restart_signs_the_console_out() -> None:
    async with fake_and_gateway() as (_, before), _http() as http:
        await _login(http, before)
    async with fake_and_gateway(secret="another-signing-secret-0002") as (_, after):
        async with _http() as browser:
            browser.cookie_jar.update_cookies(http.cookie_jar.filter_cookies(URL(before.http_url)))
            async with browser.get(after.http_url + "/console/api/session") as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["code"] == "console_login_required"


async def test_console_state_lives_on_the_app(stack: Gateway) -> None:
    _, gw = stack
    async with fake_and_gateway() as (_, other):
        assert gw.app[CONSOLE_AUTH] is not other.app[CONSOLE_AUTH]
        token = _token(gw)
        async with aiohttp.ClientSession() as http:
            url = other.http_url + "/console/api/login"
            async with http.post(url, json={"token": token}) as resp:
                assert resp.status == 401
