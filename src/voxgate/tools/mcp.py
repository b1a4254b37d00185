"""Tools from MCP servers (the official ``mcp`` package), over stdio or streamable HTTP.

Issue 14. ``VOXGATE_MCP_SERVERS`` names the servers, as a JSON object (or the path of a file
holding one), in the shape MCP hosts use::

    {"market": {"command": "python", "args": ["-m", "market_mcp"], "env": {"K": "v"}},
     "notes":  {"url": "http://127.0.0.1:9000/mcp", "headers": {"Authorization": "Bearer …"},
                "tools": ["search_*"], "prefix": true, "timeout_s": 5}}

``tools`` keeps only the named tools (globs), ``prefix`` names them ``<label>__<tool>`` (for
servers whose tool names collide), ``timeout_s`` bounds each call (default: the server-wide
tool timeout). :class:`McpServer` owns one connection in one task of its own (the SDK's anyio
scopes must be entered and left by the same task); calls from sessions go through it
concurrently. A server that goes away is reconnected on the next call; a call it fails becomes
an error output the model can read.

Must not: log a tool's arguments or results above debug level, or put a header value or a
credential in a log line (the URL is logged without its query and user info).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import structlog

from voxgate.tools.registry import NAME_RE, Tool, ToolConfigError, ToolContext, error_output

log = structlog.get_logger(__name__)

_CONNECT_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class McpServerConfig:
    """One MCP server: a command to run (stdio) or a URL (streamable HTTP)."""

    label: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    tools: tuple[str, ...] | None = None
    prefix: bool = False
    timeout_s: float | None = None

    @property
    def where(self) -> str:
        """Safe to log: the command's name, or the URL without user info and query."""
        if self.url is not None:
            parts = urlsplit(self.url)
            return f"{parts.scheme}://{parts.hostname}:{parts.port or ''}{parts.path}"
        return os.path.basename(self.command or "")


def parse_servers(value: str | None) -> list[McpServerConfig]:
    """``VOXGATE_MCP_SERVERS`` as configs.

    Raises:
        ToolConfigError: not JSON (nor a readable file of JSON), or a server without exactly
            one of ``command`` and ``url``.
    """
    if not value or not value.strip():
        return []
    text = value.strip()
    if not text.startswith("{"):
        try:
            text = Path(text).read_text(encoding="utf-8")
        except OSError as exc:
            raise ToolConfigError(f"VOXGATE_MCP_SERVERS: cannot read {value!r} ({exc})") from exc
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ToolConfigError(f"VOXGATE_MCP_SERVERS is not valid JSON ({exc})") from exc
    if isinstance(raw, dict) and isinstance(raw.get("mcpServers"), dict):
        raw = raw["mcpServers"]  # the file format other MCP hosts use
    if not isinstance(raw, dict):
        raise ToolConfigError("VOXGATE_MCP_SERVERS must be a JSON object of label -> server")
    return [_server(str(label), spec) for label, spec in raw.items()]


def _server(label: str, spec: Any) -> McpServerConfig:
    if not isinstance(spec, dict) or ("command" in spec) == ("url" in spec):
        raise ToolConfigError(
            f"VOXGATE_MCP_SERVERS: server {label!r} needs exactly one of 'command' and 'url'"
        )
    tools = spec.get("tools")
    timeout = spec.get("timeout_s")
    return McpServerConfig(
        label=label,
        command=str(spec["command"]) if "command" in spec else None,
        args=tuple(str(a) for a in spec.get("args") or ()),
        env={str(k): str(v) for k, v in (spec.get("env") or {}).items()},
        cwd=str(spec["cwd"]) if spec.get("cwd") else None,
        url=str(spec["url"]) if "url" in spec else None,
        headers={str(k): str(v) for k, v in (spec.get("headers") or {}).items()},
        tools=tuple(str(t) for t in tools) if isinstance(tools, list) else None,
        prefix=bool(spec.get("prefix", False)),
        timeout_s=float(timeout) if isinstance(timeout, int | float) else None,
    )


