"""MemoryStore: the registry, concurrency slots, single-use resume state and key revocation."""

from __future__ import annotations

import pytest

from voxgate.store.base import SessionRecord, SlotRefused
from voxgate.store.memory import MemoryStore

# ---------------------------------------------------------------------------- slots


async def test_total_limit_refuses_with_capacity_exceeded() -> None:
    store = MemoryStore()
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


async def test_subject_limit_refuses_with_subject_limit_and_spares_others() -> None:
    store = MemoryStore()
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
    assert store.active == 8  # the refused one was not counted


async def test_release_frees_the_subjects_slot() -> None:
    store = MemoryStore()
    await store.acquire_slot("u", max_total=10, max_per_subject=1)
    await store.release_slot("u")
    assert store.active == 0
    await store.acquire_slot("u", max_total=10, max_per_subject=1)
    with pytest.raises(SlotRefused):
        await store.acquire_slot("u", max_total=10, max_per_subject=1)


async def test_release_never_counts_below_zero() -> None:
    store = MemoryStore()
    await store.release_slot("u")
    await store.release_slot(None)
    assert store.active == 0
    await store.acquire_slot("u", max_total=1, max_per_subject=1)
    with pytest.raises(SlotRefused):
        await store.acquire_slot(None, max_total=1, max_per_subject=1)


# ---------------------------------------------------------------------------- registry


def record(sid: str, subject: str | None, started_at: float) -> SessionRecord:
    return SessionRecord(sid, "node-1", subject, started_at, resumable=True)


async def test_sessions_are_listed_oldest_first_and_by_subject() -> None:
    store = MemoryStore()
    await store.register(record("s2", "u", 20.0))
    await store.register(record("s1", "u", 10.0))
    await store.register(record("s3", "v", 15.0))
    assert [r.session_id for r in await store.sessions()] == ["s1", "s3", "s2"]
    assert [r.session_id for r in await store.sessions("u")] == ["s1", "s2"]
    await store.register(record("s1", "u", 30.0))  # replaces the earlier record
    assert [r.session_id for r in await store.sessions("u")] == ["s2", "s1"]
    assert await store.session("s3") == record("s3", "v", 15.0)


async def test_unregister_forgets_the_session_and_its_resume_state() -> None:
    store = MemoryStore()
    await store.register(record("s1", None, 1.0))
    generation = await store.rotate_resume("s1", "n1")
    await store.unregister("s1")
    assert await store.session("s1") is None
    assert not await store.consume_resume("s1", generation, "n1")
    await store.unregister("s1")  # twice: harmless


# ---------------------------------------------------------------------------- resume


async def test_resume_token_is_single_use() -> None:
    store = MemoryStore()
    generation = await store.rotate_resume("s1", "nonce-1")
    assert await store.consume_resume("s1", generation, "nonce-1")
    assert not await store.consume_resume("s1", generation, "nonce-1")


async def test_rotation_voids_every_older_token() -> None:
    store = MemoryStore()
    g1 = await store.rotate_resume("s1", "nonce-1")
    g2 = await store.rotate_resume("s1", "nonce-2")
    assert g2 == g1 + 1
    assert not await store.consume_resume("s1", g1, "nonce-1")
    assert not await store.consume_resume("s1", g2, "nonce-1")  # old nonce, new generation
    assert not await store.consume_resume("s1", g1, "nonce-2")  # new nonce, old generation
    assert not await store.consume_resume("s1", g2 + 1, "nonce-2")
    assert await store.consume_resume("s1", g2, "nonce-2")


async def test_wrong_nonce_or_session_is_refused_and_leaves_the_token_usable() -> None:
    store = MemoryStore()
    generation = await store.rotate_resume("s1", "nonce-1")
    assert not await store.consume_resume("s1", generation, "nonce-X")
    assert not await store.consume_resume("s1", generation, "")
    assert not await store.consume_resume("s1", generation, "nonce-1é")
    assert not await store.consume_resume("s2", generation, "nonce-1")
    assert await store.consume_resume("s1", generation, "nonce-1")


async def test_generations_continue_across_consumption() -> None:
    store = MemoryStore()
    g1 = await store.rotate_resume("s1", "a")
    await store.consume_resume("s1", g1, "a")
    g2 = await store.rotate_resume("s1", "b")
    assert g2 > g1
    assert await store.consume_resume("s1", g2, "b")


async def test_consumed_generation_accepts_no_nonce_at_all() -> None:
    store = MemoryStore()
    generation = await store.rotate_resume("s1", "nonce-1")
    assert await store.consume_resume("s1", generation, "nonce-1")
    assert not await store.consume_resume("s1", generation, "")


# ---------------------------------------------------------------------------- revocation


async def test_key_is_revoked_until_its_time() -> None:
    store = MemoryStore()
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
