"""The Redis :class:`~voxgate.store.base.Store`: state every node of a deployment shares (issue 17).

redis-py's asyncio client, one connection pool per process plus one connection for this node's
channel. Nothing here runs per audio frame: sessions call it when they start, end, resume or
are listed, and :mod:`voxgate.transports.handoff` writes snapshots off the audio path.

Keys (``{p}`` is ``VOXGATE_REDIS_PREFIX``, ``vg`` by default)::

    {p}:s:<session>     hash   the record: node (owner), subject, started_at, resumable, key_id
    {p}:sessions        zset   session ids by start time (listing)
    {p}:u:<subject>     set    a subject's session ids (listing by subject)
    {p}:r:<session>     hash   resume state: g (generation), n (nonce; empty once used)
    {p}:h:<session>     string snapshot head;  {p}:i:<session>  hash  snapshot items by id
    {p}:k:<key id>      string revoked until (unix s), expires with the key
    {p}:nodes           zset   node -> alive until (ms, Redis clock)
    {p}:slots:<node>    hash   sessions a node counts in: ``*`` total, ``s:<subject>`` per subject
    {p}:node:<node>     channel  messages to a node (hand-offs, admin actions, issue 14's messages)

Atomicity: counting a session in, consuming a resume token, changing a session's owner and
writing a snapshot (only by its owner: a node that lost a session can never overwrite the new
owner's snapshot) are Lua scripts. Bounds: a session's record, resume state and snapshot carry
a TTL that its node refreshes (``touch``, snapshot writes); when a node dies they outlive it by
that TTL, long enough for its clients to resume elsewhere. Slots are counted per node, so a
dead node's counts vanish with its heartbeat (an acquire drops nodes whose heartbeat lapsed).
The index sets are cleaned when a listing finds a record gone.

One Redis (or a Sentinel-managed primary): keys are not hash-tagged for Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Mapping
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from voxgate.store.base import (
    RELEASED,
    MessageHandler,
    SessionRecord,
    SlotRefused,
    StoredSnapshot,
)

log = structlog.get_logger("voxgate.store")

#: How long a node counts as alive without a heartbeat when none was given (acquire refreshes).
DEFAULT_NODE_TTL_S = 10.0
#: How long a session's keys live without a refresh when none was given.
DEFAULT_SESSION_TTL_S = 120.0

_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "

_ACQUIRE = (
    _NOW_MS
    + """
local nodes = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local total, subj = 0, 0
for i = 1, #nodes, 2 do
  local n, until_ms = nodes[i], tonumber(nodes[i + 1])
  local key = ARGV[1] .. ':slots:' .. n
  if until_ms < now and n ~= ARGV[2] then
    redis.call('ZREM', KEYS[1], n)
    redis.call('DEL', key)
  else
    total = total + tonumber(redis.call('HGET', key, '*') or '0')
    if ARGV[3] ~= '' then
      subj = subj + tonumber(redis.call('HGET', key, 's:' .. ARGV[3]) or '0')
    end
  end
end
redis.call('ZADD', KEYS[1], 'GT', now + tonumber(ARGV[6]), ARGV[2])
if total >= tonumber(ARGV[4]) then return {1, total} end
if ARGV[3] ~= '' and subj >= tonumber(ARGV[5]) then return {2, subj} end
local mine = ARGV[1] .. ':slots:' .. ARGV[2]
redis.call('HINCRBY', mine, '*', 1)
if ARGV[3] ~= '' then redis.call('HINCRBY', mine, 's:' .. ARGV[3], 1) end
return {0, total}
"""
)

_RELEASE = """
local function down(field)
  local left = redis.call('HINCRBY', KEYS[1], field, -1)
  if left <= 0 then redis.call('HDEL', KEYS[1], field) end
