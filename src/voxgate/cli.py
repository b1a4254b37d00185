"""``voxgate serve``: run the gateway. CLI flags override environment and ``.env``.

This is the one module allowed to write to stdout: the first-run server key and the URLs a
person needs to get started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from pydantic import SecretStr, ValidationError

from voxgate import __version__
from voxgate.app import DRAINING, ENDPOINT, create_app
from voxgate.auth.server_keys import generate_server_key
from voxgate.config import Settings
from voxgate.observability.logging import configure_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxgate", description="Realtime voice gateway.")
    parser.add_argument("--version", action="version", version=f"voxgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    serve.add_argument("--backend", choices=["local", "openai"], help="default: local")
    serve.add_argument("--openai-url", dest="openai_url", help="upstream realtime URL")
    serve.add_argument(
        "--log-level", dest="log_level", choices=["debug", "info", "warning", "error"]
    )
    serve.add_argument("--log-format", dest="log_format", choices=["console", "json"])
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds to let sessions finish after SIGTERM (default 30)",
    )
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        k: v
        for k, v in vars(args).items()
        if k in {"host", "port", "backend", "openai_url", "log_level", "log_format"}
        and v is not None
    }
    return Settings(**overrides)


def _console_url(app: web.Application, host: str, port: int) -> str:
    """The console link with a one-time login token (valid 24 h, works once)."""
    from voxgate.auth.console import CONSOLE_AUTH, new_login_url

    if CONSOLE_AUTH not in app:
        return "(console not installed)"
    # A wildcard bind address is not something a browser can open.
    shown = "localhost" if host in {"0.0.0.0", "::", ""} else host  # noqa: S104
    return new_login_url(app, f"http://{shown}:{port}", ttl_s=24 * 3600)


async def _serve(settings: Settings, drain_timeout_s: float, generated_key: str | None) -> None:
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        max_field_size=settings.max_header_bytes,
        access_log=None,
        shutdown_timeout=drain_timeout_s,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    await site.start()
    # Startup objects (modules, models) live for the whole process: keep them out of every
    # full collection, which otherwise pauses all sessions for tens of ms (bench/resilience.py).
    gc.collect()
    gc.freeze()
    port = int(runner.addresses[0][1]) if runner.addresses else settings.port
    base = f"http://{settings.host}:{port}"
    sys.stdout.write(
        f"voxgate {__version__} serving backend '{settings.backend}' on {base}\n"
        f"  realtime: ws://{settings.host}:{port}/v1/realtime?model={settings.default_model}\n"
        f"  console:  {_console_url(app, settings.host, port)}\n"
    )
    if generated_key:
        sys.stdout.write(
            f"  server key (generated for this run; set VOXGATE_API_KEYS to keep one): "
            f"{generated_key}\n"
        )
    sys.stdout.flush()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # Drain: refuse new work (readyz says so), stop listening, let sessions end, then exit.
    app[DRAINING][0] = True
    await site.stop()
    app[ENDPOINT].end_detached()  # their clients would resume on another node
    await app[ENDPOINT].wait_idle(drain_timeout_s)
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ValidationError as exc:
        sys.stderr.write(f"voxgate: invalid configuration:\n{exc}\n")
        return 2
    generated = None
    if not settings.api_keys:
        generated = generate_server_key()
        settings.api_keys = [SecretStr(generated)]
    secrets_to_mask = [*settings.api_key_values()]
    for secret in (settings.openai_api_key, settings.secret):
        if secret is not None:
            secrets_to_mask.append(secret.get_secret_value())
    configure_logging(settings.log_level, settings.log_format, known_secrets=tuple(secrets_to_mask))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(settings, args.drain_timeout, generated))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
