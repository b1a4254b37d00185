"""Start-up checks of ``voxgate serve``: every failure is one sentence a person can act on.

Owns: naming a bad setting by the environment variable (or flag) it came from, not the
field; warning about ``VOXGATE_*`` variables that are no setting (a typo such as
``VOXGATE_BACKND`` is otherwise silently ignored); checking the knowledge folder; binding the
listening socket *before* anything heavy (models) is loaded, with ``SO_REUSEPORT`` off so a
second process cannot listen on the same port while this one does.

Must not: print (the CLI decides how a sentence is shown), load models, or start the server.
"""

from __future__ import annotations

import difflib
import errno
import socket
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo

from voxgate.config import Settings

ENV_PREFIX: Final = "VOXGATE_"
_SHOWN_CHARS: Final = 40


class StartupError(Exception):
    """voxgate cannot start; ``str(exc)`` is the one sentence to show (exit code 2)."""


def setting_names() -> dict[str, str]:
    """Settings field → the environment variable a person sets for it."""
    names: dict[str, str] = {}
    for field, info in Settings.model_fields.items():
        names[field] = _aliases(field, info)[0]
    return names


def _aliases(field: str, info: FieldInfo) -> list[str]:
    alias = info.validation_alias
    choices = getattr(alias, "choices", None)
    if choices:
        return [str(c) for c in choices]
    return [ENV_PREFIX + field.upper()]


def known_env_names() -> frozenset[str]:
    return frozenset(
        name for field, info in Settings.model_fields.items() for name in _aliases(field, info)
    )


def settings_error(exc: ValidationError, flags: Mapping[str, str]) -> StartupError:
    """One sentence naming each bad value by its environment variable (or CLI flag).

    Args:
        exc: what ``Settings(...)`` raised.
        flags: field → ``--flag`` for values given on the command line.
    """
    names = setting_names()
    parts = []
    for err in exc.errors(include_url=False):
        field = str(err["loc"][0]) if err["loc"] else ""
        name = flags.get(field) or names.get(field) or field.upper()
        value = "" if _is_secret(field) else f"={_shown(err.get('input'))}"
        parts.append(f"{name}{value} is not valid: {_reason(err['msg'])}")
    return StartupError("invalid setting: " + "; ".join(parts) + ".")


def _is_secret(field: str) -> bool:
    """Values of secret settings are never echoed, even when invalid."""
    info = Settings.model_fields.get(field)
    return info is None or SecretStr.__name__ in str(info.annotation)


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…"
    return f"'{text}'"


def _reason(msg: str) -> str:
    """pydantic's wording, made a clause ("Input should be 'local' or 'openai'" → "should…")."""
    msg = msg.removeprefix("Value error, ")
    return (msg[len("Input ") :] if msg.startswith("Input ") else msg[0].lower() + msg[1:]).rstrip(
        "."
    )


def unknown_env_warnings(environ: Mapping[str, str], dotenv_names: Iterable[str] = ()) -> list[str]:
    """A sentence per ``VOXGATE_*`` variable that is no setting, with the likely intended one."""
    known = known_env_names()
    seen = {name for name in (*environ, *dotenv_names) if name.upper().startswith(ENV_PREFIX)}
    warnings = []
    for name in sorted(seen):
        if name.upper() in known:
            continue
        guess = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.75)
        hint = f" (did you mean {guess[0]}?)" if guess else ""
        warnings.append(f"{name} is not a voxgate setting{hint}; it is ignored.")
    return warnings


def dotenv_names(path: str | Path = ".env") -> list[str]:
    """Variable names in a ``.env`` file (what pydantic-settings reads), or none."""
    from dotenv import dotenv_values

    file = Path(path)
    return list(dotenv_values(file)) if file.is_file() else []


def check_paths(settings: Settings) -> None:
    """Folders and files the settings name must exist before anything starts.

    Raises:
        StartupError: the knowledge folder is missing or not a folder.
    """
    if settings.knowledge_path:
        folder = Path(settings.knowledge_path).expanduser()
        if not folder.is_dir():
            what = "is not a folder" if folder.exists() else "does not exist"
            raise StartupError(
                f"the knowledge folder '{settings.knowledge_path}' (VOXGATE_KNOWLEDGE_PATH) "
                f"{what}; create it with some .md notes or unset the variable."
            )


def bind(host: str, port: int, *, backlog: int = 1024) -> list[socket.socket]:
    """Listen on every address of ``host`` (port 0: one free port shared by all).

    ``SO_REUSEADDR`` is on, so a restart is not refused for connections in TIME_WAIT;
    ``SO_REUSEPORT`` is off, so no second process can listen on the port while we do.

    Raises:
        StartupError: the port is in use, not allowed, or the host is no local address.
    """
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise StartupError(
            f"cannot resolve the host '{host}' (--host / VOXGATE_HOST): {exc.strerror}."
        ) from None
    addresses = list(dict.fromkeys((family, str(sockaddr[0])) for family, *_, sockaddr in infos))
    socks: list[socket.socket] = []
    try:
        for family, address in addresses:
            chosen = socks[0].getsockname()[1] if socks and port == 0 else port
            socks.append(_listen(family, address, chosen, backlog))
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise StartupError(_bind_sentence(exc, host, port)) from None
    return socks


def _listen(family: int, address: str, port: int, backlog: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_sentence(exc: OSError, host: str, port: int) -> str:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is already in use (another voxgate or another program "
            "listens there); stop it, or choose another port with --port or VOXGATE_PORT."
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (
            f"not allowed to listen on {where} (ports below 1024 need privileges); choose "
            "another port with --port or VOXGATE_PORT."
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"'{host}' is not an address of this machine; set --host or VOXGATE_HOST to one "
            "of its addresses (127.0.0.1 for this machine only, 0.0.0.0 for every interface)."
        )
    return f"cannot listen on {where}: {exc.strerror or type(exc).__name__}."


def cli_flags(given: Collection[str]) -> dict[str, str]:
    """Field → ``--flag`` for the settings given on the command line."""
    return {field: "--" + field.replace("_", "-") for field in given}
