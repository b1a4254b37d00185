"""The turn detector runs its pause-time snapshot decode off its own path (turns.py).

Synchronous and deterministic: the recogniser is a fake that counts decodes, and the
executor holds each job until the test runs it (or until the detector has to wait for it),
so what the detector returns before and after the decode is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np

from speech_fixtures import chunks, silence_pcm24k, synth_pcm24k
from voxgate.backends.local.asr import Transcript
from voxgate.backends.local.turns import (
    TurnDetector,
    TurnEnded,
    TurnEvent,
    TurnPaused,
    TurnResumed,
    TurnStarted,
    TurnStopped,
)

SERVER_VAD = {"type": "server_vad", "silence_duration_ms": 200}


class HeldFuture(Future[Any]):
    """Runs its job when the test says so, or when someone needs the result."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__()
        self.fn = fn

    def run_now(self) -> None:
        if self.set_running_or_notify_cancel():
            self.set_result(self.fn())

    def result(self, timeout: float | None = None) -> Any:
        if not self.done():
            self.run_now()
        return super().result(timeout)


class HeldExecutor(Executor):
    def __init__(self) -> None:
        self.jobs: list[HeldFuture] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> HeldFuture:
        future = HeldFuture(lambda: fn(*args, **kwargs))
        self.jobs.append(future)
        return future


class Job:
    def __init__(self, stream: FakeStream, fed: int) -> None:
        self.stream, self.fed = stream, fed

    abandoned = False

    def run(self) -> str:
        self.stream.decodes += 1
        return f"words {self.fed}"

    def abandon(self) -> None:
        self.abandoned = True


class FakeStream:
    """An utterance stream with Whisper's two-part snapshot; text names the audio decoded."""

    def __init__(self) -> None:
        self.fed = 0
        self.decodes = 0
        self.active = False
        self.snapshot_of: int | None = None
        self.jobs: list[Job] = []

    def feed(self, pcm16: bytes) -> Transcript | None:
        self.active = True
        self.fed += len(pcm16)
        return None

    def partial(self) -> Transcript | None:
        return None

    def snapshot(self) -> Transcript:
        raise AssertionError("the detector must use begin_snapshot")

    def begin_snapshot(self) -> Job:
        self.jobs.append(Job(self, self.fed))
        return self.jobs[-1]

    def accept_snapshot(self, job: Job, text: str) -> Transcript:
        self.snapshot_of = job.fed
        return Transcript(text, False, 0.0)

    def finish(self) -> Transcript:
        if self.snapshot_of == self.fed:
            text = f"words {self.fed}"
        else:
            self.decodes += 1
            text = f"final {self.fed}"
        self.active, self.fed, self.snapshot_of = False, 0, None
        return Transcript(text, True, 0.0)

    def cancel(self) -> None:
        self.active, self.fed, self.snapshot_of = False, 0, None


class FakeRecognizer:
    name = "fake"

    def __init__(self) -> None:
        self.last = FakeStream()

    def stream(self, **_: Any) -> FakeStream:
        self.last = FakeStream()
        return self.last


def trimmed(text: str) -> bytes:
    """``text`` without espeak's fade (under -30 dBFS), which the VAD counts as silence."""
    pcm = synth_pcm24k(text)
    loud = np.nonzero(np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32)) > 1036)[0]
    return pcm[2 * int(loud[0]) : 2 * (int(loud[-1]) + 1)]


def detector(
    executor: Executor,
    *,
    defer_end: bool = False,
    final_decode: Any = "stream",
    on_snapshot_done: Callable[[], None] | None = None,
) -> tuple[TurnDetector, FakeRecognizer]:
    asr = FakeRecognizer()
    det = TurnDetector(
        SERVER_VAD,
        "audio/pcm",
        start_ms=0,
        recognizer=asr,  # type: ignore[arg-type]
        final_decode=final_decode,
        executor=executor,
        defer_end=defer_end,
        on_snapshot_done=on_snapshot_done,
    )
    return det, asr


def feed_all(det: TurnDetector, pcm: bytes, *, until: type | None = None) -> list[TurnEvent]:
    """Feed 20 ms chunks; stop after the chunk that returned an event of type ``until``."""
    out: list[TurnEvent] = []
    for chunk in chunks(pcm):
        events = det.feed(chunk)
        out.extend(events)
        if until is not None and any(isinstance(e, until) for e in events):
            break
    return out


