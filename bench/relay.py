"""Relay benchmark: N concurrent real-time voice sessions through a relay pinned to one core.

For every session count N it measures, in one invocation and against the same echo upstream:

* ``direct``  -- the load generator talking straight to the echo upstream (the floor);
* ``pipe``    -- the minimal aiohttp pipe (``bench/pipe_baseline.py``);
* ``json``    -- the naive stdlib-json relay (``bench/json_relay_baseline.py``);
* ``voxgate`` -- ``python -m voxgate serve --backend openai`` relaying to the echo upstream.

Each relay runs as its own process pinned to the first allowed core (``taskset -c``); the load
generator (this process) and the echo upstream share the second. Every session sends one
20 ms PCM16 24 kHz frame (960 bytes, 1280 base64 chars in ``input_audio_buffer.append``) every
20 ms on a shared clock, staggered evenly across the 20 ms period, and gets it back as
``response.output_audio.delta``. The first 18 bytes of each frame carry the session index,
a sequence number and the monotonic send time, so echoes are matched without parsing JSON.

Reported per relay and N: round-trip p50/p99, added p50/p99 (relay percentile minus the
direct percentile at the same N), frames lost (sent - received after a drain), relay CPU % of
one core and CPU µs per relayed frame (both directions counted) from /proc/<pid>/stat,
RSS per session ((VmRSS with N open - idle VmRSS) / N), and whether the point passes
(added p99 <= 20 ms, nothing lost, every session connected). Sessions per core is the
largest passing N; the estimate 0.8 / (CPU per session) is printed beside it.

    .venv/bin/python bench/relay.py                      # full sweep, about 5 minutes
    .venv/bin/python bench/relay.py --quick              # 100 sessions, 3 s each, < 60 s
    .venv/bin/python bench/relay.py --relays pipe --sessions 5 --duration 2   # smoke
    .venv/bin/python bench/relay.py --json               # also write bench/results/*.json

See bench/README.md for the method and how to read the output.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import hashlib
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

FRAME_NS = 20_000_000  # 20 ms
SLICE_NS = 250_000_000  # the measurement window is judged in 250 ms slices
FRAME_BYTES = 960  # 20 ms of PCM16 mono at 24 kHz
HEADER = struct.Struct("<IIQ2x")  # session index, seq, monotonic send ns, pad to 18 bytes
HEADER_B64 = 24  # 18 bytes -> exactly 24 base64 chars, so the rest encodes independently
CLIENT_KEY = "vk-bench"
UPSTREAM_KEY = "sk-bench-upstream"
P99_LIMIT_MS = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

ALL_RELAYS = ("pipe", "json", "voxgate", "voxgate-norecover")
FULL_SESSIONS = (50, 100, 200, 250, 300)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def group_pids(pgid: int) -> list[int]:
    """Every live process in a process group (a relay may fork workers)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # field 5 (pgrp); fields[0] is field 3 (state)
            pids.append(int(entry))
    return pids


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the given processes, all threads, in seconds."""
    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15: utime, stime
    return ticks / CLK_TCK


def rss_kib(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total


def core_seconds(cores: Sequence[int]) -> dict[int, tuple[float, float]]:
    """(idle + iowait, irq + softirq) seconds per core from /proc/stat.

    Busy time is derived as wall time minus idle (idle is accounted precisely on tickless
    kernels, the other columns are tick-sampled). Loopback packet delivery runs as softirq
    work and is not always charged to a process's utime/stime, so irq time is reported apart.
    """
    out: dict[int, tuple[float, float]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *vals = line.split()
            core = int(name[3:])
            if core in cores:
                v = [int(x) for x in vals]
                out[core] = ((v[3] + v[4]) / CLK_TCK, (v[5] + v[6]) / CLK_TCK)
    return out


class Proc:
    """A child process in its own process group, stopped with the whole group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO_DIR,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.popen.pid

    def pids(self) -> list[int]:
        return group_pids(self.pid) or [self.pid]

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        # Reap anything left in the group (forked workers) as well.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self._log.close()


def pinned(argv: list[str], core: int | None) -> list[str]:
    return ["taskset", "-c", str(core), *argv] if core is not None else argv


async def wait_healthy(url: str, proc: Proc | None, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    async with aiohttp.ClientSession() as http:
        while True:
            if proc is not None and proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                tail = proc.log_tail() if proc else ""
                raise RuntimeError(f"{url} not healthy after {limit_s:.0f}s\n{tail}")
            await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- relays


@dataclass
class RelaySpec:
    name: str
    describe: str
    command: Callable[[int, str], tuple[list[str], dict[str, str]]]  # (port, upstream url)


def _script(script: str) -> Callable[[int, str], tuple[list[str], dict[str, str]]]:
    def command(port: int, upstream: str) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, str(BENCH_DIR / script), "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--upstream", upstream]
        return argv, {**os.environ, "OPENAI_API_KEY": UPSTREAM_KEY}

    return command


