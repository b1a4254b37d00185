"""One node's part in a deployment of several (issue 17): snapshots, ownership, hand-offs.

What it owns, per node:

* **Snapshots** of every resumable session this node runs (:meth:`Handoff.track`): a writer
  task per session writes one (:mod:`voxgate.session.snapshot`) ``snapshot_debounce_s`` after
  the conversation changes (an item, a response starting or ending, the config) and at most
  every ``snapshot_interval_s`` while its replay position moves; nothing per audio frame.
  Writes are fenced: only the owner may write, so a node that lost a session (presumed dead,
  then back) learns it on its next write and ends its copy (``superseded``).
* **Parking**: a resumable session that ends because it is handed off, drained or shut down
  gets a final snapshot (its whole replay log within the bound) and its owner set to
  ``RELEASED``, so whichever node its client resumes on may take it.
* **Adoption** (:meth:`Handoff.adopt`): a ``voxgate.v1`` client presents its resume token to a
  node that does not hold the session. The token is consumed (single use, in the store), the
  owner is asked to hand the session over (``handoff`` through :mod:`voxgate.transports.routing`);
  an owner that does not listen is dead, one that does not answer within ``handoff_timeout_s``
  is taken over anyway (fencing keeps it from writing again); then the session is rebuilt from
  its snapshot and run here (:meth:`SessionHub.run_restored`).
* **Drain** (:meth:`Handoff.migrate_all`): each opted-in client is sent
  ``voxgate.session.migrate`` at its session's next quiet point; it resumes through the load
  balancer on another node, which takes the session over as above.
* **Liveness**: a heartbeat every ``node_heartbeat_s`` (dead after three missed), and the TTLs
  of this node's sessions' keys refreshed well before they lapse.

What a node death (``kill -9``) loses, and the bound, is stated in docs/operations.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import structlog

from voxgate.auth.resume import ResumeClaims, ResumeState
from voxgate.protocol.errors import AuthError
from voxgate.protocol.extensions import gateway_event
from voxgate.protocol.sniff import NotAnEvent, event_type
from voxgate.session.machine import Phase
from voxgate.session.ports import ClientConnection
from voxgate.session.runner import SessionRunner
from voxgate.session.runner_types import Restored
from voxgate.session.snapshot import (
    SessionMeta,
    SessionSnapshot,
    SnapshotError,
    decode,
    encode,
    restore,
    take,
    written_after,
)
from voxgate.store.base import RELEASED, SessionRecord, Store
from voxgate.transports.routing import NodeGone, NodeRouter

if TYPE_CHECKING:
    from voxgate.transports.hub import SessionHub

log = structlog.get_logger("voxgate.handoff")
_session_log = structlog.get_logger("voxgate.session")

#: Upstream events after which the conversation a snapshot holds has changed.
CHANGES = frozenset(
    {
        "session.updated",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.deleted",
        "conversation.item.input_audio_transcription.completed",
        "input_audio_buffer.committed",
        "input_audio_buffer.speech_started",
        "response.created",
        "response.done",
    }
)
_AUDIO_HEAD = '{"type":"response.output_audio'
#: Session endings after which a resumable session is parked for its client, not forgotten.
PARK_CAUSES = frozenset({"migrated", "draining", "server_shutdown"})
#: A snapshot whose only change is the client's audio position is rewritten every this many
#: intervals (5 s by default: well inside the ~12 s the browser client keeps to re-send).
_POSITION_EVERY = 5
#: How often a draining node looks for quiet points.
_QUIET_POLL_S = 0.1


class _Writer:
    """One session's snapshot writer (a task next to its runner)."""

    def __init__(
        self,
        owner: Handoff,
        runner: SessionRunner,
        meta: SessionMeta,
        written: dict[str, str | bytes] | None,
    ) -> None:
        self.owner = owner
        self.runner = runner
        self.meta = meta
        self.written = written
        self.changed = asyncio.Event()
        self.events = 0  # non-audio upstream events seen (what a snapshot's tail can hold)
        self.lost = False  # another node owns the session now
        self._last: tuple[Any, ...] | None = None
        self._position = -1  # the input audio position the last snapshot holds
        self._lock = asyncio.Lock()

    def observe(self, text: str) -> None:
        """An upstream event on the session's slow path (never audio on the hot path)."""
        if text.startswith(_AUDIO_HEAD):
            return
        try:
            etype = event_type(text)
        except NotAnEvent:
            return
        self.events += 1
        if etype in CHANGES:
            self.changed.set()

    def _signature(self) -> tuple[Any, ...]:
        """What makes a new snapshot worth writing: the conversation and the non-audio events.

        Output audio (never in a periodic snapshot), acks (a stale ack only keeps more in the
        tail) and the input audio position (a stale one only has the client re-send more of
        its buffer; refreshed every ``_POSITION_EVERY`` intervals) do not count.
        """
        recovery = self.runner.machine.recovery
        if recovery is None:
            return ()
        mirror = recovery.mirror
        return (
            mirror.items_bytes,
            id(mirror.config_text),
            recovery.response_active,
            recovery.turn,
            mirror.speaking,
            self.events,
        )

    async def run(self) -> None:
        s = self.owner.settings
        quiet = 0
        while not self.lost:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(s.snapshot_interval_s):
                    await self.changed.wait()
                    await asyncio.sleep(s.snapshot_debounce_s)  # coalesce a burst of events
            self.changed.clear()
            if self.runner.machine.phase is not Phase.READY:
                continue
            quiet += 1
            if self._signature() != self._last or (
                quiet >= _POSITION_EVERY and self._position_moved()
            ):
                quiet = 0
                await self.write(final=False)

    def _position_moved(self) -> bool:
        recovery = self.runner.machine.recovery
        return recovery is not None and recovery.mirror.pending_start != self._position

    async def write(self, *, final: bool) -> bool:
        """Write a snapshot now; False when another node owns the session."""
        recovery = self.runner.machine.recovery
        replay = self.runner.replay_log
        if recovery is None or replay is None or self.lost:
            return False
        s = self.owner.settings
        async with self._lock:
            snap = take(
                self.meta,
                node=self.owner.node,
                recovery=recovery,
                replay=replay,
                client_audio_bytes=self.runner.stats.client_audio_bytes,
                now=self.owner.clock(),
                final=final,
                replay_bytes=(replay.limit_bytes if final else s.snapshot_replay_bytes),
                max_bytes=s.snapshot_max_bytes,
            )
            signature = self._signature()
            encoded = encode(snap, self.written)
            started = time.perf_counter()
            ok = await self.owner.store.save_snapshot(
                self.meta.session_id,
                self.owner.node,
                encoded.head,
                encoded.put,
                encoded.drop,
                self.owner.session_ttl_s,
            )
            self.owner.note_write(
                len(encoded.head) + sum(len(v) for v in encoded.put.values()),
                time.perf_counter() - started,
            )
            if not ok:
                self.lost = True
                return False
            self.written = written_after(snap)
            self._last = signature
            self._position = snap.stream_bytes
            return True


