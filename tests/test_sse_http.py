"""The HTTP/SSE fallback's contract, driven by real ``curl`` processes (issue 15).

voxgate in front of the GA fake upstream. Everything a client does over plain HTTP: create a
session with the same keys as the WebSocket, read the events as Server-Sent Events (ids are
the replay log's sequence numbers), POST events (batched, retries not doubled) and raw audio,
drop the stream and resume it with ``Last-Event-ID`` (nothing lost, nothing twice), end it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from gateway_helpers import SERVER_KEY, fake_and_gateway
from sse_helpers import SseEvent, curl, event_stream
from voxgate.testing import tone

AUTH = f"Authorization: Bearer {SERVER_KEY}"


async def create(base: str, query: str = "model=gpt-realtime") -> dict[str, Any]:
    status, body = await curl("-X", "POST", "-H", AUTH, f"{base}/v1/realtime/sse?{query}")
    assert status == 201, body
    return body


async def post_events(base: str, s: dict[str, Any], events: Any, batch: int) -> dict[str, Any]:
    status, body = await curl(
        "-X", "POST", "-H", f"Authorization: Bearer {s['token']}",
        "-H", "Content-Type: application/json", "-H", f"X-Voxgate-Batch: {batch}",
        "--data-binary", "@-", base + s["send"],
        data=json.dumps(events).encode(),
    )  # fmt: skip
    assert status == 202, body
    return body


def ids(events: list[SseEvent]) -> list[int]:
    return [e.id for e in events if e.id is not None]


def types(events: list[SseEvent]) -> list[str]:
    return [e.json()["type"] for e in events if e.event == "message"]


async def test_session_over_http_text_audio_batches_and_resume() -> None:
    pcm = tone(300, {"type": "audio/pcm"})
    async with fake_and_gateway() as (fake, gw):
        base = gw.http_url
        s = await create(base)
        assert s["token"].startswith("vgs_")
        assert s["events"] == f"/v1/realtime/sse/{s['id']}/events"
        async with event_stream(base + s["events"], s["token"]) as stream:
            first = await stream.until("session.created")
            assert stream.status == 200
            assert stream.headers["content-type"] == "text/event-stream"
            assert ids(first) == [1]
            hello = {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user",
                         "content": [{"type": "input_text", "text": "Hello"}]},
            }  # fmt: skip
            batch = [
                {"type": "session.update",
                 "session": {"type": "realtime", "output_modalities": ["text"],
                             "audio": {"input": {"turn_detection": None}}}},
                hello,
                {"type": "response.create"},
            ]  # fmt: skip
            assert await post_events(base, s, batch, 1) == {"accepted": 3}
            turn = await stream.until("response.done")
            text = "".join(e.json()["delta"] for e in turn if "delta" in e.json())
            assert text == "You said: Hello"
            # the same batch again (a retried POST): acknowledged, not applied twice
            assert (await post_events(base, s, batch, 1))["duplicate"] is True

            # raw audio, then a commit: the upstream gets exactly those bytes
            status, body = await curl(
                "-X", "POST", "-H", f"Authorization: Bearer {s['token']}",
                "-H", "X-Voxgate-Batch: 2", "--data-binary", "@-", base + s["audio"],
                data=pcm,
            )  # fmt: skip
            assert (status, body) == (202, {"accepted": 1})
            await post_events(base, s, [{"type": "input_audio_buffer.commit"}], 3)
            committed = (await stream.until("input_audio_buffer.committed"))[-1]
            record = await fake.wait_for_connection()
            assert record.audio.committed_audio(committed.json()["item_id"]) == pcm
            assert len(record.events_of("response.create")) == 1

            # the next answer is held upstream; the stream drops mid-answer
            fake.hold_responses()
            await post_events(base, s, [hello, {"type": "response.create"}], 4)
            await stream.until("response.created")
            seen = list(stream.events)
        fake.release_responses()
        last = seen[-1].id
        assert last is not None
        async with event_stream(
            base + s["events"], s["token"], f"Last-Event-ID: {last}"
        ) as resumed:
            rest = await resumed.until("response.done")
            assert resumed.status == 200
        # ids run on from where the client was, none missing, none twice
        all_ids = ids(seen) + ids(rest)
        assert all_ids == list(range(1, len(all_ids) + 1))
        event_ids = [e.json()["event_id"] for e in seen + rest]
        assert len(event_ids) == len(set(event_ids))
        assert "response.output_text.delta" in types(rest)
        assert not [t for t in types(seen + rest) if t.startswith("voxgate.session.")]
        assert "vgr_" not in "".join(e.data for e in seen + rest)  # the token stays here
        assert len(fake.connections) == 1  # one upstream session throughout


async def test_refusals_are_http_errors_in_openai_shape() -> None:
    async with fake_and_gateway() as (fake, gw):
        base = gw.http_url
        status, body = await curl(
            "-X", "POST", "-H", "Authorization: Bearer sk-nope", f"{base}/v1/realtime/sse?model=m"
        )  # fmt: skip
        assert status == 401
        assert body["error"]["code"] == "invalid_api_key"
        status, body = await curl("-X", "POST", "-H", AUTH, f"{base}/v1/realtime/sse")
        assert (status, body["error"]["code"]) == (400, "missing_model")
        s = await create(base)
        status, body = await curl("-H", "Authorization: Bearer vgs_wrong", base + s["events"])
        assert (status, body["error"]["code"]) == (401, "invalid_api_key")
        status, body = await curl("-H", AUTH, f"{base}/v1/realtime/sse/sse_nope/events")
        assert (status, body["error"]["code"]) == (404, "voxgate_no_session")
        async with event_stream(base + s["events"], s["token"]) as stream:
            await stream.until("session.created")
            # events after 99 were never sent: no resume from there
            status, body = await curl(
                "-H", f"Authorization: Bearer {s['token']}", "-H", "Last-Event-ID: 99",
                base + s["events"],
            )  # fmt: skip
            assert (status, body["error"]["code"]) == (409, "voxgate_resume_refused")
            assert fake.accepted_count == 1


async def test_delete_ends_the_session_with_a_close_event() -> None:
    async with fake_and_gateway() as (fake, gw):
        base = gw.http_url
        s = await create(base)
        async with event_stream(base + s["events"], s["token"]) as stream:
            await stream.until("session.created")
            status, _ = await curl(
                "-X", "DELETE", "-H", f"Authorization: Bearer {s['token']}",
                f"{base}/v1/realtime/sse/{s['id']}",
            )  # fmt: skip
            assert status == 200
            close = await stream.next()
            assert close.event == "close"
            assert json.loads(close.data)["code"] == 1000
            with_eof = stream.proc.stdout
            assert with_eof is not None
            assert await asyncio.wait_for(with_eof.read(), 5) == b""
        record = await fake.wait_for_connection()
        assert await record.wait_closed(timeout_s=5) == 1000
        status, body = await curl("-H", f"Authorization: Bearer {s['token']}", base + s["events"])
        assert (status, body["error"]["code"]) == (410, "voxgate_session_ended")


async def test_idle_stream_carries_heartbeat_comments() -> None:
    async with fake_and_gateway(sse_heartbeat_s=0.2) as (_, gw):
        s = await create(gw.http_url)
        async with event_stream(gw.http_url + s["events"], s["token"]) as stream:
            await stream.until("session.created")
            assert await stream.comment() == ": heartbeat"


async def test_ek_key_and_transcription_intent_work_over_http() -> None:
    async with fake_and_gateway() as (fake, gw):
        base = gw.http_url
        status, minted = await curl(
            "-X", "POST", "-H", AUTH, "-H", "Content-Type: application/json",
            "--data-binary", "@-", f"{base}/v1/realtime/client_secrets",
            data=json.dumps({"session": {"type": "transcription"}}).encode(),
        )  # fmt: skip
        assert status == 200
        status, s = await curl(
            "-X", "POST", "-H", f"Authorization: Bearer {minted['value']}",
            f"{base}/v1/realtime/sse",
        )  # fmt: skip
        assert status == 201
        async with event_stream(base + s["events"], s["token"]) as stream:
            created = (await stream.until("session.created"))[-1].json()
            assert created["session"]["type"] == "transcription"
        record = await fake.wait_for_connection()
        assert record.handshake.query.get("intent") == "transcription"
