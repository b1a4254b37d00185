"""`resilience.py mirror`: a simulated long call fed to ``Recovery(Mirror())``, as the machine does.

Pure and in-process. The call is a microphone that never stops (one 20 ms
``input_audio_buffer.append`` every 20 ms, 1280 base64 chars of PCM16 24 kHz) and a server VAD
turn every 10 s: 3 s of speech, ``speech_started`` / ``speech_stopped`` / ``committed``, the
user audio item (``conversation.item.added`` / ``done``) and its transcript
(``...input_audio_transcription.delta`` / ``completed``), then an assistant audio reply of about
200 characters (the full response cycle of ``voxgate.protocol.response_builder.ResponseBuilder``,
the shapes the fake upstream sends). Every 5 minutes the reply is a function call, answered by
the client with a ``function_call_output`` and a ``response.create``.

Fed as :class:`~voxgate.session.machine.SessionMachine` feeds it: ``session.created`` straight
to the mirror (phase CONNECTING), client appends to ``sent_append``, client control events to
``sent_control``, every other server event to ``on_server(etype, text, now)``. Audio deltas are
not generated: in phase READY the machine forwards them without calling recovery.
"""

from __future__ import annotations

import base64
import gc
import random
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from voxgate.protocol import conversation as cv
from voxgate.protocol import ids
from voxgate.protocol import server_events as ev
from voxgate.protocol.response_builder import ResponseBuilder
from voxgate.protocol.session_config import default_session
from voxgate.session.machine import SessionMachine
from voxgate.session.mirror import Mirror
from voxgate.session.recovery import Recovery

FPS = 50  # 20 ms frames
CYCLE = 10 * FPS  # a user turn every 10 s
SPEECH = (2 * FPS, 5 * FPS)  # speech from 2.0 s to 5.0 s of each cycle
TOOL_EVERY = 30  # cycles: a function call every 5 minutes
REPLY = (
    "Sure, I can help with that. Your order shipped this morning and should arrive on "
    "Thursday; the tracking number is in the email we sent you, and you can change the "
    "delivery address until tomorrow at noon."
)  # ~200 characters, ~35 words
POOL = 250  # distinct audio frames (5 s), reused round-robin


