"""Issue 12, the session-core items: what a hostile client and a bad upstream found.

* 12.1 an upstream that echoes the gateway's key (in full, masked, in a URL) while refusing a
  reconnect never gets it in front of the client: every text goes through the redaction path;
* 12.2 a key's model binds: the ``?model=`` a client sends does not open another model;
* 12.3 resume cannot be starved: 300 silent, credential-less resume handshakes from the
  client's own address do not stop a genuine resume;
* 12.8 a second cut in the middle of a multi-second replay is one more attempt, not the end.

Each test fails on the code before issue 11/12 (see the closing note of the issue).
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest
from structlog.testing import capture_logs
from websockets.asyncio.client import connect

from gateway_helpers import SERVER_KEY, UPSTREAM_KEY, gateway_settings, recv_until
from test_client_resume import open_session, resume, token_of
from voxgate.app import ENDPOINT
from voxgate.testing import ConnectionRecord, FakeRealtimeServer, FaultProxy
from voxgate.testing.gateway import run_gateway

TIMEOUT_S = 15.0


async def _v1_socket(http: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    return await http.ws_connect(
        url, headers={"Authorization": f"Bearer {SERVER_KEY}"}, protocols=["voxgate.v1"]
    )


@pytest.mark.parametrize("code", ["model_not_found", "invalid_api_key"])
async def test_a_refusing_upstream_that_echoes_the_key_never_shows_it_to_the_client(
    code: str,
) -> None:
    echoed = (
        f"Refused {UPSTREAM_KEY}; key {UPSTREAM_KEY[:7]}****{UPSTREAM_KEY[-4:]}; see "
        f"wss://user:{UPSTREAM_KEY}@upstream.example/v1?api_key={UPSTREAM_KEY}"
    )
    async with (
        FakeRealtimeServer(api_keys={UPSTREAM_KEY}, ping_interval_s=None) as fake,
        FaultProxy("127.0.0.1", fake.port) as proxy,
        run_gateway(gateway_settings(proxy.url_for(fake.url))) as gw,
        aiohttp.ClientSession() as http,
    ):
        ws = await _v1_socket(http, gw.realtime_url())
        await recv_until(ws, "session.created")
        fake.fail_next_connections(code, count=5, message=echoed, close_code=1011)
        proxy.cut()
        frames: list[str] = []
        async with asyncio.timeout(TIMEOUT_S):
            while not ws.closed:
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    frames.append(msg.data)
        events = [orjson.loads(f) for f in frames]
        lost = [e for e in events if e["type"] == "voxgate.upstream.lost"]
        assert lost, events
        everything = "\n".join(frames)
        for secret in (UPSTREAM_KEY, UPSTREAM_KEY[-12:], UPSTREAM_KEY[-4:]):
            assert secret not in everything
        if code == "invalid_api_key":  # the gateway's key, not the client's (12.9)
            assert lost[0]["reason"] == "voxgate_upstream_auth_failed"
        else:
            assert "[redacted]" in lost[0]["reason"]
            assert code in everything  # the reason is still there, only the secrets are not


async def test_a_keys_model_binds_whatever_model_the_url_names() -> None:
    async with (
        FakeRealtimeServer(api_keys={UPSTREAM_KEY}, ping_interval_s=None) as fake,
        run_gateway(gateway_settings(fake.url)) as gw,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(
            f"{gw.http_url}/v1/realtime/client_secrets",
            headers={"Authorization": f"Bearer {SERVER_KEY}"},
            json={"session": {"type": "realtime", "model": "gpt-realtime-mini"}},
        ) as resp:
            assert resp.status == 200, await resp.text()
            key = (await resp.json())["value"]
        async with http.ws_connect(
            gw.realtime_url("model=gpt-realtime-2"), headers={"Authorization": f"Bearer {key}"}
        ) as ws:
            await recv_until(ws, "session.created")
        record = await fake.wait_for_connection(1)
        assert record.handshake.model == "gpt-realtime-mini"


async def test_silent_resume_handshakes_from_the_same_address_do_not_starve_a_genuine_resume() -> (
    None
):
    async with (
        FakeRealtimeServer(api_keys={UPSTREAM_KEY}, ping_interval_s=None) as fake,
        run_gateway(gateway_settings(fake.url, resume_wait_s=30.0)) as gw,
        FaultProxy(gw.host, gw.port) as proxy,
    ):
        client = await open_session(proxy.port)
        token = token_of(client)
        proxy.cut()
        silent = []
        for _ in range(300):  # more than the global bound, all from 127.0.0.1, none speaks
            silent.append(
                await connect(
                    f"ws://127.0.0.1:{gw.port}/v1/realtime?model=gpt-realtime",
                    subprotocols=["voxgate.v1", "voxgate.resume"],  # type: ignore[list-item]
                    ping_interval=None,
                )
            )
        back, first = await resume(gw.port, token, client.received)
        assert first["type"] == "voxgate.session.resumed"
        await back.send({"type": "input_audio_buffer.clear"})
        assert (await back.until("input_audio_buffer.cleared"))["type"] == (
            "input_audio_buffer.cleared"
        )
        await back.ws.close()
        for ws in silent:
            await ws.close()


async def _appended(record: ConnectionRecord, n_bytes: int) -> None:
    """Wait (woken by the fake, no polling) until ``record`` got ``n_bytes`` of appended audio."""

    def probe() -> bool | None:
        return True if record.audio.total_appended >= n_bytes else None

    await record.wait_until(probe, TIMEOUT_S, f"{n_bytes} bytes appended")


def _audio(n_bytes: int) -> bytes:
    return bytes((i * 7 + i // 251) & 0xFF for i in range(n_bytes))


async def test_a_second_cut_in_the_middle_of_a_multi_second_replay_is_another_attempt() -> None:
    audio = _audio(48_000 * 20)  # 20 s of manual-turn audio the upstream must get back
    async with (
        FakeRealtimeServer(api_keys={UPSTREAM_KEY}, ping_interval_s=None) as fake,
        # a small proxy buffer: voxgate's replay sends block, as on a slow real link
        FaultProxy("127.0.0.1", fake.port, buffer_limit_bytes=64 * 1024) as proxy,
        run_gateway(gateway_settings(proxy.url_for(fake.url), client_max_audio_realtime=0)) as gw,
        aiohttp.ClientSession() as http,
    ):
        ws = await _v1_socket(http, gw.realtime_url())
        await recv_until(ws, "session.created")
        await ws.send_str(
            orjson.dumps(
                {
                    "type": "session.update",
                    "session": {
                        "type": "realtime",
                        "output_modalities": ["text"],
                        "audio": {"input": {"turn_detection": None}},
                    },
                }
            ).decode()
        )
        await recv_until(ws, "session.updated")
        for i in range(0, len(audio), 4800):
            await ws.send_bytes(audio[i : i + 4800])
        first = await fake.wait_for_connection(1)
        await _appended(first, len(audio))
        proxy.set_throttle(200_000, "to_target")  # the replay of 1.3 MB now takes seconds
        proxy.cut()
        second = await fake.wait_for_connection(2)
        await _appended(second, 48_000)
        proxy.cut()  # mid-replay: the second upstream got some audio, not all
        proxy.set_throttle(None)
        reconnected = await recv_until(ws, "voxgate.upstream.reconnected", TIMEOUT_S * 2)
        assert not [e for e in reconnected if e["type"] == "error"], reconnected
        await ws.send_str('{"type":"input_audio_buffer.commit"}')
        await recv_until(ws, "input_audio_buffer.committed")
        third = fake.connections[-1]
        assert third.conn_id >= 3
        (_, committed) = third.audio.committed[-1]
        assert committed == audio  # every byte once, in order, on the upstream that committed
        await ws.close()


async def test_a_session_that_ended_with_an_error_counts_it_in_its_closing_log_line() -> None:
    """Issue 12.14: ``session.closed`` said ``errors_sent=0`` for a session that sent one."""
    nowhere = gateway_settings("ws://127.0.0.1:1/v1/realtime", ready_timeout_s=0.5)
    with capture_logs() as logs:
        async with (
            run_gateway(nowhere) as gw,
            aiohttp.ClientSession() as http,
            http.ws_connect(
                gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}
            ) as ws,
        ):
            error = await recv_until(ws, "error")
            assert error[-1]["error"]["code"] == "voxgate_upstream_unreachable"
            assert await gw.app[ENDPOINT].wait_idle(TIMEOUT_S)
    (closed,) = [e for e in logs if e["event"] == "session.closed"]
    assert closed["errors_sent"] == 1
    assert closed["close_code"] == 1013  # an int, not <CloseCode.TRY_AGAIN_LATER: 1013>
