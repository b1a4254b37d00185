"""Client resume (issue #7): a ``voxgate.v1`` client drops, comes back, misses nothing.

Raw ``websockets`` clients (the library the SDKs use) opt in with ``voxgate.v1``, reach voxgate
through a :class:`FaultProxy` that cuts their connection (TCP reset, no close frame), and resume
on a new connection with the token from ``voxgate.session.resumable`` and the number of events
they had received. The fake upstream's record of what it sent is the ground truth: voxgate
forwards upstream events unchanged, so the client's events before the cut plus the replay
must be exactly that list, in order, none twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway_helpers import SERVER_KEY, SIGNING_SECRET, UPSTREAM_KEY, gateway_settings
from voxgate.auth import client_keys
from voxgate.testing import FakeRealtimeServer, FaultProxy
from voxgate.testing.gateway import RunningGateway, run_gateway

TIMEOUT_S = 10.0
OUTAGE_S = 15.0


@asynccontextmanager
async def rig(
    fake_kwargs: dict[str, Any] | None = None, **settings: Any
) -> AsyncIterator[tuple[FakeRealtimeServer, FaultProxy, RunningGateway]]:
    kwargs: dict[str, Any] = {"api_keys": {UPSTREAM_KEY}, "ping_interval_s": None}
    kwargs.update(fake_kwargs or {})
    async with FakeRealtimeServer(**kwargs) as fake:
        async with run_gateway(gateway_settings(fake.url, **settings)) as gw:
            async with FaultProxy(gw.host, gw.port) as proxy:
                yield fake, proxy, gw


class Client:
    """A raw voxgate.v1 client that counts what it received (voxgate.session.* excluded)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.control: list[dict[str, Any]] = []

    @property
    def received(self) -> int:
        return len(self.events)

    async def next(self, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.ws.recv(), timeout_s)
        event = orjson.loads(frame)
        if event["type"].startswith("voxgate.session."):
            self.control.append(event)
        else:
            self.events.append(event)
        return dict(event)

    async def until(self, etype: str, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
        async with asyncio.timeout(timeout_s):
            while True:
                event = await self.next(timeout_s)
                if event["type"] == etype:
                    return event

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(event).decode())


def url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"


async def open_session(port: int, key: str = SERVER_KEY) -> Client:
    ws = await connect(
        url(port),
        additional_headers={"Authorization": f"Bearer {key}"},
        subprotocols=["voxgate.v1"],  # type: ignore[list-item]
        ping_interval=None,
        max_size=None,
    )
    client = Client(ws)
    await client.until("session.created")
    resumable = await client.until("voxgate.session.resumable")
    assert resumable["resume_token"].startswith("vgr_")
    return client


async def resume(
    port: int, token: str, received: int, key: str | None = None
) -> tuple[Client, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    ws = await connect(
        url(port),
        additional_headers=headers,
        subprotocols=["voxgate.v1", "voxgate.resume"],  # type: ignore[list-item]
        ping_interval=None,
        max_size=None,
    )
    client = Client(ws)
    await client.send(
        {"type": "voxgate.session.resume", "resume_token": token, "received_events": received}
    )
    first = await client.next()
    return client, first


def token_of(client: Client) -> str:
    for event in reversed(client.control):
        if "resume_token" in event:
            return str(event["resume_token"])
    raise AssertionError("no resume token received")


async def expect_refused(client: Client, first: dict[str, Any]) -> None:
    assert first["type"] == "error"
    assert first["error"]["code"] == "voxgate_resume_refused"
    with pytest.raises(ConnectionClosed) as closed:
        await client.ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4000


@pytest.mark.slow
async def test_cut_mid_response_for_15_s_then_resume_gets_exactly_what_was_missed() -> None:
    async with rig({"response_pacing_s": 0.02}) as (fake, proxy, gw):
        client = await open_session(proxy.port)
        await client.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "tell me about stop loss orders"}],
                },
            }
        )
        await client.send({"type": "response.create"})
        await client.until("response.output_audio.delta")
        token = token_of(client)
        proxy.cut()
        upstream = await fake.wait_for_connection()
        await upstream.wait_for_sent("response.done", timeout_s=TIMEOUT_S)
        await asyncio.sleep(OUTAGE_S)  # the outage under test, not synchronisation
        assert not upstream.closed.is_set()  # the session and its upstream waited
        before = client.received
        back, first = await resume(gw.port, token, before)
        assert first["type"] == "voxgate.session.resumed"
        missed = first["replayed_events"]
        assert missed > 0
        for _ in range(missed):
            await back.next()
        got = [e["event_id"] for e in client.events + back.events]
        sent = [e["event_id"] for e in upstream.sent_events]
        assert got == sent  # in order, none lost, none twice
        assert back.events[-1]["type"] in ("response.done", "rate_limits.updated")
        # the session goes on over the new connection, with a fresh token
        assert first["resume_token"] != token
        await back.send({"type": "response.create"})
        done = await back.until("response.done")
        assert done["response"]["status"] == "completed"
        await back.ws.close()
        await client.ws.close()


