"""The Store: state that must be shared by every node of a deployment. Protocol only.

What lives here, and nothing else: the registry of live sessions (which node holds each, for
whom, since when, whether it can be resumed), concurrency counts (in total and per subject,
across nodes), the single-use state of resume tokens (the one generation and nonce each session
accepts now), and revoked client keys. Everything is bounded (entries die with their session,
revocations with the key's expiry) and nothing here is touched per audio frame: sessions call
the store when they start, end, resume or are listed.

:class:`~voxgate.store.memory.MemoryStore` is the default (one process); a Redis store
implements the same protocol for several nodes. Every method is a coroutine so both fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A live session as the deployment sees it (no secrets, no conversation)."""

    session_id: str
    node: str
    subject: str | None
    started_at: float  # unix seconds
    resumable: bool
    key_id: str | None = None


class SlotRefused(Exception):
    """No room for another session. ``code`` is the client-facing error code.

    Args:
        code: ``voxgate_capacity_exceeded`` (the deployment is full) or
            ``voxgate_subject_limit`` (this subject has ``count`` of ``limit`` sessions open).
    """

    def __init__(self, code: str, *, count: int, limit: int) -> None:
        super().__init__(code)
        self.code = code
        self.count = count
        self.limit = limit


class Store(Protocol):
    name: str

    async def acquire_slot(
        self, subject: str | None, *, max_total: int, max_per_subject: int
    ) -> None:
        """Count a new session in, atomically against both limits.

        Raises:
            SlotRefused: the deployment or this subject is at its limit.
        """
        ...

    async def release_slot(self, subject: str | None) -> None:
        """Count a session out (exactly once per successful :meth:`acquire_slot`)."""
        ...

    async def register(self, record: SessionRecord) -> None:
        """Make a live session known (replaces an earlier record of the same id)."""
        ...

    async def unregister(self, session_id: str) -> None:
        """Forget a session and its resume state."""
        ...

    async def session(self, session_id: str) -> SessionRecord | None: ...

    async def sessions(self, subject: str | None = None) -> list[SessionRecord]:
        """Live sessions, all or of one subject, oldest first."""
        ...

    async def rotate_resume(self, session_id: str, nonce: str) -> int:
        """Make ``nonce`` the one a resume must present next; return its generation.

        Every earlier token of the session stops working.
        """
        ...

    async def consume_resume(self, session_id: str, generation: int, nonce: str) -> bool:
        """Accept the current token once: True only for the current generation and nonce,
        which are then void (a second use of the same token is refused)."""
        ...

    async def revoke_key(self, key_id: str, until_s: float, now_s: float) -> None:
        """Refuse client key ``key_id`` until ``until_s`` (unix; its own expiry is enough)."""
        ...

    async def is_revoked(self, key_id: str, now_s: float) -> bool: ...

    async def aclose(self) -> None: ...
