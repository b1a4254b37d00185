"""Several voxgate processes, one deployment (issue 17): a real redis-server, three real
``voxgate serve`` processes behind a real nginx, the fake OpenAI upstream (real socket) behind
all three, and raw ``voxgate.v1`` clients that resume as the browser client does.

Node deaths are ``kill -9``. Waits are for events (a client's event, an upstream record, a
process line) or bounded polls of the store for a condition; never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from cluster_client import V1Client
from cluster_helpers import Cluster, cluster, mint_key, until_store, wait_for_owner
from gateway_helpers import SERVER_KEY, UPSTREAM_KEY
from voxgate.session.snapshot import SessionSnapshot, decode
from voxgate.testing import FakeRealtimeServer, FaultProxy
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
    """The session's snapshot once ``pred`` holds for it (re-read on each store change)."""

    async def matching() -> SessionSnapshot | None:
        stored = await c.store.load_snapshot(session_id)
        if stored is None:
            return None
        snap = decode(stored.head, stored.items)
        return snap if pred(snap) else None

    return await until_store(c, matching, timeout_s)


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


async def test_a_client_that_resumes_on_another_node_while_its_node_lives_misses_nothing(
    tmp_path: Path,
) -> None:
    """A network cut mid-answer; the client comes back on another node: the live owner hands
    the session over (a final snapshot with its whole replay log), every event it sent while
    the client was away arrives once, and the session goes on there."""
    async with deployment(tmp_path) as (fake, c):
        key = await mint_key(c.http, "trader-2")
        async with FaultProxy("127.0.0.1", c.nodes[0].port) as proxy:
            client = V1Client(f"ws://127.0.0.1:{proxy.port}/v1/realtime?model=gpt-realtime", key)
            client.resume_url = c.node_url(1)
            client.hold_resume = asyncio.Event()
            await client.start()
            try:
                await turn(client, "Hello there.")
                sid = client.session_id
                assert sid is not None
                assert (await wait_for_owner(c, sid)).node == "node-0"
                start = len(client.events)
                await client.send(user_text("Tell me about margin."))
                await client.send({"type": "response.create"})
                await client.wait_type("response.output_audio.delta", start)
                upstream = fake.connections[-1]
                assert proxy.cut() >= 1
                # the answer goes on while the client is away: node-0 keeps it for replay
                sent = len(upstream.sent_of("response.output_audio.delta"))
                await upstream.wait_for_sent("response.output_audio.delta", sent + 5)
                client.hold_resume.set()
                resumed = await client.wait_resumes(1)
                assert resumed.event["moved"] == "migrated"  # handed over by a live node
                assert resumed.event["lost_events"] == 0
                assert resumed.event["replayed_events"] > 0  # sent while the client was away
                assert (await wait_for_owner(c, sid, not_node="node-0")).node == "node-1"
                # what node-0 sent before the hand-off, then the cut answer's end, once each
                await client.wait_for(
                    lambda e: (
                        e.get("type") == "response.done" and e["response"]["status"] == "failed"
                    ),
                    start=start,
                )
                after = await turn(client, "Go on.")
                assert after["response"]["status"] == "completed"
                ids = [e.get("event_id") for e in client.events]
                assert len(ids) == len(set(ids)) == client.received - client.binary_frames
                # node-0 let the session go: it runs nowhere else
                assert [r.session_id for r in await c.store.sessions()] == [sid]
            finally:
                await client.close()


