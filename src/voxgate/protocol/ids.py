"""Identifier minting for wire objects (realtime-protocol.md §5: ``event_…``, ``item_…`` …).

Pure: no I/O, no clock. Ids are random (``secrets``), so two sessions never share one.
"""

from __future__ import annotations

import secrets

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _token(n: int = 20) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def new_id(prefix: str, n: int = 20) -> str:
    """Return ``<prefix>_<n random alphanumerics>``, e.g. ``new_id("item")``."""
    return f"{prefix}_{_token(n)}"


def event_id() -> str:
    return new_id("event")


def item_id() -> str:
    return new_id("item")


def response_id() -> str:
    return new_id("resp")


def session_id() -> str:
    return new_id("sess")


def call_id() -> str:
    return new_id("call")


def conversation_id() -> str:
    return new_id("conv")
