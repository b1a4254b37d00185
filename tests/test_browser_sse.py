"""The console over the HTTP/SSE fallback when the page cannot open WebSockets (issue 15).

Real Chromium with a fake microphone (a synthesised question), WebSockets blocked for the page
by route interception (Playwright's ``route_web_socket`` refuses every ``ws://`` before it
opens, as a proxy that refuses upgrades does). The page loads through a :class:`FaultProxy` in
front of voxgate, with the GA fake upstream behind it, so ``proxy.cut()`` drops the event
stream (and any POST in flight) mid-answer. The client must switch to the fallback by itself,
say so, hold the spoken conversation, and resume the dropped stream with ``Last-Event-ID``:
every event the upstream sent arrives once, in order, and every byte of mic audio reaches the
upstream once.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, WebSocketRoute

from browser_helpers import TIMEOUT_MS, chromium, console_stats, log_count, speech_wav
from gateway_helpers import UPSTREAM_KEY, gateway_settings
from voxgate.auth.console import new_login_url
from voxgate.testing import ConnectionRecord, FakeRealtimeServer, FaultProxy
from voxgate.testing.gateway import run_gateway
from voxgate.testing.responder import ResponseContext, Say

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(120)]

QUESTION = "What is a stop loss order and when should I place one?"
ANSWER = "A stop loss order sells a security once its price falls to a level you choose."
WAIT_S = 20.0

#: Wraps SseSocket in the page: every binary frame handed to ``send`` is kept, in order, and
#: every event the stream delivered (before any client-side check) as ``[sse id, event_id]``.
RECORD = """
(() => {
  window.__sseAudio = [];
  window.__sseEvents = [];
  const wrap = () => import("/console/static/voxgate-sse.js").then(({ SseSocket }) => {
    const send = SseSocket.prototype.send;
    SseSocket.prototype.send = function (data) {
      if (typeof data !== "string") window.__sseAudio.push(new Uint8Array(data.slice(0)));
      return send.call(this, data);
    };
    const dispatch = SseSocket.prototype.dispatch;
    SseSocket.prototype.dispatch = function (ev) {
      if (ev.event === "message") {
        window.__sseEvents.push([ev.id, JSON.parse(ev.data.join("\\n")).event_id]);
      }
      return dispatch.call(this, ev);
    };
  });
  window.__sseWrapped = wrap();
})();
"""


def _transcribe(audio: bytes, fmt: Mapping[str, Any]) -> str:
    return QUESTION


def _answer(ctx: ResponseContext) -> list[Say]:
    return [Say(ANSWER)]


@asynccontextmanager
async def rig() -> AsyncIterator[tuple[FakeRealtimeServer, FaultProxy, str]]:
    async with (
        FakeRealtimeServer(
            api_keys={UPSTREAM_KEY},
            transcriber=_transcribe,
            responder=_answer,
            ping_interval_s=None,
            response_pacing_s=0.05,
        ) as fake,
        run_gateway(gateway_settings(fake.url)) as gw,
        FaultProxy(gw.host, gw.port) as proxy,
    ):
        yield fake, proxy, new_login_url(gw.app, f"http://{proxy.host}:{proxy.port}")


async def open_console_without_websockets(browser: Browser, login_url: str) -> Page:
    context = await browser.new_context(viewport={"width": 1100, "height": 900})
    await context.add_init_script(script=RECORD)
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)

    async def refuse(ws: WebSocketRoute) -> None:
        await ws.close(code=4000, reason="blocked by the network")  # never opens

    await page.route_web_socket(re.compile(r"^wss?://"), refuse)
    await page.goto(login_url)
    await page.wait_for_function("() => window.voxgateConsole && window.voxgateConsole.signedIn()")
    await page.evaluate("() => window.__sseWrapped")
    return page


async def page_audio(page: Page) -> bytes:
    encoded = await page.evaluate(
        """() => { let bin = "";
            for (const f of window.__sseAudio)
              for (let i = 0; i < f.length; i += 4096)
                bin += String.fromCharCode.apply(null, f.subarray(i, i + 4096));
            return btoa(bin); }"""
    )
    return base64.b64decode(encoded)


async def final_text(page: Page, selector: str) -> str:
    handle = await page.wait_for_function(
        """(sel) => { const el = document.querySelector(sel);
            return el && !el.closest('li').classList.contains('partial') && el.textContent; }""",
        arg=selector,
    )
    value = await handle.json_value()
    assert isinstance(value, str)
    return value


async def test_blocked_websocket_falls_back_to_sse_and_survives_a_dropped_stream(
    tmp_path: Path,
) -> None:
    wav = speech_wav(tmp_path / "ask.wav", [1200, QUESTION, 7000])
    async with rig() as (fake, proxy, login), chromium(wav) as browser:
        page = await open_console_without_websockets(browser, login)
        await page.uncheck("#processing")
        await page.click("#start")
        await page.wait_for_function(
            "() => document.getElementById('status').dataset.state === 'ready'"
        )
        # the page says which transport it uses
        assert await page.text_content("#transport") == "via HTTP fallback (SSE)"
        assert await log_count(page, "(transport)") >= 1
        record: ConnectionRecord = await fake.wait_for_connection()

        # the answer streams (one word per 50 ms); drop the event stream in the middle of it
        await record.wait_for_sent("response.output_audio.delta", timeout_s=WAIT_S)
        assert proxy.cut() >= 1
        await page.wait_for_function(
            "() => window.voxgateConsole.stats().sse.streamResumes >= 1", timeout=WAIT_S * 1000
        )

        assert await final_text(page, "#transcript li.user .text") == QUESTION
        assert await final_text(page, "#transcript li.assistant .text") == ANSWER
        await record.wait_for_sent("response.done", timeout_s=WAIT_S)
        await page.wait_for_function(
            """() => { const s = window.voxgateConsole.stats();
                return s.playedMs > 0 && !s.playing; }"""
        )
        stats = await console_stats(page)

        # one session throughout, over the fallback, with no WebSocket ever opened
        assert stats["transport"] == "sse"
        assert stats["sessions"] == 1
        assert await log_count(page, "session.created") == 1
        assert len(fake.connections) == 1
        assert await page.locator("#transcript li.user").count() == 1
        assert await page.locator("#transcript li.assistant").count() == 1

        # no event lost or doubled: the stream's ids run 1..N across the drop, and every event
        # the upstream sent reaches the page exactly once, in order
        delivered = await page.evaluate("() => window.__sseEvents")
        ids = [sse_id for sse_id, _ in delivered]
        assert ids == list(range(1, len(ids) + 1))
        assert ids == stats["sse"]["eventIds"]
        forwarded = {e["event_id"] for e in record.sent_events}
        received = [event_id for _, event_id in delivered if event_id in forwarded]
        upstream = [e["event_id"] for e in record.sent_events if e["type"].startswith("response.")]
        assert [e for e in received if e in set(upstream)] == upstream
        assert len(received) == len(set(received))

        # every mic byte handed to the fallback reached the upstream once (a POST cut in flight
        # was retried with its batch number and not applied twice)
        # (the mic is still streaming: wait for what the page had sent, then compare prefixes)
        sent = await page_audio(page)
        assert len(sent) > 48_000 * 3  # the question and the pause before it

        def arrived() -> bool | None:
            return True if len(record.audio.all_bytes()) >= len(sent) else None

        await record.wait_until(arrived, WAIT_S, "the page's audio at the upstream")
        upstream_audio = record.audio.all_bytes()
        assert upstream_audio[: len(sent)] == sent
        assert upstream_audio == (await page_audio(page))[: len(upstream_audio)]
