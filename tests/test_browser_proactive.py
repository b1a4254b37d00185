"""The console shows proactive turns (issue 14): a real Chromium, the local engine, a message
pushed through the Python API while the page listens."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from browser_helpers import chromium, open_console, speech_wav, start_hands_free
from voxgate.app import MESSAGES
from voxgate.auth.console import new_login_url
from voxgate.config import Settings
from voxgate.testing.gateway import run_gateway

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(120)]


async def test_the_console_labels_a_proactive_turn_and_shows_added_context(tmp_path: Path) -> None:
    wav = speech_wav(tmp_path / "quiet.wav", [500])
    settings = Settings(
        backend="local", api_keys=[SecretStr("vk-browser-proactive-01")], ping_interval_s=0
    )
    async with run_gateway(settings) as gw, chromium(wav) as browser:
        page = await open_console(browser, new_login_url(gw.app, gw.http_url))
        await start_hands_free(page)
        [session] = await gw.app[MESSAGES].sessions()
        context = await gw.app[MESSAGES].send(
            session["id"], "The trader holds 100 Tesla shares.", mode="context"
        )
        spoken = await gw.app[MESSAGES].send(session["id"], "Your Tesla alert just fired.")
        line = await page.wait_for_selector("#transcript li.assistant.proactive:not(.partial)")
        assert line is not None
        assert await line.get_attribute("data-message") == spoken.message_id
        assert await line.text_content() == "Assistant · proactiveYour Tesla alert just fired."
        note = await page.wait_for_selector("#transcript li.context")
        assert note is not None
        assert await note.text_content() == "ContextThe trader holds 100 Tesla shares."
        await page.wait_for_function("() => window.voxgateConsole.stats().playedMs > 500")
    assert (context.status, spoken.status) == ("delivered", "delivered")