async def test_sigterm_migrates_opted_in_calls_and_lets_stock_calls_finish(tmp_path: Path) -> None:
    async with deployment(tmp_path, DRAIN_TIMEOUT="30") as (_fake, c):
        key = await mint_key(c.http, "trader-3")
        v1 = V1Client(c.node_url(0), key, resume_url=c.url)
        stock = V1Client(c.node_url(0), key, extensions=False)
        await v1.start()
        await stock.start()
        try:
            await turn(v1, "First question.")
            await turn(stock, "A stock client's question.")
            sid = v1.session_id
            assert sid is not None
            c.nodes[0].proc.signal(signal.SIGTERM)  # type: ignore[union-attr]
            resumed = await v1.wait_resumes(1)
            assert resumed.why == "migrate"
            assert resumed.event["moved"] == "migrated"
            assert resumed.event["lost_events"] == 0
            after = await turn(v1, "Still there?")
            assert after["response"]["status"] == "completed"
            transcript = [
                e["transcript"]
                for e in v1.events
                if e.get("type") == "response.output_audio_transcript.done"
            ]
            assert transcript[-1].startswith("Turn 2:")  # the context moved with it
            # the stock client is not told anything and may go on while the node drains
            done = await turn(stock, "Another one?")
            assert done["response"]["status"] == "completed"
            assert not [e for e in stock.events if e["type"].startswith("voxgate.")]
            await stock.close()  # it leaves: the node has nothing left and exits
            assert await c.nodes[0].proc.wait(timeout_s=30) == 0  # type: ignore[union-attr]
            owner = await wait_for_owner(c, sid, not_node="node-0")
            assert owner.node in ("node-1", "node-2")
        finally:
            await v1.close()
            await stock.close()


async def test_per_subject_limits_count_sessions_on_every_node(tmp_path: Path) -> None:
    async with deployment(tmp_path, VOXGATE_MAX_SESSIONS_PER_SUBJECT="2") as (_fake, c):
        key = await mint_key(c.http, "trader-4")
        first = V1Client(c.node_url(0), key)
        second = V1Client(c.node_url(1), key)
        await first.start()
        await second.start()
        try:
            await turn(first, "one")
            await turn(second, "two")
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(
                    c.node_url(2), protocols=("realtime", f"openai-insecure-api-key.{key}")
                )
                refusal = orjson.loads((await ws.receive()).data)
                closing = await ws.receive()
                assert refusal["error"]["code"] == "voxgate_subject_limit"
                assert closing.type == aiohttp.WSMsgType.CLOSE
                assert ws.close_code == 1013
                other = await mint_key(c.http, "someone-else")
                ws2 = await http.ws_connect(
                    c.node_url(2), protocols=("realtime", f"openai-insecure-api-key.{other}")
                )
                created = orjson.loads((await ws2.receive()).data)
                assert created["type"] == "session.created"  # other subjects are not limited
                await ws2.close()
            await first.close()
            await wait_for_count(c, "trader-4", 1)
            third = V1Client(c.node_url(2), key)
            await third.start()
            await turn(third, "three")
            await third.close()
        finally:
            await first.close()
            await second.close()


async def wait_for_count(c: Cluster, subject: str, n: int) -> None:
    """Until the shared registry lists ``n`` sessions of ``subject`` (re-read on each change)."""

    async def counted() -> bool | None:
        return True if len(await c.store.sessions(subject)) == n else None

    await until_store(c, counted, 20.0)


async def test_an_admin_action_on_any_node_reaches_the_node_that_runs_the_session(
    tmp_path: Path,
) -> None:
    async with deployment(tmp_path) as (_fake, c):
        key = await mint_key(c.http, "trader-5")
        client = V1Client(c.node_url(0), key)
        await client.start()
        try:
            await turn(client, "hello")
            sid = client.session_id
            async with aiohttp.ClientSession() as http:
                listed = await (
                    await http.get(
                        f"{c.node_http(2)}/v1/sessions?subject=trader-5",
                        headers={"Authorization": f"Bearer {SERVER_KEY}"},
                    )
                ).json()
                assert [s["id"] for s in listed["data"]] == [sid]
                assert listed["data"][0]["node"] == "node-0"
                resp = await http.delete(
                    f"{c.node_http(2)}/v1/sessions/{sid}",
                    headers={"Authorization": f"Bearer {SERVER_KEY}"},
                )
                body = await resp.json()
                assert resp.status == 200, body
                assert body["node"] == "node-0"
            async with asyncio.timeout(10), client._changed:
                await client._changed.wait_for(lambda: client.ended is not None)
            assert client.ended is not None
            assert client.ended[0] == 1000
            async with aiohttp.ClientSession() as http:
                again = await http.delete(
                    f"{c.node_http(1)}/v1/sessions/{sid}",
                    headers={"Authorization": f"Bearer {SERVER_KEY}"},
                )
                assert again.status == 404
        finally:
            await client.close()


