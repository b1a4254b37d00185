"""The in-memory :class:`~voxgate.store.base.Store`: one process, the default.

Bounded by what it describes: one record, one resume entry and (with a subject) one count per
live session, and one entry per revoked key until that key would have expired anyway (expired
revocations are dropped whenever one is added, and past ``max_revoked`` the soonest to expire
goes first). No I/O; the coroutines never wait.
"""

from __future__ import annotations

import hmac

from voxgate.store.base import SessionRecord, SlotRefused


class MemoryStore:
    name = "memory"

    def __init__(self, *, max_revoked: int = 100_000) -> None:
        self.max_revoked = max_revoked
        self.active = 0
        self._per_subject: dict[str, int] = {}
        self._records: dict[str, SessionRecord] = {}
        #: session id -> (generation, nonce); nonce None once used (void until the next rotate)
        self._resume: dict[str, tuple[int, str | None]] = {}
        self._revoked: dict[str, float] = {}

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

    async def unregister(self, session_id: str) -> None:
        self._records.pop(session_id, None)
        self._resume.pop(session_id, None)

    async def session(self, session_id: str) -> SessionRecord | None:
        return self._records.get(session_id)

    async def sessions(self, subject: str | None = None) -> list[SessionRecord]:
        found = [r for r in self._records.values() if subject is None or r.subject == subject]
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

    async def aclose(self) -> None:
        """Nothing to release."""
