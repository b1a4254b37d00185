"""The in-memory :class:`~voxgate.store.base.Store`: one process, the default.

Bounded by what it describes: one record, one resume entry and (with a subject) one count per
live session, and one entry per revoked key until that key would have expired anyway (expired
revocations are dropped whenever one is added, and past ``max_revoked`` the soonest to expire
goes first). Snapshots live while their session is registered; node heartbeats and channels
exist so one process behaves like a one-node deployment (TTLs are not enforced: everything
here dies with the process anyway). No I/O; the coroutines never wait.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Collection, Mapping

from voxgate.store.base import (
    RELEASED,
    MessageHandler,
    SessionRecord,
    SlotRefused,
    StoredSnapshot,
)


class MemoryStore:
    name = "memory"
    shared = False

    def __init__(self, *, max_revoked: int = 100_000) -> None:
        self.max_revoked = max_revoked
        self.active = 0
        self._per_subject: dict[str, int] = {}
        self._records: dict[str, SessionRecord] = {}
        #: session id -> (generation, nonce); nonce None once used (void until the next rotate)
        self._resume: dict[str, tuple[int, str | None]] = {}
        self._revoked: dict[str, float] = {}
        self._snapshots: dict[str, StoredSnapshot] = {}
        self._nodes: dict[str, float] = {}  # node -> alive until (monotonic)
        self._channels: dict[str, MessageHandler] = {}

    async def acquire_slot(
        self, subject: str | None, *, max_total: int, max_per_subject: int
    ) -> None:
        if self.active >= max_total:
            raise SlotRefused("voxgate_capacity_exceeded", count=self.active, limit=max_total)
        if subject is not None:
            count = self._per_subject.get(subject, 0)
            if count >= max_per_subject:
                raise SlotRefused("voxgate_subject_limit", count=count, limit=max_per_subject)
            self._per_subject[subject] = count + 1
        self.active += 1

    async def release_slot(self, subject: str | None) -> None:
        self.active = max(0, self.active - 1)
        if subject is not None:
            count = self._per_subject.get(subject, 0) - 1
            if count > 0:
                self._per_subject[subject] = count
            else:
                self._per_subject.pop(subject, None)

    async def register(self, record: SessionRecord) -> None:
        self._records[record.session_id] = record

    async def unregister(self, session_id: str, *, node: str | None = None) -> None:
        record = self._records.get(session_id)
        if node is not None and record is not None and record.node != node:
            return
        self._records.pop(session_id, None)
        self._resume.pop(session_id, None)
        self._snapshots.pop(session_id, None)

    async def claim(self, session_id: str, node: str, *, owner: str) -> bool:
        record = self._records.get(session_id)
        if record is None or record.node != owner:
            return False
        self._records[session_id] = SessionRecord(
            record.session_id,
            node,
            record.subject,
            record.started_at,
            record.resumable,
            record.key_id,
        )
        return True

    async def session(self, session_id: str) -> SessionRecord | None:
        return self._records.get(session_id)

    async def sessions(self, subject: str | None = None) -> list[SessionRecord]:
        found = [
            r
            for r in self._records.values()
            if (subject is None or r.subject == subject) and r.node != RELEASED
        ]
        return sorted(found, key=lambda r: r.started_at)

    async def rotate_resume(self, session_id: str, nonce: str) -> int:
        generation = self._resume.get(session_id, (0, ""))[0] + 1
        self._resume[session_id] = (generation, nonce)
        return generation

    async def consume_resume(self, session_id: str, generation: int, nonce: str) -> bool:
        current = self._resume.get(session_id)
        if current is None or current[0] != generation or current[1] is None:
            return False
        if not hmac.compare_digest(current[1].encode(), nonce.encode("utf-8", "replace")):
            return False
        self._resume[session_id] = (generation, None)  # void until the next rotate
        return True

    async def revoke_key(self, key_id: str, until_s: float, now_s: float) -> None:
        revoked = self._revoked
        for kid in [k for k, t in revoked.items() if t <= now_s]:
            del revoked[kid]
        revoked[key_id] = until_s
        while len(revoked) > self.max_revoked:
            del revoked[min(revoked, key=revoked.__getitem__)]

    async def is_revoked(self, key_id: str, now_s: float) -> bool:
        until = self._revoked.get(key_id)
        return until is not None and until > now_s

    async def save_snapshot(
        self,
        session_id: str,
        node: str,
        head: bytes,
        put: Mapping[str, bytes],
        drop: Collection[str],
        ttl_s: float,
    ) -> bool:
        record = self._records.get(session_id)
        if record is None or record.node != node:
            return False
        old = self._snapshots.get(session_id)
        items = dict(old.items) if old is not None else {}
        for item_id in drop:
            items.pop(item_id, None)
        items.update(put)
        self._snapshots[session_id] = StoredSnapshot(head, items)
        return True

    async def load_snapshot(self, session_id: str) -> StoredSnapshot | None:
        return self._snapshots.get(session_id)

    async def touch(self, session_ids: Collection[str], ttl_s: float) -> None:
        """Nothing expires here."""

    async def heartbeat(self, node: str, ttl_s: float) -> None:
        self._nodes[node] = time.monotonic() + ttl_s

    async def node_started(self, node: str) -> None:
        """One process, one node: nothing was counted before it started."""

    async def node_alive(self, node: str) -> bool:
        return self._nodes.get(node, 0.0) > time.monotonic() or node in self._channels

    async def publish(self, node: str, message: bytes) -> int:
        handler = self._channels.get(node)
        if handler is None:
            return 0
        asyncio.get_running_loop().call_soon(handler, message)  # as if it came over a socket
        return 1

    async def subscribe(self, node: str, on_message: MessageHandler) -> None:
        self._channels[node] = on_message

    async def aclose(self) -> None:
        self._channels.clear()
