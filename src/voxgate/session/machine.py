"""SessionMachine: the relay logic of one client session, without I/O and without a clock.

It owns readiness gating (realtime-protocol.md §6.1 and issue #3): until the upstream has sent
``session.created`` and the key's embedded session config has been applied, client frames go to
the ordered, bounded :class:`PreBuffer`; then the runner flushes them in order. It validates what
needs validating on the client side (JSON, a known ``type``, binary frames only for opted-in
clients), maps upstream errors and closes to client-facing ones with secrets redacted, and
coalesces repeated errors.

Caller's duty: feed every frame to :meth:`client_text` / :meth:`client_binary` /
:meth:`upstream_text` in arrival order, execute the returned actions in order, and on
:data:`FORWARD` send the same frame on unchanged. Methods that can produce an error take ``now``
(monotonic seconds) for coalescing.

Phases::

    CONNECTING --session.created--> CONFIGURING --session.updated--> FLUSHING --flush_done--> READY
         \\______(no embedded config)_____________________________/^                        |
         ^__(lost before ready: retry)                    RECONNECTING <--(upstream lost)---/
                                                               \\--reconnected--> FLUSHING
    any phase --fatal--> CLOSED

With a :class:`~voxgate.session.recovery.Recovery` (backends that can be reconnected), every
frame that leaves for the upstream is first recorded there (audio in the mirror, control events
until acknowledged), so a frame lost with a dying upstream is never lost for the session; and
a retryable upstream loss becomes :class:`StartReconnect` instead of the end.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import orjson

from voxgate.protocol import b64
from voxgate.protocol.close import CloseCode, close_reason
from voxgate.protocol.errors import INVALID_REQUEST, SERVER_ERROR, InvalidState, error_event
from voxgate.protocol.events import APPEND, CLIENT_EVENT_TYPES, unsupported_type_message
from voxgate.protocol.extensions import append_b64, gateway_event
from voxgate.protocol.formats import PCM, input_info, output_info
from voxgate.protocol.ids import event_id as new_event_id
from voxgate.protocol.redaction import redact
from voxgate.protocol.sniff import (
    NotAnEvent,
    append_audio_start,
    client_event_id,
    event_type,
    parse_event,
)
from voxgate.session.actions import (
    FORWARD,
    NOTHING,
    AckReplay,
    Action,
    EndSession,
    Outcome,
    SendClient,
    SendUpstream,
    StartFlush,
    StartReconnect,
)
from voxgate.session.coalesce import ErrorCoalescer
from voxgate.session.prebuffer import PreBuffer
from voxgate.session.reconnect import NEVER_RETRIED_CODES, is_retryable_close
from voxgate.session.recovery import Recovery
from voxgate.session.replay_driver import ReplayDriver, ReplayStats

#: voxgate.v1 clients confirm what they received, so the replay log can let go of it.
ACK = "voxgate.session.ack"
#: Exact heads of the two audio events that are most of the traffic, as the SDKs and the real
#: server serialise them (type first, with or without a space). A frame that starts with one
#: is routed with a single ``startswith``; anything else goes through :func:`event_type`.
_AUDIO_DELTA_HEADS = (
    '{"type":"response.output_audio.delta"',
    '{"type": "response.output_audio.delta"',
)
#: the same heads in UTF-8, for frames still encoded (their payload starts at offset 4)
AUDIO_DELTA_ENCODED_HEADS = tuple(head.encode() for head in _AUDIO_DELTA_HEADS)

#: Upstream error codes that mean voxgate's own upstream key was refused.
UPSTREAM_AUTH_CODES: frozenset[str | None] = frozenset({"invalid_api_key"})
UPSTREAM_AUTH_FAILED = "voxgate_upstream_auth_failed"
_SESSION_TYPES = frozenset({"session.created", "session.updated"})
#: Upstream error codes after which the session cannot continue (§7); never retried.
FATAL_UPSTREAM_CODES: frozenset[str] = NEVER_RETRIED_CODES | {"session_expired"}
#: With recovery, the upstream's own 60-minute cap is not the end of the call (issue #6).
_RECOVERABLE_UPSTREAM_CODES = frozenset({"session_expired"})
#: Upstream events held while the embedded config is applied (they precede session.created
#: for the client); more than this is an upstream protocol violation.
_MAX_HELD_UPSTREAM = 64


class Phase(enum.Enum):
    CONNECTING = "connecting"
    CONFIGURING = "configuring"
    FLUSHING = "flushing"
    READY = "ready"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


class SessionMachine:
    """Relay state of one client session. See the module docstring for the contract."""

    def __init__(
        self,
        *,
        embedded_session: dict[str, Any] | None,
        extensions: bool,
        prebuffer_limit_bytes: int,
        coalesce_window_s: float,
        known_secrets: tuple[str, ...] = (),
        recovery: Recovery | None = None,
    ) -> None:
        self.phase = Phase.CONNECTING
        self.recovery = recovery
        #: answers voxgate gives the client itself while flushing (sent by the runner)
        self.flush_replies: list[str] = []
        self._upstream_expired = False
        self.ready_once = False
        self.extensions = extensions
        self.prebuffer = PreBuffer(prebuffer_limit_bytes)
        self.errors = ErrorCoalescer(coalesce_window_s)
        self._embedded = embedded_session
        self._known = known_secrets
        self._config_event_id = "event_voxgate_config_" + new_event_id()[6:]
        self._created_event_id: str | None = None
        self._held_upstream: list[str] = []
        self._fatal_error_seen: tuple[str, str | None] | None = None
        self.session_object: dict[str, Any] | None = None
        self.errors_sent = 0
        #: errors sent to the client, by code (issue 17: counted live in the metrics)
        self.error_codes: dict[str, int] = {}
        #: input audio bytes per second of the session's format (what pacing charges; a plain
        #: attribute: read once per client frame)
        self.input_bytes_per_s: int = PCM.bytes_per_s
        self._output_b64_per_s = PCM.b64_chars_per_s
        #: counts session.created/updated seen (a runner resizes format-based bounds on change)
        self.formats_seen = 0
        #: the upstream refused voxgate's own key (the endpoint tells the operator and /readyz)
        self.upstream_auth_failed = False

    # ------------------------------------------------------------------ hot paths

    def client_audio_start(self, text: str) -> int:
        """The sink's question for a client text frame, with no side effect: where the base64
        of a plain append to forward unchanged starts, or -1 (hand it to :meth:`client_text`).
        After forwarding it, the caller must :meth:`record_client_audio`."""
        if self.phase is not Phase.READY:
            return -1
        return append_audio_start(text)  # one bounded check: a plain append, nothing smuggled

    def record_client_audio(self, text: str, start: int) -> None:
        """A plain append went upstream: record its audio for recovery."""
        if self.recovery is not None:
            self.recovery.sent_audio_b64(text[start:-2])

    def client_audio_text(self, text: str) -> bool:
        """:meth:`client_audio_start` and :meth:`record_client_audio` in one (True: forward)."""
        start = self.client_audio_start(text)
        if start < 0:
            return False
        self.record_client_audio(text, start)
        return True

    @property
    def audio_recorders(
        self,
    ) -> tuple[Callable[[str], None] | None, Callable[[bytes], None] | None]:
        """What records forwarded audio for recovery (base64, raw), or Nones: the hot path
        calls them directly instead of :meth:`record_client_audio` and its siblings."""
        recovery = self.recovery
        if recovery is None:
            return None, None
        return recovery.record_b64, recovery.record_pcm

    def upstream_audio_text(self, text: str) -> bool:
        """The sink's question for an upstream frame: an audio delta to forward unchanged?"""
        return self.phase is Phase.READY and text.startswith(_AUDIO_DELTA_HEADS)

    @property
    def output_b64_chars_per_s(self) -> float:
        """Base64 characters per second of the session's output audio (replay log sizing)."""
        return self._output_b64_per_s

    # ------------------------------------------------------------------ client side

    def client_text(self, text: str, now: float) -> Outcome:
        """A text frame from the client. Returns FORWARD, nothing, or actions."""
        if self.client_audio_text(text):
            return FORWARD
        try:
            etype = event_type(text)
        except NotAnEvent as exc:
            return self._client_error(exc.message, exc.code, None, None, now)
        if etype == ACK and self.extensions:
            return self._ack(text, now)
        if etype != APPEND and etype not in CLIENT_EVENT_TYPES:
            return self._client_error(
                unsupported_type_message(etype),
                "invalid_value",
                "type",
                client_event_id(text),
                now,
            )
        phase = self.phase
        if phase is Phase.READY:
            if self.recovery is None:
                return FORWARD
            return self._sending(etype, text, now)
        if phase is Phase.CLOSED:
            return NOTHING
        return self._hold(text)

    def _sending(self, etype: str, text: str, now: float) -> Outcome:
        """Record a frame that is about to go upstream (recovery on)."""
        recovery = self.recovery
        assert recovery is not None  # noqa: S101 (callers check)
        if etype == APPEND:
            recovery.sent_append(text)
            return FORWARD
        to_upstream, to_client = recovery.sent_control(etype, text, now)
        if to_client is not None:
            return (SendClient(to_client),)
        if to_upstream is None:
            return NOTHING
        return FORWARD if to_upstream is text else (SendUpstream(to_upstream),)

    def _ack(self, text: str, now: float) -> Outcome:
        """``voxgate.session.ack {received_events}``: never forwarded (issue #7)."""
        try:
            _, event = parse_event(text)
        except NotAnEvent as exc:
            return self._client_error(exc.message, exc.code, None, None, now)
        n = event.get("received_events")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            return self._client_error(
                "Invalid 'received_events': expected a non-negative integer.",
                "invalid_value",
                "received_events",
                client_event_id(text),
                now,
            )
        return (AckReplay(n),)

    def client_binary(self, data: bytes, now: float) -> Outcome:
        """A binary frame: raw input audio for opted-in clients, an error for everyone else."""
        if not self.extensions:
            return self._client_error(
                "Expected a text WebSocket message; binary frames are not supported.",
                "invalid_event",
                None,
                None,
                now,
            )
        audio_b64 = b64.encode(data)
        text = append_b64(audio_b64)
        if self.phase is Phase.READY:
            if self.recovery is not None:
                self.recovery.sent_audio_bytes(data)
            return (SendUpstream(text),)
        if self.phase is Phase.CLOSED:
            return NOTHING
        return self._hold(text)

    def _hold(self, text: str) -> Outcome:
        if self.prebuffer.push(text):
            return NOTHING
        return self._fatal(
            "Too much client data arrived before the upstream session was ready "
            f"(limit {self.prebuffer.limit_bytes} bytes); the session was closed and no "
            "buffered event was forwarded.",
            "voxgate_prebuffer_overflow",
            CloseCode.TRY_AGAIN_LATER,
            cause="prebuffer_overflow",
        )

    def pop_buffered(self, now: float = 0.0) -> str | None:
        """Next frame to flush upstream (phase FLUSHING), or None when the buffer is empty.

        With recovery on, the frame is recorded as sent (it may come back changed: ids mapped);
        an answer voxgate gives itself lands in :attr:`flush_replies` for the runner to send.
        """
        if self.phase is not Phase.FLUSHING:
            raise InvalidState(f"pop_buffered in phase {self.phase.value}")
        while True:
            frame = self.prebuffer.pop()
            if frame is None or self.recovery is None:
                return frame
            etype = APPEND if append_audio_start(frame) >= 0 else event_type(frame)
            outcome = self._sending(etype, frame, now)
            if outcome is FORWARD:
                return frame
            for action in outcome:  # type: ignore[union-attr]
                if isinstance(action, SendUpstream):
                    return action.text
                if isinstance(action, SendClient):
                    self.flush_replies.append(action.text)

    def flush_done(self) -> None:
        """The runner sent every buffered frame: from now on frames are forwarded directly."""
        if self.phase is not Phase.FLUSHING:
            raise InvalidState(f"flush_done in phase {self.phase.value}")
        if len(self.prebuffer):
            raise InvalidState("flush_done with frames still buffered")
        self.phase = Phase.READY

    # ------------------------------------------------------------------ upstream side

    def upstream_text(self, text: str, now: float) -> Outcome:
        """A text frame from the upstream. Returns FORWARD, nothing, or actions."""
        if text.startswith(_AUDIO_DELTA_HEADS) and self.phase is Phase.READY:
            return FORWARD
        try:
            etype = event_type(text)
        except NotAnEvent:
            # The upstream broke the protocol; the client must not receive garbage.
            return NOTHING
        phase = self.phase
        if etype == "error":
            return self._upstream_error(text, now)
        if etype in _SESSION_TYPES:
            self._note_session(text)
        if phase is Phase.READY or phase is Phase.FLUSHING or phase is Phase.RECONNECTING:
            if self.recovery is None:
                return FORWARD
            out = self.recovery.on_server(etype, text, now)
            if out is None:
                return NOTHING
            return FORWARD if out is text else (SendClient(out),)
        if phase is Phase.CONNECTING:
            if etype == "session.created":
                return self._on_session_created(text)
            return self._hold_upstream(text)
        if phase is Phase.CONFIGURING:
            if etype == "session.updated":
                return self._on_config_applied(text)
            return self._hold_upstream(text)
        return NOTHING

    def _note_session(self, text: str) -> None:
        """Track the input format from ``session.created``/``.updated`` (pacing charges by it)."""
        try:
            _, event = parse_event(text)
        except NotAnEvent:
            return
        session = event.get("session")
        self.input_bytes_per_s = input_info(session).bytes_per_s
        self._output_b64_per_s = output_info(session).b64_chars_per_s
        self.formats_seen += 1

    def _hold_upstream(self, text: str) -> Outcome:
        if len(self._held_upstream) >= _MAX_HELD_UPSTREAM:
            return self._fatal(
                "The upstream did not start the session.",
                "voxgate_upstream_protocol_error",
                CloseCode.INTERNAL_ERROR,
                cause="upstream_protocol_error",
            )
        self._held_upstream.append(text)
        return NOTHING

    def _on_session_created(self, text: str) -> Outcome:
        _, event = parse_event(text)
        self.session_object = (
            event.get("session") if isinstance(event.get("session"), dict) else None
        )
        if self.recovery is not None:
            self.recovery.mirror.on_server_event("session.created", event)
        if self._embedded is None:
            return self._become_ready(text)
        self._created_event_id = (
            event.get("event_id") if isinstance(event.get("event_id"), str) else None
        )
        self.phase = Phase.CONFIGURING
        update = {
            "type": "session.update",
            "event_id": self._config_event_id,
            "session": self._embedded,
        }
        return (SendUpstream(orjson.dumps(update).decode()),)

    def _on_config_applied(self, text: str) -> Outcome:
        _, event = parse_event(text)
        session = event.get("session")
        self.session_object = session if isinstance(session, dict) else self.session_object
        if self.recovery is not None:
            self.recovery.mirror.on_server_event("session.updated", event)
        created = {
            "type": "session.created",
            "event_id": self._created_event_id or new_event_id(),
            "session": self.session_object,
        }
        return self._become_ready(orjson.dumps(created).decode())

    def _become_ready(self, created_text: str) -> Outcome:
        self.phase = Phase.FLUSHING
        self.session_object = None  # only the embedded-config handshake needed it
        self.ready_once = True  # the client has session.created from here on
        actions: list[Action] = [SendClient(created_text)]
        actions.extend(SendClient(t) for t in self._held_upstream)
        self._held_upstream.clear()
        actions.append(StartFlush())
        return actions

    def _upstream_error(self, text: str, now: float) -> Outcome:
        try:
            _, event = parse_event(text)
        except NotAnEvent:
            return NOTHING
        raw_err = event.get("error")
        err: dict[str, Any] = raw_err if isinstance(raw_err, dict) else {}
        code = err.get("code") if isinstance(err.get("code"), str) else None
        etype = str(err.get("type")) if isinstance(err.get("type"), str) else SERVER_ERROR
        message = str(err.get("message") or "")
        clean = redact(message, self._known)
        if self.recovery is not None:
            if code in _RECOVERABLE_UPSTREAM_CODES:
                self._upstream_expired = True  # its close follows; voxgate moves the call
                return NOTHING
            self.recovery.on_server("error", text, now)
        if code in FATAL_UPSTREAM_CODES:
            self._fatal_error_seen = (etype, code)
        if code in UPSTREAM_AUTH_CODES:
            # The upstream refused *voxgate's* key, not the client's: never say "your key".
            self.upstream_auth_failed = True
            return NOTHING
        if self.phase is Phase.CONFIGURING and err.get("event_id") == self._config_event_id:
            return self._fatal(
                f"The upstream rejected the session configuration: {clean}",
                "voxgate_session_config_rejected",
                CloseCode.INTERNAL_ERROR,
                cause="config_rejected",
            )
        key = (code, err.get("param") if isinstance(err.get("param"), str) else None, clean)
        suppressed = self.errors.admit(key, now)
        if suppressed is None:
            return NOTHING
        self.errors_sent += 1
        self._count_error(code or "upstream_error")
        if suppressed:
            clean = f"{clean} (repeated {suppressed} more times)"
        if clean == message:
            return FORWARD
        return (SendClient(orjson.dumps({**event, "error": {**err, "message": clean}}).decode()),)

    def upstream_closed(self, code: int | None, reason: str) -> Outcome:
        """The upstream socket closed (or was lost, ``code`` None). Returns how to go on.

        With recovery and a retryable loss, that is :class:`StartReconnect` (after the events
        that end a running response for the client); otherwise how the session ends.
        """
        if self.phase is Phase.CLOSED:
            return NOTHING
        if self.recovery is not None and self._fatal_error_seen is None:
            expired, self._upstream_expired = self._upstream_expired, False
            if expired or is_retryable_close(code):
                cause = "session_expired" if expired else f"lost:{code or 'network'}"
                return self._begin_reconnect(cause)
        clean_reason = redact(reason, self._known)[:120]
        if self.upstream_auth_failed or (code == CloseCode.AUTH and self._fatal_error_seen is None):
            return self.upstream_auth_refused()
        if self._fatal_error_seen is not None:
            etype, ecode = self._fatal_error_seen
            fatal_code = (
                code
                if code in (CloseCode.AUTH, CloseCode.BAD_REQUEST, CloseCode.GOING_AWAY)
                else (CloseCode.BAD_REQUEST)
            )
            return self._end(
                int(fatal_code), clean_reason or close_reason(etype, ecode), None, "upstream_fatal"
            )
        if code in (CloseCode.AUTH, CloseCode.BAD_REQUEST):
            return self._end(int(code), clean_reason, None, "upstream_fatal")
        if code == CloseCode.NORMAL:
            return self._fatal(
                "The upstream ended the session.",
                "voxgate_upstream_closed",
                CloseCode.GOING_AWAY,
                cause="upstream_closed",
            )
        return self._fatal(
            f"The connection to the upstream was lost (close code {code or 1006}).",
            "voxgate_upstream_lost",
            CloseCode.INTERNAL_ERROR,
            cause="upstream_lost",
        )

    def _begin_reconnect(self, cause: str) -> Outcome:
        recovery = self.recovery
        assert recovery is not None  # noqa: S101 (caller checks)
        if not self.ready_once and self.phase is not Phase.RECONNECTING:
            # The client has not seen session.created yet: just start over.
            self.phase = Phase.CONNECTING
            self._held_upstream.clear()
            self._created_event_id = None
            return (StartReconnect(cause, before_ready=True),)
        self.phase = Phase.RECONNECTING
        message = (
            "The connection to the upstream was lost while this response was running; "
            "voxgate is reconnecting."
        )
        texts, retry = recovery.begin("voxgate_upstream_lost", message)
        actions: list[Action] = [SendClient(t) for t in texts]
        if self.extensions:
            actions.append(SendClient(gateway_event("voxgate.upstream.reconnecting", reason=cause)))
        actions.append(StartReconnect(cause, retry_response=retry))
        return actions

    def rebuild(self, cause: str) -> Outcome:
        """This session was rebuilt from a snapshot on a node that never had its upstream
        (issue 17; the recovery holds the restored mirror): the client has seen
        ``session.created``, so continue exactly as after a lost upstream: end what was
        running, then :class:`StartReconnect` (the replay builds the fresh upstream).
        """
        if self.recovery is None or self.phase is not Phase.CONNECTING:
            raise InvalidState(f"rebuild in phase {self.phase.value}")
        session = self.recovery.mirror.session
        if session is not None:
            self.input_bytes_per_s = input_info(session).bytes_per_s
            self._output_b64_per_s = output_info(session).b64_chars_per_s
            self.formats_seen += 1
        self.ready_once = True
        return self._begin_reconnect(cause)

    def start_recycle(self, now: float) -> Outcome:
        """Move to a fresh upstream at a quiet point (before the upstream's maximum length).

        Returns the same actions as a lost upstream (the runner closes the old one
        gracefully), or nothing if the session is not quiet right now.
        """
        if self.recovery is None or self.phase is not Phase.READY:
            return NOTHING
        if not self.recovery.is_quiet(now):
            return NOTHING
        return self._begin_reconnect("recycle")

    def replay(self, retry_response: bool) -> ReplayDriver:
        """The driver that rebuilds this session on a new upstream (phase RECONNECTING)."""
        if self.recovery is None or self.phase is not Phase.RECONNECTING:
            raise InvalidState(f"replay in phase {self.phase.value}")
        return ReplayDriver(self.recovery, retry_response=retry_response)

    def reconnected(self, stats: ReplayStats, gap_ms: float) -> Outcome:
        """The new upstream is rebuilt: tell an opted-in client, then flush what it sent."""
        if self.phase is not Phase.RECONNECTING:
            raise InvalidState(f"reconnected in phase {self.phase.value}")
        self.phase = Phase.FLUSHING
        actions: list[Action] = []
        if self.extensions and self.recovery is not None:
            bpm = self.recovery.mirror.bytes_per_ms
            actions.append(
                SendClient(
                    gateway_event(
                        "voxgate.upstream.reconnected",
                        state_restored=stats.state_restored,
                        replayed_items=stats.replayed_items,
                        resent_events=stats.resent_events,
                        audio_resent_ms=stats.audio_resent_bytes // bpm,
                        gap_ms=round(gap_ms),
                    )
                )
            )
        actions.append(StartFlush())
        return actions

    def reconnect_failed(self, reason: str, *, fatal_code: str | None = None) -> Outcome:
        """Every attempt failed (or the upstream refused for good): end the session."""
        actions: list[Action] = []
        reason = redact(reason, self._known)[:120]
        if fatal_code in UPSTREAM_AUTH_CODES:
            reason = UPSTREAM_AUTH_FAILED
        if self.extensions:
            actions.append(SendClient(gateway_event("voxgate.upstream.lost", reason=reason)))
        if fatal_code in UPSTREAM_AUTH_CODES:
            actions.extend(self.upstream_auth_refused())  # type: ignore[arg-type]
            return actions
        if fatal_code is not None:
            self._fatal_error_seen = (SERVER_ERROR, fatal_code)
            end = self._fatal(
                f"The upstream refused the session ({fatal_code}).",
                fatal_code,
                CloseCode.INTERNAL_ERROR,
                cause="upstream_fatal",
            )
        else:
            end = self._fatal(
                f"The connection to the upstream was lost and could not be restored ({reason}).",
                "voxgate_upstream_lost",
                CloseCode.INTERNAL_ERROR,
                cause="upstream_lost",
            )
        actions.extend(end)  # type: ignore[arg-type]
        return actions

    def upstream_auth_refused(self) -> Outcome:
        """The upstream refused voxgate's own credentials (a server configuration problem)."""
        self.upstream_auth_failed = True
        return self._fatal(
            "The voice service rejected this gateway's upstream credentials. This is a server "
            "configuration problem, not your key; the operator has been told.",
            UPSTREAM_AUTH_FAILED,
            CloseCode.INTERNAL_ERROR,
            cause="upstream_auth_failed",
        )

    def upstream_unreachable(self, detail: str) -> Outcome:
        """Connecting to the upstream failed (refused, DNS, TLS, HTTP error, timeout)."""
        return self._fatal(
            f"The voice service upstream is unreachable ({redact(detail, self._known)[:120]}). "
            "Try again later.",
            "voxgate_upstream_unreachable",
            CloseCode.TRY_AGAIN_LATER,
            cause="upstream_unreachable",
        )

    def ready_timeout(self, timeout_s: float) -> Outcome:
        """The upstream was not ready within ``timeout_s``."""
        if self.phase in (Phase.READY, Phase.CLOSED, Phase.RECONNECTING):
            return NOTHING
        return self._fatal(
            f"The upstream session was not ready within {timeout_s:g} s; no buffered event was "
            "forwarded. Try again later.",
            "voxgate_upstream_timeout",
            CloseCode.TRY_AGAIN_LATER,
            cause="ready_timeout",
        )

    def session_expired(self, max_session_s: float) -> Outcome:
        """The session reached its maximum length (the key's cap or the server default)."""
        minutes = max_session_s / 60
        return self._fatal(
            f"Your session hit the maximum duration of {minutes:g} minutes.",
            "session_expired",
            CloseCode.GOING_AWAY,
            error_type=INVALID_REQUEST,
            cause="session_expired",
        )

    def end(self, close_code: int, cause: str, reason: str = "") -> EndSession:
        """The runner ends the session for a reason of its own (client gone, stalled, grace
        over, shutdown): the machine is CLOSED from here on. Returns the ending to perform."""
        self.phase = Phase.CLOSED
        return EndSession(int(close_code), reason, None, cause)

    # ------------------------------------------------------------------ helpers

    def _client_error(
        self, message: str, code: str, param: str | None, client_eid: str | None, now: float
    ) -> Outcome:
        suppressed = self.errors.admit((code, param, message), now)
        if suppressed is None:
            return NOTHING
        if suppressed:
            message = f"{message} (repeated {suppressed} more times)"
        self.errors_sent += 1
        self._count_error(code)
        event = error_event(message, code=code, param=param, event_id=client_eid)
        return (SendClient(orjson.dumps(event).decode()),)

    def _fatal(
        self,
        message: str,
        code: str,
        close_code: int,
        *,
        cause: str,
        error_type: str = SERVER_ERROR,
    ) -> Outcome:
        event = error_event(message, code=code, error_type=error_type)
        self.errors_sent += 1
        self._count_error(code)
        return self._end(
            int(close_code), close_reason(error_type, code), orjson.dumps(event).decode(), cause
        )

    def _count_error(self, code: str) -> None:
        """Errors sent to the client by code (live metrics read it; bounded by the codes)."""
        codes = self.error_codes
        if code in codes or len(codes) < 64:
            codes[code] = codes.get(code, 0) + 1

    def _end(self, close_code: int, reason: str, error_text: str | None, cause: str) -> Outcome:
        self.phase = Phase.CLOSED
        return (
            EndSession(close_code=close_code, reason=reason, error_text=error_text, cause=cause),
        )
