"""Server keys (``VOXGATE_API_KEYS``): who may connect directly and mint client keys.

Comparison is constant-time against every configured key (no early exit on the first match),
so response timing does not reveal which key or how much of one matched.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence


def generate_server_key() -> str:
    """A fresh server key for a first run with none configured (``vk-`` + 32 random chars)."""
    return "vk-" + secrets.token_urlsafe(24)


class ServerKeys:
    """The set of accepted server keys; holds encoded copies only for comparison."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = tuple(k.encode() for k in keys if k)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def check(self, candidate: str | None) -> bool:
        if not candidate:
            return False
        probe = candidate.encode()
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(probe, key)
        return matched
