"""Live observability (issue 17): counters move while a session runs, turn latency, connect time
and tool calls are measured as they happen, and a session's spans (connect, turns, tool calls,
reconnects) are exported. Real gateway on a real socket, the fake upstream behind it; spans go
to the OpenTelemetry SDK's in-memory exporter (the OTLP exporter is off by default)."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import orjson
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway_helpers import SERVER_KEY, fake_and_gateway, recv_until
from voxgate.app import HUB
from voxgate.observability.session_trace import build_tracer
from voxgate.testing.responder import CallTool, ResponseContext, Say

TOOL = {"type": "function", "name": "get_quote", "parameters": {"type": "object"}}


def _respond(ctx: ResponseContext) -> list[Say | CallTool]:
    last = ctx.items[-1] if ctx.items else {}
    if last.get("type") == "function_call_output":
        return [Say("The quote is 101.")]
    if "quote" in (ctx.latest_user_text() or ""):
        return [CallTool("get_quote", "{}")]
    return [Say("Hello.")]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:]+)(\{[^}]*\})? (\S+)$", line)
        if m and m.group(1) == name:
            got = ",".join(sorted((m.group(2) or "{}")[1:-1].split(","))) if m.group(2) else ""
            if got == want:
                return float(m.group(3))
    return 0.0


async def scrape(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/metrics") as resp:
        return await resp.text()


def user_text(text: str) -> str:
    return orjson.dumps(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": text}],
            },
        }
    ).decode()


async def test_counters_move_while_the_session_runs_and_spans_tell_its_story() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with (
        fake_and_gateway({"responder": _respond}) as (fake, gw),
        aiohttp.ClientSession() as http,
    ):
        gw.app[HUB].observability.tracer = provider.get_tracer("test")  # type: ignore[union-attr]
        ws = await http.ws_connect(
            gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}
        )
        await recv_until(ws, "session.created")
        await ws.send_str(
            orjson.dumps(
                {"type": "session.update", "session": {"type": "realtime", "tools": [TOOL]}}
            ).decode()
        )
        await recv_until(ws, "session.updated")
        before = await scrape(http, gw.http_url)

        # a turn with a client tool call: the call and its output
        await ws.send_str(user_text("What is the quote?"))
        await ws.send_str('{"type":"response.create"}')
        events = await recv_until(ws, "response.done")
        call = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        await ws.send_str(
            orjson.dumps(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "function_call_output",
                        "call_id": call["call_id"],
                        "output": "101",
                    },
                }
            ).decode()
        )
        await ws.send_str('{"type":"response.create"}')
        await recv_until(ws, "response.done")
        # an error the client caused, counted by its code
        await ws.send_str('{"type":"no.such.event"}')
        await recv_until(ws, "error")
        # the upstream drops: voxgate reconnects (a second connect, a reconnect span)
        assert await fake.drop_all() == 1
        await fake.wait_for_connection(2, timeout_s=10)
        await ws.send_str(user_text("hi again"))
        await ws.send_str('{"type":"response.create"}')
        await recv_until(ws, "response.done", timeout_s=15)

        during = await scrape(http, gw.http_url)  # the session still runs
        for direction in ("client_to_upstream", "upstream_to_client"):
            assert metric(during, "voxgate_frames_total", direction=direction) > metric(
                before, "voxgate_frames_total", direction=direction
            )
        assert metric(during, "voxgate_errors_total", code="invalid_value") == 1
        assert metric(during, "voxgate_upstream_reconnects_total") == 1
        assert metric(during, "voxgate_upstream_reconnect_seconds_count") == 1
        assert metric(during, "voxgate_upstream_connect_seconds_count", outcome="ok") == 2
        assert metric(during, "voxgate_tool_calls_total", runner="client", outcome="output") == 1
        assert metric(during, "voxgate_tool_call_seconds_count", runner="client") == 1
        assert metric(during, "voxgate_turn_latency_seconds_count") == 0  # no speech turns yet
        assert metric(during, "voxgate_sessions_total", cause="client_closed") == 0
        again = await scrape(http, gw.http_url)  # scraping twice adds nothing twice
        assert metric(again, "voxgate_errors_total", code="invalid_value") == 1
        assert metric(again, "voxgate_frames_total", direction="upstream_to_client") == metric(
            during, "voxgate_frames_total", direction="upstream_to_client"
        )

        await ws.close()
        record = fake.connections[-1]
        await record.wait_closed(timeout_s=10)
        after = await scrape(http, gw.http_url)
        assert metric(after, "voxgate_errors_total", code="invalid_value") == 1  # not again
        assert metric(after, "voxgate_sessions_total", cause="client_closed") == 1

    spans = {s.name: s for s in exporter.get_finished_spans()}
    names = sorted(s.name for s in exporter.get_finished_spans())
    assert names.count("turn") == 3
    assert names.count("tool_call") == 1
    assert names.count("upstream.connect") == 1
    assert names.count("upstream.reconnect") == 1
    root = spans["voxgate.session"]
    assert root.attributes is not None
    assert root.attributes["voxgate.end_cause"] == "client_closed"
    for span in exporter.get_finished_spans():
        if span.name != "voxgate.session":
            assert span.parent is not None
            assert span.parent.span_id == root.context.span_id  # type: ignore[union-attr]
    tool: Any = spans["tool_call"]
    assert tool.attributes["voxgate.tool"] == "get_quote"


async def test_a_speech_turn_is_timed_from_its_end_to_the_first_answer_part() -> None:
    async with (
        fake_and_gateway() as (_fake, gw),
        aiohttp.ClientSession() as http,
    ):
        ws = await http.ws_connect(
            gw.realtime_url(), headers={"Authorization": f"Bearer {SERVER_KEY}"}
        )
        await recv_until(ws, "session.created")
        speech = (b"\x00\x10" * 2400) * 10  # 1 s of a loud square-ish signal
        silence = b"\x00\x00" * 24000
        import base64

        for chunk in (speech, silence):
            await ws.send_str(
                orjson.dumps(
                    {"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}
                ).decode()
            )
        await recv_until(ws, "response.done", timeout_s=15)
        text = await scrape(http, gw.http_url)
        assert metric(text, "voxgate_turn_latency_seconds_count") == 1
        await ws.close()


def test_tracing_is_off_by_default_and_console_builds_a_tracer() -> None:
    assert build_tracer("off") is None
    assert build_tracer("console") is not None
    assert build_tracer("otlp") is not None  # the exporter only sends when spans end
