"""A rolling restart of all three nodes during 50 calls loses no call (issue 17).

Three real ``voxgate serve`` processes behind a real nginx, one real redis-server, the fake
upstream behind all three. Fifty raw ``voxgate.v1`` clients hold calls through nginx; each node
in turn is sent SIGTERM (drain: its calls are told ``voxgate.session.migrate`` and resume on the
others), exits, and is started again; between restarts every call takes another turn. At the end
every call is the session it started as, every turn was answered with the whole conversation
as context, and no event arrived twice.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cluster_client import V1Client
from cluster_helpers import mint_key
from test_cluster import deployment, turn

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CALLS = 50


async def test_rolling_restart_of_every_node_during_50_calls_loses_none(tmp_path: Path) -> None:
    async with deployment(tmp_path, DRAIN_TIMEOUT="60") as (fake, c):
        keys = await asyncio.gather(*(mint_key(c.http, f"caller-{n}") for n in range(CALLS)))
        clients = [V1Client(c.url, key) for key in keys]
        try:
            await asyncio.gather(*(client.start() for client in clients))
            await asyncio.gather(*(turn(client, "Turn one.") for client in clients))
            sessions = [client.session_id for client in clients]
            assert None not in sessions
            assert len(set(sessions)) == CALLS
            placed = {r.node for r in await c.store.sessions()}
            assert len(placed) == 3  # nginx spread the calls over every node

            for i in range(3):
                assert await c.terminate(i) == 0  # drained: every call moved off it
                assert not [r for r in await c.store.sessions() if r.node == f"node-{i}"]
                await c.start_node(i)
                await asyncio.gather(
                    *(turn(client, f"Turn after restart {i}.") for client in clients)
                )

            for client, sid in zip(clients, sessions, strict=True):
                assert client.refused is None
                assert client.session_id == sid
                for resumed in client.resumes:
                    assert resumed.event["session_id"] == sid
                    assert resumed.event["lost_events"] == 0
                transcripts = [
                    e["transcript"]
                    for e in client.events
                    if e.get("type") == "response.output_audio_transcript.done"
                ]
                # every turn answered once, with every earlier turn in its context
                assert [t.split(":")[0] for t in transcripts] == [
                    "Turn 1",
                    "Turn 2",
                    "Turn 3",
                    "Turn 4",
                ]
                ids = [e.get("event_id") for e in client.events]
                assert len(ids) == len(set(ids))
            moved = sum(len(client.resumes) for client in clients)
            assert moved >= CALLS  # every call was on some node that restarted
            assert len(await c.store.sessions()) == CALLS
            print(f"calls={CALLS} moves={moved} upstream_connections={len(fake.connections)}")
        finally:
            for n, client in enumerate(clients):
                if client.attempt_errors or client.refused:
                    print(f"client {n}: refused={client.refused} {client.attempt_errors[:6]}")
            await asyncio.gather(*(client.close() for client in clients))
