"""A beta Realtime client: run by the beta SDK's own python (tests/beta_sdk.py), not by pytest.

``python beta_sdk_client.py SCENARIO OPTIONS_JSON`` connects with openai-python 1.x
``client.beta.realtime.connect()`` (which sends ``OpenAI-Beta: realtime=v1``), plays one
scenario (``text``, ``audio``, ``function``, ``transcription``) and prints one JSON object:
the type of every event it received, the SDK's parsed class names, and what the scenario needs
to check. Only the beta SDK and the standard library are used here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import sys
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI

TIMEOUT_S = 30.0
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


class Run:
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.events: list[Any] = []

    async def until(self, event_type: str) -> Any:
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                event = await self.conn.recv()
                self.events.append(event)
                if event.type == event_type:
                    return event
                if event.type == "error":
                    raise RuntimeError(f"error event: {event.error}")

    def of(self, event_type: str) -> list[Any]:
        return [e for e in self.events if e.type == event_type]

    def text_of(self, delta_type: str) -> str:
        return "".join(e.delta for e in self.of(delta_type))

    def summary(self) -> dict[str, Any]:
        return {
            "types": [e.type for e in self.events],
            "classes": sorted({type(e).__name__ for e in self.events}),
        }


async def user_text(run: Run, text: str) -> None:
    await run.conn.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    )


async def text(run: Run, opts: dict[str, Any]) -> dict[str, Any]:
    created = await run.until("session.created")
    await run.until("conversation.created")
    await run.conn.session.update(session={"modalities": ["text"], "temperature": 0.7})
    updated = await run.until("session.updated")
    await user_text(run, opts["question"])
    item = await run.until("conversation.item.created")
    await run.conn.response.create()
    done = await run.until("response.done")
    return {
        "created_modalities": created.session.modalities,
        "created_voice": created.session.voice,
        "updated_modalities": updated.session.modalities,
        "temperature": updated.session.temperature,
        "user_item_content": item.item.content[0].type,
        "text": run.text_of("response.text.delta"),
        "text_done": run.of("response.text.done")[0].text,
        "status": done.response.status,
        "response_modalities": done.response.modalities,
        "output_content": [c.type for o in done.response.output for c in (o.content or [])],
    }


async def audio(run: Run, opts: dict[str, Any]) -> dict[str, Any]:
    pcm: bytes = opts["pcm"]
    created = await run.until("session.created")
    await run.conn.session.update(
        session={
            "turn_detection": None,
            "input_audio_transcription": {"model": "whisper-1"},
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
        }
    )
    await run.until("session.updated")
    for i in range(0, len(pcm), 9600):
        await run.conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + 9600]).decode())
    await run.conn.input_audio_buffer.commit()
    committed = await run.until("input_audio_buffer.committed")
    await run.conn.response.create()
    done = await run.until("response.done")
    if not run.of("conversation.item.input_audio_transcription.completed"):
        await run.until("conversation.item.input_audio_transcription.completed")
    audio_out = b"".join(base64.b64decode(e.delta) for e in run.of("response.audio.delta"))
    return {
        "session_format": created.session.input_audio_format,
        "committed_item": committed.item_id,
        "user_transcript": run.of("conversation.item.input_audio_transcription.completed")[
            0
        ].transcript,
        "audio_out_bytes": len(audio_out),
        "audio_deltas": len(run.of("response.audio.delta")),
        "transcript": run.of("response.audio_transcript.done")[0].transcript,
        "status": done.response.status,
        "output_content": [c.type for o in done.response.output for c in (o.content or [])],
    }


async def function(run: Run, opts: dict[str, Any]) -> dict[str, Any]:
    await run.until("session.created")
    await run.conn.session.update(
        session={"modalities": ["text"], "tools": [WEATHER_TOOL], "instructions": "Use tools."}
    )
    await run.until("session.updated")
    await user_text(run, "What's the weather in Oslo? get_weather")
    await run.conn.response.create()
    first = await run.until("response.done")
    call = next(o for o in first.response.output if o.type == "function_call")
    args_done = run.of("response.function_call_arguments.done")[0]
    await run.conn.conversation.item.create(
        item={
            "type": "function_call_output",
            "call_id": call.call_id,
            "output": json.dumps({"sky": "sunny", "celsius": 21}),
        }
    )
    await run.conn.response.create()
    count = len(run.of("response.done"))
    while len(run.of("response.done")) == count:
        await run.until("response.done")
    return {
        "call_name": call.name,
        "call_arguments": json.loads(call.arguments),
        "args_done_name": args_done.name,
        "answer": run.of("response.text.done")[-1].text,
    }


async def transcription(run: Run, opts: dict[str, Any]) -> dict[str, Any]:
    pcm: bytes = opts["pcm"]
    created = await run.until("transcription_session.created")
    await run.conn.send(
        {
            "type": "transcription_session.update",
            "session": {
                "input_audio_format": "pcm16",
                "input_audio_transcription": {"model": "whisper-1", "language": "en"},
                "turn_detection": None,
            },
        }
    )
    updated = await run.until("transcription_session.updated")
    for i in range(0, len(pcm), 9600):
        await run.conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + 9600]).decode())
    await run.conn.input_audio_buffer.commit()
    completed = await run.until("conversation.item.input_audio_transcription.completed")
    return {
        "created_object": created.session.object
        if hasattr(created.session, "object")
        else created.session.get("object"),
        "updated_class": type(updated).__name__,
        "updated_model": updated.session.input_audio_transcription.model,
        "transcript": completed.transcript,
    }


SCENARIOS = {"text": text, "audio": audio, "function": function, "transcription": transcription}


async def main(scenario: str, opts: dict[str, Any]) -> dict[str, Any]:
    client = AsyncOpenAI(api_key=opts["key"], websocket_base_url=opts["ws_base"])
    extra: dict[str, Any] = {}
    if scenario == "transcription":
        extra["extra_query"] = {"intent": "transcription"}
    if opts.get("cafile"):
        extra["websocket_connection_options"] = {
            "ssl": ssl.create_default_context(cafile=opts["cafile"])
        }
    async with client.beta.realtime.connect(model=opts.get("model", "gpt-realtime"), **extra) as c:
        run = Run(c)
        result = await SCENARIOS[scenario](run, opts)
    return {**run.summary(), **result}


if __name__ == "__main__":
    options = json.loads(sys.argv[2])
    if "pcm_path" in options:
        options["pcm"] = Path(options["pcm_path"]).read_bytes()
    print(json.dumps(asyncio.run(main(sys.argv[1], options))))
