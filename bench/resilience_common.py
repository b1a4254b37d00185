"""Shared plumbing for ``bench/resilience.py``: processes, voxgate, statistics, tables.

Processes, pinning, RSS and CPU readings come from ``bench/relay_procs.py`` (imported as a module:
this directory is on ``sys.path`` when a bench script runs), so every benchmark here starts
and stops its children the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import numpy as np

import relay_procs
from relay_procs import BENCH_DIR, CLIENT_KEY, UPSTREAM_KEY, Proc, free_port, pinned, rss_kib
from relay_report import nan_to_none

RESULTS_DIR = BENCH_DIR / "results"
#: (monotonic s, per core (idle s, irq s), per core CPU s of this benchmark's own processes)
Snapshot = tuple[float, dict[int, tuple[float, float]], dict[int, float]]
T = TypeVar("T")
SECRET = "voxgate-bench-resilience-secret-0001"  # noqa: S105 (signs bench resume tokens)
__all__ = ["CLIENT_KEY", "UPSTREAM_KEY", "Procs", "free_port", "rss_kib"]


# --------------------------------------------------------------------------- statistics


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else math.nan


def dist(values: Sequence[float]) -> dict[str, float]:
    """n, p50, p95, p99, max of a sample (NaN when empty)."""
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "p99": pct(values, 99),
        "max": max(values) if len(values) else math.nan,
    }


def f(x: Any, spec: str = ".1f") -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def table(title: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A right-aligned text table; floats with one decimal unless already strings."""
    cells = [[f(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)
    ]
    print(f"\n== {title}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def write_json(report: dict[str, Any], path: str, command: str) -> Path:
    out = (
        Path(path)
        if path
        else RESULTS_DIR / time.strftime(f"resilience-{command}-%Y%m%d-%H%M%S.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(nan_to_none(report), indent=1, default=str) + "\n")
    return out


def machine() -> dict[str, Any]:
    load: list[str] = []
    with contextlib.suppress(OSError):
        load = Path("/proc/loadavg").read_text().split()[:3]
    return {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "cpu_model": relay_procs.cpu_model(),
        "loadavg_at_start": load,
    }


# --------------------------------------------------------------------------- processes


@dataclass
class Procs:
    """Children of one benchmark run, all stopped (whole process groups) by :meth:`stop_all`."""

    log_dir: Path
    relay_core: int | None
    load_core: int | None
    procs: list[Proc] = field(default_factory=list)
    cores: dict[int, int | None] = field(default_factory=dict)  # pid -> core it is pinned to
    extra_load_pids: list[int] = field(default_factory=list)  # e.g. the probe process
    retired_cpu_s: dict[int | None, float] = field(default_factory=dict)  # of stopped procs

    def start(self, name: str, argv: list[str], env: dict[str, str], core: int | None) -> Proc:
        proc = Proc(name, pinned(argv, core), env, self.log_dir)
        self.procs.append(proc)
        self.cores[proc.pid] = core
        return proc

    def own_cpu_s(self, core: int | None) -> float:
        """CPU seconds so far of what this benchmark runs on ``core`` (itself included)."""
        pids = [pid for p in self.procs if self.cores.get(p.pid) == core for pid in p.pids()]
        if core == self.load_core:
            pids += [os.getpid(), *self.extra_load_pids]
        return relay_procs.cpu_seconds(pids) + self.retired_cpu_s.get(core, 0.0)

    def snapshot(self) -> Snapshot:
        cores = [c for c in (self.relay_core, self.load_core) if c is not None]
        return (
            time.monotonic(),
            relay_procs.core_seconds(cores),
            {c: self.own_cpu_s(c) for c in cores},
        )

    def foreign(self, since: Snapshot, until: Snapshot | None = None) -> dict[str, float]:
        """% of each core used by other processes between two snapshots (relay_load.py's way)."""
        t1, cores1, own1 = until or self.snapshot()
        t0, cores0, own0 = since
        wall = max(1e-6, t1 - t0)
        out = {}
        for name, core in (("voxgate_core", self.relay_core), ("load_core", self.load_core)):
            if core is None or core not in cores0 or core not in cores1:
                continue
            idle = cores1[core][0] - cores0[core][0]
            irq = cores1[core][1] - cores0[core][1]
            own = own1.get(core, 0.0) - own0.get(core, 0.0)
            out[name] = max(0.0, 100 * (wall - idle - irq - own) / wall)
        return out

    def clean(self, snaps: list[Snapshot], limit_pct: float) -> list[tuple[float, float]]:
        """The (start, end) monotonic times of slices between snapshots in which other
        processes used at most ``limit_pct`` of each core, and neither did the slice before
        (its backlog), as relay_load.py's contention filter."""
        out, before = [], True
        for a, b in itertools.pairwise(snaps):
            ok = all(v <= limit_pct for v in self.foreign(a, b).values())
            if ok and before:
                out.append((a[0], b[0]))
            before = ok
        return out

    async def quiet(self, limit_pct: float, max_wait_s: float) -> float:
        """Wait (up to ``max_wait_s``) for a second in which other processes used less than
        ``limit_pct`` of each core; returns how long it waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < max_wait_s:
            snap = self.snapshot()
            await asyncio.sleep(1.0)  # a measurement interval, not synchronisation
            if all(v <= limit_pct for v in self.foreign(snap).values()):
                break
        return time.monotonic() - t0

    def stop(self, proc: Proc) -> None:
        core = self.cores.get(proc.pid)
        spent = relay_procs.cpu_seconds(proc.pids())  # keeps the contention accounting right
        proc.stop()
        self.retired_cpu_s[core] = self.retired_cpu_s.get(core, 0.0) + spent
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc)

    async def echo(self) -> tuple[Proc, str]:
        """``bench/echo_upstream.py`` on the load core; returns it and its realtime URL."""
        port = free_port()
        argv = [sys.executable, str(BENCH_DIR / "echo_upstream.py"), "--port", str(port)]
        # server_vad, as when the results in bench/README.md were taken (the echo's default is
        # now push-to-talk, which makes voxgate's mirror keep all pending audio: relay.py).
        argv += ["--turn-detection", "server_vad"]
        proc = self.start("echo", argv, dict(os.environ), self.load_core)
        await relay_procs.wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
        return proc, f"ws://127.0.0.1:{port}/v1/realtime"

    async def voxgate(self, upstream: str, name: str = "voxgate", **env: str) -> Voxgate:
        """``python -m voxgate serve --backend openai`` on the relay core, healthy.

        The environment's own ``VOXGATE_*`` settings are dropped so a developer's shell does
        not change what is measured; ``env`` adds settings (``VOXGATE_PING_INTERVAL_S="1"``).
        """
        port = free_port()
        argv = [sys.executable, "-m", "voxgate", "serve", "--backend", "openai"]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
        environ.update(
            {
                "VOXGATE_OPENAI_URL": upstream,
                "OPENAI_API_KEY": UPSTREAM_KEY,
                "VOXGATE_API_KEYS": CLIENT_KEY,
                "VOXGATE_SECRET": SECRET,
                "VOXGATE_LOG_LEVEL": "warning",
                "VOXGATE_LOG_FORMAT": "json",
                **env,
            }
        )
        proc = self.start(name, argv, environ, self.relay_core)
        await relay_procs.wait_healthy(f"http://127.0.0.1:{port}/healthz", proc, limit_s=60)
        return Voxgate(proc, port)


@dataclass
class Voxgate:
    proc: Proc
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime?model=gpt-realtime"

    def rss_kib(self) -> int:
        return rss_kib(self.proc.pids())

    def log(self, event: str | None = None) -> list[dict[str, Any]]:
        """voxgate's JSON log lines so far (optionally only one event name)."""
        self.proc._log.flush()
        out = []
        for line in self.proc.log_path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if event is None or rec.get("event") == event:
                    out.append(rec)
        return out

    async def metrics(self) -> dict[str, float]:
        """``GET /metrics`` as {sample name with labels: value}."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.port}/metrics") as resp,
        ):
            text = await resp.text()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out


async def measured(procs: Procs, args: Any, run: Awaitable[T]) -> tuple[T, dict[str, float]]:
    """Wait for a quiet machine (``--quiet-wait``), then await ``run``; also return the share
    of each core other processes used meanwhile (``voxgate_core``, ``load_core`` in %)."""
    waited = await procs.quiet(args.quiet_pct, args.quiet_wait) if args.quiet_wait else 0.0
    snap = procs.snapshot()
    result = await run
    return result, {"waited_s": waited, **procs.foreign(snap)}


def fgn(c: dict[str, float]) -> str:
    """Other processes' load, for a progress line."""
    return (
        f"other load {f(c.get('voxgate_core'), '.0f')}% / {f(c.get('load_core'), '.0f')}%"
        f" of the voxgate / load core (waited {c.get('waited_s', 0):.0f} s for quiet)"
    )


def causes(metrics: dict[str, float]) -> dict[str, int]:
    """``voxgate_sessions_total{cause=...}`` as {cause: count}."""
    out = {}
    for name, value in metrics.items():
        if name.startswith("voxgate_sessions_total{") and value:
            out[name.split('"')[1]] = int(value)
    return out