def _frames(seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [
        '{"type":"input_audio_buffer.append","audio":"'
        + base64.b64encode(rng.randbytes(960)).decode()
        + '"}'
        for _ in range(POOL)
    ]


def _dump(event: dict[str, Any]) -> tuple[str, str]:
    return str(event["type"]), orjson.dumps(event).decode()


Step = tuple[str, Any]  # ("audio", (first, last)), ("server", [(etype, text)]), ("client", ...)


def script(frames_total: int) -> Iterator[Step]:
    """The call, in order: runs of audio frames and the events between them."""
    conv = cv.Conversation(max_items=8)  # only for previous_item_id; stays tiny
    session = default_session("realtime", session_id=ids.session_id(), now_s=int(time.time()))
    yield "created", _dump(ev.session_created(session))
    session["audio"]["input"]["transcription"] = {"model": "gpt-4o-transcribe"}
    update = {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}},
        },
    }
    yield "client", [_dump(update)]
    yield "server", [_dump(ev.session_updated(session))]
    pending: dict[int, list[tuple[str, str]]] = {}
    clients: dict[int, list[tuple[str, str]]] = {}

    def at(frame: int, events: list[dict[str, Any]]) -> None:
        pending.setdefault(frame, []).extend(_dump(e) for e in events)

    def reply(frame: int, *, tool: bool) -> int:
        rb = ResponseBuilder(
            response_id=ids.response_id(),
            conversation=conv,
            conversation_id="conv_sim",
            output_modalities=["audio"],
            audio_output={"voice": "alloy"},
        )
        at(frame, rb.start())
        if tool:
            at(frame + 10, rb.function_call("lookup_order", '{"order_id":"A-1234567"}'))
        else:
            at(frame + 1, rb.begin_message())
            for i, word in enumerate(REPLY.split(" ")):
                at(frame + 2 + 5 * i, rb.audio(b"", word + " "))  # audio deltas: not fed
            frame += 2 + 5 * len(REPLY.split(" "))
            at(frame, rb.end_message())
        at(frame + 11, rb.finish())
        return frame + 11

    for base in range(0, frames_total, CYCLE):
        cycle = base // CYCLE
        start, stop = base + SPEECH[0], base + SPEECH[1]
        item_id = ids.item_id()
        at(start + 15, [ev.speech_started(start * 20, item_id)])  # VAD needs ~300 ms
        item = ev.user_audio_item(item_id)
        prev = conv.insert(dict(item))
        transcript = "I would like to know where my order is and when it will arrive."
        at(
            stop + 25,
            [
                ev.speech_stopped(stop * 20 + 200, item_id),
                ev.buffer_committed(item_id, prev),
                ev.item_added(item, prev),
                ev.item_done(item, prev),
            ],
        )
        at(stop + 40, [ev.transcription_delta(item_id, w + " ") for w in transcript.split()])
        usage = ev.transcription_usage(3000, transcript)
        at(stop + 41, [ev.transcription_completed(item_id, transcript, usage)])
        tool = cycle % TOOL_EVERY == TOOL_EVERY - 1
        end = reply(stop + 30, tool=tool)
        if tool:
            call = next(i for i in reversed(conv.items) if i["type"] == "function_call")
            out_id = ids.item_id()
            output = {
                "id": out_id,
                "type": "function_call_output",
                "call_id": call["call_id"],
                "output": '{"status":"shipped","eta":"Thursday"}',
            }
            clients[end + 5] = [
                _dump({"type": "conversation.item.create", "item": output}),
                _dump({"type": "response.create"}),
            ]
            full = {**output, "object": "realtime.item", "status": "completed"}
            prev = conv.insert(dict(full))
            at(end + 6, [ev.item_added(full, prev), ev.item_done(full, prev)])
            reply(end + 7, tool=False)
        last = base
        for frame in sorted(set(pending) | set(clients)):
            if frame >= base + CYCLE:
                break
            if frame > last:
                yield "audio", (last, frame)
                last = frame
            if frame in clients:
                yield "client", clients.pop(frame)
            if frame in pending:
                yield "server", pending.pop(frame)
        if min(frames_total, base + CYCLE) > last:
            yield "audio", (last, min(frames_total, base + CYCLE))


@dataclass
class MirrorResult:
    minutes: float
    frames: int = 0
    server_events: int = 0
    samples: list[dict[str, float]] = field(default_factory=list)  # once a simulated minute
    memory_max_bytes: int = 0
    memory_end_bytes: int = 0
    items_kept: int = 0
    items_dropped: int = 0
    turn_audio_bytes: int = 0
    pending_audio_bytes: int = 0
    dropped_audio_bytes: int = 0
    tracemalloc_peak_bytes: int = 0
    tracemalloc_end_bytes: int = 0
    plain_ns: float = 0.0  # per frame: a loop calling a no-op function
    sent_append_ns: float = 0.0  # per frame: Recovery.sent_append
    on_server_us: float = 0.0  # per server event
    machine_plain_ns: float = 0.0  # SessionMachine.client_text without recovery
    machine_recovery_ns: float = 0.0  # ... with Recovery(Mirror())


def _noop(_text: str) -> None:
    return None


