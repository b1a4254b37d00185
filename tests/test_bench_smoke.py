"""Smoke test for the relay benchmark harness (bench/relay.py) in its quickest mode.

Runs the pipe baseline only, 5 sessions for 2 s, and checks that audio frames flowed both
ways through the relay and none were lost. No timing assertions: the machine may be busy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_relay_bench_quickest_mode(tmp_path: Path) -> None:
    out = tmp_path / "relay.json"
    proc = subprocess.run(  # noqa: S603 (our own interpreter and script)
        [
            sys.executable,
            str(REPO / "bench" / "relay.py"),
            "--relays",
            "pipe",
            "--sessions",
            "5",
            "--duration",
            "2",
            "--retries",
            "0",
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    for target in ("direct", "pipe"):
        (run,) = report["runs"][target]
        assert run["connected"] == 5, run
        assert run["sent"] > 5 * 50, run  # about 100 frames per session in 2 s
        assert run["received"] == run["sent"], run
        assert run["lost"] == 0, run
        assert run["misrouted"] == 0, run
        assert run["samples"] > 0, run
    pipe = report["runs"]["pipe"][0]
    assert pipe["frames_in_window"] > 0
    assert pipe["relay_cpu_pct"] is not None


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