async def test_a_resume_token_works_once_and_a_used_one_is_refused() -> None:
    async with rig() as (_, proxy, gw):
        client = await open_session(proxy.port)
        token = token_of(client)
        proxy.cut()
        back, first = await resume(gw.port, token, client.received)
        assert first["type"] == "voxgate.session.resumed"
        assert first["replayed_events"] == 0
        again, refused = await resume(gw.port, token, client.received)
        await expect_refused(again, refused)
        # the first resumed connection is untouched by the refused attempt
        await back.send({"type": "input_audio_buffer.clear"})
        cleared = await back.until("input_audio_buffer.cleared")
        assert cleared["type"] == "input_audio_buffer.cleared"
        await back.ws.close()


async def test_a_resume_token_is_refused_with_another_subjects_key() -> None:
    secret = SIGNING_SECRET.encode()
    alice, _ = client_keys.mint(secret, now=_now(), subject="alice")
    bob, _ = client_keys.mint(secret, now=_now(), subject="bob")
    async with rig() as (_, proxy, gw):
        client = await open_session(proxy.port, key=alice)
        token = token_of(client)
        proxy.cut()
        other, first = await resume(gw.port, token, client.received, key=bob)
        await expect_refused(other, first)
        forged, first = await resume(gw.port, token[:-2] + "xx", client.received)
        await expect_refused(forged, first)
        # the token itself still works for alice (a refusal does not consume it)
        mine, first = await resume(gw.port, token, client.received, key=alice)
        assert first["type"] == "voxgate.session.resumed"
        await mine.ws.close()


async def test_resume_works_after_the_ek_key_expired() -> None:
    secret = SIGNING_SECRET.encode()
    now = _now()
    key, claims = client_keys.mint(secret, now=now, ttl_s=10, subject="carol")
    clock = [now]
    async with rig() as (_, proxy, gw):
        endpoint = gw.app[_endpoint_key()]
        endpoint._clock = lambda: clock[0]
        client = await open_session(proxy.port, key=key)
        token = token_of(client)
        proxy.cut()
        clock[0] = claims.expires_at + 60  # the ek_ key is now expired
        back, first = await resume(gw.port, token, client.received)
        assert first["type"] == "voxgate.session.resumed"
        await back.ws.close()


async def test_grace_period_expiry_ends_the_session_and_closes_the_upstream() -> None:
    async with rig(resume_grace_s=1.0) as (fake, proxy, gw):
        client = await open_session(proxy.port)
        token = token_of(client)
        upstream = await fake.wait_for_connection()
        proxy.cut()
        await upstream.wait_closed(timeout_s=TIMEOUT_S)  # grace (1 s) ran out
        late, first = await resume(gw.port, token, client.received)
        await expect_refused(late, first)


async def test_asking_for_events_that_are_gone_is_refused() -> None:
    async with rig() as (_, proxy, gw):
        client = await open_session(proxy.port)
        token = token_of(client)
        proxy.cut()
        ahead, first = await resume(gw.port, token, client.received + 5)
        await expect_refused(ahead, first)


async def test_stock_clients_that_drop_end_their_session() -> None:
    async with rig() as (fake, proxy, _):
        ws = await connect(
            url(proxy.port),
            additional_headers={"Authorization": f"Bearer {SERVER_KEY}"},
            ping_interval=None,
        )
        client = Client(ws)
        await client.until("session.created")
        upstream = await fake.wait_for_connection()
        proxy.cut()
        assert await upstream.wait_closed(timeout_s=TIMEOUT_S) == 1000


def _now() -> float:
    import time

    return time.time()


def _endpoint_key() -> Any:
    from voxgate.app import ENDPOINT

    return ENDPOINT


async def test_acknowledged_events_leave_the_replay_log_and_cannot_be_asked_for() -> None:
    async with rig() as (_, proxy, gw):
        client = await open_session(proxy.port)
        token = token_of(client)
        await client.send({"type": "voxgate.session.ack", "received_events": client.received})
        await client.send({"type": "voxgate.session.ack", "received_events": "lots"})
        error = await client.until("error")
        assert error["error"]["param"] == "received_events"  # a bad ack is an error, not fatal
        proxy.cut()
        # the log let go of what was acknowledged: asking for it again is refused
        early, first = await resume(gw.port, token, 0)
        await expect_refused(early, first)
        back, first = await resume(gw.port, token, client.received)
        assert first["type"] == "voxgate.session.resumed"
        assert first["replayed_events"] == 0
        await back.ws.close()
