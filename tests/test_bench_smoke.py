"""Smoke test for the relay benchmark harness (bench/relay.py) in its quickest mode.

Runs the pipe baseline (5 text sessions, 2 s) and voxgate with its defaults (4 sessions, two
of them voxgate.v1 binary clients), and checks that audio frames flowed both ways through the
relay, none were lost, and voxgate's GC and buffer readings arrived. No timing assertions:
the machine may be busy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _relay_bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "relay.json"
    proc = subprocess.run(  # noqa: S603 (our own interpreter and script)
        [
            sys.executable,
            str(REPO / "bench" / "relay.py"),
            *args,
            "--quiet-wait",
            "0",
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def _check_flowed(run: dict[str, Any], sessions: int) -> None:
    assert run["connected"] == sessions, run
    assert run["sent"] > sessions * 50, run  # about 100 frames per session in 2 s
    assert run["received"] == run["sent"], run
    assert run["lost"] == 0, run
    assert run["misrouted"] == 0, run
    assert run["error_events"] == 0, run
    assert run["samples"] > 0, run


def test_relay_bench_quickest_mode(tmp_path: Path) -> None:
    report = _relay_bench(
        tmp_path, "--relays", "pipe", "--sessions", "5", "--duration", "2", "--retries", "0"
    )
    for target in ("direct", "pipe"):
        (run,) = report["runs"][target]
        _check_flowed(run, 5)
        assert run["clients"] == "text", run
        assert run["binary_sessions"] == 0, run
    pipe = report["runs"]["pipe"][0]
    assert pipe["frames_in_window"] > 0
    assert pipe["relay_cpu_pct"] is not None
    assert pipe["gc_pauses"] is None  # only voxgate exports /metrics


def test_relay_bench_voxgate_mixed_clients(tmp_path: Path) -> None:
    """voxgate with its defaults, text and voxgate.v1 binary clients, /metrics read."""
    report = _relay_bench(
        tmp_path,
        "--relays",
        "voxgate",
        "--sessions",
        "4",
        "--duration",
        "2",
        "--retries",
        "0",
        "--no-direct",
    )
    assert report["args"]["clients"] == "mixed"
    assert report["args"]["turn_detection"] == "none"
    (run,) = report["runs"]["voxgate"]
    _check_flowed(run, 4)
    assert run["binary_sessions"] == 2, run  # the odd-indexed ones
    assert run["gateway_events"] >= 2, run  # voxgate.session.resumable, at least
    assert run["acks_sent"] > 0, run
    assert run["gc_pauses"] is not None, run
    assert run["gc_max_ms"] is not None, run
    assert run["lag_window_max_ms"] is not None, run  # the relay's loop lag, from /metrics
    assert run["buffer_bytes"] > 0, run  # the mirror holds the uncommitted audio
    assert run["buffers_per_session_kib"] is not None, run
    assert run["rss_above_buffers_kib"] is not None, run
    summary = report["summary"]["voxgate"]
    assert summary["clients"] == "mixed"
    assert "gc_p99_ms" in summary
    assert "rss_above_buffers_kib" in summary


def test_resilience_bench_quickest_mode(tmp_path: Path) -> None:
    """bench/resilience.py: a 2-minute mirror simulation and 2 upstream cuts (audio off, on)."""
    report = {}
    for name, args in (
        ("mirror", ["mirror", "--minutes", "2"]),
        ("reconnect", ["reconnect", "--cuts", "2", "--clients", "v1", "--quiet-wait", "0"]),
    ):
        out = tmp_path / f"{name}.json"
        proc = subprocess.run(  # noqa: S603 (our own interpreter and script)
            [sys.executable, str(REPO / "bench" / "resilience.py"), *args, "--json", str(out)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report[name] = json.loads(out.read_text())[name]
    mirror = report["mirror"]
    assert mirror["frames"] == 2 * 60 * 50
    assert mirror["items_kept"] > 0
    assert 0 < mirror["memory_max_bytes"] < 4 * 1024 * 1024
    assert mirror["tracemalloc_peak_bytes"] > 0
    assert mirror["sent_append_ns"] > 0
    runs = report["reconnect"]["runs"]
    assert [run["audio"] for run in runs] == [False, True]
    for run in runs:
        assert run["errors"] == 0, run
        assert [cut["status"] for cut in run["cuts"]] == ["completed", "completed"], run
        assert all(cut["reconnected_ms"] > 0 and cut["gap_ms"] >= 0 for cut in run["cuts"])
        assert run["upstream_connections"] == 3, run
    check = runs[1]["audio_check"]
    assert check["not_a_slice"] == 0, check
    assert check["gaps"] == 0, check
    assert check["tail_ok"], check
