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
