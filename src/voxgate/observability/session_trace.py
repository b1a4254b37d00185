"""A session's turns, tool calls and upstream connections as they happen: metrics and spans.

Issue 17. :class:`Observability` is one per process: it holds the optional OpenTelemetry
tracer (``VOXGATE_TRACES``: ``off`` by default, ``otlp`` with the standard
``OTEL_EXPORTER_OTLP_*`` variables, or ``console``) and a :class:`SessionTrace` per running
session. A trace watches the session's upstream events on the slow path (the runner's
``upstream_observers``; audio deltas on the hot path never reach it) and is told about
upstream connection attempts by :class:`TimedBackend`. It produces:

* ``voxgate_turn_latency_seconds``: end of the user's turn (``speech_stopped``, or the commit
  of a manual turn) to the answer's first output part (``response.content_part.added``, sent
  right before the first audio or text delta);
* ``voxgate_upstream_connect_seconds`` for every attempt (first open and reconnects);
* ``voxgate_tool_calls_total`` / ``voxgate_tool_call_seconds`` for function calls the client
  answers (from ``function_call_arguments.done`` to its ``function_call_output`` item);
* spans, when tracing is on: ``voxgate.session`` (the whole session) with children
  ``upstream.connect`` / ``upstream.reconnect``, ``turn`` and ``tool_call``.

Bounded: one trace per running session, at most one open turn span and ``_MAX_OPEN_CALLS``
open tool spans per session. Never raises into a session (a tracing failure is logged once).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, Tracer

from voxgate.observability.metrics import Metrics
from voxgate.protocol.sniff import NotAnEvent, event_type

log = structlog.get_logger("voxgate.tracing")

_TURN_ENDS = frozenset({"input_audio_buffer.speech_stopped", "input_audio_buffer.committed"})
_AUDIO_HEAD = '{"type":"response.output_audio.delta"'
_MAX_OPEN_CALLS = 32


def build_tracer(mode: str, service_name: str = "voxgate") -> Tracer | None:
    """The process's tracer for ``VOXGATE_TRACES`` (None: off). The OTLP exporter reads the
    standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``…_HEADERS`` variables itself."""
    if mode == "off":
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    exporter: SpanExporter
    if mode == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    else:
        exporter = ConsoleSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider.get_tracer("voxgate")


class SessionTrace:
    """One session's live metrics and spans (see the module docstring)."""

    def __init__(
        self,
        metrics: Metrics,
        tracer: Tracer | None,
        session_id: str,
        attributes: dict[str, Any],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.metrics = metrics
        self.tracer = tracer
        self.clock = clock
        self.connects = 0
        self._turn_end: float | None = None
        self._turn: Span | None = None
        self._calls: dict[str, tuple[float, Span | None]] = {}
        self.root: Span | None = None
        if tracer is not None:
            self.root = tracer.start_span(
                "voxgate.session", attributes={"voxgate.session_id": session_id, **attributes}
            )
        self._context = trace.set_span_in_context(self.root) if self.root is not None else None

    def _span(self, name: str, **attributes: Any) -> Span | None:
        if self.tracer is None:
            return None
        return self.tracer.start_span(name, context=self._context, attributes=attributes)

    # ------------------------------------------------------------------ upstream connections

    def connected(self, seconds: float, ok: bool) -> None:
        """One upstream connection attempt ended (first open, or a reconnect)."""
        self.metrics.connect_seconds.labels(outcome="ok" if ok else "failed").observe(seconds)
        name = "upstream.connect" if self.connects == 0 else "upstream.reconnect"
        self.connects += 1
        if self.tracer is None:
            return
        span = self.tracer.start_span(
            name,
            context=self._context,
            start_time=time.time_ns() - int(seconds * 1e9),
            attributes={"voxgate.attempt": self.connects, "voxgate.ok": ok},
        )
        if not ok:
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    # ------------------------------------------------------------------ upstream events

    def observe(self, text: str) -> None:
        """An upstream event on the session's slow path."""
        if text.startswith(_AUDIO_HEAD):
            return
        try:
            etype = event_type(text)
        except NotAnEvent:
            return
        now = self.clock()
        if etype in _TURN_ENDS:
            if self._turn_end is None:
                self._turn_end = now
            if self._turn is None:
                self._turn = self._span("turn")
        elif etype == "input_audio_buffer.speech_started":
            self._turn_end = None
            if self._turn is None:
                self._turn = self._span("turn")
        elif etype == "response.created":
            if self._turn is None:
                self._turn = self._span("turn")
        elif etype == "response.content_part.added" and self._turn_end is not None:
            latency = now - self._turn_end
            self._turn_end = None
            self.metrics.turn_seconds.observe(latency)
            if self._turn is not None:
                self._turn.set_attribute("voxgate.turn_latency_ms", round(latency * 1000, 1))
        elif etype == "response.done":
            self._end_turn(text)
        elif etype == "response.function_call_arguments.done":
            self._call_started(text, now)
        elif etype == "conversation.item.added" and '"function_call_output"' in text:
            self._call_done(text, now)

    def _end_turn(self, text: str) -> None:
        span, self._turn = self._turn, None
        if span is None:
            return
        status = _field(text, "response", "status")
        if status is not None:
            span.set_attribute("voxgate.response_status", str(status))
            if status == "failed":
                span.set_status(Status(StatusCode.ERROR))
        span.end()

    def _call_started(self, text: str, now: float) -> None:
        event = _loads(text)
        call_id, name = event.get("call_id"), event.get("name")
        if not isinstance(call_id, str) or len(self._calls) >= _MAX_OPEN_CALLS:
            return
        span = self._span("tool_call", **{"voxgate.tool": str(name), "voxgate.call_id": call_id})
        self._calls[call_id] = (now, span)

    def _call_done(self, text: str, now: float) -> None:
        item = _loads(text).get("item")
        call_id = item.get("call_id") if isinstance(item, dict) else None
        started = self._calls.pop(call_id, None) if isinstance(call_id, str) else None
        if started is None:
            return  # a server tool's output (issue 14 counts those) or an unknown call
        at, span = started
        self.metrics.tool_calls.labels(runner="client", outcome="output").inc()
        self.metrics.tool_seconds.labels(runner="client").observe(now - at)
        if span is not None:
            span.end()

    def end(self, cause: str) -> None:
        """The session ended: close what is open."""
        if self._turn is not None:
            self._turn.set_attribute("voxgate.response_status", "cut")
            self._turn.end()
            self._turn = None
        for _, span in self._calls.values():
            self.metrics.tool_calls.labels(runner="client", outcome="unanswered").inc()
            if span is not None:
                span.end()
        self._calls.clear()
        if self.root is not None:
            self.root.set_attribute("voxgate.end_cause", cause)
            self.root.end()


class Observability:
    """The process's traces: one :class:`SessionTrace` per running session."""

    def __init__(self, metrics: Metrics, tracer: Tracer | None = None) -> None:
        self.metrics = metrics
        self.tracer = tracer
        self._sessions: dict[str, SessionTrace] = {}

    def start(self, session_id: str, **attributes: Any) -> SessionTrace:
        traced = SessionTrace(self.metrics, self.tracer, session_id, attributes)
        self._sessions[session_id] = traced
        return traced

    def finish(self, session_id: str, cause: str) -> None:
        traced = self._sessions.pop(session_id, None)
        if traced is not None:
            traced.end(cause)

    def connected(self, session_id: str, seconds: float, ok: bool) -> None:
        traced = self._sessions.get(session_id)
        if traced is not None:
            traced.connected(seconds, ok)
        else:
            self.metrics.connect_seconds.labels(outcome="ok" if ok else "failed").observe(seconds)


class TimedBackend:
    """A backend whose ``connect`` calls are timed (every attempt: first and reconnects).

    Everything else is the wrapped backend's (attributes are passed through).
    """

    def __init__(self, backend: Any, observability: Observability) -> None:
        self._backend = backend
        self._obs = observability

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    async def connect(self, target: Any) -> Any:
        started = time.perf_counter()
        try:
            conn = await self._backend.connect(target)
        except BaseException:
            self._obs.connected(target.session_id, time.perf_counter() - started, ok=False)
            raise
        self._obs.connected(target.session_id, time.perf_counter() - started, ok=True)
        return conn


def _loads(text: str) -> dict[str, Any]:
    try:
        event = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return event if isinstance(event, dict) else {}


def _field(text: str, outer: str, inner: str) -> Any:
    value = _loads(text).get(outer)
    return value.get(inner) if isinstance(value, dict) else None
