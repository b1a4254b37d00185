"""structlog configuration: console or JSON lines, with secret redaction as the last step.

Library code logs with keys (``log.info("upstream.ready", ready_ms=12)``), never f-strings and
never ``print``. Exceptions are rendered as one redacted line, not a traceback that could carry
a header or URL.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from voxgate.observability.redact import RedactSecrets
from voxgate.protocol.redaction import redact

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(
    level: str = "info",
    fmt: str = "console",
    known_secrets: tuple[str, ...] = (),
    stream: TextIO | None = None,
) -> None:
    """Configure structlog and the stdlib root logger for the process.

    Args:
        level: minimum level.
        fmt: ``console`` (human) or ``json`` (one object per line).
        known_secrets: exact strings to mask wherever they appear.
        stream: where lines go (default stderr); tests pass a buffer to read every line.
    """
    out = stream or sys.stderr
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            RedactSecrets(known_secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=_LEVELS.get(level, logging.INFO), stream=out, force=True)
    redacting = _RedactingFilter(known_secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redacting)
    # aiohttp's access log would print request lines; voxgate logs its own lifecycle instead.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class _RedactingFilter(logging.Filter):
    """Masks secrets in stdlib log records (aiohttp's own errors) before any handler formats."""

    def __init__(self, known_secrets: tuple[str, ...]) -> None:
        super().__init__()
        self._known = known_secrets

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), self._known)
        record.args = None
        if record.exc_info:
            record.msg = (
                f"{record.msg} ({record.exc_info[0].__name__ if record.exc_info[0] else 'error'})"
            )
            record.exc_info = None
            record.exc_text = None
        return True