class Handoff:
    """See the module docstring. Built by the app when the store is shared."""

    def __init__(
        self,
        hub: SessionHub,
        store: Store,
        router: NodeRouter,
        *,
        session_ttl_s: float,
    ) -> None:
        self.hub = hub
        self.store = store
        self.router = router
        self.settings = hub.settings
        self.node = hub.node_id
        self.clock = hub.clock
        self.session_ttl_s = session_ttl_s
        self._writers: dict[str, _Writer] = {}
        #: sessions being parked: set once their final snapshot is written and released
        self._parked: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._beat: asyncio.Task[None] | None = None
        #: snapshot writes (count, bytes, seconds) for metrics and the bench
        self.writes = 0
        self.written_bytes = 0
        self.write_seconds = 0.0
        router.handle("handoff", self._on_handoff)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.store.node_started(self.node)  # a restart under the same name counts afresh
        await self.store.heartbeat(self.node, self._node_ttl_s)
        self._beat = asyncio.create_task(self._heartbeats(), name="node_heartbeat")

    async def aclose(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
        for task in list(self._tasks):
            task.cancel()

    @property
    def _node_ttl_s(self) -> float:
        return float(self.settings.node_heartbeat_s) * 3

    async def _heartbeats(self) -> None:
        loop = asyncio.get_running_loop()
        next_touch = loop.time() + self.session_ttl_s / 3
        while True:
            await asyncio.sleep(self.settings.node_heartbeat_s)  # a period, not a wait for state
            try:
                await self.store.heartbeat(self.node, self._node_ttl_s)
                if loop.time() >= next_touch:
                    next_touch = loop.time() + self.session_ttl_s / 3
                    await self.store.touch(list(self.hub.live_ids()), self.session_ttl_s)
            except Exception as exc:  # Redis away: keep beating, say so once per beat
                log.warning("node.heartbeat_failed", error=type(exc).__name__)

    def note_write(self, size: int, seconds: float) -> None:
        self.writes += 1
        self.written_bytes += size
        self.write_seconds += seconds
        self.hub.metrics.snapshot_writes.inc()
        self.hub.metrics.snapshot_bytes.inc(size)

    # ------------------------------------------------------------------ per session

    @asynccontextmanager
    async def track(
        self,
        runner: SessionRunner,
        record: SessionRecord,
        meta: SessionMeta,
        written: dict[str, str | bytes] | None = None,
    ) -> AsyncIterator[None]:
        """Snapshot ``runner`` while it runs; park it for its client when it ends for a
        reason its client would resume after (see :data:`PARK_CAUSES`)."""
        writer = _Writer(self, runner, meta, written)
        sid = record.session_id
        self._writers[sid] = writer
        runner.upstream_observers.append(writer.observe)
        task = asyncio.create_task(self._guard(writer), name="snapshots")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._writers.pop(sid, None)
            end = runner.end
            if end is not None and end.cause in PARK_CAUSES and not writer.lost:
                parked = self._parked.setdefault(sid, asyncio.Event())
                try:
                    await self._park(writer, sid)
                finally:
                    parked.set()
                    self._parked.pop(sid, None)

    async def _guard(self, writer: _Writer) -> None:
        """Run the writer; a session another node took over ends here (``superseded``)."""
        try:
            await writer.run()
        except Exception as exc:  # Redis away: the session goes on without snapshots
            log.warning("snapshot.failed", session_id=writer.meta.session_id, error=repr(exc))
            return
        if writer.lost:
            log.warning("session.superseded", session_id=writer.meta.session_id)
            writer.runner.stop("superseded")

    async def _park(self, writer: _Writer, sid: str) -> None:
        try:
            if await writer.write(final=True):
                await self.store.claim(sid, RELEASED, owner=self.node)
                end = writer.runner.end
                log.info("session.parked", session_id=sid, cause=end.cause if end else None)
        except Exception as exc:
            log.warning("session.park_failed", session_id=sid, error=repr(exc))

    # ------------------------------------------------------------------ handing over

    async def _on_handoff(self, body: dict[str, Any]) -> dict[str, Any]:
        """Another node's client resumed a session of ours: stop it, park it, say so."""
        sid = str(body.get("session_id"))
        runner = self.hub.live(sid)
        parked: asyncio.Event | None
        if runner is not None:
            parked = self._parked.setdefault(sid, asyncio.Event())
            runner.stop("migrated")
        else:
            parked = self._parked.get(sid)  # being parked already (drain), or gone
        if parked is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.handoff_timeout_s):
                    await parked.wait()
        return {"released": True}

    async def adopt(
        self,
        conn: ClientConnection,
        claims: ResumeClaims,
        received: int,
        credential: str | None,
    ) -> str | None:
        """Resume a session this node does not hold; None once it ran here, else why not.

        Returns when the session ends (or the client leaves it), like a resume on its own node.
        """
        sid = claims.session_id
        if not self.hub.recover:  # this backend cannot be rebuilt on a fresh upstream
            return "no_session"
        record = await self.store.session(sid)
        if record is None or not record.resumable:
            return "no_session"
        if claims.subject != record.subject:
            return "other_subject"
        if credential:
            try:
                presented = self.hub.auth.authenticate(credential, now=self.clock()).subject
            except AuthError:
                return "bad_key"
            if presented != record.subject:
                return "other_subject"
        if not await self.store.consume_resume(sid, claims.generation, claims.nonce):
            return "token_used"
        started = time.perf_counter()
        owner = await self._take_over(record)
        if owner is None:
            return "taken"
        stored = await self.store.load_snapshot(sid)
        if stored is None:
            await self.store.unregister(sid, node=self.node)
            return "no_snapshot"
        try:
            snap = decode(stored.head, stored.items)
        except SnapshotError:
            await self.store.unregister(sid, node=self.node)
            return "bad_snapshot"
        if received < snap.acked:
            await self.store.claim(sid, RELEASED, owner=self.node)
            return "events_lost"
        slog = _session_log.bind(backend=self.hub.backend.name, conn="resume")
        return await self._run_adopted(conn, snap, received, owner, started, slog)

    async def _take_over(self, record: SessionRecord) -> str | None:
        """Make this node the session's owner; returns who owned it, None if another node won."""
        sid, owner = record.session_id, record.node
        if owner not in (RELEASED, self.node):
            try:
                await self.router.call(
                    owner,
                    "handoff",
                    {"session_id": sid, "to": self.node},
                    timeout_s=self.settings.handoff_timeout_s,
                )
            except NodeGone:
                log.info("handoff.owner_gone", session_id=sid, owner=owner)
            except TimeoutError:  # alive but silent: take it anyway (fencing stops it)
                log.warning("handoff.owner_silent", session_id=sid, owner=owner)
        for expected in (RELEASED, owner):
            if await self.store.claim(sid, self.node, owner=expected):
                return owner
        return None

    async def _run_adopted(
        self,
        conn: ClientConnection,
        snap: SessionSnapshot,
        received: int,
        owner: str,
        started: float,
        slog: Any,
    ) -> str | None:
        meta = snap.meta
        missed = snap.missed(received)
        lost = max(0, snap.last_seq - received - len(missed))
        resume = ResumeState(
            self.hub.secret, self.store, session_id=meta.session_id, subject=meta.subject
        )
        token = await resume.consume()
        cause = "migrated" if snap.final else "node_lost"
        restored = Restored(
            received=received,
            missed=tuple(missed),
            lost=lost,
            token=token,
            input_audio_bytes=snap.input_audio_bytes,
            cause=cause,
        )
        slog = slog.bind(session_id=meta.session_id)
        slog.info(
            "session.adopted",
            previous_node=owner or snap.node,
            cause=cause,
            snapshot_age_s=round(max(0.0, self.clock() - snap.taken_at), 3),
            takeover_ms=round((time.perf_counter() - started) * 1000, 1),
            replayed_events=len(missed),
            lost_events=lost,
        )
        self.hub.metrics.adoptions.labels(cause=cause).inc()
        await self.hub.run_restored(
            conn,
            meta,
            lambda recovery: restore(snap, recovery),
            written_after(snap),
            restored,
            resume,
            slog,
        )
        return None

    # ------------------------------------------------------------------ drain

    def migrate_all(self, timeout_s: float) -> None:
        """Draining: tell every opted-in client to resume elsewhere at its next quiet point."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s * self.settings.migrate_quiet_share
        moving = [
            runner
            for sid in self.hub.live_ids()
            if (runner := self.hub.live(sid)) is not None
            and runner.replay_log is not None
            and runner.attached
        ]
        # spread over time: every client resumes elsewhere, the other nodes adopt at a rate
        rate = self.settings.migrate_rate_per_s
        for n, runner in enumerate(moving):
            not_before = loop.time() + n / rate
            task = asyncio.create_task(self._migrate(runner, not_before, deadline), name="migrate")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _migrate(self, runner: SessionRunner, not_before: float, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        if not_before > loop.time():
            await asyncio.sleep(not_before - loop.time())  # the drain's pacing
        while True:  # a drain-time poll for a quiet point (the session has no event for it)
            now = loop.time()
            if runner.end is not None or now >= deadline or _quiet(runner, now):
                break
            await asyncio.sleep(_QUIET_POLL_S)
        if runner.end is not None:
            return
        writer = self._writers.get(runner.session_id)
        if writer is not None:  # the hand-off will write a final one; this one is for a death
            with contextlib.suppress(Exception):
                await writer.write(final=False)
        await runner.send_control(
            gateway_event(
                "voxgate.session.migrate", reason="draining", session_id=runner.session_id
            )
        )
        log.info("session.migrate_sent", session_id=runner.session_id)


def _quiet(runner: SessionRunner, now: float) -> bool:
    machine = runner.machine
    recovery = machine.recovery
    return machine.phase is Phase.READY and (recovery is None or recovery.is_quiet(now))
