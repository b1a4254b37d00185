"""``voxgate serve`` as a real child process for tests: its output read line by line.

Every line of stdout and stderr is kept; tests wait for a line matching a pattern (bounded by a
timeout), never for a fixed time.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

TIMEOUT_S = 30.0
#: ``PYTHONPROFILEIMPORTTIME`` lines, which some tests turn on to see what was imported.
IMPORT_LINE = re.compile(r"^import time:")


@dataclass
class Stream:
    lines: list[str] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    closed: bool = False

    async def pump(self, reader: asyncio.StreamReader) -> None:
        while raw := await reader.readline():
            async with self.changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.changed.notify_all()
        async with self.changed:
            self.closed = True
            self.changed.notify_all()

    async def wait_for(self, pattern: str, timeout_s: float = TIMEOUT_S) -> re.Match[str]:
        regex = re.compile(pattern)
        seen = 0
        async with asyncio.timeout(timeout_s), self.changed:
            while True:
                for line in self.lines[seen:]:
                    if m := regex.search(line):
                        return m
                seen = len(self.lines)
                if self.closed:
                    raise AssertionError(f"no line matching {pattern!r} in {self.lines}")
                await self.changed.wait()

    def text_lines(self) -> list[str]:
        """The lines, without import-time profiling lines."""
        return [line for line in self.lines if not IMPORT_LINE.match(line)]


@dataclass
class ServeProcess:
    proc: asyncio.subprocess.Process
    out: Stream
    err: Stream
    pumps: list[asyncio.Task[None]]

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout_s: float = TIMEOUT_S) -> int:
        async with asyncio.timeout(timeout_s):
            code = await self.proc.wait()
            await asyncio.gather(*self.pumps)
        return code

    async def port(self) -> int:
        m = await self.out.wait_for(r"serving backend '\w+' on http://[^:]+:(\d+)|\"port\":(\d+)")
        return int(m.group(1) or m.group(2))


def clean_env(**values: str) -> dict[str, str]:
    """The test's environment without any VOXGATE_ or OPENAI_ setting, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOXGATE_", "OPENAI_API_KEY"))}
    env.update(values)
    return env


@asynccontextmanager
async def voxgate_serve(
    *args: str, env: Mapping[str, str], cwd: str | None = None
) -> AsyncIterator[ServeProcess]:
    """Run ``python -m voxgate serve *args``; killed on exit if still running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voxgate",
        "serve",
        *args,
        env=dict(env),
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    out, err = Stream(), Stream()
    pumps = [asyncio.create_task(out.pump(proc.stdout)), asyncio.create_task(err.pump(proc.stderr))]
    try:
        yield ServeProcess(proc, out, err, pumps)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for task in pumps:
            task.cancel()


def listening_socket() -> socket.socket:
    """Something else listening on a free port of 127.0.0.1."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
