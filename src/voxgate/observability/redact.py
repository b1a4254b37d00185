"""structlog processor that masks secrets in every value of every log line.

It runs last before rendering, so nothing a caller binds (headers, URLs, messages from an
upstream) can carry a key into a log: keys, ek_ keys, bearer values, key-bearing subprotocols,
URL credentials, and the exact configured secrets.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from voxgate.protocol.redaction import redact


class RedactSecrets:
    """Processor: ``(logger, method, event_dict) -> event_dict`` with secrets masked."""

    def __init__(self, known_secrets: tuple[str, ...] = ()) -> None:
        self._known = tuple(s for s in known_secrets if s)

    def _clean(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, str):
            return redact(value, self._known)
        if depth > 4:
            return value
        if isinstance(value, Mapping):
            return {k: self._clean(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(v, depth + 1) for v in value]
        if isinstance(value, bytes | bytearray):
            return f"<{len(value)} bytes>"
        if isinstance(value, BaseException):
            return redact(f"{type(value).__name__}: {value}", self._known)
        return value

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in list(event_dict.items()):
            event_dict[key] = self._clean(value)
        return event_dict
