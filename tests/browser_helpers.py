"""Helpers for browser tests: Debian's Chromium with a fake microphone fed from a WAV.

Not a test module. Chromium's fake capture device reads a PCM WAV given by
``--use-file-for-fake-audio-capture``; the ``%noloop`` suffix plays it once, then silence
(without it the file repeats and the question would be asked again). The WAV is written at
48 kHz, the rate of Chromium's fake device, so no resampling happens inside the browser.
"""

from __future__ import annotations

import base64
import shutil
import wave
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr
from playwright.async_api import Browser, Page, async_playwright

from speech_fixtures import silence_pcm24k, synth_pcm24k

CHROMIUM = Path("/usr/bin/chromium")
WAV_RATE_HZ = 48_000
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
TIMEOUT_MS = 30_000


def require_chromium() -> None:
    """Skip (with the reason printed by ``-ra``) when Debian's chromium is not installed."""
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip(
            "browser tests need /usr/bin/chromium (apt-get install chromium; "
            "scripts/system-deps installs it in CI)"
        )


def speech_wav(path: Path, parts: Sequence[str | int]) -> Path:
    """Write a 48 kHz mono PCM16 WAV: each part is a sentence (spoken) or a pause in ms."""
    pcm = b"".join(
        silence_pcm24k(part) if isinstance(part, int) else synth_pcm24k(part) for part in parts
    )
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
    resampled = soxr.resample(samples, 24_000, WAV_RATE_HZ)
    out = (np.clip(resampled, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(WAV_RATE_HZ)
        wav.writeframes(out)
    return path


def chromium_args(wav: Path) -> list[str]:
    return [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    ]


@asynccontextmanager
async def chromium(wav: Path) -> AsyncIterator[Browser]:
    """A headless Debian Chromium whose microphone plays ``wav`` once."""
    require_chromium()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=chromium_args(wav)
        )
        try:
            yield browser
        finally:
            await browser.close()


async def open_console(browser: Browser, login_url: str) -> Page:
    """Open the console through its one-time login link; wait until signed in."""
    context = await browser.new_context(viewport={"width": 1100, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto(login_url)
    await page.wait_for_function("() => window.voxgateConsole && window.voxgateConsole.signedIn()")
    return page


async def start_hands_free(page: Page) -> None:
    """Turn voice processing off (echo cancellation, noise suppression, AGC) and press Start."""
    await page.uncheck("#processing")
    await page.click("#start")
    await page.wait_for_function(
        "() => document.getElementById('status').dataset.state === 'ready'"
    )


async def console_stats(page: Page) -> dict[str, Any]:
    stats = await page.evaluate("() => window.voxgateConsole.stats()")
    assert isinstance(stats, dict)
    return stats


async def open_console_with(
    browser: Browser,
    login_url: str,
    *,
    width: int = 1100,
    height: int = 900,
    init_script: str | None = None,
) -> Page:
    """:func:`open_console` with another viewport (e.g. a 390 px phone) and/or a script that
    runs in the page before its own (to observe what the page does, e.g. wrap a browser API)."""
    context = await browser.new_context(viewport={"width": width, "height": height})
    if init_script is not None:
        await context.add_init_script(script=init_script)
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto(login_url)
    await page.wait_for_function("() => window.voxgateConsole && window.voxgateConsole.signedIn()")
    return page


async def wait_for_state(page: Page, state: str) -> None:
    """Wait until the console's connection indicator shows ``state``."""
    await page.wait_for_function(
        "(s) => document.getElementById('status').dataset.state === s", arg=state
    )


async def log_count(page: Page, event_type: str) -> int:
    """How many event-log lines the console shows for ``event_type``."""
    count = await page.locator(f'#log li[data-type="{event_type}"]').count()
    return int(count)


#: Wraps ``WebSocket.prototype.send`` in the page: every binary frame sent is kept, per socket
#: (in the order the sockets first sent audio). ``window.__sentAudio()`` returns one base64
#: string per socket: the exact bytes the page handed to each socket.
RECORD_SENT_AUDIO = """
(() => {
  const sockets = [];
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    if (data instanceof ArrayBuffer) {
      if (!this.__vgSocket) { sockets.push([]); this.__vgSocket = sockets.length; }
      sockets[this.__vgSocket - 1].push(new Uint8Array(data.slice(0)));
    }
    return send.call(this, data);
  };
  window.__sentAudio = () => sockets.map((frames) => {
    let bin = "";
    for (const f of frames) {
      for (let i = 0; i < f.length; i += 4096) {
        bin += String.fromCharCode.apply(null, f.subarray(i, i + 4096));
      }
    }
    return btoa(bin);
  });
})();
"""


async def sent_audio_per_socket(page: Page) -> list[bytes]:
    """What :data:`RECORD_SENT_AUDIO` saw: the binary bytes the page sent, per socket."""
    encoded = await page.evaluate("() => window.__sentAudio()")
    assert isinstance(encoded, list)
    return [base64.b64decode(e) for e in encoded]
