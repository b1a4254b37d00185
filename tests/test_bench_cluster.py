"""bench/cluster.py still runs (issue 17): one kill, two sessions for two seconds, one round."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cluster_helpers import nginx_binary
from redis_helpers import require_redis

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_cluster_bench_quickest_mode() -> None:
    nginx_binary()
    require_redis()
    proc = subprocess.run(  # noqa: S603 (our own interpreter and script)
        [
            sys.executable,
            str(REPO / "bench" / "cluster.py"),
            *("--kills", "1", "--sessions", "2", "--seconds", "2", "--rounds", "1"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for name in ("resumed", "audio"):
        assert re.search(rf"kill -9 -> {name}\s+n=1 p50=\s*[\d.]+ ms", out), out
    assert re.search(r"redis / memory CPU: [\d.]+", out), out
    assert re.search(r"Redis per session-second: [\d.]+ script calls", out), out
