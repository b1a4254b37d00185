"""protocol/ and the pure session/ modules never import I/O libraries (STYLE.md §2)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "voxgate"
#: session/ modules that own I/O (the runner and its upstream half); everything else is pure.
IO_MODULES = {"runner.py", "upstream_side.py"}
FORBIDDEN = {"asyncio", "aiohttp", "websockets", "redis", "socket", "time"}
PURE = sorted(
    [p for p in (SRC / "protocol").glob("*.py")]
    + [p for p in (SRC / "session").glob("*.py") if p.name not in IO_MODULES]
)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", PURE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_module_imports_no_io(path: Path) -> None:
    imported = _imports(path)
    assert not {name.split(".")[0] for name in imported} & FORBIDDEN
    for name in imported:
        if name.startswith("voxgate."):
            layer = name.split(".")[1]
            allowed = {"protocol"} if path.parent.name == "protocol" else {"protocol", "session"}
            assert layer in allowed, f"{path.name} imports {name}"
            assert name.rsplit(".", 1)[-1] + ".py" not in IO_MODULES
