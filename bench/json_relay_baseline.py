"""The naive protocol-aware relay: the minimal pipe, but every text frame is
``json.loads``-ed and ``json.dumps``-ed (stdlib json, default separators) before it is
forwarded, in both directions. This is what a relay that "looks at" events by parsing them
costs, the price principle 1 of the design ("sniff, don't parse") avoids.

Run: ``OPENAI_API_KEY=sk-x python bench/json_relay_baseline.py --port 9300 \
--upstream ws://127.0.0.1:9100/v1/realtime``
"""

from __future__ import annotations

import json

from aiohttp import WSMsgType

from pipe_baseline import WS, parse_args, serve


async def copy_parsed(src: WS, dst: WS) -> None:
    """Forward every frame from src to dst, parsing and re-serialising text frames."""
    async for msg in src:
        if msg.type is WSMsgType.TEXT:
            event = json.loads(msg.data)
            await dst.send_str(json.dumps(event))
        elif msg.type is WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif msg.type is WSMsgType.ERROR:
            break


if __name__ == "__main__":
    serve(parse_args(__doc__.splitlines()[0]), copy_parsed)
