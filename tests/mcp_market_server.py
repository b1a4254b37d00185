"""A small MCP server for voxgate's tests: run it over stdio or streamable HTTP.

python tests/mcp_market_server.py stdio
python tests/mcp_market_server.py http      # prints "port <N>" once listening
"""

from __future__ import annotations

import socket
import sys

from mcp.server import MCPServer

server = MCPServer("market")
_pid = __import__("os").getpid()


@server.tool()
def convert(amount: float, rate: float) -> float:
    """Convert an amount at an exchange rate."""
    return round(amount * rate, 4)


@server.tool()
def headline(symbol: str) -> str:
    """The latest news headline for a stock symbol."""
    return f"{symbol} beats earnings expectations"


@server.tool()
def whoami() -> str:
    """The server process (tests restart it)."""
    return f"pid {_pid}"


@server.tool()
def broken() -> str:
    """Always fails."""
    raise ValueError("the news feed is down")


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    if mode == "stdio":
        server.run()
        return
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    print(f"port {sock.getsockname()[1]}", flush=True)  # the parent reads it
    config = uvicorn.Config(server.streamable_http_app(), log_level="warning", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
