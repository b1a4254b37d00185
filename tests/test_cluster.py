"""Several voxgate processes, one deployment (issue 17): a real redis-server, three real
``voxgate serve`` processes behind a real nginx, the fake OpenAI upstream (real socket) behind
all three, and raw ``voxgate.v1`` clients that resume as the browser client does.

Node deaths are ``kill -9``. Waits are for events (a client's event, an upstream record, a
process line) or bounded polls of the store for a condition; never fixed sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from cluster_client import V1Client
from cluster_helpers import Cluster, cluster, mint_key, wait_for_owner
from gateway_helpers import UPSTREAM_KEY
from voxgate.session.snapshot import SessionSnapshot, decode
from voxgate.testing import FakeRealtimeServer
from voxgate.testing.responder import ResponseContext, Say

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

FRAME = b"\x00\x00" * 2400  # 100 ms of 24 kHz PCM16 silence


def _answer(ctx: ResponseContext) -> list[Say]:
    """Says how many user turns it can see: the context survives a move, or the count shows."""
    users = [i for i in ctx.items if i.get("type") == "message" and i.get("role") == "user"]
    text = ctx.latest_user_text() or "audio"
    return [Say(f"Turn {len(users)}: you said {text} and this answer takes a while to say.")]


def _transcribe(audio: bytes, fmt: Mapping[str, Any]) -> str:
    return "spoken words"


@asynccontextmanager
async def deployment(
    tmp: Path, **settings: str
) -> AsyncIterator[tuple[FakeRealtimeServer, Cluster]]:
    async with (
        FakeRealtimeServer(
            api_keys={UPSTREAM_KEY},
            responder=_answer,
            transcriber=_transcribe,
            ping_interval_s=None,
            response_pacing_s=0.04,
        ) as fake,
        cluster(fake.url, tmp, **settings) as c,
    ):
        yield fake, c


async def snapshot_where(
    c: Cluster, session_id: str, pred: Any, timeout_s: float = 20.0
) -> SessionSnapshot:
    """The session's snapshot once ``pred`` holds for it (a bounded poll of the store)."""
    async with asyncio.timeout(timeout_s):
        while True:
            stored = await c.store.load_snapshot(session_id)
            if stored is not None:
                snap = decode(stored.head, stored.items)
                if pred(snap):
                    return snap
            await asyncio.sleep(0.02)


def user_text(text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        },
    }


async def turn(client: V1Client, text: str) -> dict[str, Any]:
    """One text turn answered in full; the response.done."""
    start = len(client.events)
    await client.send(user_text(text))
    await client.send({"type": "response.create"})
    return await client.wait_type("response.done", start)


async def test_kill_9_mid_answer_the_client_resumes_on_another_node_and_goes_on(
    tmp_path: Path,
) -> None:
    async with deployment(tmp_path) as (fake, c):
        key = await mint_key(c.http, "trader-1")
        client = V1Client(c.url, key)
        await client.start()
        try:
            done = await turn(client, "What is a stop loss?")
            assert done["response"]["status"] == "completed"
            assert client.session_id is not None
            sid = client.session_id
            owner = await wait_for_owner(c, sid)
            victim = c.index_of(owner.node)

            # a second answer is streaming: the snapshot knows it runs, then the node dies
            start = len(client.events)
            await client.send(user_text("And a trailing stop?"))
            await client.send({"type": "response.create"})
            await client.wait_type("response.output_audio.delta", start)
            await snapshot_where(c, sid, lambda s: len(s.running) == 1)
            await client.send_audio(FRAME)
            await c.kill(victim)

            resumed = await client.wait_resumes(1)
            assert resumed.why == "drop"
            assert resumed.event["session_id"] == sid
            assert resumed.event["moved"] == "node_lost"
            new_owner = await wait_for_owner(c, sid, not_node=owner.node)
            assert new_owner.node != owner.node

            # the cut answer is ended for the client, then the conversation goes on
            failed = await client.wait_for(
                lambda e: e.get("type") == "response.done" and e["response"]["status"] == "failed",
                start=start,
            )
            assert failed["response"]["status_details"]["error"]["code"] == "voxgate_upstream_lost"
            after = await turn(client, "Thanks, one more question.")
            assert after["response"]["status"] == "completed"
            transcript = [
                e["transcript"]
                for e in client.events
                if e.get("type") == "response.output_audio_transcript.done"
            ]
            # the rebuilt upstream saw the earlier turns (the snapshot's items)
            assert transcript[-1].startswith("Turn 3: you said Thanks")
            rebuilt = fake.connections[-1]
            replayed = [
                ev["item"]["content"][0].get("text")
                for ev in rebuilt.events_of("conversation.item.create")
            ]
            assert replayed[:2] == [
                "What is a stop loss?",
                "Turn 1: you said What is a stop loss? and this answer takes a while to say.",
            ]
            # audio flows again on the new node: input arrives upstream, output comes back
            await client.send_audio(FRAME)
            await rebuilt.wait_until(
                lambda: True if rebuilt.audio.total_appended >= len(FRAME) else None,
                10,
                "audio at the new upstream",
            )
            # every numbered event exactly once (V1Client fails on a duplicate id), in order
            ids = [e.get("event_id") for e in client.events]
            assert len(ids) == len(set(ids)) == client.received - client.binary_frames
        finally:
            await client.close()
