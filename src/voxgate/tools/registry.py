"""Server-side tools: declared in Python with :func:`tool`, collected in a :class:`ToolRegistry`.

Issue 14. A tool is a typed function; its JSON Schema comes from the type hints through pydantic
(``Annotated[..., Field(description=...)]`` and a Google-style ``Args:`` section describe the
parameters, the docstring's first paragraph describes the tool). Sync functions run in a worker
thread, async ones on the loop. A parameter annotated :class:`ToolContext` receives the call's
context: the session id, the subject and the metadata its key was minted with, and
:meth:`ToolContext.say` to tell the user something while the tool works. Arguments are
validated before the call; bad ones become an error output the model can read and correct.
A return value becomes the ``function_call_output``: a ``str`` as it is, anything else as JSON.

:class:`ToolRegistry` holds every tool of the process (Python modules from ``VOXGATE_TOOLS``, MCP
servers, the knowledge tool) under unique names; :meth:`ToolRegistry.select` gives the
:class:`ToolSet` one key's sessions get. A ``ToolSet`` is what the session's server side calls
(structurally :class:`voxgate.session.server_side.ToolInvoker`; ``tools/`` does not import it).

Must not: keep per-session state (one registry serves every session), or log arguments and
outputs above debug level (they are the user's data).
"""

from __future__ import annotations

import asyncio
import fnmatch
import importlib
import inspect
import re
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, overload

import orjson
import pydantic_core
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

log = structlog.get_logger(__name__)

#: Function names the Realtime API accepts (the same rule as OpenAI's function tools).
NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_TIMEOUT_S: Final = 10.0
_ARGS_RE: Final = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$", re.MULTILINE)


class ToolConfigError(ValueError):
    """A tool cannot be registered or loaded (the message says which and why)."""


class CallContext(Protocol):
    """What the session's server side hands to :meth:`ToolSet.call` (read-only)."""

    @property
    def session_id(self) -> str: ...

    @property
    def subject(self) -> str | None: ...

    @property
    def metadata(self) -> Mapping[str, str]: ...

    @property
    def call_id(self) -> str: ...

    @property
    def say(self) -> Callable[[str], bool]: ...


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool function may know about its call (declare a parameter of this type)."""

    session_id: str
    subject: str | None
    metadata: Mapping[str, str]
    call_id: str
    _say: Callable[[str], bool] = field(repr=False, default=lambda text: False)

    async def say(self, text: str) -> bool:
        """Have the assistant say ``text`` now, while the tool goes on ("one moment").

        It is spoken at the next safe point (no user speech, no response running) and the
        tool's own result is read after it. Returns False when it could not be queued.
        """
        return self._say(text)


def error_output(code: str, message: str) -> str:
    return orjson.dumps({"error": code, "message": message}).decode()


Handler = Callable[[dict[str, Any], ToolContext], Awaitable[str]]


@dataclass(frozen=True)
class Tool:
    """One server tool: its schema, its timeout and how to run it.

    ``handler`` receives the raw JSON arguments (already parsed to a dict) and the context,
    and returns the output text; :func:`tool` builds it for a Python function.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    handler: Handler = field(repr=False, compare=False)
    timeout_s: float | None = None
    source: str = "python"

    def spec(self) -> dict[str, Any]:
        """The session config's flat shape (realtime-protocol.md §3)."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }


class PythonTool(Tool):
    """A :class:`Tool` made from a function by :func:`tool`; calling it calls the function."""

    fn: Callable[..., Any]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


@overload
def tool(fn: Callable[..., Any], /) -> PythonTool: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None, timeout_s: float | None = None
) -> Callable[[Callable[..., Any]], PythonTool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
) -> PythonTool | Callable[[Callable[..., Any]], PythonTool]:
    """Declare a server tool: ``@tool`` or ``@tool(timeout_s=2)`` on a typed function.

    Raises:
        ToolConfigError: a parameter without a type hint, or an invalid name.
    """

    def make(func: Callable[..., Any]) -> PythonTool:
        return _python_tool(func, name=name, description=description, timeout_s=timeout_s)

    return make(fn) if fn is not None else make


def _python_tool(
    func: Callable[..., Any], *, name: str | None, description: str | None, timeout_s: float | None
) -> PythonTool:
    tool_name = name or func.__name__
    if not NAME_RE.match(tool_name):
        raise ToolConfigError(f"tool name {tool_name!r} must match {NAME_RE.pattern}")
    doc = inspect.getdoc(func) or ""
    summary, arg_docs = _split_doc(doc)
    hints = typing.get_type_hints(func, include_extras=True)
    fields: dict[str, Any] = {}
    context_param: str | None = None
    for param in inspect.signature(func).parameters.values():
        hint = hints.get(param.name)
        if hint is ToolContext:
            context_param = param.name
            continue
        if hint is None:
            raise ToolConfigError(f"tool {tool_name}: parameter {param.name!r} needs a type hint")
        default = ... if param.default is inspect.Parameter.empty else param.default
        if param.name in arg_docs and not _has_description(hint):
            fields[param.name] = (hint, Field(default, description=arg_docs[param.name]))
        else:
            fields[param.name] = (hint, default)
    model = create_model(f"{tool_name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    schema = _inline(model.model_json_schema())
    is_async = inspect.iscoroutinefunction(func)

    async def handler(arguments: dict[str, Any], context: ToolContext) -> str:
        try:
            parsed = model.model_validate(arguments)
        except ValidationError as exc:
            return error_output("invalid_arguments", _validation_message(exc))
        kwargs = {k: getattr(parsed, k) for k in fields}
        if context_param is not None:
            kwargs[context_param] = context
        if is_async:
            result = await func(**kwargs)
        else:
            result = await asyncio.to_thread(func, **kwargs)
        return to_output(result)

    made = PythonTool(
        name=tool_name,
        description=description or summary,
        parameters=schema,
        handler=handler,
        timeout_s=timeout_s,
        source=f"python:{func.__module__}",
    )
    object.__setattr__(made, "fn", func)
    return made


def to_output(value: Any) -> str:
    """A tool's return value as the ``function_call_output`` text."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if value is None:
        return '{"ok":true}'
    return pydantic_core.to_json(value).decode()