def voxgate_command(port: int, upstream: str) -> tuple[list[str], dict[str, str]]:
    """How voxgate is started for the benchmark (the OpenAI backend, relaying to the echo)."""
    argv = [sys.executable, "-m", "voxgate", "serve", "--backend", "openai"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    env = {
        **os.environ,
        "VOXGATE_OPENAI_URL": upstream,
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "VOXGATE_API_KEYS": CLIENT_KEY,
        "VOXGATE_LOG_LEVEL": "warning",
    }
    return argv, env


def _without_recovery(port: int, upstream: str) -> tuple[list[str], dict[str, str]]:
    argv, env = voxgate_command(port, upstream)
    return argv, {**env, "VOXGATE_RECONNECT_ATTEMPTS": "0"}


RELAYS = {
    "pipe": RelaySpec(
        "pipe", "minimal aiohttp pipe (bench/pipe_baseline.py)", _script("pipe_baseline.py")
    ),
    "json": RelaySpec(
        "json",
        "stdlib-json parsing relay (bench/json_relay_baseline.py)",
        _script("json_relay_baseline.py"),
    ),
    "voxgate": RelaySpec("voxgate", "python -m voxgate serve --backend openai", voxgate_command),
    "voxgate-norecover": RelaySpec(
        "voxgate-norecover",
        "voxgate with upstream recovery off (VOXGATE_RECONNECT_ATTEMPTS=0): the mirror's cost",
        _without_recovery,
    ),
}


def voxgate_available() -> tuple[bool, str]:
    try:
        out = subprocess.run(
            [sys.executable, "-m", "voxgate", "serve", "--help"],
            cwd=REPO_DIR,
            capture_output=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, "`python -m voxgate serve --help` timed out"
    if out.returncode != 0:
        err = (out.stderr or out.stdout).decode(errors="replace").strip().splitlines()
        return False, err[-1] if err else f"exit status {out.returncode}"
    return True, ""


# --------------------------------------------------------------------------- load generator
#
# The load generator is a minimal RFC 6455 client on asyncio.Protocol: no task and no queue per
# session, frames parsed in data_received and matched by the header in the audio, sends are one
# transport.write of a prebuilt frame. It costs about a third of what aiohttp's client
# WebSocket costs per frame, which keeps the load core well below saturation at 300 sessions.
# Client frames are masked (the mask bit is set, as RFC 6455 requires) with an all-zero key, so
# the payload is the plain text; the server unmasks as usual and cannot tell the difference.


@dataclass
class RunResult:
    target: str
    sessions: int
    duration_s: float
    connected: int = 0
    connect_failed: int = 0
    connect_s: float = 0.0
    sent: int = 0
    received: int = 0
    lost: int = 0
    out_of_order: int = 0
    misrouted: int = 0
    error_events: int = 0
    closed_early: int = 0
    samples: int = 0
    rtt_p50_ms: float = float("nan")
    rtt_p99_ms: float = float("nan")
    rtt_max_ms: float = float("nan")
    added_p50_ms: float = float("nan")
    added_p99_ms: float = float("nan")
    send_lag_p99_ms: float = float("nan")
    window_s: float = 0.0
    frames_in_window: int = 0
    relay_cpu_pct: float = float("nan")
    relay_cpu_us_per_frame: float = float("nan")
    relay_idle_rss_kib: int = 0
    relay_rss_kib: int = 0
    rss_per_session_kib: float = float("nan")
    echo_cpu_pct: float = float("nan")
    loadgen_cpu_pct: float = float("nan")
    relay_core_busy_pct: float = float("nan")
    relay_core_irq_pct: float = float("nan")
    relay_core_foreign_pct: float = float("nan")
    load_core_busy_pct: float = float("nan")
    load_core_irq_pct: float = float("nan")
    load_core_foreign_pct: float = float("nan")
    slices: int = 0
    clean_slices: int = 0
    estimate_sessions: float = float("nan")
    passed: bool = False
    notes: list[str] = field(default_factory=list)


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
ZERO_MASK = b"\x00\x00\x00\x00"


def client_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + ZERO_MASK + payload


class Meter:
    """Shared counters and latency samples for one run."""

    def __init__(self) -> None:
        self.lats: list[int] = []  # round trip, ns
        self.sent_at: list[int] = []  # send time of the same frame, monotonic ns
        self.win_start_ns = 1 << 62  # set when the measurement window opens


class ClientWS(asyncio.Protocol):
    """One benchmark session: handshake, session.created, then echoes matched by header."""

    def __init__(self, idx: int, meter: Meter, request: bytes, accept: bytes) -> None:
        self.idx = idx
        self.meter = meter
        self._request = request
        self._accept = accept
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.frag = bytearray()
        self.upgraded = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.created = False
        self.sent = 0
        self.received = 0
        self.expect = 0
        self.out_of_order = 0
        self.misrouted = 0
        self.other_events = 0
        self.errors = 0
        self.first_error = ""
        self.closed_early = False
        self.close_sent = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.close_sent:
            self.closed_early = True
        self._fail("connection closed before session.created")
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1")
            del buf[: end + 4]
            status = head.split("\r\n", 1)[0]
            if " 101 " not in status + " ":
                self._fail(f"handshake refused: {status}")
                return
            if self._accept not in head.encode():
                self._fail("bad Sec-WebSocket-Accept")
                return
            self.upgraded = True
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            n = b1 & 0x7F
            p = pos + 2
            if n == 126:
                if size - p < 2:
                    break
                n = (buf[p] << 8) | buf[p + 1]
                p += 2
            elif n == 127:
                if size - p < 8:
                    break
                n = int.from_bytes(buf[p : p + 8], "big")
                p += 8
            if b1 & 0x80:  # servers must not mask; tolerate it anyway
                if size - p < 4:
                    break
                key = bytes(buf[p : p + 4])
                p += 4
                if size - p < n:
                    break
                payload = bytes(b ^ key[i & 3] for i, b in enumerate(buf[p : p + n]))
            else:
                if size - p < n:
                    break
                payload = bytes(buf[p : p + n])
            pos = p + n
            self._frame(b0, payload)
        if pos:
            del buf[:pos]

    # -- frames
    def _frame(self, b0: int, payload: bytes) -> None:
        opcode = b0 & 0x0F
        if opcode in (OP_TEXT, OP_CONT):
            if not b0 & 0x80:  # fragmented message: keep collecting
                self.frag += payload
                return
            if self.frag:
                payload = bytes(self.frag) + payload
                self.frag.clear()
            self._text(payload)
        elif opcode == OP_PING:
            self._write(client_frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            if not self.close_sent:
                self.closed_early = True
                self.close_sent = True
                self._write(client_frame(OP_CLOSE, payload[:2]))
            if self.transport is not None:
                self.transport.close()

    def _text(self, data: bytes) -> None:
        i = data.find(b'"delta"')
        if i < 0:
            if not self.created:
                if b'"session.created"' in data:
                    self.created = True
                    if not self.ready.done():
                        self.ready.set_result(None)
                else:
                    self._fail(f"first event was not session.created: {data[:160]!r}")
                return
            self.other_events += 1
            if b'"type":"error"' in data or b'"type": "error"' in data:
                self.errors += 1
                if not self.first_error:
                    self.first_error = data[:300].decode(errors="replace")
            return
        q = data.index(b'"', i + 8) + 1
        sid, seq, ts = HEADER_UNPACK(b64decode(data[q : q + HEADER_B64]))
        now = monotonic_ns()
        self.received += 1
        if sid != self.idx:
            self.misrouted += 1
        if seq != self.expect:
            self.out_of_order += 1
        self.expect = seq + 1
        meter = self.meter
        if ts >= meter.win_start_ns:
            meter.lats.append(now - ts)
            meter.sent_at.append(ts)

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
            if self.transport is not None:
                self.transport.close()

    def _write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    async def close(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.close_sent = True
        self._write(client_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), 5)
        if not self.transport.is_closing():
            self.transport.close()


HEADER_UNPACK = HEADER.unpack_from
b64decode = base64.b64decode
monotonic_ns = time.monotonic_ns


def _handshake(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())  # noqa: S324 (RFC 6455)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\r\n"
    ).encode()
    return request, accept


async def _connect(url: str, idx: int, meter: Meter, wait_s: float) -> ClientWS | str:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    request, accept = _handshake(host, port, path)
    loop = asyncio.get_running_loop()
    proto: ClientWS | None = None
    try:
        async with asyncio.timeout(wait_s):
            _, proto = await loop.create_connection(
                lambda: ClientWS(idx, meter, request, accept), host, port
            )
            await proto.ready
    except (OSError, ConnectionError, TimeoutError) as exc:
        if proto is not None and proto.transport is not None:
            proto.transport.close()
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return proto


def _frame_parts() -> tuple[bytes, bytes]:
    """The wire frame around the 24-char header: the audio after the header is constant."""
    rest = bytes((i * 37) & 0xFF for i in range(FRAME_BYTES - HEADER.size))
    prefix = b'{"type":"input_audio_buffer.append","audio":"'
    suffix = base64.b64encode(rest) + b'"}'
    text_len = len(prefix) + HEADER_B64 + len(suffix)
    head = client_frame(OP_TEXT, b"x" * text_len)[:-text_len]  # frame header + zero mask
    return head + prefix, suffix


async def run_load(
    target: str,
    url: str,
    n: int,
    duration: float,
    warmup: float,
    relay_pids: Callable[[], list[int]] | None,
    echo_pids: Callable[[], list[int]],
    relay_core: int | None,
    load_core: int | None,
    drain_timeout: float = 3.0,
    foreign_limit: float = 20.0,
) -> RunResult:
    """Open n sessions to url, stream for `duration` seconds, and measure."""
    res = RunResult(target=target, sessions=n, duration_s=duration)
    meter = Meter()
    # ---- connect (bounded concurrency so a relay's accept backlog is not what is measured)
    sem = asyncio.Semaphore(32)
    t_conn = time.monotonic()

    async def one(i: int) -> ClientWS | str:
        async with sem:
            return await _connect(url, i, meter, wait_s=15.0)

    outcomes = await asyncio.gather(*(one(i) for i in range(n)))
    res.connect_s = time.monotonic() - t_conn
    sessions = [o for o in outcomes if isinstance(o, ClientWS)]
    failures = [o for o in outcomes if isinstance(o, str)]
    res.connected, res.connect_failed = len(sessions), len(failures)
    if failures:
        res.notes.append(f"{len(failures)} sessions failed to connect, e.g. {failures[0]}")
    for i, s in enumerate(sessions):
        s.idx = i
    m = len(sessions)
    if m == 0:
        return res

    def snapshot() -> dict[str, Any]:
        return {
            "t": time.monotonic(),
            "t_ns": time.monotonic_ns(),
            "relay": cpu_seconds(relay_pids()) if relay_pids else 0.0,
            "echo": cpu_seconds(echo_pids()),
            "self": cpu_seconds([os.getpid()]),
            "cores": core_seconds([c for c in (relay_core, load_core) if c is not None]),
            "sent": sum(s.sent for s in sessions),
            "received": sum(s.received for s in sessions),
        }

    gc.collect()
    gc.freeze()
    lags: list[int] = []
    head, suffix = _frame_parts()
    hdr = bytearray(HEADER.size)
    pack_into = HEADER.pack_into
    b64encode = base64.b64encode
    clock = time.monotonic_ns
    writers = [s.transport.write for s in sessions if s.transport is not None]
    # ---- drive: the j-th send overall is session j % m, due at t0 + j * period / m
    step = FRAME_NS / m
    t0 = clock() + 50_000_000
    win_open_ns = t0 + int(warmup * 1e9)
    end_ns = t0 + int(duration * 1e9)
    snaps: list[dict[str, Any]] = []  # one every SLICE_NS through the window
    next_snap_ns = win_open_ns
    j = 0
    while True:
        now = clock()
        if now >= end_ns:
            break
        if now >= next_snap_ns:
            if not snaps:
                meter.win_start_ns = now
            snaps.append(snapshot())
            next_snap_ns += SLICE_NS
        due = t0 + int(j * step)
        if due > now:
            await asyncio.sleep((due - now) / 1e9)
            continue
        lags.append(now - due)
        while due <= now:
            k = j % m
            s = sessions[k]
            if not s.closed_early:
                pack_into(hdr, 0, k, s.sent, clock())
                writers[k](head + b64encode(hdr) + suffix)
                s.sent += 1
            j += 1
            due = t0 + int(j * step)
    snaps.append(snapshot())
    res.relay_rss_kib = rss_kib(relay_pids()) if relay_pids else 0

    # ---- drain: wait for the echoes still in flight
    deadline = time.monotonic() + drain_timeout
    while time.monotonic() < deadline:
        if all(s.received >= s.sent or s.closed_early for s in sessions):
            break
        await asyncio.sleep(0.02)
    gc.unfreeze()
    res.sent = sum(s.sent for s in sessions)
    res.received = sum(s.received for s in sessions)
    res.lost = res.sent - res.received
    res.out_of_order = sum(s.out_of_order for s in sessions)
    res.misrouted = sum(s.misrouted for s in sessions)
    res.error_events = sum(s.errors for s in sessions)
    res.closed_early = sum(1 for s in sessions if s.closed_early)
    first_error = next((s.first_error for s in sessions if s.first_error), "")
    if first_error:
        res.notes.append(f"{res.error_events} error events, e.g. {first_error}")
    if res.closed_early:
        res.notes.append(f"{res.closed_early} sessions closed by the server during the run")
    await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)

    # ---- statistics
    if lags:
        res.send_lag_p99_ms = float(np.percentile(np.asarray(lags) / 1e6, 99))
    if len(snaps) >= 2:
        _window_stats(
            res, snaps, meter, m, relay_pids is not None, relay_core, load_core, foreign_limit
        )
    return res


def _window_stats(
    res: RunResult,
    snaps: list[dict[str, Any]],
    meter: Meter,
    m: int,
    has_relay: bool,
    relay_core: int | None,
    load_core: int | None,
    foreign_limit: float,
) -> None:
    """Everything measured over the window, from the clean slices only.

    The window is cut into SLICE_NS slices. A slice in which other processes used more than
    foreign_limit % of either core, and the slice after it (backlog), is contended; latency,
    CPU and frame counts come from the other slices, so a burst of someone else's work on a
    shared machine does not decide the result. Frames lost are counted over the whole run.
    """
    slices = list(itertools.pairwise(snaps))
    clean: list[bool] = []
    foreign_r: list[float] = []
    foreign_l: list[float] = []
    for a, b in slices:
        dt = b["t"] - a["t"]
        fr = fl = 0.0
        if has_relay and relay_core is not None:
            busy, irq = _busy(a, b, relay_core, dt)
            fr = max(0.0, 100 * (busy - irq - (b["relay"] - a["relay"])) / dt)
        if load_core is not None:
            busy, irq = _busy(a, b, load_core, dt)
            own = (b["echo"] - a["echo"]) + (b["self"] - a["self"])
            fl = max(0.0, 100 * (busy - irq - own) / dt)
        foreign_r.append(fr)
        foreign_l.append(fl)
        clean.append(fr <= foreign_limit and fl <= foreign_limit)
    # A contended slice leaves a backlog behind it: drop the slice after it too.
    ok = [c and (i == 0 or clean[i - 1]) for i, c in enumerate(clean)]
    res.slices = len(ok)
    res.clean_slices = sum(ok)
    if res.clean_slices == 0:  # nothing clean: report everything, judged as noisy
        ok = [True] * len(ok)
        res.notes.append("no slice of the window was free of other load")

    def total(key: str) -> float:
        return sum(b[key] - a[key] for (a, b), use in zip(slices, ok, strict=True) if use)

    window = total("t")
    res.window_s = window
    res.frames_in_window = int(total("sent") + total("received"))
    res.echo_cpu_pct = 100 * total("echo") / window
    res.loadgen_cpu_pct = 100 * total("self") / window
    res.relay_core_foreign_pct = float(np.mean(foreign_r)) if has_relay else float("nan")
    res.load_core_foreign_pct = float(np.mean(foreign_l))
    if load_core is not None:
        busy, irq = _busy_total(slices, ok, load_core)
        res.load_core_busy_pct = 100 * busy / window
        res.load_core_irq_pct = 100 * irq / window
    if meter.lats:
        lats = np.asarray(meter.lats, dtype=np.float64) / 1e6
        edges = np.asarray([snap["t_ns"] for snap in snaps], dtype=np.int64)
        idx = np.searchsorted(edges, np.asarray(meter.sent_at, dtype=np.int64), "right") - 1
        idx = np.clip(idx, 0, len(ok) - 1)
        lats = lats[np.asarray(ok, dtype=bool)[idx]]
        if lats.size:
            res.samples = int(lats.size)
            res.rtt_p50_ms, res.rtt_p99_ms = (float(x) for x in np.percentile(lats, [50, 99]))
            res.rtt_max_ms = float(lats.max())
    if not has_relay:
        return
    relay_cpu = total("relay")
    res.relay_cpu_pct = 100 * relay_cpu / window
    if res.frames_in_window:
        res.relay_cpu_us_per_frame = 1e6 * relay_cpu / res.frames_in_window
    if res.relay_cpu_pct > 0:
        res.estimate_sessions = 0.8 / (res.relay_cpu_pct / 100 / m)
    if relay_core is not None:
        busy, irq = _busy_total(slices, ok, relay_core)
        res.relay_core_busy_pct = 100 * busy / window
        res.relay_core_irq_pct = 100 * irq / window


def _busy_total(
    slices: list[tuple[dict[str, Any], dict[str, Any]]], ok: list[bool], core: int
) -> tuple[float, float]:
    busy = irq = 0.0
    for (a, b), use in zip(slices, ok, strict=True):
        if use:
            bu, ir = _busy(a, b, core, b["t"] - a["t"])
            busy += bu
            irq += ir
    return busy, irq


def _busy(
    snap0: dict[str, Any], snap1: dict[str, Any], core: int, window: float
) -> tuple[float, float]:
    """(busy, irq) seconds of one core over the window; busy = window - idle - iowait."""
    idle = snap1["cores"][core][0] - snap0["cores"][core][0]
    irq = snap1["cores"][core][1] - snap0["cores"][core][1]
    return max(0.0, window - idle), irq


# --------------------------------------------------------------------------- orchestration


@dataclass
class Bench:
    args: argparse.Namespace
    relay_core: int | None
    load_core: int | None
    log_dir: Path
    echo: Proc | None = None
    echo_url: str = ""
    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str], core: int | None) -> Proc:
        proc = Proc(name, pinned(argv, core), env, self.log_dir)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc)

    async def start_echo(self) -> None:
        port = free_port()
        argv = [sys.executable, str(BENCH_DIR / "echo_upstream.py"), "--port", str(port)]
        self.echo = self.start("echo", argv, dict(os.environ), self.load_core)
        await wait_healthy(f"http://127.0.0.1:{port}/healthz", self.echo)
        self.echo_url = f"ws://127.0.0.1:{port}/v1/realtime"

    def echo_pids(self) -> list[int]:
        assert self.echo is not None
        return self.echo.pids()

    async def run_direct(self, n: int) -> RunResult:
        return await run_load(
            "direct",
            f"{self.echo_url}?model=gpt-realtime",
            n,
            self.args.duration,
            self.args.warmup,
            None,
            self.echo_pids,
            None,
            self.load_core,
            foreign_limit=self.args.foreign_limit,
        )

    async def run_relay(self, spec: RelaySpec, n: int) -> RunResult:
        port = free_port()
        argv, env = spec.command(port, self.echo_url)
        proc = self.start(spec.name, argv, env, self.relay_core)
        try:
            await wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, limit_s=60)
            url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
            # Warm up (imports, first-session code paths) before the idle RSS reading.
            warm = await run_load(
                spec.name,
                url,
                2,
                0.4,
                0.1,
                proc.pids,
                self.echo_pids,
                self.relay_core,
                self.load_core,
                1.0,
            )
            if warm.connected == 0:
                res = RunResult(target=spec.name, sessions=n, duration_s=self.args.duration)
                res.connect_failed = n
                res.notes.append("warm-up session could not connect: " + "; ".join(warm.notes))
                res.notes.append(proc.log_tail(5))
                return res
            await asyncio.sleep(0.3)
            idle = rss_kib(proc.pids())
            res = await run_load(
                spec.name,
                url,
                n,
                self.args.duration,
                self.args.warmup,
                proc.pids,
                self.echo_pids,
                self.relay_core,
                self.load_core,
                foreign_limit=self.args.foreign_limit,
            )
            res.relay_idle_rss_kib = idle
            if res.connected:
                res.rss_per_session_kib = (res.relay_rss_kib - idle) / res.connected
            if proc.popen.poll() is not None:
                res.notes.append(f"relay exited with {proc.popen.returncode}: {proc.log_tail(5)}")
            return res
        finally:
            self.stop(proc)


