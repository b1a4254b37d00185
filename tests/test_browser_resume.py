"""The console resumes its session after a network drop (issue #7), in a real Chromium.

The page is loaded through a :class:`FaultProxy` in front of voxgate, so its WebSocket goes
through the proxy too; ``proxy.cut()`` resets every connection (the page sees 1006, voxgate a
vanished client that it keeps for the grace period). Behind voxgate is the fake OpenAI
upstream, so what reached "OpenAI" is on record: ``fake.connections[i].audio`` holds every
appended byte. The microphone is a WAV synthesised at test time (a spoken question).

Cuts are made the moment a mic frame has reached the upstream, between two frames. Still, a
frame the page had just handed to its socket can be in flight (the browser sends in bursts when
its main thread was busy) and is lost with the connection, as on a real network: Chromium
already counts it out of ``bufferedAmount``, and nothing in the resume protocol tells the
client which of its frames arrived. So the audio check is exact about everything else: the
upstream's bytes must be the page's sent bytes, socket after socket, in order, none twice,
gap audio included, with at most the last frame or two of a cut socket missing.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page

from browser_helpers import (
    ARTIFACTS,
    RECORD_SENT_AUDIO,
    chromium,
    console_stats,
    log_count,
    open_console,
    open_console_with,
    sent_audio_per_socket,
    speech_wav,
    start_hands_free,
    wait_for_state,
)
from gateway_helpers import UPSTREAM_KEY, gateway_settings
from voxgate.auth.console import new_login_url
from voxgate.testing import ConnectionRecord, FakeRealtimeServer, FaultProxy
from voxgate.testing.gateway import run_gateway
from voxgate.testing.responder import ResponseContext, Say

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(120)]

QUESTION = "What is a stop loss order and when should I place one?"
ANSWER = "A stop loss order sells a security once its price falls to a level you choose."
ANSWER_MS = len(ANSWER.split()) * 100  # the fake voices 100 ms of tone per word
FRAME_BYTES = 960  # 20 ms of PCM16 mono at 24 kHz, one binary frame
WAIT_S = 15.0


def _transcribe(audio: bytes, fmt: Mapping[str, Any]) -> str:
    return QUESTION


def _answer(ctx: ResponseContext) -> list[Say]:
    return [Say(ANSWER)]


@asynccontextmanager
async def rig(
    pacing_s: float = 0.0, **settings: Any
) -> AsyncIterator[tuple[FakeRealtimeServer, FaultProxy, str]]:
    """Fake upstream ← voxgate ← fault proxy; yields the console's one-time login URL."""
    fake_kwargs: dict[str, Any] = {
        "api_keys": {UPSTREAM_KEY},
        "transcriber": _transcribe,
        "responder": _answer,
        "ping_interval_s": None,
        "response_pacing_s": pacing_s,
    }
    async with (
        FakeRealtimeServer(**fake_kwargs) as fake,
        run_gateway(gateway_settings(fake.url, **settings)) as gw,
        FaultProxy(gw.host, gw.port) as proxy,
    ):
        yield fake, proxy, new_login_url(gw.app, f"http://{proxy.host}:{proxy.port}")


async def next_frame_landed(record: ConnectionRecord) -> None:
    """Return right after the page's next mic frame reached the upstream (see the docstring)."""
    seen = record.audio.total_appended

    def landed() -> bool | None:
        return True if record.audio.total_appended > seen else None

    await record.wait_until(landed, WAIT_S, "a mic frame at the upstream")


async def cut_after_next_frame(record: ConnectionRecord, proxy: FaultProxy) -> None:
    """Reset the page's connections right after its next mic frame reached the upstream."""
    await next_frame_landed(record)
    assert proxy.cut() >= 1


