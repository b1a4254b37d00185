"""A raw ``voxgate.v1`` client that resumes exactly as voxgate-client.js does (issue 17 tests).

Not a test module. It counts the numbered events it receives (``voxgate.session.*`` are not
numbered), keeps the latest resume token, and when its socket drops without a close frame, or
voxgate says ``voxgate.session.migrate``, it reconnects (through whatever URL it was given:
the load balancer) with ``["voxgate.v1", "voxgate.resume"]``, presents the token and its count,
and re-sends the binary audio voxgate says it does not have (``input_audio_bytes``). Every
event id it processes is checked: an event delivered twice fails the test at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

RESUME_DELAYS_S = (0.0, 0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0)


@dataclass
class Resumed:
    event: dict[str, Any]
    dropped_at: float  # monotonic, when the old connection was seen to end
    resumed_at: float
    attempts: int
    why: str  # "drop" or "migrate"


@dataclass
class V1Client:
    url: str
    key: str
    #: where to resume (default: ``url``); a test may point it at one node
    resume_url: str | None = None
    #: subprotocols of the first connection (without ``voxgate.v1``: a stock client)
    extensions: bool = True
    #: when set, a resume waits for it (a test lets the session run on without the client)
    hold_resume: asyncio.Event | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    received: int = 0
    token: str | None = None
    session_id: str | None = None
    resumes: list[Resumed] = field(default_factory=list)
    binary_frames: int = 0
    audio_sent: bytearray = field(default_factory=bytearray)
    ended: tuple[int | None, str] | None = None
    refused: str | None = None
    #: why resume attempts failed (connection errors, a node gone mid-handshake)
    attempt_errors: list[str] = field(default_factory=list)
    _ws: aiohttp.ClientWebSocketResponse | None = None
    _http: aiohttp.ClientSession | None = None
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _task: asyncio.Task[None] | None = None
    _seen: set[str] = field(default_factory=set)
    _old: list[aiohttp.ClientWebSocketResponse] = field(default_factory=list)
    _drains: list[asyncio.Task[None]] = field(default_factory=list)
    _resuming: bool = False
    _acked: int = 0
    _acked_at: float = 0.0

    async def start(self) -> None:
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(
            self.url,
            protocols=(("realtime", "voxgate.v1") if self.extensions else ("realtime",))
            + (f"openai-insecure-api-key.{self.key}",),
            autoping=True,
            heartbeat=None,
        )
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        ws = self._ws
        if ws is not None and not ws.closed:
            await ws.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(10):
                    await self._task
            self._task.cancel()
        for old in self._old:
            with contextlib.suppress(Exception):
                await old.close()
        for task in self._drains:
            task.cancel()
        if self._http is not None:
            await self._http.close()

    # ------------------------------------------------------------------ sending

    async def send(self, event: dict[str, Any]) -> None:
        await self._wait_attached()
        assert self._ws is not None
        await self._ws.send_str(orjson.dumps(event).decode())

    async def send_audio(self, pcm: bytes) -> None:
        """One binary frame of input audio (kept to re-send what a new node lacks)."""
        await self._wait_attached()
        assert self._ws is not None
        self.audio_sent += pcm
        await self._ws.send_bytes(pcm)

    async def _wait_attached(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._resuming or self.ended is not None)

    # ------------------------------------------------------------------ waiting

    async def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout_s: float = 30.0, start: int = 0
    ) -> dict[str, Any]:
        """The first event (from index ``start``) matching ``pred``."""
        async with asyncio.timeout(timeout_s), self._changed:
            while True:
                for ev in self.events[start:]:
                    if pred(ev):
                        return ev
                if self.ended is not None or self.refused is not None:
                    raise AssertionError(f"session over: {self.ended} {self.refused}")
                await self._changed.wait()

    async def wait_type(
        self, etype: str, start: int = 0, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        return await self.wait_for(lambda ev: ev.get("type") == etype, timeout_s, start)

    async def wait_resumes(self, n: int, timeout_s: float = 60.0) -> Resumed:
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: len(self.resumes) >= n or self.refused is not None)
        if self.refused is not None:
            raise AssertionError(f"resume refused: {self.refused}")
        return self.resumes[n - 1]

    # ------------------------------------------------------------------ receiving

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _run(self) -> None:
        while True:
            why = await self._read(self._ws)
            if why is None:
                return
            dropped = time.monotonic()
            self._resuming = True
            await self._notify()
            if not await self._resume(why, dropped):
                self._resuming = False
                await self._notify()
                return

    async def _read(self, ws: aiohttp.ClientWebSocketResponse | None) -> str | None:
        """Read until the connection ends: None (closed for good) or why to resume."""
        assert ws is not None
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                ev = orjson.loads(msg.data)
                etype = ev.get("type", "")
                if etype.startswith("voxgate.session."):
                    if etype == "voxgate.session.resumable":
                        self.token = ev["resume_token"]
                        self.session_id = ev["session_id"]
                    elif etype == "voxgate.session.migrate":
                        # left open (a close would end the session there); the old node
                        # closes it after the move: its frames are read and dropped meanwhile
                        self._old.append(ws)
                        self._drains.append(asyncio.create_task(_drain(ws)))
                        return "migrate"
                    continue
                await self._count(ev)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                self.received += 1
                self.binary_frames += 1
                await self._ack()
            elif msg.type == aiohttp.WSMsgType.CLOSE:
                self.ended = (ws.close_code, str(msg.extra or ""))
                await self._notify()
                return None
            else:  # CLOSED / ERROR without a close frame: the connection was lost (1006)
                if self.token is None:
                    self.ended = (None, "lost")
                    await self._notify()
                    return None
                return "drop"

    async def _count(self, ev: dict[str, Any]) -> None:
        self.received += 1
        await self._ack()
        eid = ev.get("event_id")
        if isinstance(eid, str):
            if eid in self._seen:
                raise AssertionError(f"event delivered twice: {ev.get('type')} {eid}")
            self._seen.add(eid)
        self.events.append(ev)
        await self._notify()

    async def _ack(self) -> None:
        """``voxgate.session.ack`` about once a second or every 200 events, as the JS client."""
        now = time.monotonic()
        ws = self._ws
        if self.token is None or ws is None or ws.closed:
            return
        if now - self._acked_at >= 1.0 or self.received - self._acked >= 200:
            self._acked, self._acked_at = self.received, now
            with contextlib.suppress(Exception):
                await ws.send_str(
                    orjson.dumps(
                        {"type": "voxgate.session.ack", "received_events": self.received}
                    ).decode()
                )

    async def _resume(self, why: str, dropped: float) -> bool:
        assert self._http is not None
        if self.hold_resume is not None:
            await self.hold_resume.wait()
        for attempt, delay in enumerate(RESUME_DELAYS_S, 1):
            await asyncio.sleep(delay)  # the client's backoff, as voxgate-client.js
            try:
                ws = await self._http.ws_connect(
                    self.resume_url or self.url,
                    protocols=("voxgate.v1", "voxgate.resume"),
                    heartbeat=None,
                )
            except (aiohttp.ClientError, OSError) as exc:
                self.attempt_errors.append(f"{time.monotonic():.2f} connect {exc!r}")
                continue
            await ws.send_str(
                orjson.dumps(
                    {
                        "type": "voxgate.session.resume",
                        "resume_token": self.token,
                        "received_events": self.received,
                    }
                ).decode()
            )
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                self.attempt_errors.append(f"{time.monotonic():.2f} handshake {msg.type!r}")
                continue  # the node went away mid-handshake: try again
            ev = orjson.loads(msg.data)
            if ev.get("type") != "voxgate.session.resumed":
                self.refused = str(ev.get("error", {}).get("code") or ev.get("type"))
                await ws.close()
                await self._notify()
                return False
            self.token = ev["resume_token"]
            self._ws = ws
            have = int(ev.get("input_audio_bytes", len(self.audio_sent)))
            missing = bytes(self.audio_sent[have:])
            del self.audio_sent[have:]
            self.resumes.append(Resumed(ev, dropped, time.monotonic(), attempt, why))
            self._resuming = False
            for at in range(0, len(missing), 4800):  # what the new node lacks, again
                chunk = missing[at : at + 4800]
                self.audio_sent += chunk
                await ws.send_bytes(chunk)
            await self._notify()
            return True
        self.refused = "gave_up"
        await self._notify()
        return False


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Read (and drop) an abandoned connection's frames until it closes."""
    with contextlib.suppress(Exception):
        while not ws.closed:
            msg = await ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return