def _split_doc(doc: str) -> tuple[str, dict[str, str]]:
    """The docstring's first paragraph, and ``Args:`` entries (``name: text``)."""
    summary = " ".join(doc.split("\n\n", 1)[0].split())
    match = _ARGS_RE.search(doc)
    args: dict[str, str] = {}
    if match is None:
        return summary, args
    current: str | None = None
    for line in doc[match.end() :].splitlines():
        if not line.strip():
            if args:
                break
            continue
        entry = re.match(r"^\s{0,8}(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
        if entry and (current is None or len(line) - len(line.lstrip()) <= 8):
            current = entry.group(1)
            args[current] = entry.group(2).strip()
        elif current is not None:
            args[current] = f"{args[current]} {line.strip()}".strip()
    return summary, args


def _has_description(hint: Any) -> bool:
    if typing.get_origin(hint) is not typing.Annotated:
        return False
    return any(getattr(m, "description", None) for m in typing.get_args(hint)[1:])


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with ``$defs`` references resolved in place and titles dropped."""
    defs = schema.get("$defs", {})

    def walk(node: Any, depth: int = 0) -> Any:
        if depth > 32:
            return node
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                target = defs.get(ref.split("/")[-1], {})
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return walk({**target, **rest}, depth + 1)
            return {k: walk(v, depth + 1) for k, v in node.items() if k not in ("$defs", "title")}
        if isinstance(node, list):
            return [walk(v, depth + 1) for v in node]
        return node

    out: dict[str, Any] = walk(schema)
    out.setdefault("type", "object")
    out.setdefault("properties", {})
    return out


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{where}: {err['msg']}")
    return "Invalid arguments: " + "; ".join(parts)


# --------------------------------------------------------------------------- registry


class ToolRegistry:
    """Every server tool of the process, by unique name (see the module docstring)."""

    def __init__(
        self, tools: Iterable[Tool] = (), *, default_timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.default_timeout_s = default_timeout_s
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, new: Tool) -> None:
        """Register ``new``.

        Raises:
            ToolConfigError: the name is invalid or already taken.
        """
        if not NAME_RE.match(new.name):
            raise ToolConfigError(f"tool name {new.name!r} must match {NAME_RE.pattern}")
        old = self._tools.get(new.name)
        if old is not None:
            raise ToolConfigError(
                f"two tools are named {new.name!r} ({old.source} and {new.source}); rename one"
            )
        self._tools[new.name] = new

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    @property
    def tools(self) -> list[Tool]:
        return list(self._tools.values())

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def select(self, patterns: Sequence[str] | None = None) -> ToolSet:
        """The tools a session gets: all (``None``) or those matching a name or glob."""
        if patterns is None:
            chosen = self.tools
        else:
            chosen = [
                t
                for t in self._tools.values()
                if any(fnmatch.fnmatchcase(t.name, p) for p in patterns)
            ]
        return ToolSet(chosen, default_timeout_s=self.default_timeout_s)

    def vocabulary(self) -> list[str]:
        """Words a speech recogniser should expect: tool names, ``enum`` values and the
        aliases a parameter's description gives them as ``VALUE (alias, alias)``."""
        words: dict[str, None] = {}
        for found in self._tools.values():
            words.update(dict.fromkeys(found.name.replace("_", " ").replace("-", " ").split()))
            for prop in (found.parameters.get("properties") or {}).values():
                if not isinstance(prop, dict) or "enum" not in orjson.dumps(prop).decode():
                    continue
                for m in re.finditer(r"\b[\w.-]+\s*\(([^)]*)\)", str(prop.get("description", ""))):
                    words.update(dict.fromkeys(a.strip() for a in m.group(1).split(",")))
        return [w for w in words if w]

    def unknown(self, patterns: Sequence[str]) -> list[str]:
        """The patterns that match no registered tool (a key naming a tool that is not here)."""
        return [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in self._tools)]


