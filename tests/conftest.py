"""Shared fixtures. Everything binds to 127.0.0.1 on free ports; nothing leaves the machine."""

from __future__ import annotations

import os

# openai-agents exports traces to OpenAI unless told not to (realtime-protocol.md §11).
os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")
# A developer's own key must never reach a test upstream or a log.
os.environ.pop("OPENAI_API_KEY", None)
