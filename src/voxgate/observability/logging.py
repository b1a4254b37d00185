"""structlog configuration: console or JSON lines, with secret redaction as the last step.

Library code logs with keys (``log.info("upstream.ready", ready_ms=12)``), never f-strings and
never ``print``. Records of the standard library's loggers (``aiohttp.server``,
``aiohttp.access``, ``asyncio``, ``py.warnings`` …) and exceptions escaping a thread go through
the same redaction and the same renderer, so with ``json`` every line of the process's log is
one JSON object. Their exceptions become one ``error="Type: message"`` field, never a
traceback that could carry a header or URL. Enum values (close codes) render as their value.
"""

from __future__ import annotations

import enum
import logging
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from voxgate.observability.redact import RedactSecrets

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_thread_log = structlog.get_logger("threading")


def configure_logging(
    level: str = "info",
    fmt: str = "console",
    known_secrets: tuple[str, ...] = (),
    stream: TextIO | None = None,
) -> None:
    """Configure structlog, the stdlib root logger and thread exceptions for the process.

    Args:
        level: minimum level.
        fmt: ``console`` (human) or ``json`` (one object per line).
        known_secrets: exact strings to mask wherever they appear.
        stream: where lines go (default stderr); tests pass a buffer to read every line.
    """
    out = stream or sys.stderr
    numeric = _LEVELS.get(level, logging.INFO)
    renderer = _renderer(fmt)
    redact = RedactSecrets(known_secrets)
    stamped: list[structlog.types.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *stamped,
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write() per line (PrintLogger writes the newline separately), so lines from
        # structlog and from the stdlib handler below never interleave mid-line.
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*stamped, structlog.stdlib.add_logger_name, _exception_summary],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redact,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    logging.captureWarnings(False)  # re-install: another configuration may have replaced it
    logging.captureWarnings(True)
    # aiohttp's access log would print request lines; voxgate logs its own lifecycle instead.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    threading.excepthook = _thread_exception


def _renderer(fmt: str) -> structlog.types.Processor:
    final: structlog.types.Processor
    if fmt == "json":
        final = structlog.processors.JSONRenderer()
    else:
        final = structlog.dev.ConsoleRenderer(colors=False)

    def render(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        return final(logger, method, _enum_values(event_dict))

    return render


def _enum_values(event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``close_code=1001``, not ``close_code=<CloseCode.GOING_AWAY: 1001>``."""
    for key, value in event_dict.items():
        if isinstance(value, enum.Enum):
            event_dict[key] = value.value
    return event_dict


def _exception_summary(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A stdlib record's exception as one ``error`` field (redacted later), no traceback."""
    exc_info = event_dict.pop("exc_info", None)
    event_dict.pop("stack_info", None)
    if isinstance(exc_info, tuple) and exc_info[0] is not None:
        event_dict["error"] = f"{exc_info[0].__name__}: {exc_info[1]}"
    return event_dict


def _thread_exception(args: threading.ExceptHookArgs) -> None:
    """An exception escaping a thread: one log line instead of a traceback on stderr."""
    if args.exc_type is SystemExit:
        return
    _thread_log.error(
        "thread.crashed",
        thread=args.thread.name if args.thread else None,
        error=f"{args.exc_type.__name__}: {args.exc_value}",
    )