def test_detection_goes_on_while_the_snapshot_decodes_and_the_pause_follows_it() -> None:
    executor = HeldExecutor()
    det, asr = detector(executor)
    speech = silence_pcm24k(300) + trimmed("What is a stop loss order?")
    assert any(isinstance(e, TurnStarted) for e in feed_all(det, speech))
    # 100 ms of silence: the pause (at 24 ms) starts a decode, which is not run yet
    events = feed_all(det, silence_pcm24k(100))
    assert len(executor.jobs) == 1
    assert not any(isinstance(e, TurnPaused) for e in events)  # nothing waited for it
    assert asr.last.decodes == 0
    executor.jobs[0].run_now()
    paused = det.feed(silence_pcm24k(20))
    assert [type(e) for e in paused] == [TurnPaused]
    assert isinstance(paused[0], TurnPaused)
    assert paused[0].transcript.startswith("words ")
    ended = feed_all(det, silence_pcm24k(200), until=TurnEnded)
    end = next(e for e in ended if isinstance(e, TurnEnded))
    assert end.transcript == paused[0].transcript  # the snapshot is the final
    assert end.decided_at_ms - end.audio_end_ms >= 200
    assert asr.last.decodes == 1  # one decode for the whole turn


def test_a_finished_snapshot_is_signalled_and_polled_without_waiting_for_audio() -> None:
    executor = HeldExecutor()
    signals: list[int] = []
    det, _ = detector(executor, on_snapshot_done=lambda: signals.append(1))
    feed_all(det, silence_pcm24k(300) + trimmed("What is a stop loss order?"))
    inner = len(executor.jobs)  # inner gaps may have started (and dropped) snapshots
    feed_all(det, silence_pcm24k(100))
    assert len(executor.jobs) == inner + 1
    assert det.poll() == []  # the decode has not run: nothing to announce, no wait
    signalled = len(signals)
    executor.jobs[-1].run_now()
    assert len(signals) == signalled + 1  # the caller is told when the decode is done
    paused = det.poll()  # ... and gets the pause at once, with no audio fed
    assert [type(e) for e in paused] == [TurnPaused]
    assert isinstance(paused[0], TurnPaused)
    assert paused[0].transcript.startswith("words ")
    assert det.poll() == []  # announced once
    assert not any(isinstance(e, TurnPaused) for e in det.feed(silence_pcm24k(20)))


def test_a_turn_that_ends_before_the_snapshot_is_decoded_waits_for_it() -> None:
    executor = HeldExecutor()
    det, _ = detector(executor)
    feed_all(det, silence_pcm24k(300) + trimmed("What is a margin call?"))
    # the whole silence in one feed: pause and stop in the same call
    events = det.feed(silence_pcm24k(260))
    assert [type(e) for e in events] == [TurnStopped, TurnPaused, TurnEnded]
    stopped, paused, end = events
    assert isinstance(stopped, TurnStopped)
    assert isinstance(paused, TurnPaused)
    assert isinstance(end, TurnEnded)
    assert end.transcript == paused.transcript != ""
    assert len(executor.jobs) == 1


def test_a_dropped_snapshot_is_unqueued_and_told_to_stop_at_its_next_stage() -> None:
    executor = HeldExecutor()
    det, asr = detector(executor)
    feed_all(det, silence_pcm24k(300) + trimmed("What is a stop loss order?"))
    feed_all(det, silence_pcm24k(60))  # a pause: a snapshot starts
    job = asr.last.jobs[-1]
    assert not job.abandoned
    feed_all(det, trimmed("And a limit order?"))  # speech resumes
    assert executor.jobs[asr.last.jobs.index(job)].cancelled()  # unqueued if not started
    assert job.abandoned  # and, if it had started, it stops before its next stage
    assert all(j.abandoned for j in asr.last.jobs)  # inner-gap snapshots too