def frames_lost_at_cuts(per_socket: Sequence[bytes], upstream: bytes) -> list[int]:
    """How many tail frames of each cut socket never arrived, if that explains ``upstream``.

    The last socket closed cleanly and must be complete. Raises AssertionError when no
    combination of 0-2 lost tail frames per cut socket makes the page's bytes equal the
    upstream's (a duplicate, a reorder, a missing gap, a loss elsewhere).
    """
    *cut, last = per_socket
    for lost in itertools.product(range(3), repeat=len(cut)):
        kept = [s[: len(s) - k * FRAME_BYTES] for s, k in zip(cut, lost, strict=True)]
        if b"".join([*kept, last]) == upstream:
            return list(lost)
    sizes = [len(s) // FRAME_BYTES for s in per_socket]
    raise AssertionError(
        f"upstream audio ({len(upstream) // FRAME_BYTES} frames) is not the "
        f"page's per-socket audio {sizes} minus cut tails"
    )


async def states_of(page: Page) -> list[tuple[str, str]]:
    stats = await console_stats(page)
    return [(s["state"], s["reason"]) for s in stats["states"]]


async def final_text(page: Page, selector: str) -> str:
    handle = await page.wait_for_function(
        """(sel) => {
            const el = document.querySelector(sel);
            return el && !el.closest('li').classList.contains('partial') && el.textContent;
        }""",
        arg=selector,
    )
    value = await handle.json_value()
    assert isinstance(value, str)
    return value


async def no_horizontal_scroll(page: Page) -> bool:
    fits = await page.evaluate(
        "() => document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )
    return bool(fits)


async def test_cuts_mid_speech_and_mid_answer_resume_the_same_session(tmp_path: Path) -> None:
    """Three cuts; each resumes the same session. What was missed either way arrives once."""
    wav = speech_wav(tmp_path / "ask.wav", [1500, QUESTION, 6000])
    async with rig(pacing_s=0.05) as (fake, proxy, login), chromium(wav) as browser:
        page = await open_console_with(browser, login, init_script=RECORD_SENT_AUDIO)
        await start_hands_free(page)
        record = await fake.wait_for_connection()

        # 1. A plain cut while the page streams (silence before the question): resumes at once.
        await cut_after_next_frame(record, proxy)
        await page.wait_for_function("() => window.voxgateConsole.stats().resumes === 1")
        await wait_for_state(page, "ready")

        # 2. A cut mid-question, and the first two reconnects refused by the network: the page
        # keeps capturing for ~750 ms (retries at 0, 250, 500 ms) and re-sends that audio.
        await record.wait_for_sent("input_audio_buffer.speech_started", timeout_s=WAIT_S)
        proxy.refuse(count=2)
        await cut_after_next_frame(record, proxy)
        await wait_for_state(page, "resuming")
        await page.wait_for_function("() => window.voxgateConsole.stats().resumes === 2")
        await wait_for_state(page, "ready")
        assert proxy.refused == 2

        # 3. A cut while the answer streams (one word per 50 ms), one reconnect refused: what
        # voxgate sent meanwhile is replayed after voxgate.session.resumed.
        await record.wait_for_sent("response.output_audio.delta", timeout_s=WAIT_S)
        proxy.refuse(count=1)
        await cut_after_next_frame(record, proxy)
        await page.wait_for_function("() => window.voxgateConsole.stats().resumes === 3")
        await wait_for_state(page, "ready")

        # The turn completes, each line once, nothing doubled by the replay.
        assert await final_text(page, "#transcript li.user .text") == QUESTION
        assert await final_text(page, "#transcript li.assistant .text") == ANSWER
        await record.wait_for_sent("response.done", timeout_s=WAIT_S)
        await page.wait_for_function(
            "(ms) => { const s = window.voxgateConsole.stats(); "
            "return !s.playing && s.playedMs >= ms; }",
            arg=ANSWER_MS - 50,
        )
        assert await page.locator("#transcript li.user").count() == 1
        assert await page.locator("#transcript li.assistant").count() == 1

        # The same session throughout: one session.created, three resumes, one upstream.
        assert await log_count(page, "session.created") == 1
        assert await log_count(page, "voxgate.session.resumed") == 3
        note = await page.text_content("#conn-note") or ""
        assert "Call resumed after" in note
        assert "vgr_" not in (await page.text_content("#log") or "")  # tokens are never shown
        states = await states_of(page)
        resumed = [i for i, (s, r) in enumerate(states) if s == "ready" and r == "resumed"]
        assert len(resumed) == 3
        for i in resumed:
            assert states[i - 1][0] == "resuming"
        assert not [s for s, _ in states[1:] if s in ("connecting", "reconnecting", "closed")]

        await page.click("#stop")
        await record.wait_closed(timeout_s=WAIT_S)  # a clean close ends the session
        stats = await console_stats(page)
        print(
            f"resume_ms={stats['resumeMs']} log={stats['resumeLog']} "
            f"gap_frames={stats['gapFrames']} attempts={stats['resumeAttempts']} "
            f"replayed={stats['replayedEvents']}"
        )
        assert len(fake.connections) == 1
        assert stats["sessions"] == 1
        assert stats["resumeAttempts"] == 6  # 1 + (2 refused + 1) + (1 refused + 1)
        assert stats["replayedEvents"] > 0  # the answer went on while the page was away
        assert abs(stats["playedMs"] - ANSWER_MS) < 100  # every word played, none twice
        # The gap audio was kept (none dropped) and re-sent after the resume.
        assert stats["gapFrames"] >= 25  # at least 500 ms of the question
        assert stats["gapDroppedFrames"] == 0
        assert stats["gapResentFrames"] == (
            stats["gapFrames"] + stats["tailResentFrames"] + stats["inFlightResentFrames"]
        )
        assert stats["droppedFrames"] == 0
        assert stats["duplicateEvents"] == 0
        assert stats["acks"] > 0  # the page lets voxgate's replay log go as events arrive
        # Everything the page captured was sent once; the upstream got it in order, none twice.
        audio = record.audio
        assert stats["sentFrames"] == stats["capturedFrames"] - stats["discardedFrames"]
        assert stats["sentBytes"] == stats["sentFrames"] * FRAME_BYTES
        per_socket = await sent_audio_per_socket(page)
        assert len(per_socket) == 4  # the first socket and three resumed ones
        resent = stats["inFlightResentFrames"] + stats["tailResentFrames"]
        # a frame in flight or still buffered at a cut left the page twice (then again after
        # the resume, when voxgate's input_audio_bytes showed it missing)
        assert sum(len(s) for s in per_socket) == stats["sentBytes"] + resent * FRAME_BYTES
        assert len(audio.all_bytes()) == audio.total_appended
        lost = frames_lost_at_cuts(per_socket, audio.all_bytes())
        print(f"frames in flight at the cuts (lost, then re-sent): {lost}")
        assert sum(lost) == resent
        assert audio.total_appended == stats["sentBytes"]  # every captured frame arrived once
        assert len(audio.committed) == 1  # one user turn, answered once
        assert len(record.events_of("response.create")) == 0  # server VAD made the response


async def test_refused_resume_falls_back_to_a_fresh_session_and_says_so(tmp_path: Path) -> None:
    """The resume request arrives after the grace period: voxgate refuses, the page starts over.

    Both directions of the proxy stall before the cut, so the page's resume attempt (made at
    once, within the grace period) hangs on the network until voxgate has given the session
    up (the fake upstream sees it closed); then the network heals and the request arrives.
    """
    wav = speech_wav(tmp_path / "quiet.wav", [2000, QUESTION, 4000])
    async with rig(resume_grace_s=1.0) as (fake, proxy, login), chromium(wav) as browser:
        page = await open_console_with(browser, login, width=390, height=844)
        await start_hands_free(page)
        first = await fake.wait_for_connection()
        await next_frame_landed(first)
        proxy.stall()  # new connections too: the resume attempt will hang
        assert proxy.cut() >= 1
        await wait_for_state(page, "resuming")
        await page.wait_for_selector("#conn-note:not([hidden])")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "console-resuming-390.png"), full_page=True)
        assert await no_horizontal_scroll(page)
        status = await page.text_content("#status-text") or ""
        assert status.startswith("Connection lost — resuming the call")

        await first.wait_closed(timeout_s=WAIT_S)  # grace (1 s) ran out: voxgate ended it
        proxy.resume()
        await page.wait_for_function("() => window.voxgateConsole.stats().sessions === 2")
        await wait_for_state(page, "ready")
        second = await fake.wait_for_connection(2)
        assert second is not first

        assert await log_count(page, "session.created") == 2
        refusal = page.locator('#log li.err[data-type="error"]')
        assert "voxgate_resume_refused" in (await refusal.first.text_content() or "")
        note = await page.text_content("#conn-note") or ""
        assert "Could not resume the call" in note
        assert "new session" in note
        assert "voxgate_resume_refused" in note
        stats = await console_stats(page)
        assert stats["resumeFailures"] == 1
        assert stats["resumeAttempts"] == 1
        assert [s["state"] for s in stats["states"]][-3:] == ["resuming", "reconnecting", "ready"]
        await page.screenshot(path=str(ARTIFACTS / "console-new-session-390.png"), full_page=True)
        assert await no_horizontal_scroll(page)