class McpServer:
    """One MCP server's connection and its tools (see the module docstring)."""

    def __init__(self, config: McpServerConfig) -> None:
        self.config = config
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self.tools: list[Tool] = []

    async def start(self, timeout_s: float = _CONNECT_TIMEOUT_S) -> list[Tool]:
        """Connect and list the server's tools.

        Raises:
            ToolConfigError: it could not be reached, or it named a tool badly.
        """
        listing = await self._connect(timeout_s)
        self.tools = [self._tool(t) for t in listing if self._wanted(t.name)]
        log.info(
            "mcp.connected",
            server=self.config.label,
            where=self.config.where,
            tools=[t.name for t in self.tools],
        )
        return self.tools

    async def _connect(self, timeout_s: float) -> list[Any]:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[list[Any]] = loop.create_future()
        self._stop = asyncio.Event()
        self._task = loop.create_task(self._own(ready), name=f"mcp:{self.config.label}")
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(ready)
        except (TimeoutError, Exception) as exc:
            await self._end_task()
            detail = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
            raise ToolConfigError(
                f"MCP server {self.config.label!r} ({self.config.where}) could not be "
                f"reached: {detail}"
            ) from exc

    async def _own(self, ready: asyncio.Future[list[Any]]) -> None:
        """The one task that enters and leaves the SDK's client (anyio scopes need that)."""
        from mcp import Client

        try:
            async with Client(self._target()) as client:
                listing: list[Any] = []
                cursor: str | None = None
                for _ in range(100):  # pages; a server that never ends its listing is cut off
                    page = await client.list_tools(cursor=cursor)
                    listing.extend(page.tools)
                    cursor = page.next_cursor
                    if not cursor:
                        break
                self._client = client
                ready.set_result(listing)
                await self._stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else RuntimeError("ended"))
            if not isinstance(exc, Exception):
                raise
            log.warning("mcp.disconnected", server=self.config.label, error=type(exc).__name__)
        finally:
            self._client = None

    def _target(self) -> Any:
        cfg = self.config
        if cfg.url is not None:
            if not cfg.headers:
                return cfg.url
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            http = httpx2.AsyncClient(
                headers=dict(cfg.headers), timeout=httpx2.Timeout(30.0, read=300.0)
            )
            return streamable_http_client(cfg.url, http_client=http)
        from mcp.client.stdio import StdioServerParameters

        return StdioServerParameters(
            command=cfg.command or "",
            args=list(cfg.args),
            env=dict(cfg.env) or None,
            cwd=cfg.cwd,
        )

    def _wanted(self, name: str) -> bool:
        allow = self.config.tools
        return allow is None or any(fnmatch.fnmatchcase(name, p) for p in allow)

    def _tool(self, listed: Any) -> Tool:
        remote = str(listed.name)
        name = f"{self.config.label}__{remote}" if self.config.prefix else remote
        if not NAME_RE.match(name):
            raise ToolConfigError(
                f"MCP server {self.config.label!r}: tool name {name!r} is not a valid function "
                'name (letters, digits, _ and -, at most 64); set "prefix": false or rename it'
            )
        schema = dict(listed.input_schema or {"type": "object", "properties": {}})
        schema.setdefault("type", "object")
        schema.setdefault("properties", {})

        async def handler(arguments: dict[str, Any], context: ToolContext) -> str:
            return await self.call(remote, arguments)

        return Tool(
            name=name,
            description=str(listed.description or listed.title or remote),
            parameters=schema,
            handler=handler,
            timeout_s=self.config.timeout_s,
            source=f"mcp:{self.config.label}",
        )

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        """Call ``name`` on the server; a failure is an error output, never an exception."""
        client = self._client
        if client is None:
            client = await self._reconnect()
            if client is None:
                return error_output(
                    "tool_unavailable", f"The {self.config.label} tool server is not reachable."
                )
        from mcp.shared.exceptions import MCPError
        from mcp_types import CONNECTION_CLOSED

        try:
            result = await client.call_tool(name, arguments)
        except Exception as exc:
            closed = not isinstance(exc, MCPError) or exc.code == CONNECTION_CLOSED
            if not closed:  # the server answered with an error of the protocol
                return error_output("tool_failed", f"The tool failed: {exc}"[:300])
            log.warning("mcp.call_failed", server=self.config.label, error=type(exc).__name__)
            if self._client is client:  # the connection broke: the next call reconnects
                self._client = None
                self._stop.set()
            return error_output("tool_failed", f"The {self.config.label} tool server failed.")
        return _output(result)

    async def _reconnect(self) -> Any:
        async with self._lock:
            if self._client is not None:
                return self._client
            await self._end_task()
            try:
                await self._connect(_CONNECT_TIMEOUT_S)
            except ToolConfigError:
                return None
            return self._client

    async def _end_task(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        try:
            async with asyncio.timeout(5.0):
                await asyncio.gather(task, return_exceptions=True)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def aclose(self) -> None:
        await self._end_task()


def _output(result: Any) -> str:
    """A ``CallToolResult`` as the output text: structured content as JSON, else its text."""
    texts = [str(c.text) for c in result.content or () if getattr(c, "type", None) == "text"]
    if result.is_error:
        return error_output("tool_failed", " ".join(texts) or "The tool reported an error.")
    if result.structured_content is not None:
        return orjson.dumps(result.structured_content).decode()
    if texts:
        return "\n".join(texts)
    kinds = sorted({str(getattr(c, "type", "?")) for c in result.content or ()})
    return orjson.dumps({"ok": True, "content_types": kinds}).decode()


class McpServers:
    """Every configured MCP server of the process (started and closed by the app)."""

    def __init__(self, configs: list[McpServerConfig]) -> None:
        self.servers = [McpServer(c) for c in configs]

    async def start(self) -> list[Tool]:
        """Connect to all at once; a server that cannot be reached is logged and skipped."""
        results = await asyncio.gather(*(s.start() for s in self.servers), return_exceptions=True)
        tools: list[Tool] = []
        for server, result in zip(self.servers, results, strict=True):
            if isinstance(result, BaseException):
                log.error("mcp.unavailable", server=server.config.label, error=str(result))
                continue
            tools.extend(result)
        return tools

    async def aclose(self) -> None:
        await asyncio.gather(*(s.aclose() for s in self.servers), return_exceptions=True)
