"""The no-op server tool ``bench/tool_latency.py`` measures voxgate's overhead with."""

from __future__ import annotations

from voxgate.tools import tool


@tool
async def noop() -> str:
    """Does nothing (its body costs microseconds)."""
    return "ok"
