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
from contextlib import asynccontextmanager
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
    wait_for_state,
)
from gateway_helpers import SIGNING_SECRET, UPSTREAM_KEY, fake_and_gateway, gateway_settings
from voxgate.app import create_app
from voxgate.auth.console import new_login_url
from voxgate.config import Settings
from voxgate.server import Serving, serve
from voxgate.startup import bind
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


# ------------------------------------------------------- after a server restart (issue 12.13)


@asynccontextmanager
async def _gateway_on(port: int, upstream_url: str, secret: str) -> AsyncIterator[Serving]:
    """voxgate as ``serve`` runs it, on a given port (0: a free one), until the block ends."""
    settings = gateway_settings(upstream_url, secret=secret, port=port)
    socks = bind("127.0.0.1", port)
    serving = await serve(create_app(settings), settings, socks)
    try:
        yield serving
    finally:
        await serving.runner.cleanup()  # open sessions are closed with 1001 (going away)
        for sock in socks:
            sock.close()


async def _visible_messages(page: Page) -> list[str]:
    """The page's messages a person reads: problem box and connection note, when shown."""
    shown = []
    for sel in ("#problem", "#conn-note"):
        if await page.is_visible(sel):
            shown.append((await page.text_content(sel) or "").strip())
    return shown


async def test_after_a_restart_without_a_shared_secret_one_message_and_a_way_back_in(
    tmp_path: Path,
) -> None:
    wav = speech_wav(tmp_path / "quiet.wav", [500])
    async with FakeRealtimeServer(api_keys={UPSTREAM_KEY}) as fake, chromium(wav) as browser:
        async with _gateway_on(0, fake.url, "secret-before-restart-0001") as first:
            port = first.port
            page = await open_console(
                browser, new_login_url(first.runner.app, f"http://127.0.0.1:{port}")
            )
            await start_hands_free(page)
        async with _gateway_on(port, fake.url, "secret-after-restart-00002") as second:
            await page.wait_for_function(
                "() => document.getElementById('status-text').textContent === 'Signed out'"
            )
            messages = await _visible_messages(page)
            assert len(messages) == 1, messages
            assert "no longer signed in" in messages[0]
            assert "restarted" in messages[0]
            assert await page.is_visible("#signin")
            assert await page.is_disabled("#start")
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "console-signed-out.png"), full_page=True)
            # the way back in: the new link the restarted server printed
            link = new_login_url(second.runner.app, f"http://127.0.0.1:{port}")
            await page.fill("#signin-link", link)
            await page.click("#signin-go")
            await page.wait_for_function("() => window.voxgateConsole.signedIn()")
            assert await _visible_messages(page) == []
            assert not await page.is_visible("#signin")
            await start_hands_free(page)


async def test_after_a_restart_with_a_shared_secret_the_console_carries_on(
    tmp_path: Path,
) -> None:
    wav = speech_wav(tmp_path / "quiet.wav", [500])
    async with FakeRealtimeServer(api_keys={UPSTREAM_KEY}) as fake, chromium(wav) as browser:
        async with _gateway_on(0, fake.url, SIGNING_SECRET) as first:
            port = first.port
            page = await open_console(
                browser, new_login_url(first.runner.app, f"http://127.0.0.1:{port}")
            )
            await start_hands_free(page)
            await page.wait_for_function("() => window.voxgateConsole.client.sessionId !== null")
        async with _gateway_on(port, fake.url, SIGNING_SECRET):
            await page.wait_for_selector("#conn-note:not([hidden])")
            await wait_for_state(page, "ready")
            messages = await _visible_messages(page)
            assert len(messages) == 1, messages
            assert "this is a new session" in messages[0]
            assert "does not remember" in messages[0]
            assert await page.text_content("#status-text") == "Connected — listening"


async def test_silence_field_shows_what_is_sent(tmp_path: Path) -> None:
    """The field showed 50 while 100 (the minimum) was sent."""
    wav = speech_wav(tmp_path / "quiet.wav", [500])
    async with fake_and_gateway() as (fake, gw), chromium(wav) as browser:
        page = await open_console(browser, new_login_url(gw.app, gw.http_url))
        await page.fill("#silence", "50")
        await page.dispatch_event("#silence", "change")
        assert await page.input_value("#silence") == "100"
        await start_hands_free(page)
        record = await fake.wait_for_connection()
        assert record.session is not None
        vad = record.session["audio"]["input"]["turn_detection"]
        assert vad["silence_duration_ms"] == int(await page.input_value("#silence")) == 100
