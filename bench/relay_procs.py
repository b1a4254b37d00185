"""Processes and readings for the relay benchmark: start, pin and stop relays; read /proc.

Owns: the relays under test (:data:`RELAYS`, how each is started), child processes in their own
process groups (:class:`Proc`), CPU and RSS readings from ``/proc``, core accounting from
``/proc/stat``, and voxgate's ``GET /metrics`` (Prometheus text: GC pauses and what the live
sessions' buffers hold, :func:`scrape` and :func:`gc_window`). Does not generate load or
print reports (``relay_load.py``, ``relay.py``). ``bench/resilience*.py`` use it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
CLIENT_KEY = "vk-bench"
UPSTREAM_KEY = "sk-bench-upstream"
CLK_TCK = os.sysconf("SC_CLK_TCK")

ALL_RELAYS = ("pipe", "json", "voxgate", "voxgate-norecover")
#: Relays that speak voxgate's ``voxgate.v1`` subprotocol, so they get binary clients.
V1_RELAYS = frozenset({"voxgate", "voxgate-norecover"})


# --------------------------------------------------------------------------- /proc


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


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def choose_cores(no_pin: bool) -> tuple[int | None, int | None]:
    """(relay core, load core): the first two allowed cores, or (None, None) unpinned."""
    if no_pin or shutil.which("taskset") is None:
        return None, None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return allowed[0], allowed[1]


# --------------------------------------------------------------------------- processes


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

Command = Callable[[int, str], tuple[list[str], dict[str, str]]]  # (port, upstream url)


@dataclass
class RelaySpec:
    name: str
    describe: str
    command: Command
    v1: bool = False  # understands voxgate.v1: binary clients, voxgate.* events, /metrics


def _script(script: str) -> Command:
    def command(port: int, upstream: str) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, str(BENCH_DIR / script), "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--upstream", upstream]
        return argv, {**os.environ, "OPENAI_API_KEY": UPSTREAM_KEY}

    return command


def voxgate_command(port: int, upstream: str) -> tuple[list[str], dict[str, str]]:
    """voxgate as a user runs it: only what reaches the echo and authenticates is set.

    The shell's own ``VOXGATE_*`` variables are dropped, so recovery, the mirror, pacing,
    resume and heartbeats run with their defaults whatever the developer's environment says.
    """
    argv = [sys.executable, "-m", "voxgate", "serve", "--backend", "openai"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env |= {
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
    "voxgate": RelaySpec(
        "voxgate", "python -m voxgate serve --backend openai (defaults)", voxgate_command, v1=True
    ),
    "voxgate-norecover": RelaySpec(
        "voxgate-norecover",
        "voxgate with upstream recovery off (VOXGATE_RECONNECT_ATTEMPTS=0): the mirror's cost",
        _without_recovery,
        v1=True,
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


# --------------------------------------------------------------------------- /metrics

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
GC_PREFIX = "voxgate_gc_pause_"
LAG_PREFIX = "voxgate_event_loop_lag_"
BUFFER_GAUGE = "voxgate_session_buffer_bytes"

#: One scrape: {(name, ((label, value), ...)): value}, only voxgate's GC, loop lag and buffer
#: samples.
Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Metrics:
    """The GC pause, loop lag and buffer samples of a Prometheus text exposition."""
    out: Metrics = {}
    for line in text.splitlines():
        if not line.startswith((GC_PREFIX, LAG_PREFIX, BUFFER_GAUGE)):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        labels = tuple(sorted(_LABEL.findall(m.group(2) or "")))
        with contextlib.suppress(ValueError):
            out[(m.group(1), labels)] = float(m.group(3))
    return out


async def scrape(http: aiohttp.ClientSession, url: str) -> Metrics | None:
    """GET ``url`` (voxgate's /metrics) and parse it; None if it could not be read."""
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            if resp.status != 200:
                return None
            return parse_metrics(await resp.text())
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None


def buffer_bytes(m: Metrics) -> float:
    return m.get((BUFFER_GAUGE, ()), math.nan)


def gc_window(start: Metrics, end: Metrics) -> dict[str, Any]:
    """GC pauses between two scrapes: count, full (gen 2) ones, p99, max gauge, window max.

    The p99 is estimated from the bucket deltas as the upper edge of the bucket that holds the
    99th percentile pause (``inf`` when it lies past the last bucket). ``max_ms`` is the
    ``voxgate_gc_pause_max_seconds`` gauge at ``end``: the longest pause since voxgate started,
    which includes collections before the window (voxgate's own ``gc.collect()`` at startup).
    ``window_max_ms`` is the longest pause between the scrapes: the gauge itself when it rose
    in the window (``window_max_exact``), else the upper edge of the highest bucket any pause in
    the window fell into (a bound).
    """
    return histogram_window(start, end, GC_PREFIX)


def lag_window(start: Metrics, end: Metrics) -> dict[str, Any]:
    """The event loop's lag between two scrapes (``voxgate_event_loop_lag_*``), read as
    :func:`gc_window` reads pauses; ``over``: ticks that ran more than 5 ms late."""
    return histogram_window(start, end, LAG_PREFIX, over_s=0.005)


def histogram_window(
    start: Metrics, end: Metrics, prefix: str, over_s: float | None = None
) -> dict[str, Any]:
    """``<prefix>seconds`` (histogram, maybe by ``generation``) and ``<prefix>max_seconds``
    (gauge) between two scrapes; see :func:`gc_window`."""
    buckets: dict[float, float] = {}  # le -> pauses in the window with duration <= le
    count = gen2 = 0.0
    for (name, labels), value in end.items():
        delta = value - start.get((name, labels), 0.0)
        lab = dict(labels)
        if name == prefix + "seconds_bucket":
            le = float(lab["le"])  # "+Inf" parses as inf
            buckets[le] = buckets.get(le, 0.0) + delta
        elif name == prefix + "seconds_count":
            count += delta
            if lab.get("generation") == "2":
                gen2 += delta
    p99 = top = math.nan
    if count > 0:
        edges = sorted(buckets)
        p99 = next((le for le in edges if buckets[le] >= 0.99 * count), math.inf)
        top = next((le for le in edges if buckets[le] >= count), math.inf)
    gauge = prefix + "max_seconds"
    longest = end.get((gauge, ()), math.nan)
    rose = longest > start.get((gauge, ()), math.nan)
    return {
        "count": round(count),
        "gen2": round(gen2),
        "p99_ms": 1e3 * p99,
        "max_ms": 1e3 * longest,
        "window_max_ms": 1e3 * (longest if rose else top),
        "window_max_exact": bool(rose),
        "over": round(count - buckets.get(over_s, count)) if over_s is not None else None,
    }
