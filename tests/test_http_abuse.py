"""Abuse of the HTTP endpoints (issue 12 items 5 and 6): bodies, and keys mint would make.

What must hold for every POST endpoint (``/v1/realtime/client_secrets``,
``/v1/realtime/sessions``, ``/console/api/*``), whatever the body:

- the answer is 200, or 400 with exactly OpenAI's error shape
  ``{"error": {"message", "type": "invalid_request_error", "param", "code"}}`` (never a 500,
  never pydantic's wording or a Python type name);
- a body with one field of the wrong type or value is refused, naming that field;
- a key minted with 200 is accepted by the verifier, and its session config by the session
  validator (mint never hands out what connect refuses).

The gateway runs once on a loop in a background thread; hypothesis examples are plain
synchronous HTTP requests (``http.client``) to it over a real socket.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import hmac
import http.client
import json
import os
import re
import threading
import time
import zlib
from collections.abc import Coroutine, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_helpers import recv_json
from voxgate.auth import client_keys
from voxgate.auth.console import new_login_url
from voxgate.config import Settings
from voxgate.protocol.session_config import validate_session_config
from voxgate.testing import FakeRealtimeServer
from voxgate.testing.gateway import RunningGateway, run_gateway

T = TypeVar("T")

SERVER_KEY = "vk-http-abuse-key-0001"
SECRET = "http-abuse-signing-secret-0001"
UPSTREAM_KEY = "sk-http-abuse-upstream-0001"
EXAMPLES = 150
TIMEOUT_S = 10.0
ERROR_KEYS = {"message", "type", "param", "code"}
#: Nothing of Python or pydantic may show in a message a client reads.
_INTERNAL = re.compile(
    r"Traceback|pydantic|Input should|valid dictionary|\.py\b|[A-Z][a-z]+Error\b|"
    r"\b(?:dict|list|NoneType|str|int|float)\b"
)


# ------------------------------------------------------------------------------ the server


class LoopThread:
    """An event loop in a daemon thread, so hypothesis examples can stay synchronous."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(TIMEOUT_S * 3)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise TimeoutError("the gateway did not answer") from exc

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT_S)
        self.loop.close()


@dataclass
class Server:
    port: int
    cookie: str
    csrf: str

    def post(
        self, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT_S)
        try:
            conn.request("POST", path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, orjson.loads(resp.read())
        finally:
            conn.close()

    def server(self, path: str, body: bytes) -> tuple[int, Any]:
        return self.post(path, body, {"Authorization": f"Bearer {SERVER_KEY}"})

    def console(self, path: str, body: bytes) -> tuple[int, Any]:
        return self.post(
            path, body, {"Cookie": f"voxgate_console={self.cookie}", "X-CSRF-Token": self.csrf}
        )

    def login_token(self, loop: LoopThread, gw: RunningGateway) -> str:
        async def fresh() -> str:
            return new_login_url(gw.app, "").rsplit("=", 1)[1]

        return loop.run(fresh())


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "backend": "openai",
        "openai_url": "ws://127.0.0.1:9/v1/realtime",  # minting never dials the upstream
        "openai_api_key": UPSTREAM_KEY,
        "api_keys": SERVER_KEY,
        "secret": SECRET,
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def server_in_thread() -> Iterator[tuple[LoopThread, RunningGateway, Server]]:
    loop = LoopThread()
    stack = AsyncExitStack()

    async def start() -> RunningGateway:
        return await stack.enter_async_context(run_gateway(_settings()))

    try:
        gw = loop.run(start())
        srv = Server(gw.port, "", "")
        token = srv.login_token(loop, gw)
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=TIMEOUT_S)
        conn.request("POST", "/console/api/login", body=orjson.dumps({"token": token}))
        resp = conn.getresponse()
        assert resp.status == 200
        srv.csrf = orjson.loads(resp.read())["csrf_token"]
        cookie = resp.getheader("Set-Cookie") or ""
        srv.cookie = cookie.split(";", 1)[0].split("=", 1)[1]
        conn.close()
        yield loop, gw, srv
    finally:
        loop.run(stack.aclose())
        loop.stop()


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[LoopThread, RunningGateway, Server]]:
    with server_in_thread() as triple:
        yield triple


