"""Server-side tools (issue 14): declare them with :func:`tool`, voxgate runs their calls.

::

    from voxgate.tools import ToolContext, tool

    @tool(timeout_s=2)
    async def get_quote(symbol: str, ctx: ToolContext) -> dict:
        \"\"\"Latest price of a stock.\"\"\"
        ...

Point ``VOXGATE_TOOLS`` at the module. See :mod:`voxgate.tools.registry` for the details, and
:mod:`voxgate.tools.mcp` / :mod:`voxgate.tools.knowledge_tool` for tools voxgate brings.
"""

from voxgate.tools.registry import Tool, ToolConfigError, ToolContext, ToolRegistry, tool

__all__ = ["Tool", "ToolConfigError", "ToolContext", "ToolRegistry", "tool"]