class ToolSet:
    """The tools of one session: what its server side calls."""

    def __init__(self, tools: Sequence[Tool], *, default_timeout_s: float) -> None:
        self._tools = {t.name: t for t in tools}
        self._default_timeout_s = default_timeout_s
        self.specs = [t.spec() for t in tools]

    def __len__(self) -> int:
        return len(self._tools)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def timeout_s(self, name: str) -> float:
        found = self._tools.get(name)
        if found is None or found.timeout_s is None:
            return self._default_timeout_s
        return found.timeout_s

    async def call(self, name: str, arguments: str, context: CallContext) -> str:
        """Run one call (the caller bounds it by :meth:`timeout_s` and catches exceptions)."""
        found = self._tools.get(name)
        if found is None:
            return error_output("unknown_tool", f"There is no tool named {name!r}.")
        try:
            parsed = orjson.loads(arguments) if arguments.strip() else {}
        except orjson.JSONDecodeError:
            return error_output("invalid_arguments", "The arguments are not valid JSON.")
        if not isinstance(parsed, dict):
            return error_output("invalid_arguments", "The arguments must be a JSON object.")
        ctx = ToolContext(
            session_id=context.session_id,
            subject=context.subject,
            metadata=context.metadata,
            call_id=context.call_id,
            _say=context.say,
        )
        return await found.handler(parsed, ctx)


#: A tools module may define ``async def voxgate_lifespan(messages)`` as an async generator:
#: the code before its ``yield`` runs when voxgate starts serving (``messages`` is the proactive
#: API, ``ProactiveMessages``), the code after it when voxgate stops. It is where a module
#: starts what feeds it (an alert feed, a database pool).
LIFESPAN_NAME: Final = "voxgate_lifespan"
Lifespan = Callable[[Any], AsyncIterator[None]]


def load_lifespans(spec: str | Sequence[str]) -> list[Lifespan]:
    """The ``voxgate_lifespan`` hooks of the modules in ``spec`` (modules without one: none)."""
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    hooks: list[Lifespan] = []
    for module_name in (n for n in names if n):
        hook = getattr(importlib.import_module(module_name), LIFESPAN_NAME, None)
        if callable(hook):
            hooks.append(hook)
    return hooks


def load_modules(spec: str | Sequence[str]) -> list[Tool]:
    """The tools defined at module level in ``pkg.module`` names (comma-separated).

    Raises:
        ToolConfigError: a module cannot be imported, or defines no tool.
    """
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    found: list[Tool] = []
    seen: set[int] = set()
    for module_name in (n for n in names if n):
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise ToolConfigError(
                f"VOXGATE_TOOLS: cannot import {module_name!r} ({type(exc).__name__}: {exc})"
            ) from exc
        tools = [v for v in vars(module).values() if isinstance(v, Tool)]
        if not tools:
            raise ToolConfigError(f"VOXGATE_TOOLS: {module_name!r} defines no @tool function")
        found.extend(t for t in tools if id(t) not in seen)
        seen.update(id(t) for t in tools)
        log.info("tools.loaded", module=module_name, tools=[t.name for t in tools])
    return found