end
down('*')
if ARGV[1] ~= '' then down('s:' .. ARGV[1]) end
return 1
"""

_ROTATE = """
local g = redis.call('HINCRBY', KEYS[1], 'g', 1)
redis.call('HSET', KEYS[1], 'n', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return g
"""

_CONSUME = """
local cur = redis.call('HMGET', KEYS[1], 'g', 'n')
if not cur[1] or cur[1] ~= ARGV[1] or not cur[2] or cur[2] == '' or cur[2] ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'n', '')
return 1
"""

# KEYS: record, resume, head, items, sessions zset, subject set (or ''); ARGV: node, session id
_UNREGISTER = """
if ARGV[1] ~= '' then
  local owner = redis.call('HGET', KEYS[1], 'node')
  if owner and owner ~= ARGV[1] then return 0 end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[5], ARGV[2])
if KEYS[6] ~= '' then redis.call('SREM', KEYS[6], ARGV[2]) end
return 1
"""

_CLAIM = """
local owner = redis.call('HGET', KEYS[1], 'node')
if not owner or owner ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'node', ARGV[1])
return 1
"""

# KEYS: record, resume, head, items; ARGV: node, ttl_ms, head, n_put, id1, item1, …, drop ids…
_SAVE = """
if redis.call('HGET', KEYS[1], 'node') ~= ARGV[1] then return 0 end
local ttl = ARGV[2]
redis.call('SET', KEYS[3], ARGV[3], 'PX', ttl)
local n = tonumber(ARGV[4])
local i = 5
for _ = 1, n do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HDEL', KEYS[4], ARGV[i])
  i = i + 1
