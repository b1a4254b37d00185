"""The node's sessions, whatever transport brought them: admit, run, find, stop.

Every client-facing adapter (the WebSocket endpoint today; SSE, WebRTC and phone adapters are
the same few calls) hands the hub a :class:`~voxgate.session.ports.ClientConnection` and what
the client asked for; the hub authenticates (server key, ``ek_`` key, revocation), binds the
model a key was minted for, counts the session in (the :class:`~voxgate.store.base.Store`'s
total and per-subject limits, across nodes when the store is shared), registers it, builds the
machine, the mirror and the runner, runs it, and counts it out. The live runner objects stay
on this node (:meth:`SessionHub.live`); what other nodes need to know is in the store.

Calls (WebRTC, phone) also register here by ``call_id`` (:meth:`SessionHub.register_call`), so
a server WebSocket connecting with ``?call_id=`` is attached to the running call (the sideband,
realtime-protocol.md §2.3) instead of starting a session; the call decides who may attach.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from voxgate.auth.grants import Authenticator, Grant
from voxgate.auth.resume import ResumeState
from voxgate.observability.metrics import Metrics
from voxgate.observability.session_trace import Observability
from voxgate.protocol.close import CloseCode
from voxgate.protocol.errors import INVALID_REQUEST, SERVER_ERROR, AuthError, FatalSessionError
from voxgate.protocol.ids import new_id
from voxgate.session.actions import EndSession
from voxgate.session.machine import SessionMachine
from voxgate.session.mirror import Mirror
from voxgate.session.ports import Backend, ClientConnection, UpstreamTarget
from voxgate.session.reconnect import ReconnectPolicy
from voxgate.session.recovery import Recovery
from voxgate.session.runner import SessionRunner
from voxgate.session.runner_types import ClientLink, Restored, RunnerConfig, SessionStats
from voxgate.session.server_side import ServerSide
from voxgate.store.base import SessionRecord, SlotRefused, Store

if TYPE_CHECKING:  # issue 17: the node's part in a deployment (it imports this module)
    from voxgate.session.snapshot import SessionMeta
    from voxgate.transports.handoff import Handoff

log = structlog.get_logger("voxgate.session")


class CallAttachment(Protocol):
    """A running call that a sideband WebSocket may attach to (``?call_id=``)."""

    async def attach(self, conn: ClientConnection, grant: Grant, slog: Any) -> None:
        """Serve ``conn`` until it leaves or the call ends.

        Raises:
            FatalSessionError: this credential may not attach, or the call is full.
        """
        ...


@dataclass(frozen=True, slots=True)
class SessionRequest:
    """What a client asked for, transport-independently (never its credential in ``repr``)."""

    credential: str | None
    model: str | None
    intent: str | None
    extensions: bool
    call_id: str | None = None
    beta_header: bool = False
    transport: str = "websocket"

    def __repr__(self) -> str:
        return (
            f"SessionRequest(model={self.model!r}, intent={self.intent!r}, "
            f"extensions={self.extensions}, transport={self.transport!r})"
        )


#: Builds a session's server side (server tools, proactive turns; issue 14), or None.
ServerSideFactory = Callable[[Grant, UpstreamTarget, bool, Any], ServerSide | None]


class SessionHub:
    """See the module docstring."""

    def __init__(
        self,
        *,
        backend: Backend,
        authenticator: Authenticator,
        store: Store,
        metrics: Metrics,
        settings: Any,
        known_secrets: tuple[str, ...],
        secret: bytes = b"",
        node_id: str = "",
        clock: Callable[[], float] = time.time,
        on_upstream_auth_failed: Callable[[], None] | None = None,
        server_side: ServerSideFactory | None = None,
    ) -> None:
        self.backend = backend
        self.server_side = server_side
        self.auth = authenticator
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.secret = secret
        self.node_id = node_id or new_id("node", 8)
        self.clock = clock
        self._known = known_secrets
        self._on_auth_failed = on_upstream_auth_failed
        self._auth_failed_logged = False
        self._runners: dict[str, SessionRunner] = {}
        #: snapshots, hand-offs and adoption when the store is shared (set by the app)
        self.handoff: Handoff | None = None
        self._calls: dict[str, CallAttachment] = {}
        self._resume_states: dict[str, ResumeState] = {}
        self._policy = ReconnectPolicy(
            attempts=settings.reconnect_attempts,
            base_delay_s=settings.reconnect_base_delay_s,
            max_delay_s=settings.reconnect_max_delay_s,
            connect_timeout_s=settings.reconnect_connect_timeout_s,
        )
        #: recovery (mirror, reconnect, recycle) for backends that can be reconnected
        self.recover = bool(getattr(backend, "reconnectable", False)) and self._policy.attempts > 0
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        metrics.measure_buffers(self.buffered_bytes)
        metrics.measure_live(self._live_counters)  # counters move while sessions run
        #: turn latency, connect times, tool calls and spans per session (set by the app)
        self.observability: Observability | None = None

    # ------------------------------------------------------------------ queries

    @property
    def active_sessions(self) -> int:
        return self._active

    def buffered_bytes(self) -> int:
        """What the live sessions' bounded buffers hold now (for the metrics scrape)."""
        return sum(runner.buffered_bytes() for runner in self._runners.values())

    def _live_counters(self) -> list[tuple[SessionStats, dict[str, int]]]:
        """The running sessions' counters, read at every metrics scrape."""
        return [(r.live_stats(), r.machine.error_codes) for r in self._runners.values()]

    def live_ids(self) -> list[str]:
        """Ids of the sessions running on this node now."""
        return list(self._runners)

    def live(self, session_id: str) -> SessionRunner | None:
        return self._runners.get(session_id)

    def register_call(self, call_id: str, call: CallAttachment) -> None:
        """Make a running call attachable by ``?call_id=`` until :meth:`unregister_call`."""
        self._calls[call_id] = call

    def unregister_call(self, call_id: str) -> None:
        self._calls.pop(call_id, None)

    def resume_state(self, session_id: str) -> ResumeState | None:
        return self._resume_states.get(session_id)

    def end_detached(self) -> int:
        """End every session whose client is away (draining: nobody will resume here)."""
        ended = 0
        for session_id in list(self._resume_states):
            runner = self._runners.get(session_id)
            if runner is not None and not runner.attached:
                runner.stop("draining")
                ended += 1
        return ended

    def stop_all(self, cause: str = "server_shutdown") -> None:
        """Ask every live session to end now (1001 going away: clients may reconnect)."""
        for runner in list(self._runners.values()):
            runner.stop(cause)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no session is running (drain); False if ``timeout_s`` passed first."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ admission

    async def admit(self, req: SessionRequest) -> Grant:
        """Authenticate and check what the client asked for.

        Raises:
            FatalSessionError: refused (bad or revoked key, no model, unsupported option).
        """
        if req.beta_header:
            raise FatalSessionError(
                "The beta Realtime API shape is disabled; remove the 'OpenAI-Beta: realtime=v1' "
                "header and use the GA events.",
                code="beta_api_shape_disabled",
                close_code=CloseCode.BAD_REQUEST,
                error_type=INVALID_REQUEST,
            )
        now = self.clock()
        grant = self.auth.authenticate(req.credential, now=now)
        if grant.key_id is not None and await self.store.is_revoked(grant.key_id, now):
            raise AuthError("This ephemeral key has been revoked. Mint a new one.")
        if not (req.model or req.intent == "transcription" or req.call_id or grant.session):
            raise FatalSessionError(
                "You must provide a model parameter (e.g. ?model=gpt-realtime), or "
                "?intent=transcription.",
                code="missing_model",
                close_code=CloseCode.BAD_REQUEST,
                error_type=INVALID_REQUEST,
            )
        if req.call_id and req.call_id not in self._calls:
            raise _no_call()
        return grant

    def target(self, req: SessionRequest, grant: Grant, session_id: str) -> UpstreamTarget:
        """The upstream to open. A key's model binds: a different ``?model=`` is ignored.

        The SDKs always put a model in the URL (openai-agents its own default), so refusing a
        mismatch would break stock clients holding a key minted for another model; OpenAI
        likewise starts a client-secret session from the secret's config.
        """
        embedded = grant.session or {}
        intent, model = req.intent, req.model
        if embedded.get("type") == "transcription":
            intent, model = "transcription", None
        elif isinstance(embedded.get("model"), str):
            model = embedded["model"]
        elif not model and intent != "transcription":
            model = self.settings.default_model
        return UpstreamTarget(
            model=model, intent=intent, session_id=session_id, subject=grant.subject
        )

    # ------------------------------------------------------------------ running

    async def run(
        self, conn: ClientConnection, req: SessionRequest, grant: Grant, slog: Any
    ) -> EndSession:
        """Count the session in, run it to its end, count it out. Refusals raise.

        Raises:
            FatalSessionError: the deployment or the subject is at its limit.
        """
        if req.call_id:
            call = self._calls.get(req.call_id)
            if call is None:
                raise _no_call()
            await call.attach(conn, grant, slog.bind(call_id=req.call_id, auth=grant.kind))
            return EndSession(CloseCode.NORMAL, "", None, "sideband_detached")
        s = self.settings
        session_id = new_id("vg", 16)
        slog = slog.bind(session_id=session_id, auth=grant.kind)
        target = self.target(req, grant, session_id)
        if req.model and target.model and req.model != target.model:
            slog.info("session.model_from_key", asked=req.model, used=target.model)
        try:
            await self.store.acquire_slot(
                grant.subject, max_total=s.max_sessions, max_per_subject=s.max_sessions_per_subject
            )
        except SlotRefused as exc:
            raise _limit_error(exc) from None
        resume = (
            ResumeState(self.secret, self.store, session_id=session_id, subject=grant.subject)
            if req.extensions and s.resume_grace_s > 0 and self.secret
            else None
        )
        side = self.server_side(grant, target, req.extensions, slog) if self.server_side else None
        embedded = side.initial_config(grant.session) if side is not None else grant.session
        runner = SessionRunner(
            client=ClientLink(conn),
            backend=self.backend,
            machine=self._machine(embedded, req.extensions),
            target=target,
            config=self._runner_config(grant),
            log=slog,
            resume=resume,
            side=side,
        )
        record = SessionRecord(
            session_id=session_id,
            node=self.node_id,
            subject=grant.subject,
            started_at=self.clock(),
            resumable=resume is not None,
            key_id=grant.key_id,
        )
        return await self._run_counted(runner, record, resume)

    async def run_restored(
        self,
        conn: ClientConnection,
        meta: SessionMeta,
        restore: Callable[[Recovery], None],
        written: dict[str, str | bytes],
        restored: Restored,
        resume: ResumeState,
        slog: Any,
    ) -> EndSession:
        """Run a session rebuilt from another node's snapshot (issue 17): the caller
        (:meth:`Handoff.adopt`) consumed the client's token, took the session over and read
        the snapshot; ``restore`` fills the fresh recovery from it."""
        left_s = meta.max_session_s - max(0.0, self.clock() - meta.started_at)
        grant = Grant(
            kind="client_key" if meta.grant_kind == "client_key" else "server_key",
            max_session_s=max(1.0, left_s),
            subject=meta.subject,
            key_id=meta.key_id,
        )
        target = UpstreamTarget(
            model=meta.model, intent=meta.intent, session_id=meta.session_id, subject=meta.subject
        )
        machine = self._machine(None, True)
        if machine.recovery is None:
            raise FatalSessionError(
                "This gateway cannot rebuild sessions (its backend cannot be reconnected).",
                code="voxgate_resume_refused",
                close_code=CloseCode.BAD_REQUEST,
                error_type=INVALID_REQUEST,
            )
        restore(machine.recovery)
        side = self.server_side(grant, target, True, slog) if self.server_side else None
        runner = SessionRunner(
            client=ClientLink(conn),
            backend=self.backend,
            machine=machine,
            target=target,
            config=self._runner_config(grant),
            log=slog,
            resume=resume,
            side=side,
            restored=restored,
        )
        # it was counted in on its first node; it counts here now, above any limit
        await self.store.acquire_slot(meta.subject, max_total=1 << 62, max_per_subject=1 << 62)
        record = SessionRecord(
            meta.session_id, self.node_id, meta.subject, meta.started_at, True, meta.key_id
        )
        return await self._run_counted(runner, record, resume, meta, written)

    async def _run_counted(
        self,
        runner: SessionRunner,
        record: SessionRecord,
        resume: ResumeState | None,
        meta: SessionMeta | None = None,
        written: dict[str, str | bytes] | None = None,
    ) -> EndSession:
        session_id = record.session_id
        self.metrics.sessions_active.inc()
        runner.timer_lateness = self.metrics.loop_lag.record
        self._active += 1
        self._idle.clear()
        self._runners[session_id] = runner
        if self.observability is not None:
            traced = self.observability.start(
                session_id,
                **{"voxgate.node": self.node_id, "voxgate.resumable": record.resumable},
            )
            runner.upstream_observers.append(traced.observe)
        if resume is not None:
            self._resume_states[session_id] = resume
        try:
            await self.store.register(record)
            if self.handoff is not None and resume is not None:
                async with self.handoff.track(
                    runner, record, meta or self._meta(runner, record), written
                ):
                    end = await runner.run()
            else:
                end = await runner.run()
        finally:
            self._runners.pop(session_id, None)
            self._resume_states.pop(session_id, None)
            # only while this node owns it: a handed-off or parked session lives on
            await self.store.unregister(session_id, node=record.node)
            await self.store.release_slot(record.subject)
            self._active -= 1
            if self._active == 0:
                self._idle.set()
            self.metrics.sessions_active.dec()
            self.metrics.record_session(runner.live_stats(), runner.machine.error_codes)
            if self.observability is not None:
                self.observability.finish(session_id, runner.end.cause if runner.end else "error")
        if runner.machine.upstream_auth_failed:
            self._upstream_auth_failed()
        self.metrics.sessions_total.labels(cause=end.cause.split(":")[0]).inc()
        return end

    def _meta(self, runner: SessionRunner, record: SessionRecord) -> SessionMeta:
        from voxgate.session.snapshot import SessionMeta

        target = runner.target
        return SessionMeta(
            session_id=record.session_id,
            subject=record.subject,
            key_id=record.key_id,
            grant_kind="client_key" if record.key_id else "server_key",
            model=target.model,
            intent=target.intent,
            started_at=record.started_at,
            max_session_s=runner.max_session_s,
        )

    def _upstream_auth_failed(self) -> None:
        """The upstream refused voxgate's own key: tell the operator (once at error level)."""
        if not self._auth_failed_logged:
            self._auth_failed_logged = True
            log.error(
                "upstream.auth_failed",
                hint="the upstream refused OPENAI_API_KEY; check the key and restart",
            )
        else:
            log.info("upstream.auth_failed")
        if self._on_auth_failed is not None:
            self._on_auth_failed()

    def _machine(self, embedded: dict[str, Any] | None, extensions: bool) -> SessionMachine:
        s = self.settings
        return SessionMachine(
            embedded_session=embedded,
            extensions=extensions,
            prebuffer_limit_bytes=s.prebuffer_bytes,
            coalesce_window_s=s.error_coalesce_window_s,
            known_secrets=self._known,
            recovery=self._recovery(),
        )

    def _recovery(self) -> Recovery | None:
        if not self.recover:
            return None
        s = self.settings
        return Recovery(
            Mirror(
                items_limit_bytes=s.mirror_items_bytes,
                audio_limit_s=None if s.mirror_audio_bytes else s.mirror_audio_s,
                audio_limit_bytes=s.mirror_audio_bytes or 0,
                turn_audio_limit_s=None if s.mirror_turn_audio_bytes else s.mirror_turn_audio_s,
                turn_audio_limit_bytes=s.mirror_turn_audio_bytes or 0,
            )
        )

    def _runner_config(self, grant: Grant) -> RunnerConfig:
        s = self.settings
        reconnect = self.recover
        return RunnerConfig(
            ready_timeout_s=s.ready_timeout_s,
            max_session_s=grant.max_session_s,
            ping_interval_s=s.ping_interval_s,
            client_send_timeout_s=s.client_send_timeout_s,
            reconnect=self._policy if reconnect else None,
            recycle_after_s=(s.upstream_max_session_s or None) if reconnect else None,
            resume_grace_s=s.resume_grace_s,
            replay_bytes=s.replay_bytes,
            replay_s=s.replay_s,
            client_events_per_s=s.client_max_events_per_s,
            client_events_burst=s.client_events_burst,
            client_audio_multiple=s.client_max_audio_realtime,
            client_audio_burst_s=s.client_audio_burst_s,
        )


def _no_call() -> FatalSessionError:
    return FatalSessionError(
        "No call with this call_id is running on this gateway (it ended, or it is on another "
        "node).",
        code="call_not_found",
        close_code=CloseCode.BAD_REQUEST,
        error_type=INVALID_REQUEST,
        param="call_id",
    )


def _limit_error(exc: SlotRefused) -> FatalSessionError:
    if exc.code == "voxgate_subject_limit":
        message = (
            f"This user already has {exc.count} open sessions (the limit is {exc.limit}). "
            "Close one and try again."
        )
    else:
        message = (
            f"The gateway is at its limit of {exc.limit} concurrent sessions. Try again later."
        )
    return FatalSessionError(
        message, code=exc.code, close_code=CloseCode.TRY_AGAIN_LATER, error_type=SERVER_ERROR
    )
