"""One local-engine session as an in-process :class:`~voxgate.backends.base.UpstreamConnection`.

Owns the asyncio side of an :class:`~.engine.EngineSession`: the relay's ``send_str`` puts
client events into a bounded inbox; one session task handles them in order (turn detection
and transcription run in the engine's worker threads, so the event loop never stalls); one
task per running response asks the responder for sentences, synthesises each in a worker
thread and streams ``output_audio.delta`` / ``output_audio_transcript.delta`` as it goes; every
event goes through one bounded outbox that the relay drains with ``receive``. A relay that
reads slowly therefore holds back TTS instead of growing memory.

Failure: a responder, TTS or ASR error or timeout ends the response with ``response.done``
status ``failed`` plus an ``error`` event (realtime-protocol.md §11); a bug in the engine
ends the session with an ``error`` and close 1011. Must not: block the event loop, share
state between sessions, or log transcripts and answers above debug level.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Final

import orjson
import structlog

from voxgate.backends.local.asr import AsrError
from voxgate.backends.local.engine import (
    EngineResources,
    EngineSession,
    ItemAudio,
    history_of,
    tools_of,
)
from voxgate.backends.local.responder import FunctionCall, ResponderError, TextPiece
from voxgate.backends.local.tts import TTSError
from voxgate.backends.local.turns import (
    TurnDetector,
    TurnEnded,
    TurnEvent,
    TurnPartial,
    TurnPaused,
    TurnResumed,
    TurnStarted,
    TurnStopped,
    transcribe_turn,
)
from voxgate.protocol import response_builder as rb
from voxgate.protocol.audio import AudioFormat, bytes_per_ms
from voxgate.protocol.close import CloseCode
from voxgate.protocol.errors import SERVER_ERROR, error_event
from voxgate.protocol.realtime_server import Action, Close, Send, StartResponse
from voxgate.protocol.session_config import format_type, input_format, output_format
from voxgate.protocol.sniff import NotAnEvent, event_type
from voxgate.session.delivery import Delivery
from voxgate.session.ports import FrameSink, PeerGone

log = structlog.get_logger(__name__)

#: Queued appends handled together before turn detection (25 chunks of 20 ms = 0.5 s).
_MAX_APPEND_BATCH: Final = 25


_Prepared = tuple[tuple[str, str, str, float], bytes]
"""((sentence, format, voice, speed), wire audio) synthesised ahead of a response."""


class _ResponseStopped(Exception):
    """The response is no longer running (cancelled): stop producing it."""


class _ResponseFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class LocalConnection:
    """The engine side of one session, as an :class:`~voxgate.session.ports.UpstreamConnection`.

    Client events go into a bounded inbox (``write_text``/``send_text``; raw input audio from
    binary frames goes in as bytes through ``write_audio``, never through base64); engine events
    come out of a :class:`~voxgate.session.delivery.Delivery`, handed to the session's sink
    while it is idle. A ping is answered by counting it as heard (the engine is in process).
    """

    accepts_audio_bytes = True

    def __init__(self, core: EngineSession, resources: EngineResources, *, session_id: str):
        self._core = core
        self._res = resources
        self._limits = resources.limits
        self._log = log.bind(session_id=session_id, backend="local")
        self._inbox: asyncio.Queue[str | bytes | _Wake] = asyncio.Queue(
            maxsize=self._limits.inbox_events
        )
        self._wake_queued = False
        self._outbox = Delivery(self._limits.outbox_events)
        self._emit_lock = asyncio.Lock()
        self._close_code: int | None = None
        self._heard = 0
        self._detector: TurnDetector | None = None
        self._detector_base = (0, 0.0)  # (stream offset, stream ms) where it started
        self._responses: dict[str, asyncio.Task[None]] = {}
        self._turn_error: str | None = None
        # What was synthesised ahead for the turn that may be ending (see _prepare), and for
        # the turn that ended, until the next response's first sentence looks at it.
        self._prepared: asyncio.Future[_Prepared | None] | None = None
        self._prepared_transcript = ""
        self._reply_prepared: asyncio.Future[_Prepared | None] | None = None
        self._held: str | bytes | None = None  # a client event taken from the inbox, next
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="local_engine_session")

    # ------------------------------------------------------------------ UpstreamConnection

    @property
    def heard(self) -> int:
        return self._heard

    @property
    def close_code(self) -> int | None:
        return self._close_code

    def set_sink(self, sink: FrameSink | None) -> None:
        self._outbox.sink = sink

    async def receive(self) -> str | bytes:
        return await self._outbox.receive()

    @property
    def writable(self) -> bool:
        return self._close_code is None and not self._inbox.full()

    def write_text(self, text: str) -> bool:
        if self._close_code is not None:
            return False
        try:
            self._inbox.put_nowait(text)
        except asyncio.QueueFull:
            return False
        return True

    def write_audio(self, pcm: bytes) -> bool:
        if self._close_code is not None:
            return False
        try:
            self._inbox.put_nowait(pcm)
        except asyncio.QueueFull:
            return False
        return True

    async def send_text(self, text: str) -> None:
        if self._close_code is not None:
            raise PeerGone(self._close_code)
        await self._inbox.put(text)

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        if self._close_code is not None:
            return
        self._close_code = code
        await self._stop()
        self._outbox.end(PeerGone(code, reason, clean=True), drop_queued=True)

    async def ping(self) -> None:
        """The relay's heartbeat: the engine is in process, so it is alive while it runs."""
        if self._close_code is None:
            self._heard += 1

    # ------------------------------------------------------------------ the session task

    async def _run(self) -> None:
        core = self._core
        try:
            await self._perform(core.open())
            while True:
                if self._held is not None:
                    text, self._held = self._held, None
                else:
                    got = await self._inbox.get()
                    if isinstance(got, _Wake):
                        await self._on_wake()
                        continue
                    text = got
                await self._perform(_receive(core, text))
                if _is_append(text):
                    await self._take_queued_appends()
                await self._after_event()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the engine: end this session, never the process
            self._log.exception("local_engine.internal_error", error=type(exc).__name__)
            event = error_event("The server had an error.", code=None, error_type=SERVER_ERROR)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._put(orjson.dumps(event).decode())
            self._close_code = CloseCode.INTERNAL_ERROR
            self._outbox.end(PeerGone(CloseCode.INTERNAL_ERROR, "server_error", clean=True))
        finally:
            for task in self._responses.values():
                task.cancel()
            self._drop_prepared()
            await self._drop_detector()

    def _snapshot_done(self) -> None:
        """(Any thread.) A snapshot decode finished: wake the session task to announce it."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            self._loop.call_soon_threadsafe(self._queue_wake)

    def _queue_wake(self) -> None:
        if self._wake_queued or self._close_code is not None:
            return
        try:  # a full inbox means audio is queued: its feed announces the snapshot anyway
            self._inbox.put_nowait(_WAKE)
        except asyncio.QueueFull:
            return
        self._wake_queued = True

    async def _on_wake(self) -> None:
        """Announce a finished snapshot decode now, so the answer's first sentence is
        prepared from then on, not from the next audio chunk (up to 20 ms later)."""
        self._wake_queued = False
        detector = self._detector
        if detector is not None:
            await self._apply_turn_events(detector.poll())

    async def _take_queued_appends(self) -> None:
        """Handle the appends already queued behind this one before turn detection runs.

        A session that fell behind (a slow worker, a busy core) then catches up in one
        worker call for up to :data:`_MAX_APPEND_BATCH` chunks instead of one per 20 ms
        chunk, which it could not do once a call costs more than its chunk lasts. The first
        other event is held back and handled after detection, so every non-audio event still
        sees the turn state of all the audio before it.
        """
        for _ in range(_MAX_APPEND_BATCH - 1):
            if self._inbox.empty() or self._core.detector_stale:
                return
            got = self._inbox.get_nowait()
            if isinstance(got, _Wake):
                self._wake_queued = False  # the feed after this batch announces it
                continue
            text = got
            if not _is_append(text):
                self._held = text
                return
            await self._perform(_receive(self._core, text))

    async def _after_event(self) -> None:
        core = self._core
        chunks = core.take_audio()
        if core.detector_stale:
            await self._rebuild_detector(pending_bytes=sum(len(c) for c in chunks))
        if chunks and self._detector is not None:
            events = await self._in_worker(self._detector.feed_many, chunks)
            await self._apply_turn_events(events)
        for item_id, audio in core.take_transcriptions():
            await self._transcribe(item_id, audio)
        for clip in core.take_item_audio():
            await self._transcribe_item(clip)
        for rid in core.take_cancelled():
            task = self._responses.pop(rid, None)
            if task is not None:
                task.cancel()

    async def _in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        async with asyncio.timeout(self._limits.asr_timeout_s):
            return await self._loop.run_in_executor(self._res.executor, fn, *args)

    async def _rebuild_detector(self, *, pending_bytes: int) -> None:
        """A new detector whose first audio is the ``pending_bytes`` not yet detected.

        Its clock starts where that audio starts in the session's stream, so its
        ``audio_start_ms`` / ``audio_end_ms`` are session times (§5).
        """
        core = self._core
        core.detector_stale = False
        await self._drop_detector()
        td = core.turn_detection
        if td is None:
            return
        fmt = format_type(input_format(core.session))
        start_offset = core.stream_offset - pending_bytes
        start_ms = int(core.stream_ms - pending_bytes / bytes_per_ms(_audio_fmt(fmt)))
        self._detector = await self._in_worker(
            lambda: TurnDetector(
                td,
                fmt,
                start_ms=start_ms,
                recognizer=self._res.asr,
                final_decode=self._res.final_decode,
                max_turn_ms=int(self._limits.max_turn_s * 1000),
                prepare_lead_ms=self._limits.prepare_lead_ms,
                defer_end=True,
                on_snapshot_done=self._snapshot_done,
            )
        )
        self._detector_base = (start_offset, float(start_ms))

    async def _drop_detector(self) -> None:
        detector, self._detector = self._detector, None
        if detector is not None:
            with contextlib.suppress(Exception):
                await self._loop.run_in_executor(self._res.executor, detector.close)

    async def _apply_turn_events(self, events: Sequence[TurnEvent]) -> None:
        core = self._core
        detector = self._detector
        for event in events:
            if isinstance(event, TurnStarted):
                await self._perform(core.on_speech_started(event.audio_start_ms))
            elif isinstance(event, TurnPartial):
                await self._perform(core.partial_transcript(event.text))
            elif isinstance(event, TurnPaused):
                self._prepare(event.transcript)
            elif isinstance(event, TurnResumed):
                self._drop_prepared()
            elif isinstance(event, TurnStopped):
                # the VAD's decision goes out now; the commit waits for the transcript
                await self._perform(core.on_speech_stopped(event.audio_end_ms))
            elif isinstance(event, TurnEnded):
                if self._prepared is not None and self._prepared_transcript == event.transcript:
                    self._reply_prepared, self._prepared = self._prepared, None
                self._drop_prepared()
                item_id = core.current_turn_item_id
                if event.error is None and not event.transcript:
                    # no words (noise, silence, too short): no item, no answer
                    await self._perform(core.drop_turn(self._offset_of(event.decided_at_ms)))
                    continue
                if event.error is not None and item_id is not None:
                    self._turn_error = event.error
                    await self._perform(
                        core.fail_transcription(
                            item_id, code="voxgate_asr_failed", message=event.error
                        )
                    )
                await self._perform(
                    core.commit_turn(
                        self._offset_of(event.decided_at_ms), transcript=event.transcript
                    )
                )
        if detector is not None and detector is self._detector and detector.end_pending:
            # speech_stopped is out; the transcript (snapshot decode) is still being made
            await self._apply_turn_events(await self._in_worker(detector.finish_turn))
            return
        if detector is not None and not detector.in_turn:
            fmt = format_type(input_format(core.session))
            keep = detector.prefix_padding_ms * bytes_per_ms(_audio_fmt(fmt))
            core.discard_buffered(keep)

    def _prepare(self, transcript: str) -> None:
        """The turn may be ending: synthesise the answer's first sentence meanwhile.

        Speculative and side-effect free: the work (the responder's :meth:`prepare` and the
        TTS of its first sentence) fills the responder's memo, the speech cache (static
        sentences) and this session's prepared slot, which the response, if the turn does
        end with this transcript, then finds ready. It sends no event, so a turn that goes on
        leaves no trace (realtime-protocol.md §3: nothing is said before ``speech_stopped``).
        """
        core = self._core
        prepare = getattr(self._res.responder, "prepare", None)
        if not transcript:
            return  # no words: the turn will be dropped, not answered
        td = core.turn_detection or {}
        if prepare is None or not core.is_realtime or not td.get("create_response", True):
            return
        session = core.session
        if "audio" not in (session.get("output_modalities") or ["audio"]):
            return
        voice, speed, fmt = _voice_of(session)
        cache = self._res.speech_cache

        def work() -> _Prepared | None:
            piece = prepare(transcript)
            if not isinstance(piece, TextPiece) or not piece.text.strip():
                return None
            sentence = piece.text.strip()
            audio = cache.synthesize(
                sentence, fmt=fmt, voice=voice, speed=speed, cache=piece.static
            )
            return (sentence, fmt, voice, speed), audio

        self._drop_prepared()
        self._prepared = self._loop.run_in_executor(self._res.executor, work)
        self._prepared.add_done_callback(_forget_result)
        self._prepared_transcript = transcript

    def _drop_prepared(self) -> None:
        """Speech resumed: unqueue preparation that has not started (a started one finishes)."""
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            prepared.cancel()

    async def _take_prepared(self, key: tuple[str, str, str, float]) -> bytes | None:
        """The audio prepared for the turn that ended, if it is this sentence's."""
        prepared, self._reply_prepared = self._reply_prepared, None
        if prepared is None or prepared.cancelled():
            return None
        try:
            async with asyncio.timeout(self._limits.tts_timeout_s):
                result = await asyncio.shield(prepared)
        except asyncio.CancelledError:
            if prepared.cancelled():
                return None
            raise  # this response was cancelled
        except Exception:  # best effort: the sentence is synthesised again below
            return None
        return result[1] if result is not None and result[0] == key else None

    def _offset_of(self, ms: float) -> int:
        base_offset, base_ms = self._detector_base
        fmt = _audio_fmt(format_type(input_format(self._core.session)))
        offset = base_offset + int((ms - base_ms) * bytes_per_ms(fmt))
        offset -= offset % (2 if fmt == "audio/pcm" else 1)
        return max(0, min(offset, self._core.stream_offset))

    async def _transcribe(self, item_id: str, audio: bytes) -> None:
        core = self._core
        fmt = format_type(input_format(core.session))
        try:
            text, audio_ms = await self._in_worker(
                # a whole committed buffer: the batch pass's utterance-wide mean is worth it
                lambda: transcribe_turn(audio, fmt, recognizer=self._res.asr, final_decode="batch")
            )
        except (AsrError, TimeoutError) as exc:
            message = str(exc) or "speech recognition timed out"
            self._turn_error = message
            await self._perform(
                core.fail_transcription(item_id, code="voxgate_asr_failed", message=message)
            )
            return
        await self._perform(core.complete_transcription(item_id, text, audio_ms))

    async def _transcribe_item(self, clip: ItemAudio) -> None:
        """Transcribe an ``input_audio`` part of a created item (whole, batch pass)."""
        core = self._core
        fmt = format_type(input_format(core.session))
        try:
            text, audio_ms = await self._in_worker(
                lambda: transcribe_turn(
                    clip.audio, fmt, recognizer=self._res.asr, final_decode="batch"
                )
            )
        except (AsrError, TimeoutError) as exc:
            message = str(exc) or "speech recognition timed out"
            await self._perform(
                core.fail_item_transcription(clip, code="voxgate_asr_failed", message=message)
            )
            return
        await self._perform(core.complete_item_transcription(clip, text, audio_ms))

    # ------------------------------------------------------------------ responses

    async def _respond(self, rid: str) -> None:
        core = self._core
        try:
            if self._turn_error is not None:
                error, self._turn_error = self._turn_error, None
                raise _ResponseFailed("voxgate_asr_failed", f"speech recognition failed: {error}")
            async with asyncio.timeout(self._limits.response_timeout_s):
                await self._stream_reply(rid)
        except _ResponseStopped:
            pass
        except _ResponseFailed as exc:
            await self._perform(core.fail_response(rid, code=exc.code, message=exc.message))
        except ResponderError as exc:
            code = exc.code or "voxgate_responder_error"
            await self._perform(core.fail_response(rid, code=code, message=exc.message))
        except TTSError:
            await self._perform(
                core.fail_response(
                    rid, code="voxgate_tts_failed", message="speech synthesis failed"
                )
            )
        except TimeoutError:
            await self._perform(
                core.fail_response(
                    rid, code="voxgate_response_timeout", message="the response timed out"
                )
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._log.exception("local_engine.response_error", error=type(exc).__name__)
            await self._perform(
                core.fail_response(
                    rid, code="voxgate_engine_error", message="the local engine failed"
                )
            )
        finally:
            self._responses.pop(rid, None)

    async def _stream_reply(self, rid: str) -> None:
        active = self._core.active_response(rid)
        if active is None:
            return
        ctx, effective = active.context, active.effective
        history, user_text = history_of(ctx.items)
        voice, speed, fmt = _voice_of(effective)
        pieces = self._res.responder.respond(
            instructions=ctx.instructions,
            history=history,
            tools=tools_of(ctx.tools, ctx.tool_choice),
            user_text=user_text,
        )
        opened = False
        first = True
        spoke = False
        try:
            while True:
                try:
                    async with asyncio.timeout(self._limits.responder_piece_timeout_s):
                        piece = await anext(pieces)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise _ResponseFailed(
                        "voxgate_responder_timeout", "the responder did not answer in time"
                    ) from None
                if isinstance(piece, FunctionCall):
                    if opened:
                        await self._add(rid, lambda b: b.end_message())
                        opened = False
                    await self._add(rid, _call(piece.name, piece.arguments, piece.call_id))
                    continue
                if not isinstance(piece, TextPiece) or not piece.text.strip():
                    continue
                if not opened:
                    await self._add(rid, lambda b: b.begin_message())
                    opened, first = True, True
                text = piece.text if first else " " + piece.text
                first = False
                if "audio" in ctx.output_modalities:
                    await self._speak(
                        rid,
                        text,
                        static=piece.static,
                        first_in_response=not spoke,
                        fmt=fmt,
                        voice=voice,
                        speed=speed,
                    )
                    spoke = True
                else:
                    await self._add(rid, _text(text))
        finally:
            aclose = getattr(pieces, "aclose", None)
            if aclose is not None:
                await aclose()
        await self._add(rid, lambda b: b.finish())

    async def _speak(
        self,
        rid: str,
        text: str,
        *,
        static: bool,
        first_in_response: bool,
        fmt: AudioFormat,
        voice: str,
        speed: float,
    ) -> None:
        """Synthesise one sentence (or take it from the cache) and stream it as deltas.

        The response's first delta is short (``first_audio_delta_ms``) so playback starts
        early; the rest are ``audio_delta_ms`` long.
        """
        sentence, cache = text.strip(), self._res.speech_cache
        wire = cache.get(sentence, fmt=fmt, voice=voice, speed=speed) if static else None
        if wire is None and first_in_response:
            wire = await self._take_prepared((sentence, fmt, voice, speed))
        if wire is None:
            try:
                async with asyncio.timeout(self._limits.tts_timeout_s):
                    wire = await self._loop.run_in_executor(
                        self._res.executor,
                        lambda: cache.synthesize(
                            sentence, fmt=fmt, voice=voice, speed=speed, cache=static
                        ),
                    )
            except TimeoutError:
                raise _ResponseFailed("voxgate_tts_timeout", "speech synthesis timed out") from None
        per_ms = bytes_per_ms(fmt)
        step = max(1, self._limits.audio_delta_ms * per_ms)
        first = min(step, self._limits.first_audio_delta_ms * per_ms) if first_in_response else step
        await self._add(rid, _audio(wire[:first], text))
        for i in range(first, len(wire), step):
            await self._add(rid, _audio(wire[i : i + step], None))

    async def _add(self, rid: str, make: Callable[[rb.ResponseBuilder], list[Any]]) -> None:
        actions = self._core.response_events(rid, make)
        if actions is None:
            raise _ResponseStopped
        await self._perform(actions)

    # ------------------------------------------------------------------ output

    async def _perform(self, actions: Sequence[Action]) -> None:
        """Send the core's actions in order (one writer at a time keeps build order)."""
        async with self._emit_lock:
            for action in actions:
                if isinstance(action, Send):
                    await self._put(orjson.dumps(action.event).decode())
                elif isinstance(action, StartResponse):
                    rid = action.response_id
                    self._responses[rid] = asyncio.create_task(
                        self._respond(rid), name=f"local_engine_response_{rid}"
                    )
                elif isinstance(action, Close):
                    self._close_code = action.code
                    self._outbox.end(PeerGone(action.code, action.reason, clean=True))

    async def _put(self, text: str) -> None:
        if self._close_code is not None:
            return
        await self._outbox.put(text)

    async def _stop(self) -> None:
        if not self._task.done():
            self._task.cancel()
        for task in list(self._responses.values()):
            task.cancel()
        tasks = [self._task, *self._responses.values()]
        await asyncio.gather(*tasks, return_exceptions=True)


class _Wake:
    """The inbox's marker for "a snapshot decode finished" (see ``_snapshot_done``)."""


_WAKE: Final = _Wake()


def _receive(core: EngineSession, frame: str | bytes) -> list[Action]:
    """One client event: raw audio (a binary frame's bytes) or an event's JSON text."""
    if isinstance(frame, bytes):
        return core.append_audio(frame)
    return core.receive_text(frame)


def _is_append(text: str | bytes) -> bool:
    if isinstance(text, bytes):
        return True
    try:
        return event_type(text) == "input_audio_buffer.append"
    except NotAnEvent:
        return False


def _voice_of(config: dict[str, Any]) -> tuple[str, float, AudioFormat]:
    """``(voice, speed, wire format)`` of a session or effective response config."""
    out = (config.get("audio") or {}).get("output") or {}
    voice = out.get("voice") if isinstance(out.get("voice"), str) else "alloy"
    fmt = _audio_fmt(format_type(output_format(config)))
    return str(voice), float(out.get("speed") or 1.0), fmt


def _forget_result(future: asyncio.Future[_Prepared | None]) -> None:
    """Preparation is best effort: a failure shows again, and is reported, in the response."""
    if not future.cancelled():
        future.exception()


def _audio_fmt(fmt_type: str) -> AudioFormat:
    if fmt_type in ("audio/pcmu", "audio/pcma"):
        return fmt_type  # type: ignore[return-value]
    return "audio/pcm"


def _call(name: str, arguments: str, call_id: str) -> Callable[[rb.ResponseBuilder], list[Any]]:
    return lambda b: b.function_call(name, arguments, call_id=call_id)


def _text(delta: str) -> Callable[[rb.ResponseBuilder], list[Any]]:
    return lambda b: b.text(delta)


def _audio(chunk: bytes, transcript: str | None) -> Callable[[rb.ResponseBuilder], list[Any]]:
    return lambda b: b.audio(chunk, transcript)