def judge(res: RunResult, direct: RunResult | None) -> None:
    if direct is not None and direct.samples and res.samples:
        res.added_p50_ms = res.rtt_p50_ms - direct.rtt_p50_ms
        res.added_p99_ms = res.rtt_p99_ms - direct.rtt_p99_ms
        added99 = res.added_p99_ms
    else:
        added99 = res.rtt_p99_ms  # no floor measured: judge on the raw round trip
    res.passed = bool(
        res.connect_failed == 0
        and res.connected == res.sessions
        and res.sent > 0
        and res.lost == 0
        and res.closed_early == 0
        and res.samples > 0
        and added99 <= P99_LIMIT_MS
    )


# --------------------------------------------------------------------------- report


def _f(x: float, spec: str = ".2f") -> str:
    return "-" if x != x else format(x, spec)  # NaN -> "-"


def print_table(name: str, describe: str, rows: list[RunResult]) -> None:
    print(f"\n== {name}: {describe}")
    print(
        f"{'N':>5} {'rtt p50':>7} {'rtt p99':>7} {'add p50':>7} {'add p99':>7} {'lost':>5}"
        f" {'cpu%':>5} {'µs/frm':>6} {'RSS/sess':>9} {'0.8/cpu':>7}"
        f" | {'R busy':>6} {'irq':>3} {'fgn':>3} | {'lg':>3} {'echo':>4} {'L busy':>6} {'fgn':>3}"
        f" {'clean':>5}  pass"
    )
    for r in rows:
        print(
            f"{r.sessions:>5} {_f(r.rtt_p50_ms):>7} {_f(r.rtt_p99_ms):>7}"
            f" {_f(r.added_p50_ms):>7} {_f(r.added_p99_ms):>7} {r.lost:>5}"
            f" {_f(r.relay_cpu_pct, '.1f'):>5} {_f(r.relay_cpu_us_per_frame, '.1f'):>6}"
            f" {_f(r.rss_per_session_kib, '.1f'):>5} KiB {_f(r.estimate_sessions, '.0f'):>7}"
            f" | {_f(r.relay_core_busy_pct, '.0f'):>6} {_f(r.relay_core_irq_pct, '.0f'):>3}"
            f" {_f(r.relay_core_foreign_pct, '.0f'):>3}"
            f" | {_f(r.loadgen_cpu_pct, '.0f'):>3} {_f(r.echo_cpu_pct, '.0f'):>4}"
            f" {_f(r.load_core_busy_pct, '.0f'):>6} {_f(r.load_core_foreign_pct, '.0f'):>3}"
            f" {r.clean_slices:>2}/{r.slices:<2}  {'yes' if r.passed else 'NO'}"
        )
        for note in r.notes:
            print(f"      note: {note}")


