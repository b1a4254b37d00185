"""bench/webrtc.py still runs: one WebRTC and one WebSocket caller through voxgate and the echo
upstream, short window, no pinning (the numbers are not checked here, only that they exist)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parent.parent


def test_webrtc_bench_cpu_part_runs(tmp_path: Path) -> None:
    out = tmp_path / "webrtc.json"
    proc = subprocess.run(  # noqa: S603 (our own interpreter and script)
        [
            sys.executable,
            str(REPO / "bench" / "webrtc.py"),
            "--cpu-only",
            "--levels",
            "1",
            "--window",
            "2",
            "--no-pin",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["codec"]["encode_us_per_frame"] > 0
    rows = {row["mode"]: row for row in report["cpu"]["rows"]}
    assert set(rows) == {"webrtc", "websocket"}
    for row in rows.values():
        assert row["server_cpu_per_call"] > 0
        assert row["frames_per_s_min"] > 0  # the assistant's audio came back to every caller
