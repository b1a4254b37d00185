"""Masking of secrets in free text: API keys, ek_ keys, bearer values, key subprotocols, URL
credentials. Pure; used by the log processor and by the mapping of upstream errors, whose
messages quote part of a key (realtime-protocol.md §7, ``invalid_api_key``).
"""

from __future__ import annotations

import re

MASK = "[redacted]"

#: (pattern, replacement). Replacements keep the label so a reader knows what was there.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # OpenAI keys, including the real server's partly starred quotes ("sk-abc*****wxyz").
    (re.compile(r"\bsk-[A-Za-z0-9_\-*.]+"), MASK),
    (re.compile(r"\bek_[A-Za-z0-9_\-*.]+"), MASK),
    # voxgate server keys (vk-…), resume tokens (vgr_…; rt_… before), SSE session tokens
    # (vgs_…), console session cookies.
    (re.compile(r"\bvk[-_][A-Za-z0-9_\-*.]+"), MASK),
    (re.compile(r"\b(?:vgr|vgs|rt)_[A-Za-z0-9_\-*.]+"), MASK),
    (re.compile(r"\bv1\.[A-Za-z0-9_-]{16,64}\.console-[0-9a-f]+\.\d+\.[A-Za-z0-9_-]+"), MASK),
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s,;\"']+"), r"\1 " + MASK),
    (re.compile(r"openai-insecure-api-key\.[^\s,;\"']+"), "openai-insecure-api-key." + MASK),
    # user:password@ in URLs, and token-ish query parameters.
    (re.compile(r"(?<=://)[^/@\s]+@"), MASK + "@"),
    (
        re.compile(r"(?i)([?&](?:api[_-]?key|key|token|secret|auth|password|login)=)[^&\s]+"),
        r"\1" + MASK,
    ),
)


def redact(text: str, extra: tuple[str, ...] = ()) -> str:
    """Return ``text`` with every recognisable secret replaced by ``[redacted]``.

    Args:
        text: any string.
        extra: exact secrets known to the caller (configured keys, the signing secret) to mask
            wherever they appear, whatever their shape.
    """
    for secret in extra:
        if secret and secret in text:
            text = text.replace(secret, MASK)
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text
