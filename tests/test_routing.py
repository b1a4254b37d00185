"""NodeRouter (voxgate.transports.routing): node-to-node calls over the store's channels, on a
real redis-server (two stores = two nodes) and on the memory store (one node)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from redis_helpers import RedisServer, redis_server
from voxgate.store.memory import MemoryStore
from voxgate.store.redis import RedisStore
from voxgate.transports.routing import NodeGone, NodeRouter

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
async def two(redis: RedisServer) -> AsyncIterator[tuple[NodeRouter, NodeRouter]]:
    prefix = f"rt{next(_prefixes)}"
    stores = [RedisStore(redis.url, node=n, prefix=prefix) for n in ("a", "b")]
    routers = [NodeRouter(store, store.node) for store in stores]
    for router in routers:
        await router.start()
    try:
        yield routers[0], routers[1]
    finally:
        for router, store in zip(routers, stores, strict=True):
            await router.aclose()
            await store.aclose()


async def test_a_call_reaches_the_other_nodes_handler_and_brings_its_reply(
    two: tuple[NodeRouter, NodeRouter],
) -> None:
    a, b = two
    seen: list[dict[str, Any]] = []

    async def echo(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body)
        return {"node": "b", "got": body["n"]}

    b.handle("echo", echo)
    replies = await asyncio.gather(*(a.call("b", "echo", {"n": n}, timeout_s=5) for n in range(5)))
    assert [r["got"] for r in replies] == list(range(5))
    assert {r["node"] for r in replies} == {"b"}
    assert sorted(body["n"] for body in seen) == list(range(5))


async def test_a_node_nobody_listens_for_is_gone_at_once(
    two: tuple[NodeRouter, NodeRouter],
) -> None:
    a, _ = two
    with pytest.raises(NodeGone):
        await a.call("c", "echo", {}, timeout_s=30)


async def test_a_node_that_listens_but_never_answers_times_out(
    two: tuple[NodeRouter, NodeRouter],
) -> None:
    a, b = two
    release = asyncio.Event()
    calls = 0

    async def stuck(body: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await release.wait()
        return {}

    b.handle("stuck", stuck)
    with pytest.raises(TimeoutError):
        await a.call("b", "stuck", {}, timeout_s=1.2)
    assert calls >= 2  # published again while no reply came (handlers must be idempotent)
    release.set()


async def test_unknown_kinds_and_failing_handlers_answer_an_error(
    two: tuple[NodeRouter, NodeRouter],
) -> None:
    a, b = two

    async def broken(body: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("bug")

    b.handle("broken", broken)
    assert await a.call("b", "nothing", {}, timeout_s=5) == {"error": "unknown_kind"}
    assert await a.call("b", "broken", {}, timeout_s=5) == {"error": "handler_failed"}
    b.handle("ok", _ok)
    assert await a.call("b", "ok", {}, timeout_s=5) == {"ok": True}  # the channel lives on


async def _ok(body: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True}


async def test_a_call_to_this_node_runs_its_own_handler_directly() -> None:
    router = NodeRouter(MemoryStore(), "solo")
    router.handle("ok", _ok)
    assert await router.call("solo", "ok", {}, timeout_s=1) == {"ok": True}
    with pytest.raises(LookupError):
        await router.call("solo", "missing", {}, timeout_s=1)
    with pytest.raises(ValueError, match="reply"):
        router.handle("reply", _ok)
