"""``python -m examples.trading_coach [--backend openai] [--port 8000]``: the coach, one command.

Sets voxgate's settings for the coach (its tools module, its notes, the knowledge tool) unless
the environment already sets them, then runs ``voxgate serve``: open the console link it
prints and talk. ``--backend openai`` needs ``OPENAI_API_KEY``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from voxgate import cli

NOTES = Path(__file__).with_name("notes")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.trading_coach")
    parser.add_argument("--backend", choices=["local", "openai"], default="local")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default="8000")
    args = parser.parse_args(argv)
    os.environ.setdefault("VOXGATE_TOOLS", "examples.trading_coach.tools")
    os.environ.setdefault("VOXGATE_KNOWLEDGE_PATH", str(NOTES))
    os.environ.setdefault("VOXGATE_KNOWLEDGE_TOOL", "on")
    if args.backend == "openai" and not os.environ.get("OPENAI_API_KEY"):
        sys.stderr.write("--backend openai needs OPENAI_API_KEY in the environment.\n")
        return 2
    serve = ["serve", "--backend", args.backend, "--host", args.host, "--port", args.port]
    return cli.main(serve)


if __name__ == "__main__":
    raise SystemExit(main())