async def test_a_proactive_message_posted_to_another_node_is_delivered(tmp_path: Path) -> None:
    async with deployment(tmp_path) as (_fake, c):
        key = await mint_key(c.http, "trader-6")
        client = V1Client(c.node_url(0), key)
        await client.start()
        try:
            await turn(client, "hello")
            sid = client.session_id
            headers = {"Authorization": f"Bearer {SERVER_KEY}"}
            async with aiohttp.ClientSession() as http:
                resp = await http.post(
                    f"{c.node_http(2)}/v1/sessions/{sid}/messages",
                    headers=headers,
                    json={"text": "Your TSLA alert fired at 250.", "mode": "speak"},
                )
                posted = await resp.json()
                assert resp.status == 202, posted
                delivered = await client.wait_type("voxgate.message.delivered")
                assert delivered["message_id"] == posted["id"]
                # its record is read back from a third node, forwarded to the session's node
                got = await http.get(
                    f"{c.node_http(1)}/v1/sessions/{sid}/messages/{posted['id']}?wait=10",
                    headers=headers,
                )
                record = await got.json()
                assert got.status == 200, record
                assert record["status"] == "delivered"
                missing = await http.post(
                    f"{c.node_http(1)}/v1/sessions/vg_nosuchsession/messages",
                    headers=headers,
                    json={"text": "anyone?"},
                )
                assert missing.status == 404
        finally:
            await client.close()


async def test_a_frozen_owner_is_taken_over_and_never_runs_the_session_again(
    tmp_path: Path,
) -> None:
    """The owner is alive but frozen (SIGSTOP): after the hand-off timeout the new node takes
    the session anyway; when the old node wakes up it finds the session is not its own any more
    (its snapshot writes are refused) and ends its copy, upstream included."""
    async with deployment(tmp_path, VOXGATE_HANDOFF_TIMEOUT_S="1") as (fake, c):
        key = await mint_key(c.http, "trader-7")
        async with FaultProxy("127.0.0.1", c.nodes[0].port) as proxy:
            client = V1Client(f"ws://127.0.0.1:{proxy.port}/v1/realtime?model=gpt-realtime", key)
            client.resume_url = c.node_url(1)
            await client.start()
            frozen = c.nodes[0].proc
            assert frozen is not None
            try:
                await turn(client, "Hello.")
                sid = client.session_id
                assert sid is not None
                old_upstream = fake.connections[-1]
                frozen.signal(signal.SIGSTOP)
                assert proxy.cut() >= 1
                resumed = await client.wait_resumes(1)
                assert resumed.event["moved"] == "node_lost"  # taken from its last snapshot
                assert (await wait_for_owner(c, sid, not_node="node-0")).node == "node-1"
                frozen.signal(signal.SIGCONT)
                await old_upstream.wait_closed(timeout_s=20)  # node-0 let its copy go
                after = await turn(client, "Still with me?")
                assert after["response"]["status"] == "completed"
                owner = await c.owner(sid)
                assert owner is not None
                assert owner.node == "node-1"
                snap = await snapshot_where(c, sid, lambda s: s.node == "node-1")
                assert [i for i, _ in snap.items]  # node-1's conversation, not overwritten
            finally:
                frozen.signal(signal.SIGCONT)
                await client.close()