def test_speech_that_resumes_drops_the_pending_snapshot() -> None:
    executor = HeldExecutor()
    det, asr = detector(executor)
    feed_all(det, silence_pcm24k(300) + trimmed("What is a trailing stop?"))
    # a gap inside the words (a stop consonant) may reach the pause point: dropped at once
    inner = len(executor.jobs)
    assert all(job.cancelled() for job in executor.jobs)
    feed_all(det, silence_pcm24k(100))  # a pause, shorter than the window
    assert len(executor.jobs) == inner + 1
    resumed = feed_all(det, trimmed("And a stop loss order?"))
    assert any(isinstance(e, TurnResumed) for e in resumed)
    assert not any(isinstance(e, TurnPaused) for e in resumed)
    assert executor.jobs[inner].cancelled()  # never decoded
    events = det.feed(silence_pcm24k(260))
    end = next(e for e in events if isinstance(e, TurnEnded))
    assert end.transcript.startswith("words ")  # the last pause's snapshot
    assert sum(not job.cancelled() for job in executor.jobs) == 1
    assert asr.last.fed == 0  # finished and reset


def test_a_deferred_end_reports_the_stop_before_the_decode_and_the_transcript_after() -> None:
    executor = HeldExecutor()
    det, asr = detector(executor, defer_end=True)
    feed_all(det, silence_pcm24k(300) + trimmed("What is a margin call?"))
    # the silence window and the next question in one feed, while the decode is held
    events = det.feed(silence_pcm24k(300) + trimmed("What is a pip?"))
    assert [type(e) for e in events] == [TurnStopped]
    assert det.end_pending
    assert det.in_turn
    assert asr.last.decodes == 0  # speech_stopped did not wait for the decode
    stopped = events[0]
    assert isinstance(stopped, TurnStopped)
    assert stopped.decided_at_ms - stopped.audio_end_ms >= 200
    rest = det.finish_turn()
    assert [type(e) for e in rest][:3] == [TurnPaused, TurnEnded, TurnStarted]
    paused, end, started = rest[:3]
    assert isinstance(paused, TurnPaused)
    assert isinstance(end, TurnEnded)
    assert isinstance(started, TurnStarted)
    assert (end.audio_end_ms, end.decided_at_ms) == (stopped.audio_end_ms, stopped.decided_at_ms)
    assert end.transcript == paused.transcript != ""
    assert started.audio_start_ms >= end.decided_at_ms - 300  # the next question's turn
    assert not det.end_pending
    assert det.finish_turn() == []
    assert asr.last.decodes == 1  # the first turn's snapshot, run when it was needed


def test_a_deferred_end_is_not_deferred_when_the_transcript_is_ready() -> None:
    executor = HeldExecutor()
    det, _ = detector(executor, defer_end=True)
    feed_all(det, silence_pcm24k(300) + trimmed("What is a stop limit order?"))
    feed_all(det, silence_pcm24k(100))  # the pause's decode starts
    executor.jobs[-1].run_now()  # the last pause (inner gaps may have dropped others)
    events = feed_all(det, silence_pcm24k(200), until=TurnEnded)
    kinds = [type(e) for e in events]
    assert kinds == [TurnPaused, TurnStopped, TurnEnded]
    assert not det.end_pending


def test_feeding_after_a_deferred_end_finishes_it_first() -> None:
    executor = HeldExecutor()
    det, _ = detector(executor, defer_end=True)
    feed_all(det, silence_pcm24k(300) + trimmed("What is slippage?"))
    assert [type(e) for e in det.feed(silence_pcm24k(260))] == [TurnStopped]
    events = det.feed(silence_pcm24k(20))
    assert [type(e) for e in events] == [TurnPaused, TurnEnded]
    assert not det.end_pending
    assert not det.in_turn


def test_a_batch_final_decode_is_deferred_too() -> None:
    det, asr = detector(HeldExecutor(), defer_end=True, final_decode="batch")
    feed_all(det, silence_pcm24k(300) + trimmed("What is liquidity?"))
    events = det.feed(silence_pcm24k(260))
    assert [type(e) for e in events if not isinstance(e, TurnPaused)] == [TurnStopped]
    assert asr.last.decodes == 0
    (end,) = [e for e in det.finish_turn() if isinstance(e, TurnEnded)]
    assert end.transcript.startswith("final ")
    assert asr.last.decodes == 1