async def test_resume_gives_up_after_the_grace_period_when_the_network_stays_down(
    tmp_path: Path,
) -> None:
    wav = speech_wav(tmp_path / "quiet.wav", [1000, QUESTION, 4000])
    async with rig(resume_grace_s=1.0) as (fake, proxy, login), chromium(wav) as browser:
        page = await open_console(browser, login)
        await start_hands_free(page)
        first = await fake.wait_for_connection()
        proxy.refuse()  # every new connection is reset until accept()
        await cut_after_next_frame(first, proxy)
        await page.wait_for_function("() => window.voxgateConsole.stats().resumeFailures === 1")
        await first.wait_closed(timeout_s=WAIT_S)
        proxy.accept()
        await page.wait_for_function("() => window.voxgateConsole.stats().sessions === 2")
        await wait_for_state(page, "ready")
        stats = await console_stats(page)
        assert stats["resumeAttempts"] == 3  # at 0, 250 and 750 ms; the next would be too late
        note = await page.text_content("#conn-note") or ""
        assert "grace period" in note
        assert "new session" in note
        assert len(fake.connections) == 2


async def test_the_page_shows_when_voxgate_reconnects_to_the_voice_service(
    tmp_path: Path,
) -> None:
    """voxgate.upstream.* events: the session goes on, the indicator says what is happening."""
    wav = speech_wav(tmp_path / "quiet.wav", [500])
    async with rig() as (fake, _, login), chromium(wav) as browser:
        page = await open_console_with(browser, login, width=390, height=844)
        await start_hands_free(page)
        await fake.wait_for_connection()
        fake.refuse_connections()  # voxgate's reconnects fail until accept_connections()
        assert await fake.drop_all() == 1  # the upstream link vanishes (1006)
        await page.wait_for_function(
            "() => document.getElementById('status').dataset.upstream === 'reconnecting'"
        )
        status = await page.text_content("#status-text") or ""
        assert status == "Connected — reconnecting to the voice service…"
        assert await page.get_attribute("#status", "aria-live") == "polite"
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "console-upstream-390.png"), full_page=True)
        assert await no_horizontal_scroll(page)

        fake.accept_connections()
        await fake.wait_for_connection(2, timeout_s=WAIT_S)
        await page.wait_for_function(
            "() => document.getElementById('status').dataset.upstream === 'ok'"
        )
        assert await page.text_content("#status-text") == "Connected — listening"
        assert await log_count(page, "voxgate.upstream.reconnecting") == 1
        assert await log_count(page, "voxgate.upstream.reconnected") == 1
        assert await log_count(page, "(upstream reconnecting)") == 1
        assert await log_count(page, "session.created") == 1  # the same session went on
        stats = await console_stats(page)
        assert stats["upstreamReconnects"] == 1
        assert stats["state"] == "ready"


