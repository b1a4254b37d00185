"""The voice console in a real Chromium with a fake microphone (a WAV synthesised at test time).

The full conversation runs twice: against the offline local engine (real VAD, ASR, knowledge
base answer and TTS; the screenshot artifact comes from this one), and against
:class:`FakeRealtimeServer`, whose energy VAD detects the synthesised question, whose
transcriber is scripted to what the WAV says and whose "voice" is a tone (100 ms per word), so
exact transcripts and barge-in timing can be asserted. What is checked is the page and its
client: mic capture and resampling, binary frames, live transcripts, audible playback,
latency, barge-in with truncate, and auth.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page
from pydantic import SecretStr

from browser_helpers import (
    ARTIFACTS,
    chromium,
    console_stats,
    open_console,
    speech_wav,
    start_hands_free,
)
from gateway_helpers import fake_and_gateway
from voxgate.auth.console import new_login_url
from voxgate.config import Settings
from voxgate.testing import FakeRealtimeServer
from voxgate.testing.gateway import RunningGateway, run_gateway
from voxgate.testing.responder import ResponseContext, Say

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(120)]

QUESTION = "What is a stop loss order?"
ANSWER = (
    "A stop loss order tells your broker to sell a security once its price falls to a level "
    "you choose, which limits how much you can lose on a position."
)
LONG_ANSWER = " ".join([ANSWER] * 3)  # about 9 s of tone: long enough to talk over


def _transcribe(audio: bytes, fmt: Mapping[str, Any]) -> str:
    return QUESTION


def _answer(ctx: ResponseContext) -> list[Say]:
    return [Say(ANSWER)]


def _long_answer(ctx: ResponseContext) -> list[Say]:
    return [Say(LONG_ANSWER)]


@pytest.fixture
async def stack() -> AsyncIterator[tuple[FakeRealtimeServer, RunningGateway]]:
    fake_kwargs = {"transcriber": _transcribe, "responder": _answer}
    async with fake_and_gateway(fake_kwargs) as pair:
        yield pair


async def _text(page: Page, selector: str) -> str:
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


async def test_hands_free_conversation_with_the_local_engine(tmp_path: Path) -> None:
    wav = speech_wav(tmp_path / "ask.wav", [1000, QUESTION, 8000])
    settings = Settings(
        backend="local", api_keys=[SecretStr("vk-browser-local-000001")], ping_interval_s=0
    )
    async with run_gateway(settings) as gw, chromium(wav) as browser:
        page = await open_console(browser, new_login_url(gw.app, gw.http_url))
        await start_hands_free(page)

        user = await _text(page, "#transcript li.user .text")
        assert "stop loss" in user.lower()
        answer = await _text(page, "#transcript li.assistant .text")
        assert "stop loss" in answer.lower()
        await page.wait_for_function("() => window.voxgateConsole.stats().playedMs > 1000")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)
        stats = await console_stats(page)
        assert float(stats["playedRms"]) > 0.02  # spoken audio reached the output, not silence
        assert await page.text_content("#latency") != "–"


async def test_hands_free_conversation_through_the_fake_upstream(
    stack: tuple[FakeRealtimeServer, RunningGateway], tmp_path: Path
) -> None:
    fake, gw = stack
    wav = speech_wav(tmp_path / "ask.wav", [1000, QUESTION, 6000])
    async with chromium(wav) as browser:
        page = await open_console(browser, new_login_url(gw.app, gw.http_url))
        assert "login=" not in page.url  # the one-time token left the address bar
        await start_hands_free(page)

        user = await _text(page, "#transcript li.user .text")
        assert user == QUESTION
        await page.wait_for_function(
            "() => { const s = window.voxgateConsole.stats(); return s.playedMs > 400; }"
        )
        stats = await console_stats(page)
        assert float(stats["playedRms"]) > 0.05  # a 0.3-amplitude tone, not silence
        assert float(stats["playedPeak"]) > 0.2
        assert await _text(page, "#transcript li.assistant .text") == ANSWER
        latency = await page.text_content("#latency")
        assert latency is not None
        assert latency.endswith(" ms")
        assert int(latency.removesuffix(" ms")) < 5000

    record = await fake.wait_for_connection()
    # The browser's binary frames reached the upstream as input_audio_buffer.append.
    assert record.events_of("input_audio_buffer.append")


async def test_barge_in_stops_playback_and_truncates(tmp_path: Path) -> None:
    fake_kwargs = {"transcriber": _transcribe, "responder": _long_answer}
    wav = speech_wav(tmp_path / "barge.wav", [1000, QUESTION, 3500, "Stop, that is enough.", 4000])
    async with fake_and_gateway(fake_kwargs) as (fake, gw), chromium(wav) as browser:
        page = await open_console(browser, new_login_url(gw.app, gw.http_url))
        await start_hands_free(page)
        await page.wait_for_function("() => window.voxgateConsole.stats().truncates.length > 0")
        stats = await console_stats(page)
        truncate = stats["truncates"][0]
        assert 500 < truncate["audio_end_ms"] < 8000
        played_at_stop = int(stats["playedMs"])
        assert not stats["playing"]
        await page.wait_for_selector('#log li[data-type="conversation.item.truncate"]')

        record = await fake.wait_for_connection()
        (sent,) = await record.wait_for("conversation.item.truncate")
        assert sent["item_id"] == truncate["item_id"]
        assert sent["audio_end_ms"] == truncate["audio_end_ms"]
        # Playback stayed stopped: the played counter no longer moves on the old reply.
        await page.wait_for_function(
            "(n) => window.voxgateConsole.stats().playedMs < n + 200", arg=played_at_stop
        )


async def test_page_cannot_get_a_key_without_cookie_and_csrf(
    stack: tuple[FakeRealtimeServer, RunningGateway], tmp_path: Path
) -> None:
    _, gw = stack
    wav = speech_wav(tmp_path / "quiet.wav", [500])
    async with chromium(wav) as browser:
        page = await open_console(browser, new_login_url(gw.app, gw.http_url))
        # The session cookie is HttpOnly: invisible to scripts.
        assert await page.evaluate("() => document.cookie") == ""
        status_without_csrf = await page.evaluate(
            """async () => (await fetch('/console/api/key', {method: 'POST',
                 headers: {'Content-Type': 'application/json'}, body: '{}'})).status"""
        )
        assert status_without_csrf == 403

        fresh = await browser.new_context()
        other = await fresh.new_page()
        await other.goto(gw.http_url + "/")
        await other.wait_for_selector("#problem:not([hidden])")
        assert "not signed in" in (await other.text_content("#problem") or "")
        assert await other.is_disabled("#start")
        status_without_cookie = await other.evaluate(
            """async () => (await fetch('/console/api/key', {method: 'POST',
                 headers: {'X-CSRF-Token': 'guess'}, body: '{}'})).status"""
        )
        assert status_without_cookie == 401


async def test_push_to_talk_commits_and_asks_for_a_response(tmp_path: Path) -> None:
    fake_kwargs = {"transcriber": _transcribe, "responder": _answer}
    wav = speech_wav(tmp_path / "ptt.wav", [300, QUESTION, 6000])
    async with fake_and_gateway(fake_kwargs) as (fake, gw), chromium(wav) as browser:
        page = await open_console(browser, new_login_url(gw.app, gw.http_url))
        await page.check('input[name="mode"][value="ptt"]')
        await page.uncheck("#processing")
        await page.click("#start")
        await page.wait_for_selector("#ptt:not([disabled])")
        await page.focus("#ptt")
        await page.keyboard.down("Space")  # hold to talk, from the keyboard
        assert await page.get_attribute("#ptt", "aria-pressed") == "true"
        # Hold through the question: 150 frames of 20 ms sent while the button is down.
        await page.wait_for_function("() => window.voxgateConsole.stats().sentFrames >= 150")
        await page.keyboard.up("Space")

        assert await _text(page, "#transcript li.assistant .text") == ANSWER
        record = await fake.wait_for_connection()
        assert record.session is not None
        assert record.session["audio"]["input"]["turn_detection"] is None
        await record.wait_for("input_audio_buffer.commit")
        await record.wait_for("response.create")
        assert not record.sent_of("input_audio_buffer.speech_started")  # VAD was off


async def test_session_ended_by_the_server_is_explained(tmp_path: Path) -> None:
    # With recovery on, voxgate moves an expired upstream session to a fresh one and the page
    # never notices (tests/test_upstream_resilience.py); without it the expiry reaches the page.
    wav = speech_wav(tmp_path / "quiet.wav", [500])
    fake_kwargs = {"transcriber": _transcribe, "responder": _answer}
    async with (
        fake_and_gateway(fake_kwargs, reconnect_attempts=0) as (fake, gw),
        chromium(wav) as browser,
    ):
        page = await open_console(browser, new_login_url(gw.app, gw.http_url))
        await start_hands_free(page)
        fake.expire_session()  # error session_expired, then close 1001 with its reason
        await page.wait_for_selector("#problem:not([hidden])")
        await page.wait_for_function(
            "() => document.getElementById('status').dataset.state === 'closed'"
        )
        problem = await page.text_content("#problem") or ""
        assert "maximum length" in problem
        assert await page.is_enabled("#start")  # the user can start again
