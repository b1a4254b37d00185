"""voxgate's own side of one session: server tool calls and proactive turns (the I/O part).

Issue 14. :class:`ServerSide` wraps the pure
:class:`~voxgate.session.server_tools.ToolInterceptor` and
:class:`~voxgate.session.injector.Injector` for a session's runner. The runner calls three
synchronous hooks on its slow path only (never for audio):
:meth:`ServerSide.from_client` for a client control frame, :meth:`ServerSide.to_client` for
every client-bound text, and runs :meth:`ServerSide.run` in the session's task group; that task
sends voxgate's own events upstream in order (through the runner, so they are recorded for
recovery and held before ready like a client's), and wakes for the injector's timers.

Tool calls run as tasks of this object: at most ``concurrency`` at once per session, at most
``max_pending`` waiting (more are answered at once with an error output), each within its
tool's timeout. A timeout or an exception becomes a ``function_call_output`` the model can
read, never a crash. Tools are reached through :class:`ToolInvoker` (implemented by
:mod:`voxgate.tools.registry`; ``session/`` never imports it). When the session ends every
running call is cancelled and every undelivered proactive message is marked dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from voxgate.protocol.redaction import redact
from voxgate.session.injector import Injector, MessageRecord
from voxgate.session.server_tools import ToolCall, ToolInterceptor


@dataclass(frozen=True, slots=True)
class ToolCallContext:
    """What a tool may know about the call it serves (never a credential)."""

    session_id: str
    subject: str | None
    metadata: Mapping[str, str]
    call_id: str
    #: say something to the user while the tool works; False when it cannot be queued
    say: Callable[[str], bool]


class ToolInvoker(Protocol):
    """The server tools of one session (implemented by ``voxgate.tools.registry``)."""

    @property
    def specs(self) -> list[dict[str, Any]]:
        """The tools in the session config's flat shape."""
        ...

    def timeout_s(self, name: str) -> float: ...

    async def call(self, name: str, arguments: str, context: ToolCallContext) -> str:
        """Run one call; returns its output (an error output for bad arguments or an
        unknown tool). May raise: the caller turns any exception into an error output."""
        ...


class SessionPort(Protocol):
    """What :meth:`ServerSide.run` needs from the runner."""

    async def send_upstream(self, text: str) -> None:
        """Send a control event as voxgate's own (recorded and gated like a client's)."""
        ...


@dataclass(frozen=True, slots=True)
class ServerSideLimits:
    #: tool calls running at once in one session
    concurrency: int = 4
    #: tool calls waiting or running in one session; more get an error output at once
    max_pending: int = 32


def error_output(code: str, message: str) -> str:
    """A ``function_call_output`` the model can read when a call did not produce a result."""
    return orjson.dumps({"error": code, "message": message}).decode()


@dataclass(slots=True)
class _Stats:
    calls: int = 0
    failed: int = 0
    timed_out: int = 0
    refused: int = 0
    durations_ms: deque[float] = field(default_factory=lambda: deque(maxlen=256))


