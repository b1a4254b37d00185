"""``voxgate serve``: run the gateway. CLI flags override environment and ``.env``.

This is the one module allowed to write to stdout and stderr directly: the first-run server
key, the URLs a person needs to get started, what a drain is waiting for, and start-up errors.
With ``--log-format json`` (``VOXGATE_LOG_FORMAT=json``) each of those is one JSON object per
line too, so every line the process writes parses as JSON.

Start-up order: settings (a bad value names its environment variable), warnings for unknown
``VOXGATE_*`` variables, paths, then the port is bound, and only then are models loaded. A
start-up failure is one sentence on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from aiohttp import web
from pydantic import SecretStr, ValidationError

from voxgate import __version__
from voxgate.app import HEALTH, METRICS, create_app
from voxgate.auth.server_keys import generate_server_key
from voxgate.config import Settings
from voxgate.observability.health import DETAILS
from voxgate.observability.logging import configure_logging
from voxgate.protocol.redaction import redact
from voxgate.runtime import fix_mmap_threshold, mmap_threshold_for
from voxgate.server import Serving, drain, serve
from voxgate.startup import (
    StartupError,
    bind,
    check_paths,
    cli_flags,
    dotenv_names,
    settings_error,
    unknown_env_warnings,
)
from voxgate.tls import TlsError, TlsSetup
from voxgate.tls import setup as tls_setup

_FLAG_FIELDS = (
    "host",
    "port",
    "backend",
    "openai_url",
    "log_level",
    "log_format",
    "tls_cert",
    "tls_key",
    "tls_dev",
    "tls_dev_dir",
)
#: Exit code after a second Ctrl+C (the shell's 128 + SIGINT).
EXIT_INTERRUPTED = 130
#: After a second Ctrl+C, give open sessions this long to be told (1001) before exiting.
_FORCED_EXIT_GRACE_S = 1.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxgate", description="Realtime voice gateway.")
    parser.add_argument("--version", action="version", version=f"voxgate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve", help="run the gateway")
    serve_cmd.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    serve_cmd.add_argument("--backend", choices=["local", "openai"], help="default: local")
    serve_cmd.add_argument("--openai-url", dest="openai_url", help="upstream realtime URL")
    serve_cmd.add_argument(
        "--log-level", dest="log_level", choices=["debug", "info", "warning", "error"]
    )
    serve_cmd.add_argument("--log-format", dest="log_format", choices=["console", "json"])
    tls = serve_cmd.add_argument_group("TLS (https and wss)")
    tls.add_argument("--tls-cert", dest="tls_cert", metavar="FILE", help="PEM certificate chain")
    tls.add_argument("--tls-key", dest="tls_key", metavar="FILE", help="PEM private key")
    tls.add_argument(
        "--tls-dev",
        dest="tls_dev",
        action="store_true",
        default=None,
        help="make (once) and use a self-signed certificate for this machine; prints its "
        "SHA-256 fingerprint",
    )
    tls.add_argument(
        "--tls-dev-dir", dest="tls_dev_dir", metavar="DIR", help="where --tls-dev keeps it"
    )
    serve_cmd.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds to let sessions finish after SIGTERM or Ctrl+C (default 30)",
    )
    return parser


class Say:
    """What the CLI tells a person: plain sentences, or JSON lines with ``--log-format json``."""

    def __init__(self, *, json: bool, out: TextIO | None = None, err: TextIO | None = None):
        self.json = json
        #: exact secrets masked in a crash report (the configured keys, once known)
        self.secrets: tuple[str, ...] = ()
        self._out = out or sys.stdout
        self._err = err or sys.stderr

    def error(self, message: str) -> None:
        self._write(self._err, "error", "voxgate.startup_failed", f"voxgate: {message}", message)

    def warning(self, message: str) -> None:
        self._write(
            self._err, "warning", "voxgate.warning", f"voxgate: warning: {message}", message
        )

    def crash(self, exc: BaseException) -> None:
        message = redact(f"voxgate stopped: {type(exc).__name__}: {exc}", self.secrets)
        trace = redact("".join(traceback.format_exception(exc)), self.secrets)
        self._write(self._err, "error", "voxgate.crashed", message, message, traceback=trace)

    def note(self, message: str, **fields: Any) -> None:
        self._write(self._out, "info", "voxgate.note", message, message, **fields)

    def banner(self, text: str, **fields: Any) -> None:
        self._write(self._out, "info", "voxgate.serving", text, None, **fields)

    def _write(
        self, stream: TextIO, level: str, event: str, text: str, message: str | None, **fields: Any
    ) -> None:
        if self.json:
            record: dict[str, Any] = {
                # the same shape as structlog's TimeStamper(fmt="iso", utc=True)
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "level": level,
                "event": event,
            }
            if message is not None:
                record["message"] = message
            text = orjson.dumps({**record, **fields}).decode()
        stream.write(text.rstrip("\n") + "\n")
        stream.flush()


def _settings(args: argparse.Namespace) -> tuple[Settings, dict[str, str]]:
    overrides: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k in _FLAG_FIELDS and v is not None
    }
    flags = cli_flags(overrides)
    try:
        return Settings(**overrides), flags
    except ValidationError as exc:
        raise settings_error(exc, flags) from None


def _console_url(app: web.Application, host: str, port: int, scheme: str = "http") -> str:
    """The console link with a one-time login token (valid 24 h, works once)."""
    from voxgate.auth.console import CONSOLE_AUTH, new_login_url

    if CONSOLE_AUTH not in app:
        return "(console not installed)"
    return new_login_url(app, f"{scheme}://{_shown_host(host)}:{port}", ttl_s=24 * 3600)


def _shown_host(host: str) -> str:
    # A wildcard bind address is not something a browser can open.
    return "localhost" if host in {"0.0.0.0", "::", ""} else host  # noqa: S104


def _banner(
    say: Say,
    app: web.Application,
    settings: Settings,
    port: int,
    key: str | None,
    tls: TlsSetup | None = None,
) -> None:
    host = settings.host
    http, ws = ("https", "wss") if tls else ("http", "ws")
    console = _console_url(app, host, port, http)
    realtime = f"{ws}://{_shown_host(host)}:{port}/v1/realtime?model={settings.default_model}"
    lines = [
        f"voxgate {__version__} serving backend '{settings.backend}' on {http}://{host}:{port}",
        f"  realtime: {realtime}",
        f"  http fallback (SSE): {http}://{_shown_host(host)}:{port}/v1/realtime/sse",
        f"  console:  {console}",
    ]
    if tls is not None:
        kind = "development certificate (self-signed)" if tls.dev else "certificate"
        lines.append(f"  tls: {kind} {tls.cert_path}")
        lines.append(f"  tls SHA-256 fingerprint: {tls.fingerprint_sha256}")
    if key:
        lines.append(
            f"  server key (generated for this run; set VOXGATE_API_KEYS to keep one): {key}"
        )
    fields: dict[str, Any] = {
        "version": __version__,
        "backend": settings.backend,
        "url": f"{http}://{host}:{port}",
        "port": port,
        "realtime": realtime,
        "console": console,
    }
    if tls is not None:
        fields["tls_cert"] = str(tls.cert_path)
        fields["tls_fingerprint_sha256"] = tls.fingerprint_sha256
        fields["tls_dev"] = tls.dev
    if key:
        fields["server_key"] = key
    say.banner("\n".join(lines), **fields)


async def _warn_if_unreachable(app: web.Application, say: Say) -> None:
    """``serve`` says at start when the backend cannot be reached (``/readyz`` keeps saying)."""
    problem = await app[HEALTH].check()
    if problem is not None:
        say.warning(
            f"the backend is not ready ({problem}): {DETAILS.get(problem, '')} "
            "/readyz reports it until this is fixed."
        )


async def _serve(
    settings: Settings,
    socks: list[socket.socket],
    drain_timeout_s: float,
    generated_key: str | None,
    say: Say,
    tls: TlsSetup | None = None,
) -> int:
    runs_whisper = settings.backend == "local" and settings.asr == "whisper"
    fix_mmap_threshold(
        mmap_threshold_for(settings.malloc_mmap_threshold_bytes, runs_whisper=runs_whisper)
    )
    try:
        app = create_app(settings)  # models start loading here, after the port is ours
    except (OSError, UnicodeError, ValueError) as exc:
        raise StartupError(f"could not start: {type(exc).__name__}: {exc}") from None
    serving = await serve(
        app,
        settings,
        socks,
        shutdown_timeout_s=drain_timeout_s,
        ssl_context=tls.context if tls else None,
    )
    # Startup objects (modules, models) live for the whole process: keep them out of every
    # full collection, which otherwise pauses all sessions for tens of ms (bench/resilience.py).
    gc.collect()
    gc.freeze()
    app[METRICS].gc.install()  # after that deliberate collection: pauses sessions can feel
    _banner(say, app, settings, serving.port, generated_key, tls)
    checking = asyncio.create_task(_warn_if_unreachable(app, say))

    signals = asyncio.Queue[signal.Signals]()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, signals.put_nowait, sig)
    first = await signals.get()
    checking.cancel()
    forced = asyncio.Event()

    async def second_signal() -> None:
        await signals.get()
        forced.set()

    waiter = asyncio.create_task(second_signal())
    hint = "; press Ctrl+C again to exit now" if first == signal.SIGINT else ""

    def report(message: str, open_sessions: int) -> None:
        say.note(message + (hint if open_sessions else ""), open_sessions=open_sessions)

    try:
        completed = await drain(app, serving, drain_timeout_s, report=report, forced=forced)
    finally:
        waiter.cancel()
    if not completed and forced.is_set():
        say.note("exiting now; open sessions were told to reconnect (1001).")
        await _cleanup(serving, limit_s=_FORCED_EXIT_GRACE_S)
        return EXIT_INTERRUPTED
    await serving.runner.cleanup()
    return 0


async def _cleanup(serving: Serving, *, limit_s: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit_s):
            await serving.runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    wants_json = (args.log_format or os.environ.get("VOXGATE_LOG_FORMAT", "")) == "json"
    say = Say(json=wants_json)
    try:
        return _run(args, say)
    except StartupError as exc:
        say.error(str(exc))
        return 2
    except KeyboardInterrupt:  # Ctrl+C before the server was up (models still loading)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: with JSON logs the traceback is a field of one line
        if not say.json:
            raise
        say.crash(exc)
        return 1


def _run(args: argparse.Namespace, say: Say) -> int:
    for warning in unknown_env_warnings(os.environ, dotenv_names()):
        say.warning(warning)  # first: a typo may be why a setting below looks wrong
    settings, _ = _settings(args)
    say.json = settings.log_format == "json"
    check_paths(settings)
    generated = None
    if not settings.api_keys:
        generated = generate_server_key()
        settings.api_keys = [SecretStr(generated)]
    secrets_to_mask = [*settings.api_key_values()]
    for secret in (settings.openai_api_key, settings.secret, settings.local_llm_api_key):
        if secret is not None:
            secrets_to_mask.append(secret.get_secret_value())
    say.secrets = tuple(secrets_to_mask)
    configure_logging(settings.log_level, settings.log_format, known_secrets=say.secrets)
    try:
        tls = tls_setup(settings)  # before binding: a bad certificate is a start-up error
    except TlsError as exc:
        raise StartupError(str(exc)) from None
    socks = bind(settings.host, settings.port)
    try:
        return asyncio.run(_serve(settings, socks, args.drain_timeout, generated, say, tls))
    finally:
        for sock in socks:
            sock.close()


if __name__ == "__main__":
    raise SystemExit(main())