end
redis.call('PEXPIRE', KEYS[4], ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return 1
"""

_ALIVE = (
    _NOW_MS + "local s = redis.call('ZSCORE', KEYS[1], ARGV[1]) return s and tonumber(s) >= now"
)

_HEARTBEAT = (
    _NOW_MS + "redis.call('ZADD', KEYS[1], 'GT', now + tonumber(ARGV[2]), ARGV[1]) return 1"
)


class RedisStore:
    """See the module docstring. ``node`` is this process's node id (slots count per node)."""

    name = "redis"
    shared = True

    def __init__(
        self,
        url: str,
        *,
        node: str,
        prefix: str = "vg",
        session_ttl_s: float = DEFAULT_SESSION_TTL_S,
        node_ttl_s: float = DEFAULT_NODE_TTL_S,
    ) -> None:
        self.node = node
        self.prefix = prefix
        self.session_ttl_s = session_ttl_s
        self.node_ttl_s = node_ttl_s
        self.redis: Redis = Redis.from_url(url, decode_responses=False)
        r = self.redis
        self._acquire = r.register_script(_ACQUIRE)
        self._release = r.register_script(_RELEASE)
        self._rotate = r.register_script(_ROTATE)
        self._consume = r.register_script(_CONSUME)
        self._unregister = r.register_script(_UNREGISTER)
        self._claim = r.register_script(_CLAIM)
        self._save = r.register_script(_SAVE)
        self._alive = r.register_script(_ALIVE)
        self._heartbeat = r.register_script(_HEARTBEAT)
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ keys

    def _k(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    def _session_keys(self, session_id: str) -> list[str]:
        return [self._k(kind, session_id) for kind in ("s", "r", "h", "i")]

    @property
    def _nodes(self) -> str:
        return f"{self.prefix}:nodes"

    @property
    def _index(self) -> str:
        return f"{self.prefix}:sessions"

    def channel(self, node: str) -> str:
        return self._k("node", node)

    # ------------------------------------------------------------------ slots

    async def acquire_slot(
        self, subject: str | None, *, max_total: int, max_per_subject: int
    ) -> None:
        code, count = await self._acquire(
            keys=[self._nodes],
            args=[
                self.prefix,
                self.node,
                subject or "",
                max_total,
                max_per_subject,
                int(self.node_ttl_s * 1000),
            ],
        )
        if code == 1:
            raise SlotRefused("voxgate_capacity_exceeded", count=int(count), limit=max_total)
        if code == 2:
            raise SlotRefused("voxgate_subject_limit", count=int(count), limit=max_per_subject)

    async def release_slot(self, subject: str | None) -> None:
        await self._release(keys=[self._k("slots", self.node)], args=[subject or ""])

    async def active_on(self, node: str) -> int:
        """Sessions ``node`` counts in now (for tests and operators)."""
        raw = await self.redis.hget(self._k("slots", node), "*")
        return int(raw or 0)

    # ------------------------------------------------------------------ registry

    async def register(self, record: SessionRecord) -> None:
        key = self._k("s", record.session_id)
        fields: dict[Any, Any] = {
            "node": record.node,
            "subject": "" if record.subject is None else "=" + record.subject,
            "started_at": repr(record.started_at),
            "resumable": "1" if record.resumable else "0",
            "key_id": record.key_id or "",
        }
        ttl_ms = int(self.session_ttl_s * 1000)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            pipe.pexpire(key, ttl_ms)
            pipe.zadd(self._index, {record.session_id: record.started_at})
            if record.subject is not None:
                pipe.sadd(self._k("u", record.subject), record.session_id)
            await pipe.execute()
        if record.node == self.node:  # a node that starts a session is alive
            await self.heartbeat(self.node, self.node_ttl_s)

    async def unregister(self, session_id: str, *, node: str | None = None) -> None:
        record = await self.session(session_id)
        subject_key = self._k("u", record.subject) if record is not None and record.subject else ""
        await self._unregister(
            keys=[*self._session_keys(session_id), self._index, subject_key],
            args=[node if node is not None else "", session_id],
        )

    async def claim(self, session_id: str, node: str, *, owner: str) -> bool:
        done = await self._claim(keys=[self._k("s", session_id)], args=[node, owner])
        return bool(done)

    async def session(self, session_id: str) -> SessionRecord | None:
        raw = await self.redis.hgetall(self._k("s", session_id))
        return _record(session_id, raw)

    async def sessions(self, subject: str | None = None) -> list[SessionRecord]:
        if subject is None:
            ids = [_text(i) for i in await self.redis.zrange(self._index, 0, -1)]
        else:
            ids = sorted(_text(i) for i in await self.redis.smembers(self._k("u", subject)))
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for session_id in ids:
                pipe.hgetall(self._k("s", session_id))
            raws = await pipe.execute()
        records: list[SessionRecord] = []
        gone: list[str] = []
        for session_id, raw in zip(ids, raws, strict=True):
            record = _record(session_id, raw)
            if record is None:
                gone.append(session_id)
            elif record.node != RELEASED and (subject is None or record.subject == subject):
                records.append(record)
        if gone:  # expired with a dead node: clean the indexes
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(self._index, *gone)
                if subject is not None:
                    pipe.srem(self._k("u", subject), *gone)
                await pipe.execute()
        alive = {node: await self.node_alive(node) for node in {r.node for r in records}}
        return sorted((r for r in records if alive[r.node]), key=lambda r: r.started_at)

    # ------------------------------------------------------------------ resume

    async def rotate_resume(self, session_id: str, nonce: str) -> int:
        generation = await self._rotate(
            keys=[self._k("r", session_id)], args=[nonce, int(self.session_ttl_s * 1000)]
        )
        return int(generation)

    async def consume_resume(self, session_id: str, generation: int, nonce: str) -> bool:
        if not nonce:
            return False
        done = await self._consume(keys=[self._k("r", session_id)], args=[generation, nonce])
        return bool(done)

    # ------------------------------------------------------------------ revocation

    async def revoke_key(self, key_id: str, until_s: float, now_s: float) -> None:
        left_ms = int((until_s - now_s) * 1000)
        if left_ms > 0:
            await self.redis.set(self._k("k", key_id), repr(until_s), px=left_ms)

    async def is_revoked(self, key_id: str, now_s: float) -> bool:
        raw = await self.redis.get(self._k("k", key_id))
        return raw is not None and float(raw) > now_s

    # ------------------------------------------------------------------ snapshots

    async def save_snapshot(
        self,
        session_id: str,
        node: str,
        head: bytes,
        put: Mapping[str, bytes],
        drop: Collection[str],
        ttl_s: float,
    ) -> bool:
        args: list[Any] = [node, int(ttl_s * 1000), head, len(put)]
        for item_id, data in put.items():
            args.append(item_id)
            args.append(data)
        args.extend(drop)
        done = await self._save(keys=self._session_keys(session_id), args=args)
        return bool(done)

    async def load_snapshot(self, session_id: str) -> StoredSnapshot | None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(self._k("h", session_id))
            pipe.hgetall(self._k("i", session_id))
            head, items = await pipe.execute()
        if head is None:
            return None
        return StoredSnapshot(head, {_text(k): v for k, v in items.items()})

    async def touch(self, session_ids: Collection[str], ttl_s: float) -> None:
        if not session_ids:
            return
        ttl_ms = int(ttl_s * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                for key in self._session_keys(session_id):
                    pipe.pexpire(key, ttl_ms)
            await pipe.execute()

    # ------------------------------------------------------------------ nodes

    async def heartbeat(self, node: str, ttl_s: float) -> None:
        await self._heartbeat(keys=[self._nodes], args=[node, int(ttl_s * 1000)])

    async def node_started(self, node: str) -> None:
        await self.redis.delete(self._k("slots", node))

    async def node_alive(self, node: str) -> bool:
        if node == RELEASED:
            return False
        return bool(await self._alive(keys=[self._nodes], args=[node]))

    async def publish(self, node: str, message: bytes) -> int:
        return int(await self.redis.publish(self.channel(node), message))

    async def subscribe(self, node: str, on_message: MessageHandler) -> None:
        if self._reader is not None:
            raise RuntimeError("this store already listens on a node channel")
        pubsub = await self._listen(node)  # subscribed before this returns: nothing missed
        self._reader = asyncio.create_task(self._read(node, pubsub, on_message), name="store_sub")

    async def _listen(self, node: str) -> PubSub:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self._pubsub = pubsub
        await pubsub.subscribe(self.channel(node))
        return pubsub

    async def _read(self, node: str, pubsub: PubSub, on_message: MessageHandler) -> None:
        """Deliver channel messages in order; after a lost connection, subscribe again."""
        delay = 0.1
        while True:
            try:
                msg = await pubsub.get_message(timeout=None)
            except (RedisError, OSError) as exc:
                log.warning("store.channel_lost", error=type(exc).__name__, retry_s=delay)
                await _close_quietly(pubsub)
                await asyncio.sleep(delay)  # backoff, not synchronisation
                delay = min(delay * 2, 5.0)
                with contextlib.suppress(RedisError, OSError):
                    pubsub = await self._listen(node)
                continue
            delay = 0.1
            if msg is not None and msg.get("type") == "message":
                data = msg["data"]
                on_message(data if isinstance(data, bytes) else str(data).encode())

    async def aclose(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await _close_quietly(pubsub)
        await self.redis.aclose()


async def _close_quietly(pubsub: Any) -> None:
    """Close a pub/sub connection that may already be broken.

    ``Any``: redis-py's ``PubSub.aclose`` is untyped in some releases and typed in others.
    """
    with contextlib.suppress(RedisError, OSError):
        await pubsub.aclose()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _record(session_id: str, raw: Mapping[Any, Any]) -> SessionRecord | None:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    if "node" not in fields:
        return None
    subject = fields.get("subject", "")
    return SessionRecord(
        session_id=session_id,
        node=fields["node"],
        subject=subject[1:] if subject.startswith("=") else None,
        started_at=float(fields.get("started_at") or 0),
        resumable=fields.get("resumable") == "1",
        key_id=fields.get("key_id") or None,
    )
