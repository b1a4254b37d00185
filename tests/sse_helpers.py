"""Helpers for the HTTP/SSE fallback tests: ``curl`` as the client, and an SSE line parser.

Not a test module. Every request is a real ``curl`` process against a real socket; the event
stream is read line by line from ``curl -N`` (no buffering) and parsed as the SSE spec says.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

TIMEOUT_S = 15.0


@dataclass
class SseEvent:
    id: int | None
    event: str
    data: str

    def json(self) -> dict[str, Any]:
        value = json.loads(self.data)
        assert isinstance(value, dict)
        return value


@dataclass
class SseStream:
    """An event stream read by ``curl -N``; ``events`` in arrival order, comments counted."""

    proc: asyncio.subprocess.Process
    events: list[SseEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    _id: int | None = None
    _event: str = "message"
    _data: list[str] = field(default_factory=list)

    async def next(self, timeout_s: float = TIMEOUT_S) -> SseEvent:
        """The next event (comments are collected on the way)."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout_s):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise EOFError("the stream ended")
                line = raw.decode().rstrip("\r\n")
                if self.status is None:  # curl -i: the response head first
                    self.status = int(line.split()[1])
                    continue
                if self._in_head(line):
                    continue
                event = self._feed(line)
                if event is not None:
                    self.events.append(event)
                    return event

    async def until(self, event_type: str, timeout_s: float = TIMEOUT_S) -> list[SseEvent]:
        seen = []
        while True:
            event = await self.next(timeout_s)
            seen.append(event)
            if event.event == "message" and event.json().get("type") == event_type:
                return seen

    async def comment(self, timeout_s: float = TIMEOUT_S) -> str:
        """Read until a comment line arrives; return it."""
        have = len(self.comments)
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout_s):
            while len(self.comments) == have:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise EOFError("the stream ended")
                line = raw.decode().rstrip("\r\n")
                if not self._in_head(line) and (event := self._feed(line)) is not None:
                    self.events.append(event)
        return self.comments[-1]

    _head_done: bool = False

    def _in_head(self, line: str) -> bool:
        if self._head_done:
            return False
        if not line:
            self._head_done = True
        else:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        return True

    def _feed(self, line: str) -> SseEvent | None:
        if not line:
            if not self._data:
                return None
            event = SseEvent(self._id, self._event, "\n".join(self._data))
            self._id, self._event, self._data = None, "message", []
            return event
        if line.startswith(":"):
            self.comments.append(line)
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            self._id = int(value)
        elif name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


async def curl(*args: str, data: bytes | None = None) -> tuple[int, dict[str, Any]]:
    """Run ``curl -s -w status``; return (HTTP status, JSON body)."""
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-s",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        *args,
        stdin=asyncio.subprocess.PIPE if data is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(TIMEOUT_S):
        out, err = await proc.communicate(data)
    assert proc.returncode == 0, err.decode()
    body, _, status = out.decode().rpartition("\n")
    return int(status), (json.loads(body) if body.strip() else {})


@asynccontextmanager
async def event_stream(url: str, token: str, *headers: str) -> AsyncIterator[SseStream]:
    """``curl -N -i`` on an event stream; killed on exit (a dropped stream, as a network
    failure would drop it)."""
    args = ["curl", "-s", "-N", "-i", "-H", f"Authorization: Bearer {token}"]
    for header in headers:
        args += ["-H", header]
    proc = await asyncio.create_subprocess_exec(
        *args, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        yield SseStream(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
