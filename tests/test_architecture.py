"""The layers of ``src/voxgate`` (docs/architecture.md): each package imports only from below.

Two rules, checked on the source (no imports executed):

* every module imports from the ``voxgate`` packages its layer allows, nothing above it;
* ``protocol/`` and the pure ``session/`` modules import no I/O library and read no clock
  (STYLE.md §2): they are driven synchronously by their tests.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "voxgate"

#: package (or top-level module) -> the voxgate packages it may import besides itself.
LAYERS: dict[str, set[str]] = {
    "protocol": set(),
    "config": set(),
    "observability": {"protocol"},
    "session": {"protocol"},
    "store": {"protocol"},
    "tools": {"protocol"},
    "auth": {"protocol", "store"},
    "backends": {"protocol", "session", "tools", "config", "observability"},
    "transports": {"protocol", "session", "auth", "store", "observability"},
    "web": {"protocol", "auth", "observability"},
}
#: The wiring on top may import anything; ``testing`` ships test doubles built from all parts.
TOP = {"app", "cli", "server", "startup", "runtime", "tls", "__main__", "__init__", "testing"}

#: session/ modules that own I/O (the runner, its upstream half, in-process delivery, the
#: server side running tool calls).
SESSION_IO = {"runner.py", "runner_types.py", "upstream.py", "delivery.py", "server_side.py"}
FORBIDDEN_IN_PURE = {"asyncio", "aiohttp", "websockets", "redis", "socket", "time"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _layer(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


ALL = sorted(p for p in SRC.rglob("*.py"))
PURE = sorted(
    [p for p in (SRC / "protocol").glob("*.py")]
    + [p for p in (SRC / "session").glob("*.py") if p.name not in SESSION_IO]
)


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    packages |= {p.stem for p in SRC.glob("*.py")}
    assert packages - set(LAYERS) - TOP == set()


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(SRC)))
def test_module_imports_only_from_below(path: Path) -> None:
    layer = _layer(path)
    if layer in TOP:
        return
    allowed = LAYERS[layer] | {layer}
    for name in _imports(path):
        if name == "voxgate" or not name.startswith("voxgate."):
            continue
        target = name.split(".")[1]
        assert target in allowed, f"{path.relative_to(SRC)} ({layer}) imports {name}"


@pytest.mark.parametrize("path", PURE, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_pure_module_imports_no_io(path: Path) -> None:
    imported = _imports(path)
    assert not {name.split(".")[0] for name in imported} & FORBIDDEN_IN_PURE
    for name in imported:
        if name.startswith("voxgate.session."):
            assert name.rsplit(".", 1)[-1] + ".py" not in SESSION_IO, f"{path.name} imports {name}"


def test_no_transport_type_crosses_into_the_session() -> None:
    """Issue 11.1: ``session/`` speaks ``str``/``bytes`` and ``PeerGone``, never aiohttp."""
    for path in (SRC / "session").glob("*.py"):
        assert not {n.split(".")[0] for n in _imports(path)} & {"aiohttp", "websockets"}, path
