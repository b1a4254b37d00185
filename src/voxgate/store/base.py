"""The Store: state that must be shared by every node of a deployment. Protocol only.

What lives here, and nothing else: the registry of live sessions (which node holds each, for
whom, since when, whether it can be resumed), concurrency counts (in total and per subject,
across nodes), the single-use state of resume tokens (the one generation and nonce each session
accepts now), and revoked client keys. Everything is bounded (entries die with their session,
revocations with the key's expiry) and nothing here is touched per audio frame: sessions call
the store when they start, end, resume or are listed.

For several nodes (issue 17) it also holds: which node *owns* each session (the record's
``node``, changed only by compare-and-set: :meth:`Store.claim`, so two nodes never run one
session), per-session snapshots (what another node needs to rebuild a session; written off
the audio path by :mod:`voxgate.transports.handoff`, encoded by :mod:`voxgate.session.snapshot`),
node liveness (heartbeats) and one message channel per node (:meth:`Store.publish`).

:class:`~voxgate.store.memory.MemoryStore` is the default (one process);
:class:`~voxgate.store.redis.RedisStore` implements the same protocol for several nodes. Every
method is a coroutine so both fit.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

#: The owner of a session that a node gave up (parked: drained or handed off) and any node may
#: claim when its client resumes.
RELEASED = ""


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


@dataclass(frozen=True, slots=True)
class StoredSnapshot:
    """A session snapshot as stored: the small head and the conversation items by id."""

    head: bytes
    items: dict[str, bytes]


MessageHandler = Callable[[bytes], None]


class Store(Protocol):
    name: str
    #: True when other processes see the same state (several nodes can share it)
    shared: bool

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

    async def unregister(self, session_id: str, *, node: str | None = None) -> None:
        """Forget a session, its resume state and its snapshot.

        With ``node``, only while that node owns it (a session handed to another node, or
        parked, is not forgotten by the node that used to run it).
        """
        ...

    async def claim(self, session_id: str, node: str, *, owner: str) -> bool:
        """Make ``node`` the owner of a registered session if ``owner`` owns it now (atomic
        compare-and-set). ``node=RELEASED`` parks it; ``owner=RELEASED`` takes a parked one."""
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

    # ------------------------------------------------------------------ several nodes

    async def save_snapshot(
        self,
        session_id: str,
        node: str,
        head: bytes,
        put: Mapping[str, bytes],
        drop: Collection[str],
        ttl_s: float,
    ) -> bool:
        """Write a snapshot atomically if ``node`` owns the session: the new head, items put
        and dropped by id. The record, resume state and snapshot then live ``ttl_s`` more.

        Returns:
            False (and nothing written) when ``node`` does not own the session.
        """
        ...

    async def load_snapshot(self, session_id: str) -> StoredSnapshot | None: ...

    async def touch(self, session_ids: Collection[str], ttl_s: float) -> None:
        """Keep these sessions' records, resume state and snapshots ``ttl_s`` more."""
        ...

    async def heartbeat(self, node: str, ttl_s: float) -> None:
        """``node`` is alive for ``ttl_s`` more."""
        ...

    async def node_started(self, node: str) -> None:
        """``node`` (re)starts with no sessions: forget the sessions an earlier process with the
        same node id counted in (a node killed and started again under its name)."""
        ...

    async def node_alive(self, node: str) -> bool: ...

    async def publish(self, node: str, message: bytes) -> int:
        """Send ``message`` to ``node``'s channel; returns how many subscribers got it (0: the
        node is not listening: gone)."""
        ...

    async def subscribe(self, node: str, on_message: MessageHandler) -> None:
        """Call ``on_message`` (synchronously, in order) for every message to ``node`` until
        :meth:`aclose`."""
        ...

    async def aclose(self) -> None: ...
