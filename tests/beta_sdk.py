"""The real beta client: openai-python 1.x ``client.beta.realtime`` in its own virtualenv.

Not a test module. voxgate's own test environment has openai 3.x, which no longer has the beta
realtime client, so the beta SDK lives in a virtualenv of its own, made once under
``.pytest_cache/`` (``pip install 'openai[realtime]<2'``) and reused. Scenarios run as a
subprocess (:data:`CLIENT_SCRIPT`) that prints one JSON object: what the SDK received.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".pytest_cache" / "beta-sdk-venv"
REQUIREMENT = "openai[realtime]>=1.60,<2"
CLIENT_SCRIPT = Path(__file__).resolve().parent / "beta_sdk_client.py"
RUN_TIMEOUT_S = 90.0


def beta_python() -> Path:
    """The virtualenv's python with the beta SDK installed (made on first use, under a lock)."""
    python = VENV / "bin" / "python"
    marker = VENV / ".installed"
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / "beta-sdk-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text() == REQUIREMENT and python.exists():
            return python
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        done = subprocess.run(  # noqa: S603 (our own venv's pip, a fixed requirement)
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", REQUIREMENT],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"could not install the beta SDK: {done.stderr[-2000:]}")
        marker.write_text(REQUIREMENT)
    return python


async def run_beta_client(scenario: str, **options: Any) -> dict[str, Any]:
    """Run one scenario of :data:`CLIENT_SCRIPT` with the beta SDK; its JSON result."""
    python = await asyncio.to_thread(beta_python)
    proc = await asyncio.create_subprocess_exec(
        str(python),
        str(CLIENT_SCRIPT),
        scenario,
        json.dumps(options),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise AssertionError(f"beta client failed ({proc.returncode}): {err.decode()[-3000:]}")
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result


def sdk_version() -> str:
    python = beta_python()
    done = subprocess.run(  # noqa: S603
        [str(python), "-c", "import openai; print(openai.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


__all__ = ["beta_python", "run_beta_client", "sdk_version", "sys"]