# ------------------------------------------------------------------------------ checks


def check_error(status: int, body: Any, *, sent: bytes) -> dict[str, Any]:
    """A 400 with exactly OpenAI's HTTP error shape and nothing of Python in its words."""
    assert status == 400, (status, body)
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == ERROR_KEYS, err
    assert err["type"] == "invalid_request_error", err
    assert isinstance(err["message"], str), err
    assert err["message"], err
    assert err["code"] is None or isinstance(err["code"], str), err
    assert err["param"] is None or isinstance(err["param"], str), err
    for match in _INTERNAL.finditer(err["message"]):
        assert match.group(0).encode() in sent, f"internal wording {match.group(0)!r} in {err}"
    return err


def check_minted(key: str) -> None:
    """What mint handed out, the realtime endpoint's verifier and session validator accept."""
    claims = client_keys.verify(SECRET.encode(), key, now=time.time())
    if claims.session is not None:
        validate_session_config(claims.session)


# ------------------------------------------------------------------------------ strategies

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


def wrong(*allowed: type) -> st.SearchStrategy[Any]:
    """Any JSON value but null and the ``allowed`` types (bool is not an int here)."""
    return json_values.filter(lambda v: v is not None and type(v) not in allowed)


def _body(value: Any) -> bytes:
    return json.dumps(value).encode()  # orjson refuses integers past 64 bits; clients may not


raw_bodies = st.one_of(
    json_values.map(_body),
    st.binary(max_size=64),
    st.dictionaries(
        st.sampled_from(
            [
                "session",
                "expires_after",
                "voxgate",
                "model",
                "modalities",
                "voice",
                "input_audio_format",
                "turn_detection",
                "tools",
                "client_secret",
                "token",
                "max_response_output_tokens",
            ]
        ),
        json_values,
        max_size=4,
    ).map(_body),
)

#: (field, values of a wrong type or value) for the beta endpoint; each must be refused.
BETA_BAD = {
    "model": wrong(str),
    "modalities": wrong(list)
    | st.lists(st.text().filter(lambda t: t not in ("audio", "text")), min_size=1, max_size=2),
    "instructions": wrong(str),
    "voice": wrong(str) | st.text(max_size=8).filter(lambda v: v not in _VOICES),
    "input_audio_format": json_values.filter(lambda v: v not in (None, *_FORMATS)),
    "output_audio_format": json_values.filter(lambda v: v not in (None, *_FORMATS)),
    "turn_detection": wrong(dict),
    "input_audio_transcription": wrong(dict),
    "tools": wrong(list) | st.lists(wrong(dict), min_size=1, max_size=2),
    "temperature": wrong(int, float),
    "speed": wrong(int, float),
    "max_response_output_tokens": wrong(int).filter(lambda v: v != "inf"),
}
_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
_FORMATS = ("pcm16", "g711_ulaw", "g711_alaw")

#: The same for the GA endpoint's envelope (the session inside is the session validator's).
GA_BAD = {
    "expires_after": wrong(dict),
    "session": wrong(dict),
    "voxgate": wrong(dict),
}


