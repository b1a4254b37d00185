"""WebRTC calls from a real Chromium: the stock Agents SDK (``@openai/agents-realtime``) with its
default browser transport, and voxgate's own console with its WebRTC switch.

Chromium's fake microphone plays a WAV synthesised at test time (espeak-ng, voxgate's TTS). The
SDK's page is served from its own origin, so its ``POST /v1/realtime/calls`` is cross-origin as
from a customer's app. Behind voxgate: the fake upstream (energy VAD, scripted transcripts, a
tone as the voice, so the barge-in point can be checked against the audio the browser actually
received) and the local engine (Silero VAD, Whisper, a chat-completions stub as the model so a
tool gets called, espeak-ng TTS).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Page
from playwright.async_api import TimeoutError as PlaywrightTimeout

from agents_js import agents_page
from browser_helpers import (
    TIMEOUT_MS,
    chromium,
    console_stats,
    open_console,
    speech_wav,
    start_hands_free,
    wait_for_state,
)
from chat_stub import ChatStub, Reply, ToolCall
from gateway_helpers import SERVER_KEY, SIGNING_SECRET, fake_and_gateway
from voxgate.app import BACKEND
from voxgate.auth.console import new_login_url
from voxgate.backends.local.backend import LocalBackend
from voxgate.config import Settings
from voxgate.testing.gateway import RunningGateway, run_gateway
from voxgate.testing.responder import CallTool, ResponseContext, Say

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(150)]

WEATHER_Q = "What is the weather in Oslo?"
STORY_Q = "Please tell me a long story."
STOP = "Stop, that is enough."
TOOL_RESULT = "Sunny and 21 degrees in Oslo."
LONG_ANSWER = " ".join(
    [
        "A stop loss order tells your broker to sell a security once its price falls to a level "
        "you choose, which limits how much you can lose on a position."
    ]
    * 3
)
#: the fake's voice is 100 ms of tone per word
LONG_ANSWER_MS = 100 * len(LONG_ANSWER.split())
CONVERSATION = [1000, WEATHER_Q, 4000, STORY_Q, 2500, STOP, 4000]


class Script:
    """The fake model: transcripts in the order spoken; a tool for weather, a long answer."""

    def __init__(self, *, tools: bool = True) -> None:
        self._said = itertools.chain([WEATHER_Q, STORY_Q, STOP], itertools.repeat("(silence)"))
        self._tools = tools

    def transcribe(self, audio: bytes, fmt: Mapping[str, Any]) -> str:
        return next(self._said)

    def respond(self, ctx: ResponseContext) -> list[Say | CallTool]:
        last = ctx.items[-1] if ctx.items else {}
        if last.get("type") == "function_call_output":
            return [Say(f"It is {last.get('output')}")]
        text = ctx.latest_user_text()
        if text == WEATHER_Q:
            if not self._tools:
                return [Say(f"It is {TOOL_RESULT}")]
            return [CallTool("get_weather", '{"city":"Oslo"}')]
        if text == STORY_Q:
            return [Say(LONG_ANSWER)]
        return [Say("Okay.")]


async def mint_key(http_url: str) -> str:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            http_url + "/v1/realtime/client_secrets",
            json={"session": {"type": "realtime", "model": "gpt-realtime"}},
            headers={"Authorization": f"Bearer {SERVER_KEY}"},
        )
        body = await resp.json()
    value = body["value"]
    assert isinstance(value, str)
    return value


async def start_agent(page: Page, page_url: str, calls_url: str, key: str) -> None:
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto(page_url)
    await page.evaluate("(a) => window.startAgent(a)", {"url": calls_url, "key": key})


async def _final_text(page: Page, selector: str) -> str:
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


async def events_of(page: Page, event_type: str) -> list[dict[str, Any]]:
    found = await page.evaluate("(t) => window.t.events.filter((e) => e.type === t)", event_type)
    assert isinstance(found, list)
    return found


async def test_agents_sdk_over_webrtc_through_the_fake_upstream(tmp_path: Path) -> None:
    script = Script()
    fake_kwargs = {"transcriber": script.transcribe, "responder": script.respond}
    wav = speech_wav(tmp_path / "talk.wav", CONVERSATION)
    async with (
        fake_and_gateway(fake_kwargs) as (fake, gw),
        agents_page() as page_url,
        chromium(wav) as browser,
    ):
        page = await browser.new_page()
        await start_agent(
            page, page_url, gw.http_url + "/v1/realtime/calls", await mint_key(gw.http_url)
        )
        assert await page.evaluate("() => window.t.transport") == "webrtc"
        assert str(await page.evaluate("() => window.t.callId")).startswith("rtc_")

        # The tool ran in the browser and its result was spoken back.
        await page.wait_for_function("() => window.t.toolCalls.length === 1", timeout=60_000)
        record = await fake.wait_for_connection()
        (output,) = [
            e
            for e in await record.wait_for("conversation.item.create")
            if e["item"]["type"] == "function_call_output"
        ]
        assert output["item"]["output"] == TOOL_RESULT
        assert await page.evaluate("() => window.t.toolCalls") == ["Oslo"]

        # Barge-in: the long answer is cut where the browser stopped hearing it.
        await page.wait_for_function(
            "() => window.t.events.some((e) => e.type === 'output_audio_buffer.cleared')",
            timeout=60_000,
        )
        (sent,) = await record.wait_for("conversation.item.truncate")
        (cleared,) = await events_of(page, "output_audio_buffer.cleared")
        added = [
            e
            for e in await events_of(page, "response.output_item.added")
            if e["response_id"] == cleared["response_id"]
        ]
        assert sent["item_id"] == added[0]["item"]["id"]
        assert 500 < sent["audio_end_ms"] < LONG_ANSWER_MS
        # The next reply (to "Stop") comes after a quiet gap, so the cut answer is one run of
        # tone in what the browser received: the longest.
        await page.wait_for_function("() => window.t.runs.length >= 2", timeout=30_000)
        heard_ms = max(await page.evaluate("() => window.t.runs"))
        assert abs(heard_ms - sent["audio_end_ms"]) < 250, (heard_ms, sent["audio_end_ms"])
        truncated = await events_of(page, "conversation.item.truncated")
        assert truncated
        assert truncated[0]["audio_end_ms"] == sent["audio_end_ms"]

        # The reply to "Stop" plays; nothing of the cut answer is ever "stopped".
        stopped = await events_of(page, "output_audio_buffer.stopped")
        assert cleared["response_id"] not in {e["response_id"] for e in stopped}
        # Events on the data channel are OpenAI's WebRTC ones: no audio deltas, no errors.
        assert await events_of(page, "response.output_audio.delta") == []
        assert await events_of(page, "output_audio_buffer.started")
        assert await page.evaluate("() => window.t.errors") == []
        assert record.events_of("input_audio_buffer.append")


def _local_model(messages: list[dict[str, Any]]) -> Reply:
    """By turn, not by words (recognising them is the ASR tests' job): the first question
    calls the tool, the second gets the long answer, anything after it (the "Stop", which
    Silero may hear as two turns) gets "Okay."."""
    last = messages[-1]
    if last["role"] == "tool":
        return f"It is {last['content']}"
    turn = sum(1 for m in messages if m["role"] == "user")
    if turn == 1:
        return ToolCall("get_weather", {"city": "Oslo"})
    return LONG_ANSWER if turn == 2 else "Okay."


@contextlib.asynccontextmanager
async def local_gateway(llm: ChatStub) -> AsyncIterator[RunningGateway]:
    settings = Settings(
        backend="local",
        api_keys=SERVER_KEY,
        secret=SIGNING_SECRET,
        ping_interval_s=0,
        local_llm_url=llm.url,
        local_llm_model="stub",
    )
    async with run_gateway(settings) as gw:
        backend = gw.app[BACKEND]
        assert isinstance(backend, LocalBackend)
        await asyncio.wait_for(backend.wait_warm(), 60)
        yield gw


async def test_agents_sdk_over_webrtc_on_the_local_engine(tmp_path: Path) -> None:
    wav = speech_wav(tmp_path / "talk.wav", [1000, WEATHER_Q, 5000, STORY_Q, 3000, STOP, 5000])
    async with (
        ChatStub(_local_model).running() as llm,
        local_gateway(llm) as gw,
        agents_page() as page_url,
        chromium(wav) as browser,
    ):
        page = await browser.new_page()
        key = await mint_key(gw.http_url)
        await start_agent(page, page_url, gw.http_url + "/v1/realtime/calls", key)
        assert await page.evaluate("() => window.t.transport") == "webrtc"

        # The question went through Opus, VAD and Whisper; the model called the tool in the
        # browser, and its result went back to the model and was spoken.
        try:
            await page.wait_for_function("() => window.t.toolCalls.length === 1", timeout=60_000)
        except PlaywrightTimeout:
            heard = [m["content"] for r in llm.requests for m in r["messages"][-1:]]
            raise AssertionError(f"no tool call; the model was asked: {heard}") from None
        assert await page.evaluate("() => window.t.toolCalls") == ["Oslo"]
        await page.wait_for_function(
            """() => window.t.events.some((e) => e.type === 'response.output_audio_transcript.done'
                 && e.transcript.includes('Sunny and 21 degrees'))""",
            timeout=30_000,
        )
        tool_messages = [m for r in llm.requests for m in r["messages"] if m["role"] == "tool"]
        assert tool_messages[0]["content"] == TOOL_RESULT

        # Barge-in: speaking over the long answer cuts it where playback was.
        await page.wait_for_function(
            "() => window.t.events.some((e) => e.type === 'output_audio_buffer.cleared')",
            timeout=60_000,
        )
        cleared = (await events_of(page, "output_audio_buffer.cleared"))[0]
        await page.wait_for_function(
            "() => window.t.events.some((e) => e.type === 'conversation.item.truncated')"
        )
        truncated = (await events_of(page, "conversation.item.truncated"))[0]
        item_ids = {
            e["item"]["id"]
            for e in await events_of(page, "response.output_item.added")
            if e["response_id"] == cleared["response_id"]
        }
        assert truncated["item_id"] in item_ids
        assert truncated["audio_end_ms"] > 300
        # ... and the conversation goes on: the reply to "Stop, that is enough." is spoken.
        await page.wait_for_function(
            """() => {
                const cut = new Set(window.t.events.filter(
                    (e) => e.type === 'output_audio_buffer.cleared').map((e) => e.response_id));
                return window.t.events.some(
                    (e) => e.type === 'output_audio_buffer.stopped' && !cut.has(e.response_id));
            }""",
            timeout=30_000,
        )
        cut = {e["response_id"] for e in await events_of(page, "output_audio_buffer.cleared")}
        stopped = {e["response_id"] for e in await events_of(page, "output_audio_buffer.stopped")}
        assert not cut & stopped  # a cut answer is cleared, never "stopped"
        assert await events_of(page, "response.output_audio.delta") == []
        assert await page.evaluate("() => window.t.errors") == []
        assert int(await page.evaluate("() => window.t.loudMs")) > 1000


# ------------------------------------------------------------------ the console over WebRTC


async def test_console_over_webrtc_conversation_and_barge_in(tmp_path: Path) -> None:
    script = Script(tools=False)  # the console declares no tools
    fake_kwargs = {"transcriber": script.transcribe, "responder": script.respond}
    wav = speech_wav(tmp_path / "talk.wav", [1000, WEATHER_Q, 4000, STORY_Q, 2500, STOP, 4000])
    async with fake_and_gateway(fake_kwargs) as (fake, gw), chromium(wav) as browser:
        page = await open_console(browser, new_login_url(gw.app, gw.http_url))
        await page.check("#webrtc")
        await start_hands_free(page)
        assert await page.text_content("#transport") == "via WebRTC"

        # A spoken turn: transcript, the answer's audio over RTP, a latency figure.
        assert await _final_text(page, "#transcript li.user .text") == WEATHER_Q
        await page.wait_for_function("() => window.voxgateConsole.stats().playedMs > 400")
        stats = await console_stats(page)
        assert stats["transport"] == "webrtc"
        assert float(stats["playedRms"]) > 0.05  # the tone arrived over RTP, not silence
        assert (await page.text_content("#latency") or "").endswith(" ms")

        # Barge-in: voxgate cut the long answer and truncated it; the console shows it.
        await page.wait_for_function("() => window.voxgateConsole.stats().truncates.length > 0")
        stats = await console_stats(page)
        shown = stats["truncates"][0]
        record = await fake.wait_for_connection()
        (sent,) = await record.wait_for("conversation.item.truncate")
        assert (sent["item_id"], sent["audio_end_ms"]) == (shown["item_id"], shown["audio_end_ms"])
        assert 500 < sent["audio_end_ms"] < LONG_ANSWER_MS
        assert stats["bargeIns"] == 1
        await page.wait_for_selector('#log li[data-type="output_audio_buffer.cleared"]')
        await page.click("#stop")
        await wait_for_state(page, "closed")
        assert await record.wait_closed() is not None
