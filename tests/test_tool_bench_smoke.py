"""Smoke test for bench/tool_latency.py's overhead part: 30 server tool calls through a voxgate
subprocess; every call measured, none leaked to the client. No timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_tool_latency_overhead_quickest_mode() -> None:
    proc = subprocess.run(  # noqa: S603 (our own interpreter and script)
        [sys.executable, str(REPO / "bench" / "tool_latency.py"), "--only", "overhead",
         "--calls", "30", "--no-pin"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)["overhead"]
    assert report["calls"] == 20  # the first 10 are left out as warm-up
    assert report["client_saw_function_call_events"] == []
    assert report["client_responses"] >= 29  # one visible answer per call
    assert report["p50_ms"] > 0