# ------------------------------------------------------------------------------ the tests


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"modalities": 5}, "modalities"),
        ({"modalities": "x"}, "modalities"),
        ({"modalities": ["audio", "x"]}, "modalities[1]"),
        ({"input_audio_format": []}, "input_audio_format"),
        ({"input_audio_format": {"a": [1, {"b": None}]}}, "input_audio_format"),
        ({"turn_detection": [[[]]]}, "turn_detection"),
        ({"voice": {"nested": {"garbage": [1, 2]}}}, "voice"),
        ({"voice": "nobody"}, "voice"),
        ({"turn_detection": {"type": "bogus"}}, "turn_detection.type"),
        (
            {"client_secret": {"expires_after": {"seconds": "60"}}},
            "client_secret.expires_after.seconds",
        ),
        ({"max_response_output_tokens": 0}, "max_response_output_tokens"),
    ],
)
async def test_beta_sessions_refuses_malformed_bodies_with_400(
    body: dict[str, Any], param: str
) -> None:
    async with run_gateway(_settings()) as gw, aiohttp.ClientSession() as http:
        async with http.post(
            gw.http_url + "/v1/realtime/sessions",
            headers={"Authorization": f"Bearer {SERVER_KEY}"},
            json=body,
        ) as resp:
            err = check_error(resp.status, await resp.json(), sent=_body(body))
    assert err["param"] == param, err


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(
        [
            "/v1/realtime/client_secrets",
            "/v1/realtime/sessions",
            "/console/api/login",
            "/console/api/key",
            "/console/api/logout",
            "/console/api/login_tokens",
        ]
    ),
    body=raw_bodies,
)
def test_any_body_gets_200_or_an_openai_shaped_400(
    env: tuple[LoopThread, RunningGateway, Server], path: str, body: bytes
) -> None:
    _, _, srv = env
    if path == "/console/api/logout":
        return  # a 200 here would sign the module's console out; covered below
    send = srv.console if path == "/console/api/key" else srv.server
    status, answer = send(path, body)
    if status == 200:
        key = answer.get("value") or (answer.get("client_secret") or {}).get("value")
        if key is not None:
            check_minted(key)
        return
    if path == "/console/api/login" and status == 401:
        return  # a well-formed body with an unknown token
    check_error(status, answer, sent=body)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), field=st.sampled_from(sorted(BETA_BAD)))
def test_beta_field_of_a_wrong_type_is_refused_naming_it(
    env: tuple[LoopThread, RunningGateway, Server], data: st.DataObject, field: str
) -> None:
    _, _, srv = env
    value = data.draw(BETA_BAD[field], label=field)
    body = _body({"model": "gpt-realtime", field: value})
    status, answer = srv.server("/v1/realtime/sessions", body)
    err = check_error(status, answer, sent=body)
    assert err["param"] is not None, (field, value, err)
    assert err["param"].startswith(field), (field, value, err)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), field=st.sampled_from(sorted(GA_BAD)))
def test_client_secret_field_of_a_wrong_type_is_refused_naming_it(
    env: tuple[LoopThread, RunningGateway, Server], data: st.DataObject, field: str
) -> None:
    _, _, srv = env
    value = data.draw(GA_BAD[field], label=field)
    body = _body({field: value})
    for path, send in (
        ("/v1/realtime/client_secrets", srv.server),
        ("/console/api/key", srv.console),
    ):
        if path == "/console/api/key" and field != "session":
            continue
        status, answer = send(path, body)
        err = check_error(status, answer, sent=body)
        assert err["param"] == field, (path, value, err)


def test_console_endpoints_refuse_malformed_bodies(
    env: tuple[LoopThread, RunningGateway, Server],
) -> None:
    _, _, srv = env
    for path, body, param in (
        ("/console/api/login", {"token": 5}, "token"),
        ("/console/api/login", {"token": "x" * 500}, "token"),
        ("/console/api/login", [], None),
        ("/console/api/key", {"session": {"type": "realtime", "voice": 1}}, "session.voice"),
        ("/console/api/key", {"bogus": 1}, "bogus"),
        ("/console/api/logout", {"bogus": 1}, "bogus"),
        ("/console/api/login_tokens", {"ttl": 1}, "ttl"),
    ):
        sent = _body(body)
        send = srv.server if path.endswith(("login", "login_tokens")) else srv.console
        err = check_error(*send(path, sent), sent=sent)
        assert err["param"] == param, (path, err)
    sent = b"{not json"
    err = check_error(*srv.console("/console/api/key", sent), sent=sent)
    assert err["code"] == "invalid_json"


