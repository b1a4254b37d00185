"""A real ``redis-server`` for tests: started on a Unix socket in a temp dir, stopped after.

Not a test module. No TCP port is taken (nothing to race for); readiness is the server's own
"Ready to accept connections" line, not a sleep. Skips (with the reason) when redis-server is
not installed (``scripts/system-deps`` installs it).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

READY = "ready to accept connections"  # 7.0: "The server is now ready to …"


@dataclass
class RedisServer:
    proc: subprocess.Popen[str]
    socket: Path

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def cli(self, *args: str) -> str:
        """Run ``redis-cli`` against this server; its stdout."""
        done = subprocess.run(  # noqa: S603 (redis-cli, our own arguments)
            ["redis-cli", "-s", str(self.socket), *args],  # noqa: S607
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        return done.stdout.strip()


def require_redis() -> str:
    path = shutil.which("redis-server")
    if path is None:
        pytest.skip("needs redis-server (apt-get install redis-server; scripts/system-deps)")
    return path


@contextmanager
def redis_server(*extra: str) -> Iterator[RedisServer]:
    """A fresh redis-server (no persistence) listening on a Unix socket only."""
    binary = require_redis()
    with tempfile.TemporaryDirectory(prefix="vg-redis-") as tmp:
        sock = Path(tmp) / "redis.sock"
        proc = subprocess.Popen(  # noqa: S603 (the installed redis-server)
            [
                binary,
                "--port",
                "0",
                "--unixsocket",
                str(sock),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if READY in line.lower():
                    break
            else:
                raise AssertionError(f"redis-server exited with {proc.wait()}")
            # keep draining its log so the pipe never fills up
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            yield RedisServer(proc, sock)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