class ServerSide:
    """See the module docstring. Construct per session; the runner owns it."""

    def __init__(
        self,
        *,
        session_id: str,
        subject: str | None,
        metadata: Mapping[str, str] | None,
        invoker: ToolInvoker | None,
        extensions: bool,
        log: Any,
        limits: ServerSideLimits | None = None,
        known_secrets: tuple[str, ...] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.session_id = session_id
        self._subject = subject
        self._metadata: Mapping[str, str] = dict(metadata or {})
        self._invoker = invoker
        self._log = log
        self._limits = limits or ServerSideLimits()
        self._known = known_secrets
        self._clock = clock
        self.injector = Injector(extensions=extensions)
        self.tools = ToolInterceptor(invoker.specs if invoker is not None else [], self.injector)
        self._outbox: deque[str] = deque()
        self._wake = asyncio.Event()
        self._sem = asyncio.Semaphore(self._limits.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending = 0
        self.stats = _Stats()
        self.closed = False

    # ------------------------------------------------------------------ hooks (synchronous)

    def initial_config(self, embedded: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The config the upstream session starts with (server tools merged in)."""
        return self.tools.initial_config(embedded)

    def from_client(self, text: str) -> str | None:
        """A client control frame: the text to send on, or None while it waits."""
        return self.tools.from_client(text, self._clock(), busy=bool(self._outbox))

    def to_client(self, text: str) -> list[str]:
        """A client-bound text: what the client gets instead (often the same text)."""
        verdict = self.tools.to_client(text, self._clock())
        for call in verdict.calls:
            self._start(call)
        if verdict.to_upstream:
            self._send(verdict.to_upstream)
        return verdict.to_client

    def submit(self, record: MessageRecord) -> MessageRecord:
        """Queue a proactive message (see :class:`~voxgate.session.injector.Injector`)."""
        if self.closed:
            record.move("dropped", "session_ended")
            return record
        record = self.injector.submit(record)
        self._wake.set()
        return record

    def say(self, text: str) -> bool:
        """Queue a spoken line (a tool's "one moment")."""
        if self.closed or not self.injector.say(text):
            return False
        self._wake.set()
        return True

    # ------------------------------------------------------------------ the task

    async def run(self, port: SessionPort) -> None:
        """Send voxgate's own events upstream in order, and wake for the injector's timers.

        Runs until cancelled (the session's end); then cancels running calls and drops
        undelivered messages.
        """
        try:
            while True:
                while self._outbox:
                    await port.send_upstream(self._outbox.popleft())
                    if not self._outbox:
                        self._send(self.tools.pump(self._clock()))  # held client frames
                self._wake.clear()
                now = self._clock()
                wake_at = self.injector.wake_at(now)
                if wake_at is None:  # no timer: no Timeout object held while parked
                    await self._wake.wait()
                else:
                    try:
                        async with asyncio.timeout(wake_at - now):
                            await self._wake.wait()
                    except TimeoutError:
                        pass  # a timer of the injector (expiry, settle) is due
                self._send(self.tools.pump(self._clock()))
        finally:
            self.close("session_ended")

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.injector.close(reason)
        for task in list(self._tasks):
            task.cancel()

    def _send(self, texts: list[str]) -> None:
        if texts:
            self._outbox.extend(texts)
            self._wake.set()

    # ------------------------------------------------------------------ tool calls

    def _start(self, call: ToolCall) -> None:
        if self._pending >= self._limits.max_pending:
            self.stats.refused += 1
            self._log.warning("tool.refused", tool=call.name, pending=self._pending)
            output = error_output(
                "too_many_calls",
                f"Too many tool calls at once in this session (limit {self._limits.max_pending}); "
                "try again in a moment.",
            )
            self._send(self.tools.output_ready(call.call_id, output, self._clock()))
            return
        self._pending += 1
        task = asyncio.get_running_loop().create_task(self._run_call(call), name="server_tool")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_call(self, call: ToolCall) -> None:
        try:
            async with self._sem:
                output = await self._invoke(call)
        finally:
            self._pending -= 1
        if not self.closed:
            self._send(self.tools.output_ready(call.call_id, output, self._clock()))

    async def _invoke(self, call: ToolCall) -> str:
        stats = self.stats
        stats.calls += 1
        invoker = self._invoker
        if invoker is None:
            return error_output("unknown_tool", f"There is no tool named {call.name!r}.")
        timeout_s = invoker.timeout_s(call.name)
        context = ToolCallContext(
            session_id=self.session_id,
            subject=self._subject,
            metadata=self._metadata,
            call_id=call.call_id,
            say=self.say,
        )
        started = time.perf_counter()
        outcome = "ok"
        try:
            async with asyncio.timeout(timeout_s):
                return await invoker.call(call.name, call.arguments, context)
        except TimeoutError:
            outcome = "timeout"
            stats.timed_out += 1
            return error_output(
                "timeout", f"The tool {call.name} did not finish within {timeout_s:g} s."
            )
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception as exc:  # a tool's bug is an output the model can read, not a crash
            outcome = "error"
            stats.failed += 1
            detail = redact(str(exc), self._known)[:300]
            self._log.warning("tool.failed", tool=call.name, error=type(exc).__name__)
            return error_output("tool_failed", f"{type(exc).__name__}: {detail}".rstrip(": "))
        finally:
            elapsed_ms = (time.perf_counter() - started) * 1000
            stats.durations_ms.append(elapsed_ms)
            self._log.info(
                "tool.call", tool=call.name, outcome=outcome, elapsed_ms=round(elapsed_ms, 2)
            )
