"""When voxgate may speak on its own: the response gate and the queue of its own turns. Pure.

Issue 14. voxgate adds three kinds of turns to a conversation the client did not ask for: the
follow-up after server tool outputs (a ``response.create`` so the model reads them), something
a tool says while it works (``ctx.say("one moment")``), and proactive messages pushed through
the API (``speak``: the assistant says it; ``context``: a hidden system item for the next
answer). Each becomes a :class:`Job`; :meth:`Injector.pump` says which upstream events to send
now. A job goes out only at a *safe point*:

* nobody is speaking (between ``speech_started`` and ``speech_stopped``), and the turn that
  just ended had time to become an item and start its own answer (``settle_s`` after
  ``speech_stopped`` / ``committed``, ended early by the next ``response.created``);
* no response is running in the conversation, and none of voxgate's own ``response.create``
  is waiting for its ``response.created`` (one response at a time, realtime-protocol.md §4);
* a ``speak`` job of a higher priority than the running response may cancel it first (never
  the user: speech is never interrupted).

Jobs are ordered by priority, then age; what belongs to the exchange in progress (a tool's
say, the follow-up that reads the tool's output) goes before a ``normal`` message and after a
``high`` one. A message that expires before its safe point is
dropped with the reason ``expired``; a refused ``response.create`` (the upstream's
``conversation_already_has_active_response`` when a VAD turn won a race) is retried up to
:data:`MAX_TRIES` times. voxgate's responses carry ``metadata.voxgate = <job id>`` so their
``response.created`` is recognised whatever else races it.

Delivery is readable back through :class:`MessageRecord` (the proactive API keeps a reference).
``now`` is unix seconds from the caller; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from voxgate.protocol.extensions import gateway_event

#: ``response.metadata`` key marking a response voxgate asked for (value: the job id).
METADATA_KEY: Final = "voxgate"
#: Event ids of everything voxgate itself sends upstream start with this.
EVENT_PREFIX: Final = "event_vgss_"
#: Ids of the hidden items voxgate creates: tool outputs and context messages.
OUTPUT_ITEM_PREFIX: Final = "item_vgout_"
CONTEXT_ITEM_PREFIX: Final = "item_vgctx_"
#: The instructions of a verbatim ``speak`` turn (models follow it; the local engine's
#: responder recognises the prefix and speaks the text exactly).
SAY_PREFIX: Final = "Say exactly the following to the user, word for word, and nothing else: "
#: How a ``context`` message reads in the conversation (a system item).
CONTEXT_PREFIX: Final = "[Context added by the application] "
PRIORITIES: Final = {"low": 10, "normal": 20, "high": 30}
#: The priority of a response voxgate did not ask for (the model's own answers).
_MODEL_PRIORITY: Final = PRIORITIES["normal"]
#: What belongs to the exchange in progress (a tool's say, the answer that reads the tool's
#: output) goes before a normal message, after a high one.
_IN_TURN_PRIORITY: Final = 25
MAX_TRIES: Final = 3
MAX_JOBS: Final = 32
_MAX_KEYS: Final = 256
_INFLIGHT_TIMEOUT_S: Final = 15.0
_CLIENT_REQUEST_TIMEOUT_S: Final = 5.0

Mode = Literal["speak", "context"]
Status = Literal["queued", "injecting", "delivered", "expired", "dropped", "failed"]


def _job_id() -> str:
    """``vgjob_`` + 12 hex digits (one ``urandom`` call: ids are minted per tool call)."""
    return "vgjob_" + secrets.token_hex(6)


@dataclass(slots=True)
class MessageRecord:
    """One proactive message and what became of it (the API reads it back)."""

    message_id: str
    session_id: str
    mode: Mode
    text: str
    priority: str
    created_at: float
    expires_at: float
    idempotency_key: str | None = None
    status: Status = "queued"
    reason: str | None = None
    delivered_at: float | None = None
    response_id: str | None = None
    item_id: str | None = None
    #: called after every change of status (the API wakes its waiters with it)
    on_change: Callable[[MessageRecord], None] | None = field(
        default=None, repr=False, compare=False
    )

    def move(self, status: Status, reason: str | None = None, **fields: Any) -> None:
        """Set the status (and ``response_id`` / ``item_id`` / ``delivered_at``), then tell."""
        self.status = status
        if reason is not None:
            self.reason = reason
        for name, value in fields.items():
            setattr(self, name, value)
        if self.on_change is not None:
            self.on_change(self)

    def public(self) -> dict[str, Any]:
        """The record as the API shows it (the text is the caller's own)."""
        return {
            "object": "voxgate.message",
            "id": self.message_id,
            "session_id": self.session_id,
            "mode": self.mode,
            "priority": self.priority,
            "status": self.status,
            "reason": self.reason,
            "created_at": round(self.created_at, 3),
            "expires_at": round(self.expires_at, 3),
            "delivered_at": round(self.delivered_at, 3) if self.delivered_at else None,
            "response_id": self.response_id,
            "item_id": self.item_id,
            "idempotency_key": self.idempotency_key,
        }

    @property
    def final(self) -> bool:
        return self.status in ("delivered", "expired", "dropped", "failed")


@dataclass(slots=True)
class Job:
    """One turn voxgate wants to take. ``record`` is set for proactive messages."""

    kind: Literal["follow_up", "say", "context"]
    priority: int
    seq: int
    job_id: str
    text: str = ""
    record: MessageRecord | None = None
    expires_at: float | None = None
    tries: int = 0
    #: follow_up: ``response.created`` count when its outputs were all in (a later response
    #: read them already, so the follow-up is not needed)
    ready_seq: int = 0


@dataclass(slots=True)
class _Running:
    priority: int
    job: Job | None


class Injector:
    """The gate and the job queue of one session. See the module docstring.

    Args:
        extensions: the client opted in to ``voxgate.*`` events (``voxgate.message.delivered``).
        settle_s: after a user turn ends, how long its own answer may take to start.
    """

    def __init__(self, *, extensions: bool = False, settle_s: float = 1.5) -> None:
        self.extensions = extensions
        self.settle_s = settle_s
        self._jobs: list[Job] = []
        self._seq = itertools.count()
        self._running: dict[str, _Running] = {}
        self._inflight: Job | None = None
        self._inflight_at = 0.0
        self._client_request_at: float | None = None
        self._speaking = False
        self._settle_until = 0.0
        self._auto_response = True
        self._created = 0
        self._cancelled: str | None = None
        self._context_sent: dict[str, Job] = {}
        self._by_key: dict[str, MessageRecord] = {}

    # ------------------------------------------------------------------ queries

    @property
    def voxgate_request_pending(self) -> bool:
        """voxgate's ``response.create`` is on its way (a client's must wait behind it)."""
        return self._inflight is not None

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def responses_created(self) -> int:
        return self._created

    def running(self) -> list[str]:
        return list(self._running)

    def queued(self) -> list[Job]:
        return list(self._jobs)

    def wake_at(self, now: float) -> float | None:
        """The next time after ``now`` when :meth:`pump` may have something new to do
        without a new event (None: only an event can change anything)."""
        if not self._jobs and self._inflight is None:
            return None
        times = [j.expires_at for j in self._jobs if j.expires_at is not None]
        if self._settle_until and not self._speaking:
            times.append(self._settle_until)
        if self._inflight is not None:
            times.append(self._inflight_at + _INFLIGHT_TIMEOUT_S)
        if self._client_request_at is not None:
            times.append(self._client_request_at + _CLIENT_REQUEST_TIMEOUT_S)
        future = [t for t in times if t > now]
        return min(future) if future else None

    # ------------------------------------------------------------------ adding jobs

    def submit(self, record: MessageRecord) -> MessageRecord:
        """Queue a proactive message; an idempotency key seen before returns the first record.

        A full queue refuses it at once (``dropped``, reason ``queue_full``).
        """
        key = record.idempotency_key
        if key is not None and key in self._by_key:
            return self._by_key[key]
        if key is not None:
            if len(self._by_key) >= _MAX_KEYS:
                del self._by_key[next(iter(self._by_key))]
            self._by_key[key] = record
        if len(self._jobs) >= MAX_JOBS:
            record.move("dropped", "queue_full")
            return record
        kind: Literal["say", "context"] = "say" if record.mode == "speak" else "context"
        self._add(
            Job(
                kind,
                PRIORITIES.get(record.priority, _MODEL_PRIORITY),
                next(self._seq),
                _job_id(),
                text=record.text,
                record=record,
                expires_at=record.expires_at,
            )
        )
        return record

    def say(self, text: str) -> bool:
        """A tool says something while it works; False when the queue is full."""
        if len(self._jobs) >= MAX_JOBS or not text.strip():
            return False
        job_id = _job_id()
        self._add(Job("say", _IN_TURN_PRIORITY, next(self._seq), job_id, text=text.strip()))
        return True

    def follow_up(self) -> None:
        """Server tool outputs are all in: ask the model to read them (once per batch)."""
        if any(j.kind == "follow_up" for j in self._jobs):
            return
        job = Job("follow_up", _IN_TURN_PRIORITY, next(self._seq), _job_id())
        job.ready_seq = self._created
        self._add(job)

    def _add(self, job: Job) -> None:
        self._jobs.append(job)
        self._jobs.sort(key=lambda j: (-j.priority, j.seq))

    def close(self, reason: str) -> None:
        """The session ended: every message not delivered yet is dropped with ``reason``."""
        jobs = [*self._jobs, *self._context_sent.values()]
        if self._inflight is not None:
            jobs.append(self._inflight)
        jobs.extend(r.job for r in self._running.values() if r.job is not None)
        for job in jobs:
            if job.record is not None and not job.record.final:
                job.record.move("dropped", reason)
        self._jobs.clear()
        self._inflight = None

    # ------------------------------------------------------------------ what the upstream said

    def on_session(self, session: dict[str, Any]) -> None:
        audio_in = (session.get("audio") or {}).get("input") or {}
        td = audio_in.get("turn_detection")
        self._auto_response = isinstance(td, dict) and td.get("create_response", True) is not False

    def on_speech_started(self) -> None:
        self._speaking = True

    def on_speech_stopped(self, now: float) -> None:
        self._speaking = False
        self._settle_until = now + self.settle_s

    def on_committed(self, now: float) -> None:
        """A user turn became an item; with VAD its answer starts next (wait for it)."""
        self._speaking = False
        self._settle_until = now + self.settle_s if self._auto_response else 0.0

    def on_cleared(self) -> None:
        self._speaking = False
        self._settle_until = 0.0

    def on_client_request(self, now: float) -> None:
        """The client's own ``response.create`` went upstream: let its answer start first."""
        self._client_request_at = now

    def on_response_created(self, response_id: str, tag: str | None) -> None:
        self._created += 1
        self._settle_until = 0.0
        job = self._inflight
        if job is not None and tag == job.job_id:
            self._inflight = None
            self._running[response_id] = _Running(job.priority, job)
            if job.record is not None:
                job.record.move("injecting", response_id=response_id)
            return
        self._client_request_at = None
        self._running[response_id] = _Running(_MODEL_PRIORITY, None)

    def on_response_done(self, response: dict[str, Any], now: float) -> list[str]:
        """A response ended. Returns client events (``voxgate.message.delivered``)."""
        response_id = str(response.get("id"))
        running = self._running.pop(response_id, None)
        if self._cancelled == response_id:
            self._cancelled = None
        if running is None or running.job is None or running.job.record is None:
            return []
        record = running.job.record
        status = response.get("status")
        if status == "completed":
            return self._delivered(record, now)
        details = response.get("status_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        record.move(
            "failed", f"response_{status}" + (f":{reason}" if isinstance(reason, str) else "")
        )
        return []

    def on_item_added(self, item_id: str, now: float) -> list[str]:
        """An item entered the conversation; a context message is delivered with it."""
        job = self._context_sent.pop(item_id, None)
        if job is None or job.record is None:
            return []
        return self._delivered(job.record, now)

    def on_error(self, event_id: str, code: str | None) -> None:
        """The upstream refused one of voxgate's own events (``event_id`` is ours)."""
        job = self._inflight
        if job is not None and event_id == EVENT_PREFIX + job.job_id:
            self._inflight = None
            job.tries += 1
            if job.tries < MAX_TRIES:
                self._add(job)
            elif job.record is not None:
                job.record.move("failed", f"refused:{code}")
            return
        for item_id, sent in list(self._context_sent.items()):
            if event_id == EVENT_PREFIX + sent.job_id:
                del self._context_sent[item_id]
                if sent.record is not None:
                    sent.record.move("failed", f"refused:{code}")

    def on_client_error(self) -> None:
        """An error for the client: its pending ``response.create`` may be what failed."""
        self._client_request_at = None

    # ------------------------------------------------------------------ deciding

    def pump(self, now: float, *, blocked: bool = False, tools_pending: bool = False) -> list[str]:
        """The upstream events to send now, in order (each is recorded as sent).

        Args:
            now: unix seconds.
            blocked: the caller knows of something else that must finish first (a response
                the client has not seen yet).
            tools_pending: a server tool call is still running: its answer comes first, so
                a proactive message waits (a tool's own say does not).
        """
        self._expire(now)
        if self._inflight is not None:
            if now - self._inflight_at < _INFLIGHT_TIMEOUT_S:
                return []
            job, self._inflight = self._inflight, None  # lost without an answer: once more
            job.tries += 1
            if job.tries < MAX_TRIES:
                self._add(job)
        if self._client_request_at is not None:
            if now - self._client_request_at < _CLIENT_REQUEST_TIMEOUT_S:
                return []
            self._client_request_at = None
        if self._speaking or now < self._settle_until:
            return []
        self._settle_until = 0.0
        out: list[str] = []
        while self._jobs:
            job = self._jobs[0]
            if job.kind == "follow_up" and self._created > job.ready_seq:
                self._jobs.pop(0)  # a response after the outputs already read them
                continue
            if self._running or blocked:
                out.extend(self._maybe_interrupt(job))
                return out
            if tools_pending and job.record is not None:
                return out
            self._jobs.pop(0)
            if job.kind == "context":
                out.append(self._context(job))
                continue
            self._inflight, self._inflight_at = job, now
            out.append(self._response_create(job))
            return out
        return out

    def _expire(self, now: float) -> None:
        keep = []
        for job in self._jobs:
            if job.expires_at is not None and now >= job.expires_at:
                if job.record is not None:
                    job.record.move("expired", "expired")
            else:
                keep.append(job)
        self._jobs = keep

    def _maybe_interrupt(self, job: Job) -> list[str]:
        """A higher-priority ``speak`` may cancel the running response (once)."""
        if job.record is None or job.kind != "say":
            return []  # only a proactive speak message may interrupt
        if self._cancelled is not None or len(self._running) != 1:
            return []
        response_id, running = next(iter(self._running.items()))
        if job.priority <= running.priority:
            return []
        self._cancelled = response_id
        cancel = {
            "type": "response.cancel",
            "event_id": EVENT_PREFIX + "cancel_" + job.job_id,
            "response_id": response_id,
        }
        return [orjson.dumps(cancel).decode()]

    def _response_create(self, job: Job) -> str:
        response: dict[str, Any] = {"metadata": {METADATA_KEY: job.job_id}}
        if job.kind == "say":
            response["instructions"] = SAY_PREFIX + job.text
            response["tool_choice"] = "none"
        event = {
            "type": "response.create",
            "event_id": EVENT_PREFIX + job.job_id,
            "response": response,
        }
        return orjson.dumps(event).decode()

    def _context(self, job: Job) -> str:
        item_id = CONTEXT_ITEM_PREFIX + job.job_id.removeprefix("vgjob_")
        self._context_sent[item_id] = job
        if len(self._context_sent) > MAX_JOBS:
            del self._context_sent[next(iter(self._context_sent))]
        if job.record is not None:
            job.record.move("injecting", item_id=item_id)
        event = {
            "type": "conversation.item.create",
            "event_id": EVENT_PREFIX + job.job_id,
            "item": {
                "id": item_id,
                "type": "message",
                "role": "system",
                "content": [{"type": "input_text", "text": CONTEXT_PREFIX + job.text}],
            },
        }
        return orjson.dumps(event).decode()

    def _delivered(self, record: MessageRecord, now: float) -> list[str]:
        record.move("delivered", delivered_at=now)
        if not self.extensions:
            return []
        return [
            gateway_event(
                "voxgate.message.delivered",
                message_id=record.message_id,
                mode=record.mode,
                text=record.text,
                response_id=record.response_id,
                item_id=record.item_id,
            )
        ]
