"""With ``VOXGATE_LOG_FORMAT=json`` every log line is one JSON object (issue 12 item 7).

In process: records of the standard library's loggers (``aiohttp.server`` with an exception,
``asyncio``, ``py.warnings``) and an exception escaping a thread are rendered by the same JSON
renderer and redaction as voxgate's own events. The end-to-end run (``voxgate serve`` as a
process, with a malformed HTTP request that makes aiohttp log an error) lives in
``test_startup_errors.py`` next to the other process tests.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections.abc import Iterator

import orjson
import pytest
import structlog

from voxgate.cli import Say
from voxgate.observability.logging import configure_logging
from voxgate.protocol.close import CloseCode

SECRET = "plain-configured-secret-0042"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, threading.excepthook)
    try:
        yield
    finally:
        structlog.reset_defaults()
        logging.captureWarnings(False)
        root.handlers[:], root.level, threading.excepthook = saved


def _lines(buffer: io.StringIO) -> list[dict[str, object]]:
    out = []
    for line in buffer.getvalue().splitlines():
        parsed = orjson.loads(line)  # raises on any plain-text line
        assert isinstance(parsed, dict), line
        out.append(parsed)
    return out


@pytest.mark.usefixtures("restore_logging")
def test_stdlib_records_and_thread_crashes_are_json_and_redacted() -> None:
    buffer = io.StringIO()
    configure_logging("info", "json", known_secrets=(SECRET,), stream=buffer)
    try:
        raise ConnectionResetError(f"peer sent Authorization: Bearer {SECRET}")
    except ConnectionResetError:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "1.2.3.4")
    logging.getLogger("asyncio").warning("Executing %s took %.3f seconds", "<Task>", 0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("something deprecated", DeprecationWarning, stacklevel=1)

    def crash() -> None:
        raise RuntimeError(f"key sk-proj-{'x' * 24} in a thread")

    thread = threading.Thread(target=crash, name="worker-1")
    thread.start()
    thread.join()
    structlog.get_logger("voxgate.test").info("session.closed", close_code=CloseCode.GOING_AWAY)

    lines = _lines(buffer)
    output = buffer.getvalue()
    assert SECRET not in output
    assert "sk-proj-" not in output
    assert "Traceback" not in output
    by_event = {str(line["event"]): line for line in lines}
    server = by_event["Error handling request from 1.2.3.4"]
    assert server["logger"] == "aiohttp.server"
    assert server["level"] == "error"
    assert str(server["error"]).startswith("ConnectionResetError: ")
    assert "timestamp" in server
    assert by_event["Executing <Task> took 0.250 seconds"]["logger"] == "asyncio"
    assert any(line.get("logger") == "py.warnings" for line in lines)
    crashed = by_event["thread.crashed"]
    assert crashed["thread"] == "worker-1"
    assert str(crashed["error"]).startswith("RuntimeError: ")
    assert by_event["session.closed"]["close_code"] == 1001


@pytest.mark.usefixtures("restore_logging")
def test_console_lines_render_close_codes_as_numbers() -> None:
    buffer = io.StringIO()
    configure_logging("info", "console", stream=buffer)
    structlog.get_logger("voxgate.test").info("session.closed", close_code=CloseCode.GOING_AWAY)
    logging.getLogger("aiohttp.server").error("stdlib %s", "line")
    text = buffer.getvalue()
    assert "close_code=1001" in text, text
    assert "CloseCode" not in text
    assert "stdlib line" in text
    assert "ERROR:aiohttp.server" not in text  # the same renderer, not logging's default format


def test_a_crash_in_json_mode_is_one_redacted_json_line() -> None:
    err = io.StringIO()
    say = Say(json=True, out=io.StringIO(), err=err)
    say.secrets = (SECRET,)
    try:
        raise RuntimeError(f"bug while holding {SECRET} and sk-proj-{'y' * 24}")
    except RuntimeError as exc:
        say.crash(exc)
    (line,) = err.getvalue().splitlines()
    record = orjson.loads(line)
    assert record["event"] == "voxgate.crashed"
    assert "RuntimeError" in record["message"]
    assert "Traceback (most recent call last)" in record["traceback"]
    assert SECRET not in line
    assert "sk-proj-" not in line
