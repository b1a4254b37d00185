"""The stock OpenAI Agents SDK for JavaScript (``@openai/agents-realtime``) in a test page.

Not a test module. :func:`agents_bundle` installs the pinned npm package once into a cache
folder (``$VOXGATE_TEST_CACHE`` or ``~/.cache/voxgate-tests``) with ``npm install`` and returns
its browser ESM bundle; :func:`agents_page` serves a small page that imports that bundle on
its own origin (so calls to voxgate are cross-origin, as from a customer's web app) and exposes
``window.startAgent({url, key})``: a ``RealtimeAgent`` with a ``get_weather`` tool in a
``RealtimeSession`` with the SDK's default browser transport (WebRTC), connected with an
``ek_`` key to ``url``. The page records every transport event with its arrival time, tool
calls, errors and the history, and measures the assistant audio it receives: a worklet on the
remote track counts runs of sound (``t.runs``, milliseconds each).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

PACKAGE = "@openai/agents-realtime"
VERSION = "0.20.0"
BUNDLE_FILE = "openai-realtime-agents.mjs"


def _cache_root() -> Path:
    base = os.environ.get("VOXGATE_TEST_CACHE") or str(Path.home() / ".cache" / "voxgate-tests")
    return Path(base)


def agents_bundle() -> Path:
    """The folder holding the SDK's browser ESM bundle (installing the package if needed)."""
    root = _cache_root() / f"agents-realtime-{VERSION}"
    bundle = root / "node_modules" / "@openai" / "agents-realtime" / "dist" / "bundle"
    if (bundle / BUNDLE_FILE).exists():
        return bundle
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("the Agents SDK browser tests need npm (apt-get install npm)")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (bundle / BUNDLE_FILE).exists():
            done = subprocess.run(  # noqa: S603 - a fixed command line
                [
                    npm,
                    "install",
                    "--prefix",
                    str(root),
                    "--no-audit",
                    "--no-fund",
                    "--ignore-scripts",
                    f"{PACKAGE}@{VERSION}",
                ],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if done.returncode != 0:
                pytest.fail(f"npm install {PACKAGE}@{VERSION} failed: {done.stderr[-2000:]}")
    return bundle


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>agents-js on voxgate</title></head>
<body><p id="state">idle</p>
<script type="module">
import { RealtimeAgent, RealtimeSession, OpenAIRealtimeWebRTC, tool }
  from "/bundle/openai-realtime-agents.mjs";

const t = window.t = { events: [], toolCalls: [], errors: [], history: [], runs: [],
                       loudMs: 0, transport: null, connected: false };

const METER = `
class Meter extends AudioWorkletProcessor {
  constructor() { super(); this.inRun = false; this.loud = 0; this.quiet = 0; this.total = 0; }
  process(inputs) {
    const ch = inputs[0][0];
    if (!ch) return true;
    let peak = 0;
    for (let i = 0; i < ch.length; i++) peak = Math.max(peak, Math.abs(ch[i]));
    if (peak > 0.05) {
      this.total += ch.length;
      this.loud += ch.length + this.quiet; this.quiet = 0; this.inRun = true;
    } else if (this.inRun) {
      this.quiet += ch.length;
      if (this.quiet > sampleRate * 0.15) {
        this.port.postMessage({ run: this.loud * 1000 / sampleRate });
        this.inRun = false; this.loud = 0; this.quiet = 0;
      }
    }
    this.port.postMessage({ total: this.total * 1000 / sampleRate });
    return true;
  }
}
registerProcessor("meter", Meter);`;

async function meter(pc) {
  const receiver = pc.getReceivers().find((r) => r.track && r.track.kind === "audio");
  const ctx = new AudioContext();
  const url = URL.createObjectURL(new Blob([METER], { type: "text/javascript" }));
  await ctx.audioWorklet.addModule(url);
  const node = new AudioWorkletNode(ctx, "meter");
  node.port.onmessage = (e) => {
    if (e.data.run !== undefined) t.runs.push(Math.round(e.data.run));
    if (e.data.total !== undefined) t.loudMs = Math.round(e.data.total);
  };
  ctx.createMediaStreamSource(new MediaStream([receiver.track])).connect(node);
  // A remote WebRTC track only flows into WebAudio while a media element plays it too.
  const sink = new Audio();
  sink.muted = true;
  sink.srcObject = new MediaStream([receiver.track]);
  await sink.play().catch(() => {});
  window.__meter = { ctx, node, sink };
}

window.startAgent = async ({ url, key, instructions }) => {
  const getWeather = tool({
    name: "get_weather",
    description: "The current weather in a city.",
    parameters: { type: "object", properties: { city: { type: "string" } },
                  required: ["city"], additionalProperties: false },
    execute: async ({ city }) => {
      t.toolCalls.push(city);
      return `Sunny and 21 degrees in ${city}.`;
    },
  });
  const agent = new RealtimeAgent({
    name: "Assistant",
    instructions: instructions || "Answer briefly. Use get_weather for weather questions.",
    tools: [getWeather],
  });
  const session = new RealtimeSession(agent, {});
  window.session = session;
  session.on("transport_event", (ev) => { t.events.push({ ...ev, at: performance.now() }); });
  session.on("history_updated", (h) => { t.history = JSON.parse(JSON.stringify(h)); });
  session.on("error", (e) => { t.errors.push(String(e?.error?.message ?? e?.error ?? e)); });
  await session.connect({ apiKey: key, url });
  t.transport = session.transport instanceof OpenAIRealtimeWebRTC ? "webrtc" : "other";
  t.callId = session.transport.callId;
  t.connected = true;
  document.getElementById("state").textContent = "connected";
  await meter(session.transport.connectionState.peerConnection);
};
window.stopAgent = () => { window.session?.close(); };
</script></body></html>
"""


@contextlib.asynccontextmanager
async def agents_page() -> AsyncIterator[str]:
    """Serve the page and the bundle on 127.0.0.1 (a free port); yields the page URL."""
    bundle = agents_bundle()
    app = web.Application()

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app.router.add_get("/", index)
    app.router.add_static("/bundle", bundle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()