def _clock_cost(clock: Callable[[], int]) -> int:
    """What one clock reading adds to a measurement (the median of many back-to-back)."""
    deltas = sorted(-clock() + clock() for _ in range(2001))
    return deltas[len(deltas) // 2]


def run(minutes: float, *, traced: bool) -> MirrorResult:
    """One pass over the call. ``traced``: under tracemalloc (memory only, no timings)."""
    frames = _frames()
    total = int(minutes * 60 * FPS)
    res = MirrorResult(minutes=minutes)
    gc.collect()
    if traced:
        tracemalloc.start()
    rec = Recovery(Mirror())
    mirror = rec.mirror
    sent_append, on_server, noop = rec.sent_append, rec.on_server, _noop
    clock = time.thread_time_ns  # this thread's CPU time: preemption by others not counted
    tick = _clock_cost(clock)
    plain = real = server_ns = 0
    next_sample = 0
    for kind, payload in script(total):
        if kind == "audio":
            first, last = payload
            block = [frames[k % POOL] for k in range(first, last)]
            if not traced:  # interleaved blocks: noise hits the baseline and the real loop alike
                t0 = clock()
                for text in block:
                    noop(text)
                t1 = clock()
                for text in block:
                    sent_append(text)
                t2 = clock()
                plain += t1 - t0 - tick
                real += t2 - t1 - tick
            else:
                for text in block:
                    sent_append(text)
            res.frames += len(block)
            if last >= next_sample:
                res.samples.append(
                    {
                        "minute": last / FPS / 60,
                        "memory_bytes": mirror.memory_bytes(),
                        "items": len(mirror.items),
                        "dropped_items": mirror.dropped_items,
                    }
                )
                next_sample += 60 * FPS
            res.memory_max_bytes = max(res.memory_max_bytes, mirror.memory_bytes())
        elif kind == "created":
            mirror.on_server_event("session.created", orjson.loads(payload[1]))
        elif kind == "client":
            for etype, text in payload:
                rec.sent_control(etype, text, res.frames / FPS)
        else:
            now = res.frames / FPS
            t0 = clock()
            for etype, text in payload:
                on_server(etype, text, now)
            server_ns += clock() - t0 - tick
            res.server_events += len(payload)
            res.memory_max_bytes = max(res.memory_max_bytes, mirror.memory_bytes())
    res.memory_end_bytes = mirror.memory_bytes()
    res.items_kept, res.items_dropped = len(mirror.items), mirror.dropped_items
    res.turn_audio_bytes = mirror.turn_audio_bytes
    res.pending_audio_bytes = mirror.pending_audio_bytes
    res.dropped_audio_bytes = mirror.dropped_audio_bytes
    if traced:
        res.tracemalloc_end_bytes, res.tracemalloc_peak_bytes = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    elif res.frames:
        res.plain_ns, res.sent_append_ns = plain / res.frames, real / res.frames
        res.on_server_us = server_ns / max(1, res.server_events) / 1000
    return res


def _ready_machine(recovery: Recovery | None) -> SessionMachine:
    m = SessionMachine(
        embedded_session=None,
        extensions=False,
        prebuffer_limit_bytes=4 << 20,
        coalesce_window_s=1.0,
        recovery=recovery,
    )
    session = default_session("realtime", session_id=ids.session_id())
    m.upstream_text(orjson.dumps(ev.session_created(session)).decode(), 0.0)
    m.flush_done()
    return m


def machine_hot_path(frames_n: int = 60_000) -> tuple[float, float]:
    """ns per append through ``SessionMachine.client_text``: without and with recovery."""
    frames = _frames()
    plain, recov = _ready_machine(None), _ready_machine(Recovery(Mirror()))
    clock = time.thread_time_ns
    tick = _clock_cost(clock)
    totals = [0, 0]
    calls: list[Callable[[str, float], object]] = [plain.client_text, recov.client_text]
    for start in range(0, frames_n, FPS):
        block = [frames[k % POOL] for k in range(start, start + FPS)]
        for i, call in enumerate(calls):
            t0 = clock()
            for text in block:
                call(text, 0.0)
            totals[i] += clock() - t0 - tick
    return totals[0] / frames_n, totals[1] / frames_n


def simulate(minutes: float) -> MirrorResult:
    res = run(minutes, traced=False)
    traced = run(minutes, traced=True)
    res.tracemalloc_peak_bytes = traced.tracemalloc_peak_bytes
    res.tracemalloc_end_bytes = traced.tracemalloc_end_bytes
    res.machine_plain_ns, res.machine_recovery_ns = machine_hot_path()
    return res