def contended(res: RunResult) -> bool:
    """Was more than half of the window lost to other processes' load on the cores?"""
    return res.slices > 0 and res.clean_slices < 0.5 * res.slices


def summarize(rows: list[RunResult], ref_n: int) -> dict[str, Any]:
    passing = [r.sessions for r in rows if r.passed]
    ref = next((r for r in rows if r.sessions == ref_n), None)
    if ref is None:
        ref = next((r for r in reversed(rows) if r.passed), rows[0] if rows else None)
    return {
        "sessions_per_core": max(passing) if passing else 0,
        "estimate_sessions_per_core": ref.estimate_sessions if ref else float("nan"),
        "ref_sessions": ref.sessions if ref else 0,
        "added_p50_ms": ref.added_p50_ms if ref else float("nan"),
        "added_p99_ms": ref.added_p99_ms if ref else float("nan"),
        "cpu_us_per_frame": ref.relay_cpu_us_per_frame if ref else float("nan"),
        "rss_per_session_kib": ref.rss_per_session_kib if ref else float("nan"),
    }


def print_summary(summary: dict[str, dict[str, Any]], ref_n: int) -> None:
    print(
        "\n== summary: sessions per core = largest N with added p99 <= 20 ms and nothing lost;"
        f"\n   latency, CPU and RSS at {ref_n} sessions (else the largest passing N)"
    )
    print(
        f"{'relay':<9} {'sess/core':>9} {'0.8/cpu':>8} {'add p50 ms':>10} {'add p99 ms':>10}"
        f" {'µs/frame':>8} {'RSS/sess KiB':>12}"
    )
    for name, s in summary.items():
        print(
            f"{name:<9} {s['sessions_per_core']:>9} {_f(s['estimate_sessions_per_core'], '.0f'):>8}"
            f" {_f(s['added_p50_ms'], '.3f'):>10} {_f(s['added_p99_ms'], '.3f'):>10}"
            f" {_f(s['cpu_us_per_frame'], '.1f'):>8} {_f(s['rss_per_session_kib'], '.1f'):>12}"
        )
    if "pipe" in summary:
        base = summary["pipe"]
        for name, s in summary.items():
            if name == "pipe":
                continue
            print(f"\n== {name} vs pipe (same run, same echo upstream)")
            for key, label, better in (
                ("sessions_per_core", "sessions per core", "higher"),
                ("estimate_sessions_per_core", "0.8/cpu estimate", "higher"),
                ("cpu_us_per_frame", "CPU µs per frame", "lower"),
                ("rss_per_session_kib", "RSS KiB per session", "lower"),
            ):
                a, b = float(s[key]), float(base[key])
                ratio = a / b if b and b == b and a == a else float("nan")
                print(
                    f"   {label:<20} {_f(a, '.1f'):>7} / {_f(b, '.1f'):<7} = {_f(ratio)}"
                    f" ({better} is better)"
                )
            # Added latencies are near zero and may be negative, so compare them as differences.
            for key, label in (("added_p50_ms", "added p50"), ("added_p99_ms", "added p99")):
                a, b = float(s[key]), float(base[key])
                print(
                    f"   {label:<20} {_f(a, '.3f'):>7} - {_f(b, '.3f'):<7} = {_f(a - b, '+.3f')} ms"
                )


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Relay benchmark: voxgate vs a minimal aiohttp pipe vs a json relay.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sessions", default=None, help="comma-separated session counts")
    p.add_argument("--duration", type=float, default=None, help="seconds of audio per run")
    p.add_argument("--warmup", type=float, default=None, help="seconds before the window opens")
    p.add_argument(
        "--relays", default="pipe,json,voxgate", help=f"comma-separated subset of {ALL_RELAYS}"
    )
    p.add_argument("--quick", action="store_true", help="100 sessions, 3 s per run (< 60 s)")
    p.add_argument("--ref-sessions", type=int, default=100, help="N for the summary row")
    p.add_argument("--no-direct", action="store_true", help="skip the direct-to-echo floor")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument(
        "--keep-going", action="store_true", help="keep raising N for a relay after it fails"
    )
    p.add_argument(
        "--retries",
        type=int,
        default=1,
        help="measure a failing point again when other processes loaded the cores",
    )
    p.add_argument(
        "--foreign-limit",
        type=float,
        default=20.0,
        help="%% of a core used by other processes that marks a 250 ms slice as contended",
    )
    p.add_argument(
        "--json",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="write results as JSON (default path: bench/results/relay-<time>.json)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.sessions = args.sessions or "100"
        args.duration = args.duration or 3.0
        args.warmup = args.warmup if args.warmup is not None else 1.0
    args.sessions = [
        int(x) for x in (args.sessions or ",".join(map(str, FULL_SESSIONS))).split(",")
    ]
    args.duration = args.duration or 8.0
    if args.warmup is None:
        args.warmup = min(2.0, args.duration / 4)
    args.relays = [r.strip() for r in args.relays.split(",") if r.strip()]
    unknown = set(args.relays) - set(ALL_RELAYS)
    if unknown:
        p.error(f"unknown relays: {sorted(unknown)}")
    return args


def choose_cores(no_pin: bool) -> tuple[int | None, int | None]:
    if no_pin or shutil.which("taskset") is None:
        return None, None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return allowed[0], allowed[1]


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    relay_core, load_core = choose_cores(args.no_pin)
    if load_core is not None:
        os.sched_setaffinity(0, {load_core})
    else:
        print("warning: not pinning (need taskset and 2 allowed cores); numbers are noisier")
    relays = list(args.relays)
    skipped: dict[str, str] = {}
    if "voxgate" in relays:
        ok, why = voxgate_available()
        if not ok:
            relays.remove("voxgate")
            skipped["voxgate"] = why
            print(f"note: voxgate skipped, `python -m voxgate serve --help` failed: {why}")

    log_dir = Path(tempfile.mkdtemp(prefix="voxgate-bench-"))
    bench = Bench(args, relay_core, load_core, log_dir)
    rows: dict[str, list[RunResult]] = {"direct": []} | {r: [] for r in relays}
    alive = set(relays)
    started = time.time()
    print(
        f"relay core {relay_core}, load generator + echo core {load_core};"
        f" sessions {args.sessions}; {args.duration:g} s per run ({args.warmup:g} s warm-up);"
        f" relays {relays}"
    )
    try:
        await bench.start_echo()
        for n in args.sessions:
            direct = None
            if not args.no_direct:
                for attempt in range(args.retries + 1):
                    direct = await bench.run_direct(n)
                    judge(direct, None)
                    if not contended(direct) or attempt == args.retries:
                        break
                    print(f"N={n:<4} direct   other load on the cores, measuring again")
                assert direct is not None
                rows["direct"].append(direct)
                line = (
                    f"N={n:<4} direct   rtt p50 {_f(direct.rtt_p50_ms)}"
                    f" p99 {_f(direct.rtt_p99_ms)} ms"
                )
                print(
                    f"{line}, lost {direct.lost}, load generator + echo"
                    f" {_f(direct.loadgen_cpu_pct + direct.echo_cpu_pct, '.0f')} % of a core"
                )
                if direct.lost or direct.connect_failed:
                    print(f"warning: direct run lost frames at N={n}: the harness is saturated")
            for name in relays:
                if name not in alive:
                    continue
                for attempt in range(args.retries + 1):
                    res = await bench.run_relay(RELAYS[name], n)
                    judge(res, direct)
                    if res.passed or not contended(res):
                        break
                    if attempt < args.retries:
                        print(f"N={n:<4} {name:<8} failed under other load, measuring again")
                if contended(res):
                    res.notes.append(
                        "noisy point: other processes loaded the cores most of the time"
                    )
                rows[name].append(res)
                print(
                    f"N={n:<4} {name:<8} add p50 {_f(res.added_p50_ms)}"
                    f" p99 {_f(res.added_p99_ms)} ms, lost {res.lost},"
                    f" cpu {_f(res.relay_cpu_pct, '.1f')} %,"
                    f" {_f(res.relay_cpu_us_per_frame, '.1f')} µs/frame"
                    f" -> {'pass' if res.passed else 'FAIL'}"
                )
                if not res.passed and not args.keep_going:
                    alive.discard(name)
    finally:
        bench.stop_all()
        shutil.rmtree(log_dir, ignore_errors=True)

    if not args.no_direct:
        print_table(
            "direct", "load generator straight to the echo upstream (the floor)", rows["direct"]
        )
    for name in relays:
        print_table(name, RELAYS[name].describe, rows[name])
    summary = {name: summarize(rows[name], args.ref_sessions) for name in relays}
    print_summary(summary, args.ref_sessions)
    for name, why in skipped.items():
        print(f"\n{name}: not measured ({why})")
    print(f"\ntotal {time.time() - started:.0f} s")
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": {
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "relay_core": relay_core,
            "load_core": load_core,
        },
        "args": {k: v for k, v in vars(args).items() if k != "json"},
        "skipped": skipped,
        "runs": {name: [asdict(r) for r in rs] for name, rs in rows.items()},
        "summary": summary,
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(amain(args))
    if args.json is not None:
        path = (
            Path(args.json)
            if args.json
            else RESULTS_DIR / time.strftime("relay-%Y%m%d-%H%M%S.json")
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(_nan_to_none(report), indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
