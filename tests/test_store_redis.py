"""RedisStore beyond the common contract (tests/test_store.py): several nodes on one real
redis-server, per-node slot counts that die with their node, TTLs on everything a session
leaves behind, and prefixes that keep deployments apart."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator

import pytest

from redis_helpers import RedisServer, redis_server
from voxgate.store.base import SessionRecord, SlotRefused
from voxgate.store.redis import RedisStore

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
async def nodes(redis: RedisServer) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    prefix = f"r{next(_prefixes)}"
    a = RedisStore(redis.url, node="node-a", prefix=prefix, session_ttl_s=60)
    b = RedisStore(redis.url, node="node-b", prefix=prefix, session_ttl_s=60)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


async def test_limits_count_every_nodes_sessions(nodes: tuple[RedisStore, RedisStore]) -> None:
    a, b = nodes
    await a.acquire_slot("u", max_total=3, max_per_subject=2)
    await b.acquire_slot("u", max_total=3, max_per_subject=2)
    with pytest.raises(SlotRefused) as caught:
        await a.acquire_slot("u", max_total=3, max_per_subject=2)
    assert (caught.value.code, caught.value.count) == ("voxgate_subject_limit", 2)
    await b.acquire_slot("v", max_total=3, max_per_subject=2)
    with pytest.raises(SlotRefused) as full:
        await b.acquire_slot("w", max_total=3, max_per_subject=2)
    assert (full.value.code, full.value.count) == ("voxgate_capacity_exceeded", 3)
    await a.release_slot("u")
    await b.acquire_slot("u", max_total=3, max_per_subject=2)  # room again, on any node


async def test_a_dead_nodes_sessions_stop_counting_when_its_heartbeat_lapses(
    redis: RedisServer, nodes: tuple[RedisStore, RedisStore]
) -> None:
    a, b = nodes
    await a.acquire_slot("u", max_total=10, max_per_subject=1)
    with pytest.raises(SlotRefused):
        await b.acquire_slot("u", max_total=10, max_per_subject=1)
    # node-a's heartbeat lapses (its process died): its score is in the past
    redis.cli("ZADD", f"{a.prefix}:nodes", "1", "node-a")
    assert not await b.node_alive("node-a")
    await b.acquire_slot("u", max_total=10, max_per_subject=1)
    assert await b.active_on("node-a") == 0  # the dead node's counts were dropped
    assert redis.cli("EXISTS", f"{a.prefix}:slots:node-a") == "0"


async def test_everything_a_session_leaves_has_a_ttl(
    redis: RedisServer, nodes: tuple[RedisStore, RedisStore]
) -> None:
    a, _ = nodes
    await a.register(SessionRecord("s1", "node-a", "u", 1.0, True))
    await a.rotate_resume("s1", "nonce")
    assert await a.save_snapshot("s1", "node-a", b"head", {"i1": b"item"}, (), ttl_s=45)
    for kind in ("s", "r", "h", "i"):
        ttl_ms = int(redis.cli("PTTL", f"{a.prefix}:{kind}:s1"))
        assert 0 < ttl_ms <= 60_000, kind
    await a.touch(["s1"], ttl_s=5)
    for kind in ("s", "r", "h", "i"):
        assert 0 < int(redis.cli("PTTL", f"{a.prefix}:{kind}:s1")) <= 5_000, kind
    await a.revoke_key("k1", until_s=1_000_030.0, now_s=1_000_000.0)
    assert 0 < int(redis.cli("PTTL", f"{a.prefix}:k:k1")) <= 30_000


async def test_a_listing_forgets_sessions_whose_keys_expired(
    redis: RedisServer, nodes: tuple[RedisStore, RedisStore]
) -> None:
    a, b = nodes
    await a.register(SessionRecord("s1", "node-a", "u", 1.0, True))
    await a.register(SessionRecord("s2", "node-a", "u", 2.0, True))
    redis.cli("DEL", f"{a.prefix}:s:s1")  # expired with its dead node
    assert [r.session_id for r in await b.sessions("u")] == ["s2"]
    assert redis.cli("SISMEMBER", f"{a.prefix}:u:u", "s1") == "0"
    assert [r.session_id for r in await b.sessions()] == ["s2"]


async def test_prefixes_keep_deployments_apart(redis: RedisServer) -> None:
    one = RedisStore(redis.url, node="n", prefix=f"x{next(_prefixes)}")
    two = RedisStore(redis.url, node="n", prefix=f"y{next(_prefixes)}")
    try:
        await one.register(SessionRecord("s1", "n", None, 1.0, False))
        assert await two.session("s1") is None
        await one.acquire_slot(None, max_total=1, max_per_subject=1)
        await two.acquire_slot(None, max_total=1, max_per_subject=1)
    finally:
        await one.aclose()
        await two.aclose()