async def test_the_gap_ring_keeps_the_newest_audio_and_counts_what_it_dropped(
    tmp_path: Path,
) -> None:
    wav = speech_wav(tmp_path / "ask.wav", [1000, QUESTION, 3000])
    async with rig() as (fake, proxy, login), chromium(wav) as browser:
        page = await open_console_with(browser, login, init_script=RECORD_SENT_AUDIO)
        await start_hands_free(page)
        # The module's option, set small here: 200 ms (10 frames) kept while resuming.
        await page.evaluate("() => { window.voxgateConsole.client.opts.gapAudioMs = 200; }")
        record = await fake.wait_for_connection()
        await record.wait_for_sent("input_audio_buffer.speech_started", timeout_s=WAIT_S)
        proxy.refuse(count=2)  # ~750 ms away
        await cut_after_next_frame(record, proxy)
        await page.wait_for_function("() => window.voxgateConsole.stats().resumes === 1")
        stats = await console_stats(page)
        assert stats["gapFrames"] >= 25
        assert stats["gapResentFrames"] == 10
        assert stats["gapDroppedFrames"] == stats["gapFrames"] + stats["tailResentFrames"] - 10
        note = await page.text_content("#conn-note") or ""
        assert "0.2 s of your audio re-sent" in note
        assert "of older audio dropped" in note

        await page.click("#stop")
        await record.wait_closed(timeout_s=WAIT_S)
        per_socket = await sent_audio_per_socket(page)
        assert len(per_socket) == 2
        assert len(per_socket[1]) >= 10 * FRAME_BYTES
        lost = frames_lost_at_cuts(per_socket, record.audio.all_bytes())
        assert sum(lost) <= 2