# ------------------------------------------------------------------------------ item 6


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _incompressible(n_chars: int) -> str:
    """Random base64 text: 6 bits a character, so a key carrying it is about as long."""
    return base64.b64encode(os.urandom(n_chars)).decode()[:n_chars]


async def test_mint_refuses_a_key_larger_than_connect_accepts() -> None:
    """A 54 KB key was minted (200) and then refused at connect: now mint says 400."""
    async with run_gateway(_settings()) as gw, aiohttp.ClientSession() as http:
        for path, body in (
            (
                "/v1/realtime/client_secrets",
                {"session": {"type": "realtime", "instructions": _incompressible(54_000)}},
            ),
            ("/v1/realtime/sessions", {"instructions": _incompressible(54_000)}),
        ):
            async with http.post(
                gw.http_url + path, headers={"Authorization": f"Bearer {SERVER_KEY}"}, json=body
            ) as resp:
                err = check_error(resp.status, await resp.json(), sent=_body(body))
            assert err["code"] == "client_secret_too_large", err


@pytest.mark.parametrize("max_header_bytes", [8190, 64 * 1024])
async def test_the_largest_key_mint_gives_opens_a_session(max_header_bytes: int) -> None:
    """Around the limit every 200 key connects (bearer and subprotocol); the rest are 400."""
    async with (
        FakeRealtimeServer(api_keys={UPSTREAM_KEY}) as fake,
        run_gateway(
            _settings(openai_url=fake.url, max_header_bytes=max_header_bytes, ping_interval_s=0)
        ) as gw,
        aiohttp.ClientSession() as http,
    ):
        limit = client_keys.max_key_chars(max_header_bytes)
        largest = ""
        # a key is about as long as the random instructions it carries: sweep across the limit
        for n_chars in range(int(limit * 0.85), int(limit * 1.05), max(1, limit // 50)):
            body = {"session": {"type": "realtime", "instructions": _incompressible(n_chars)}}
            async with http.post(
                gw.http_url + "/v1/realtime/client_secrets",
                headers={"Authorization": f"Bearer {SERVER_KEY}"},
                json=body,
            ) as resp:
                answer = await resp.json()
            if resp.status == 200:
                assert len(answer["value"]) <= limit
                largest = answer["value"]
            else:
                assert check_error(resp.status, answer, sent=b"")["code"] == (
                    "client_secret_too_large"
                )
        assert largest, "no key was minted near the limit"
        assert len(largest) > limit * 0.95
        for kwargs in (
            {"headers": {"Authorization": f"Bearer {largest}"}},
            {"protocols": ["realtime", "voxgate.v1", f"openai-insecure-api-key.{largest}"]},
        ):
            async with http.ws_connect(gw.realtime_url(), **kwargs) as ws:  # type: ignore[arg-type]
                assert (await recv_json(ws))["type"] == "session.created"


def test_mint_and_verify_share_the_lifetime_and_size_limits() -> None:
    secret = SECRET.encode()
    now = time.time()
    key, claims = client_keys.mint(secret, now=now, ttl_s=client_keys.MAX_TTL_S)
    assert client_keys.verify(secret, key, now=now) == claims
    with pytest.raises(ValueError, match="ttl_s"):
        client_keys.mint(secret, now=now, ttl_s=client_keys.MAX_TTL_S + 1)
    with pytest.raises(client_keys.ClientKeyTooLarge):
        client_keys.mint(secret, now=now, session={"instructions": _incompressible(60_000)})
    # a correctly signed key claiming a lifetime mint never gives is refused too
    body = {"v": 1, "kid": "k", "iat": int(now), "exp": int(now) + client_keys.MAX_TTL_S + 1}
    payload = _b64(zlib.compress(orjson.dumps(body)))  # the documented format, signed here
    forged = f"ek_{payload}.{_b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())}"
    with pytest.raises(client_keys.ClientKeyError):
        client_keys.verify(secret, forged, now=now)
