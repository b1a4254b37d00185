"""The Store contract, run against both stores: MemoryStore and RedisStore (a real redis-server).

The registry, concurrency slots, single-use resume state, key revocation, ownership,
snapshots, node liveness and node channels. Redis-only behaviour (TTLs, a dead node's slots,
several processes) is in test_store_redis.py; the memory store's own bounds are at the end.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator

import pytest

from redis_helpers import RedisServer, redis_server
from voxgate.store.base import RELEASED, SessionRecord, SlotRefused, Store
from voxgate.store.memory import MemoryStore
from voxgate.store.redis import RedisStore

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    server: RedisServer = request.getfixturevalue("redis")
    redis_store = RedisStore(server.url, node="node-1", prefix=f"t{next(_prefixes)}")
    try:
        yield redis_store
    finally:
        await redis_store.aclose()


async def active(store: Store) -> int:
    """Sessions counted in by this node."""
    if isinstance(store, MemoryStore):
        return store.active
    assert isinstance(store, RedisStore)
    return await store.active_on(store.node)


# ---------------------------------------------------------------------------- slots


async def test_total_limit_refuses_with_capacity_exceeded(store: Store) -> None:
    await store.acquire_slot(None, max_total=2, max_per_subject=10)
    await store.acquire_slot("u", max_total=2, max_per_subject=10)
    with pytest.raises(SlotRefused) as caught:
        await store.acquire_slot("v", max_total=2, max_per_subject=10)
    assert (caught.value.code, caught.value.count, caught.value.limit) == (
        "voxgate_capacity_exceeded",
        2,
        2,
    )
    # the refusal counted nobody in: one release makes room for exactly one
    await store.release_slot(None)
    await store.acquire_slot("v", max_total=2, max_per_subject=10)
    with pytest.raises(SlotRefused):
        await store.acquire_slot("w", max_total=2, max_per_subject=10)


async def test_subject_limit_refuses_with_subject_limit_and_spares_others(store: Store) -> None:
    await store.acquire_slot("u", max_total=10, max_per_subject=2)
    await store.acquire_slot("u", max_total=10, max_per_subject=2)
    with pytest.raises(SlotRefused) as caught:
        await store.acquire_slot("u", max_total=10, max_per_subject=2)
    assert (caught.value.code, caught.value.count, caught.value.limit) == (
        "voxgate_subject_limit",
        2,
        2,
    )
    await store.acquire_slot("v", max_total=10, max_per_subject=2)
    for _ in range(5):  # no subject: only the total applies
        await store.acquire_slot(None, max_total=10, max_per_subject=2)
    assert await active(store) == 8  # the refused one was not counted


async def test_release_frees_the_subjects_slot(store: Store) -> None:
    await store.acquire_slot("u", max_total=10, max_per_subject=1)
    await store.release_slot("u")
    assert await active(store) == 0
    await store.acquire_slot("u", max_total=10, max_per_subject=1)
    with pytest.raises(SlotRefused):
        await store.acquire_slot("u", max_total=10, max_per_subject=1)


async def test_release_never_counts_below_zero(store: Store) -> None:
    await store.release_slot("u")
    await store.release_slot(None)
    assert await active(store) == 0
    await store.acquire_slot("u", max_total=1, max_per_subject=1)
    with pytest.raises(SlotRefused):
        await store.acquire_slot(None, max_total=1, max_per_subject=1)


# ---------------------------------------------------------------------------- registry


def record(sid: str, subject: str | None, started_at: float) -> SessionRecord:
    return SessionRecord(sid, "node-1", subject, started_at, resumable=True)


async def test_sessions_are_listed_oldest_first_and_by_subject(store: Store) -> None:
    await store.register(record("s2", "u", 20.0))
    await store.register(record("s1", "u", 10.0))
    await store.register(record("s3", "v", 15.0))
    assert [r.session_id for r in await store.sessions()] == ["s1", "s3", "s2"]
    assert [r.session_id for r in await store.sessions("u")] == ["s1", "s2"]
    await store.register(record("s1", "u", 30.0))  # replaces the earlier record
    assert [r.session_id for r in await store.sessions("u")] == ["s2", "s1"]
    assert await store.session("s3") == record("s3", "v", 15.0)


async def test_unregister_forgets_the_session_and_its_resume_state(store: Store) -> None:
    await store.register(record("s1", None, 1.0))
    generation = await store.rotate_resume("s1", "n1")
    await store.unregister("s1")
    assert await store.session("s1") is None
    assert not await store.consume_resume("s1", generation, "n1")
    await store.unregister("s1")  # twice: harmless


# ---------------------------------------------------------------------------- resume


async def test_resume_token_is_single_use(store: Store) -> None:
    generation = await store.rotate_resume("s1", "nonce-1")
    assert await store.consume_resume("s1", generation, "nonce-1")
    assert not await store.consume_resume("s1", generation, "nonce-1")


async def test_rotation_voids_every_older_token(store: Store) -> None:
    g1 = await store.rotate_resume("s1", "nonce-1")
    g2 = await store.rotate_resume("s1", "nonce-2")
    assert g2 == g1 + 1
    assert not await store.consume_resume("s1", g1, "nonce-1")
    assert not await store.consume_resume("s1", g2, "nonce-1")  # old nonce, new generation
    assert not await store.consume_resume("s1", g1, "nonce-2")  # new nonce, old generation
    assert not await store.consume_resume("s1", g2 + 1, "nonce-2")
    assert await store.consume_resume("s1", g2, "nonce-2")


async def test_wrong_nonce_or_session_is_refused_and_leaves_the_token_usable(store: Store) -> None:
    generation = await store.rotate_resume("s1", "nonce-1")
    assert not await store.consume_resume("s1", generation, "nonce-X")
    assert not await store.consume_resume("s1", generation, "")
    assert not await store.consume_resume("s1", generation, "nonce-1é")
    assert not await store.consume_resume("s2", generation, "nonce-1")
    assert await store.consume_resume("s1", generation, "nonce-1")


async def test_generations_continue_across_consumption(store: Store) -> None:
    g1 = await store.rotate_resume("s1", "a")
    await store.consume_resume("s1", g1, "a")
    g2 = await store.rotate_resume("s1", "b")
    assert g2 > g1
    assert await store.consume_resume("s1", g2, "b")


async def test_consumed_generation_accepts_no_nonce_at_all(store: Store) -> None:
    generation = await store.rotate_resume("s1", "nonce-1")
    assert await store.consume_resume("s1", generation, "nonce-1")
    assert not await store.consume_resume("s1", generation, "")


async def test_unregister_by_a_node_that_no_longer_owns_the_session_keeps_it(
    store: Store,
) -> None:
    await store.register(record("s1", "u", 1.0))
    assert await store.claim("s1", "node-2", owner="node-1")
    await store.unregister("s1", node="node-1")  # the old owner ends its runner
    assert (await store.session("s1")) == SessionRecord("s1", "node-2", "u", 1.0, True)
    await store.unregister("s1", node="node-2")
    assert await store.session("s1") is None


# ---------------------------------------------------------------------------- ownership


async def test_claim_is_a_compare_and_set_on_the_owner(store: Store) -> None:
    await store.register(record("s1", None, 1.0))
    assert not await store.claim("s1", "node-3", owner="node-2")  # not its owner
    assert not await store.claim("other", "node-3", owner="node-1")  # no such session
    assert await store.claim("s1", RELEASED, owner="node-1")  # parked
    assert await store.sessions() == []  # a parked session runs nowhere
    assert not await store.claim("s1", "node-2", owner="node-1")
    assert await store.claim("s1", "node-2", owner=RELEASED)
    assert not await store.claim("s1", "node-3", owner=RELEASED)  # only one node gets it
    assert (await store.session("s1")) is not None
    assert (await store.session("s1")).node == "node-2"  # type: ignore[union-attr]


async def test_two_nodes_claiming_at_once_one_wins(store: Store) -> None:
    await store.register(record("s1", None, 1.0))
    await store.claim("s1", RELEASED, owner="node-1")
    won = await asyncio.gather(
        *(store.claim("s1", f"node-{n}", owner=RELEASED) for n in range(2, 12))
    )
    assert sum(won) == 1


# ---------------------------------------------------------------------------- snapshots


async def test_snapshot_round_trips_and_items_change_by_id(store: Store) -> None:
    await store.register(record("s1", None, 1.0))
    assert await store.load_snapshot("s1") is None
    assert await store.save_snapshot(
        "s1", "node-1", b"head-1", {"a": b"A", "b": b"B"}, (), ttl_s=60
    )
    first = await store.load_snapshot("s1")
    assert first is not None
    assert (first.head, first.items) == (b"head-1", {"a": b"A", "b": b"B"})
    assert await store.save_snapshot("s1", "node-1", b"head-2", {"c": b"C"}, ("a",), ttl_s=60)
    second = await store.load_snapshot("s1")
    assert second is not None
    assert (second.head, second.items) == (b"head-2", {"b": b"B", "c": b"C"})


async def test_only_the_owner_writes_a_snapshot(store: Store) -> None:
    await store.register(record("s1", None, 1.0))
    assert await store.save_snapshot("s1", "node-1", b"mine", {}, (), ttl_s=60)
    assert await store.claim("s1", "node-2", owner="node-1")
    assert not await store.save_snapshot("s1", "node-1", b"stale", {"x": b"X"}, (), ttl_s=60)
    snap = await store.load_snapshot("s1")
    assert snap is not None
    assert (snap.head, snap.items) == (b"mine", {})
    assert not await store.save_snapshot("nobody", "node-1", b"h", {}, (), ttl_s=60)


async def test_unregister_drops_the_snapshot(store: Store) -> None:
    await store.register(record("s1", None, 1.0))
    await store.save_snapshot("s1", "node-1", b"h", {"a": b"A"}, (), ttl_s=60)
    await store.unregister("s1")
    assert await store.load_snapshot("s1") is None


# ---------------------------------------------------------------------------- nodes


async def test_a_node_is_alive_while_its_heartbeat_lasts(store: Store) -> None:
    assert not await store.node_alive("node-9")
    await store.heartbeat("node-9", ttl_s=30)
    assert await store.node_alive("node-9")
    assert not await store.node_alive(RELEASED)


async def test_messages_reach_the_nodes_channel_in_order(store: Store) -> None:
    got: list[bytes] = []
    arrived = asyncio.Event()

    def on_message(data: bytes) -> None:
        got.append(data)
        if len(got) == 3:
            arrived.set()

    assert await store.publish("node-7", b"nobody listens") == 0
    await store.subscribe("node-7", on_message)
    for n in range(3):
        assert await store.publish("node-7", f"m{n}".encode()) == 1
    async with asyncio.timeout(5):
        await arrived.wait()
    assert got == [b"m0", b"m1", b"m2"]
    assert await store.publish("node-8", b"other node") == 0


# ---------------------------------------------------------------------------- revocation


async def test_key_is_revoked_until_its_time(store: Store) -> None:
    await store.revoke_key("k1", until_s=100.0, now_s=0.0)
    assert await store.is_revoked("k1", 99.9)
    assert not await store.is_revoked("k1", 100.0)
    assert not await store.is_revoked("other", 50.0)


async def test_expired_revocations_are_dropped_when_one_is_added() -> None:
    store = MemoryStore()
    await store.revoke_key("old-1", until_s=10.0, now_s=0.0)
    await store.revoke_key("old-2", until_s=20.0, now_s=0.0)
    await store.revoke_key("live", until_s=500.0, now_s=0.0)
    await store.revoke_key("new", until_s=600.0, now_s=25.0)
    assert sorted(store._revoked) == ["live", "new"]  # memory is the point: look inside
    assert await store.is_revoked("live", 25.0)


async def test_at_most_max_revoked_are_kept_the_soonest_to_expire_going_first() -> None:
    store = MemoryStore(max_revoked=2)
    await store.revoke_key("late", until_s=300.0, now_s=0.0)
    await store.revoke_key("soon", until_s=100.0, now_s=0.0)
    await store.revoke_key("middle", until_s=200.0, now_s=0.0)
    assert len(store._revoked) == 2
    assert not await store.is_revoked("soon", 1.0)
    assert await store.is_revoked("middle", 1.0)
    assert await store.is_revoked("late", 1.0)


async def test_a_node_started_again_under_its_name_counts_afresh(store: Store) -> None:
    await store.acquire_slot("u", max_total=2, max_per_subject=1)
    await store.node_started("node-1")  # the process holding it died and started again
    if isinstance(store, RedisStore):  # the memory store dies with its process anyway
        assert await active(store) == 0
        await store.acquire_slot("u", max_total=2, max_per_subject=1)
