"""Every log line of real sessions, rendered as in production, carries no secret."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import aiohttp
import orjson
import pytest
import structlog

from gateway_helpers import recv_json, recv_until
from voxgate.auth.console_session import ConsoleAuth
from voxgate.auth.resume import mint as mint_resume_token
from voxgate.config import Settings
from voxgate.observability.logging import configure_logging
from voxgate.testing import FakeRealtimeServer, b64, tone
from voxgate.testing.gateway import run_gateway

# Shapes no pattern would catch: only the known-secret masking can hide these.
SERVER_KEY = "plainserverkey-alpha-0001"
UPSTREAM_KEY = "sk-proj-upstreamSECRET0123456789abcdef"
SIGNING = "signing-secret-beta-0002"
WRONG_CLIENT_KEY = "sk-wrongclientkey-gamma-0003"


@pytest.fixture
def log_buffer() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buffer = io.StringIO()
    configure_logging(
        "debug", "json", known_secrets=(SERVER_KEY, UPSTREAM_KEY, SIGNING), stream=buffer
    )
    try:
        yield buffer
    finally:
        structlog.reset_defaults()
        root.handlers[:], root.level = saved


async def test_no_secret_reaches_any_log_line(log_buffer: io.StringIO) -> None:
    settings = Settings(
        backend="openai",
        api_keys=SERVER_KEY,
        secret=SIGNING,
        openai_api_key=UPSTREAM_KEY,
        ping_interval_s=0,
    )
    ek_key = ""
    async with FakeRealtimeServer(api_keys={UPSTREAM_KEY}) as fake:
        settings.openai_url = fake.url
        async with run_gateway(settings) as gw, aiohttp.ClientSession() as http:
            resp = await http.post(
                gw.http_url + "/v1/realtime/client_secrets",
                headers={"Authorization": f"Bearer {SERVER_KEY}"},
                json={"voxgate": {"subject": "user-42"}},
            )
            ek_key = (await resp.json())["value"]
            # a server-key session with audio held before ready and flushed
            async with http.ws_connect(
                gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}
            ) as ws:
                await ws.send_str(
                    orjson.dumps(
                        {
                            "type": "session.update",
                            "session": {
                                "type": "realtime",
                                "audio": {"input": {"turn_detection": None}},
                            },
                        }
                    ).decode()
                )
                await ws.send_str(
                    '{"type":"input_audio_buffer.append","audio":"' + b64(tone(200)) + '"}'
                )
                await ws.send_str('{"type":"input_audio_buffer.commit"}')
                await recv_until(ws, "input_audio_buffer.committed")
            # a browser-style session with the ek_ key in a subprotocol
            async with http.ws_connect(
                gw.realtime_url(), protocols=["realtime", f"openai-insecure-api-key.{ek_key}"]
            ) as ws:
                await recv_until(ws, "session.created")
            # a refused client key
            async with http.ws_connect(
                gw.realtime_url(), headers={"Authorization": f"Bearer {WRONG_CLIENT_KEY}"}
            ) as ws:
                assert (await recv_json(ws))["error"]["code"] == "invalid_api_key"
        # an upstream that rejects the server's key (its message quotes part of the key)
        fake_strict = FakeRealtimeServer(api_keys={"sk-some-other-key-000000"})
        async with fake_strict:
            settings.openai_url = fake_strict.url
            async with run_gateway(settings) as gw, aiohttp.ClientSession() as http:
                async with http.ws_connect(
                    gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}
                ) as ws:
                    error = await recv_json(ws)
                    assert error["error"]["code"] == "voxgate_upstream_auth_failed"
                    assert "upstreamSECRET" not in error["error"]["message"]

    output = log_buffer.getvalue()
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) > 20
    for secret in (
        SERVER_KEY,
        UPSTREAM_KEY,
        SIGNING,
        WRONG_CLIENT_KEY,
        ek_key,
        ek_key[3:40],
        "upstreamSECRET",
        "wrongclientkey",
        "Bearer " + SERVER_KEY[:6],
    ):
        assert secret not in output, f"secret fragment {secret[:8]}… found in logs"
    events = [orjson.loads(line).get("event") for line in lines if line.startswith("{")]
    for lifecycle in (
        "session.connected",
        "upstream.connecting",
        "upstream.connected",
        "upstream.ready",
        "prebuffer.flushed",
        "session.first_audio",
        "session.refused",
        "upstream.closed",
        "session.closed",
    ):
        assert lifecycle in events, lifecycle
    closed = [orjson.loads(line) for line in lines if '"session.closed"' in line]
    assert all("duration_s" in c and "client_bytes" in c and "cause" in c for c in closed)


def test_resume_tokens_console_cookies_and_login_links_never_reach_a_log(
    log_buffer: io.StringIO,
) -> None:
    """Every credential of the README's security model, logged by mistake, is masked."""
    resume_token, _ = mint_resume_token(
        SIGNING.encode(), session_id="sess_1", subject="user-1", generation=1
    )
    auth = ConsoleAuth(secret=SIGNING.encode())
    login = auth.new_login_token()
    redeemed = auth.redeem(auth.new_login_token())
    assert redeemed is not None
    cookie = redeemed[0]
    log = structlog.get_logger("voxgate.test")
    log.info("oops", token=resume_token, header=f"Cookie: voxgate_console={cookie}")
    log.info(f"GET /?login={login} HTTP/1.1")
    logging.getLogger("aiohttp.access").warning("GET /?login=%s -> 200", login)
    output = log_buffer.getvalue()
    for secret in (resume_token, resume_token[4:30], cookie, cookie[3:30], login):
        assert secret not in output, secret[:8]
    assert output.count("[redacted]") >= 4
