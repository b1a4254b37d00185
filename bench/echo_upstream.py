"""A fast fake OpenAI Realtime upstream for the relay benchmark.

On connect it sends ``session.created`` (the shape of OpenAI's first event); then for every
``input_audio_buffer.append`` it receives it sends back one ``response.output_audio.delta``
carrying the same base64 audio, unchanged, so traffic flows both ways at the client's frame
rate. ``session.update`` is answered with ``session.updated``; every other event is ignored.
``Authorization: Bearer <anything>`` is accepted and the key ignored.

Run: ``python bench/echo_upstream.py --port 9100`` (serves ``/v1/realtime``, ``/realtime`` and
``/healthz``). The hot path sniffs the JSON text instead of parsing it, so the upstream costs
as little CPU as possible on the core it shares with the load generator.
"""

from __future__ import annotations

import argparse
import itertools
import time

import orjson
from aiohttp import WSMsgType, web

APPEND_PREFIX = '{"type":"input_audio_buffer.append"'
AUDIO_KEY = '"audio":"'


def session_object(session_id: str, model: str) -> dict[str, object]:
    """The GA session object OpenAI sends in ``session.created`` (defaults)."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "You are a helpful assistant.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": int(time.time()) + 3600,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 200,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "alloy",
                "speed": 1.0,
            },
        },
        "include": None,
    }


def extract_audio(text: str) -> str | None:
    """The ``audio`` string of an ``input_audio_buffer.append`` event, or None.

    Fast path for the compact form every efficient client and relay sends; falls back to a
    full parse when a relay re-serialised the event (for example with spaces after colons).
    """
    if text.startswith(APPEND_PREFIX):
        start = text.find(AUDIO_KEY)
        if start >= 0:
            start += len(AUDIO_KEY)
            end = text.find('"', start)
            if end > start:
                return text[start:end]
    if "input_audio_buffer.append" not in text:
        return None
    try:
        event = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if isinstance(event, dict) and event.get("type") == "input_audio_buffer.append":
        audio = event.get("audio")
        return audio if isinstance(audio, str) else None
    return None


class EchoUpstream:
    """State for one echo server; per-connection state lives in the handler."""

    def __init__(self) -> None:
        self._conn_ids = itertools.count(1)
        self.connections = 0

    async def realtime(self, request: web.Request) -> web.WebSocketResponse:
        # Selects "realtime" when a browser-style client offers it, like the real server.
        ws = web.WebSocketResponse(
            compress=False, max_msg_size=16 * 1024 * 1024, protocols=("realtime",)
        )
        await ws.prepare(request)
        n = next(self._conn_ids)
        self.connections += 1
        model = request.query.get("model", "gpt-realtime")
        session = session_object(f"sess_bench{n:08d}", model)
        await ws.send_str(
            orjson.dumps(
                {"type": "session.created", "event_id": f"event_c{n}", "session": session}
            ).decode()
        )
        # Everything but the audio and the event counter is fixed per connection.
        head = '{"type":"response.output_audio.delta","event_id":"event_'
        mid = (
            f'","response_id":"resp_bench{n:08d}","item_id":"item_bench{n:08d}",'
            '"output_index":0,"content_index":0,"delta":"'
        )
        tail = '"}'
        seq = 0
        send_str = ws.send_str
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    data: str = msg.data
                    audio = extract_audio(data)
                    if audio is not None:
                        seq += 1
                        await send_str(f"{head}{n}x{seq}{mid}{audio}{tail}")
                    elif '"session.update"' in data:
                        seq += 1
                        await send_str(
                            orjson.dumps(
                                {
                                    "type": "session.updated",
                                    "event_id": f"event_{n}x{seq}",
                                    "session": session,
                                }
                            ).decode()
                        )
                elif msg.type is WSMsgType.ERROR:
                    break
        finally:
            self.connections -= 1
        return ws

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "connections": self.connections})


def make_app() -> web.Application:
    echo = EchoUpstream()
    app = web.Application()
    app.router.add_get("/v1/realtime", echo.realtime)
    app.router.add_get("/realtime", echo.realtime)
    app.router.add_get("/healthz", echo.healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    web.run_app(
        make_app(), host=args.host, port=args.port, print=None, access_log=None, backlog=1024
    )


if __name__ == "__main__":
    main()
