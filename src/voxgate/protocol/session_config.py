"""The GA session object: defaults, partial-merge updates and validation (realtime-protocol.md §3).

Pure: no I/O, no clock (callers pass ``now_s``), no logging. Owns:

* :func:`default_realtime_session` / :func:`default_transcription_session`, the exact shapes the
  real server puts in ``session.created`` (§2.1, §3);
* :func:`apply_session_update`, the ``session.update`` merge with the real server's error codes
  and ``param`` paths; a rejected update changes nothing (the caller keeps ``current``);
* :func:`validate_session_config`, the same rules for a config embedded in an ephemeral key;
* audio-format helpers (bytes per ms for ``audio/pcm`` 24 kHz vs ``audio/pcmu``/``pcma`` 8 kHz).

Validation is data-driven: ``_REALTIME_SCHEMA`` and ``_TRANSCRIPTION_SCHEMA`` are trees of small
frozen spec objects; one walker (:func:`_merge`) applies a patch to a config by the spec.
It must not grow per-field ``if``/``elif`` chains: add a spec node instead.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from voxgate.protocol.errors import ClientEventError
from voxgate.protocol.formats import FORMATS, info

SessionType = Literal["realtime", "transcription"]

PCM_RATE_HZ: Final = FORMATS["audio/pcm"].rate_hz
G711_RATE_HZ: Final = FORMATS["audio/pcmu"].rate_hz
PCM_FORMAT: Final[dict[str, Any]] = {"type": "audio/pcm", "rate": PCM_RATE_HZ}
DEFAULT_MODEL: Final = "gpt-realtime"
DEFAULT_INSTRUCTIONS: Final = (
    "You are a helpful, witty, and friendly AI. "
    "Act like a human, but remember that you aren't a human. Keep your answers short."
)
SESSION_LIFETIME_S: Final = 3600
VOICES: Final = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)
SERVER_ONLY_FIELDS: Final = ("object", "id", "expires_at")


# --------------------------------------------------------------------------------------------
# Audio formats (§8)


def format_type(fmt: Mapping[str, Any] | None) -> str:
    """Return the format's ``type`` (``audio/pcm`` when absent, as the server assumes)."""
    if not fmt:
        return "audio/pcm"
    return str(fmt.get("type") or "audio/pcm")


def sample_rate_hz(fmt: Mapping[str, Any] | None) -> int:
    """24 000 for ``audio/pcm``, 8 000 for G.711 (``audio/pcmu`` / ``audio/pcma``)."""
    return info(format_type(fmt)).rate_hz


def bytes_per_sample(fmt: Mapping[str, Any] | None) -> int:
    """2 for 16-bit PCM, 1 for G.711."""
    return info(format_type(fmt)).sample_bytes


def bytes_per_ms(fmt: Mapping[str, Any] | None) -> int:
    """48 for ``audio/pcm`` at 24 kHz, 8 for ``audio/pcmu``/``audio/pcma``."""
    return info(format_type(fmt)).bytes_per_ms


def duration_ms(n_bytes: int, fmt: Mapping[str, Any] | None) -> float:
    """Duration of ``n_bytes`` of audio in ``fmt``, in milliseconds."""
    return n_bytes / bytes_per_ms(fmt)


def input_format(session: Mapping[str, Any]) -> dict[str, Any]:
    """The session's ``audio.input.format`` (pcm 24 kHz if unset)."""
    fmt = ((session.get("audio") or {}).get("input") or {}).get("format")
    return dict(fmt) if fmt else dict(PCM_FORMAT)


def output_format(session: Mapping[str, Any]) -> dict[str, Any]:
    """The session's ``audio.output.format`` (pcm 24 kHz if unset)."""
    fmt = ((session.get("audio") or {}).get("output") or {}).get("format")
    return dict(fmt) if fmt else dict(PCM_FORMAT)


# --------------------------------------------------------------------------------------------
# Defaults (§2.1, §3)


def server_vad_defaults() -> dict[str, Any]:
    """The live server's ``server_vad`` defaults (silence 200 ms, not the docs' 500)."""
    return {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 200,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }


def semantic_vad_defaults() -> dict[str, Any]:
    return {
        "type": "semantic_vad",
        "eagerness": "auto",
        "create_response": True,
        "interrupt_response": True,
    }


def default_realtime_session(
    *, session_id: str, model: str = DEFAULT_MODEL, now_s: int = 0
) -> dict[str, Any]:
    """The ``session`` object of ``session.created`` for a new speech-to-speech session."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": now_s + SESSION_LIFETIME_S if now_s else 0,
        "include": None,
        "audio": {
            "input": {
                "format": dict(PCM_FORMAT),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": server_vad_defaults(),
            },
            "output": {"format": dict(PCM_FORMAT), "voice": "alloy", "speed": 1.0},
        },
    }


def default_transcription_session(*, session_id: str, now_s: int = 0) -> dict[str, Any]:
    """The ``session`` object of ``session.created`` for ``?intent=transcription``."""
    return {
        "type": "transcription",
        "object": "realtime.transcription_session",
        "id": session_id,
        "expires_at": now_s + SESSION_LIFETIME_S if now_s else 0,
        "include": None,
        "audio": {
            "input": {
                "format": dict(PCM_FORMAT),
                "transcription": {"model": "gpt-4o-transcribe", "language": None, "prompt": ""},
                "noise_reduction": None,
                "turn_detection": server_vad_defaults(),
            }
        },
    }


def default_session(
    session_type: SessionType, *, session_id: str, model: str = DEFAULT_MODEL, now_s: int = 0
) -> dict[str, Any]:
    """Dispatch to :func:`default_realtime_session` or :func:`default_transcription_session`."""
    if session_type == "transcription":
        return default_transcription_session(session_id=session_id, now_s=now_s)
    return default_realtime_session(session_id=session_id, model=model, now_s=now_s)


# --------------------------------------------------------------------------------------------
# Schema nodes


class _Reject(Exception):
    def __init__(self, message: str, code: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


def _type_name(value: Any) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a decimal",
        str: "a string",
        list: "an array",
        dict: "an object",
    }
    return "null" if value is None else names.get(type(value), "an unknown type")


def _invalid_type(param: str, expected: str, value: Any) -> _Reject:
    return _Reject(
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
        "invalid_type",
        param,
    )


def _invalid_value(param: str, value: Any, allowed: Sequence[Any]) -> _Reject:
    supported = ", ".join(f"'{v}'" for v in allowed)
    return _Reject(
        f"Invalid value: '{value}'. Supported values are: {supported}.", "invalid_value", param
    )


@dataclass(frozen=True)
class _Str:
    nullable: bool = False

    def check(self, value: Any, param: str) -> Any:
        if value is None and self.nullable:
            return None
        if not isinstance(value, str):
            return _raise(_invalid_type(param, "a string", value))
        return value


@dataclass(frozen=True)
class _Bool:
    nullable: bool = False

    def check(self, value: Any, param: str) -> Any:
        if value is None and self.nullable:
            return None
        if not isinstance(value, bool):
            return _raise(_invalid_type(param, "a boolean", value))
        return value


@dataclass(frozen=True)
class _Num:
    lo: float | None = None
    hi: float | None = None
    integer: bool = False
    nullable: bool = False
    also: tuple[str, ...] = ()  # literal strings accepted too ("inf")

    def check(self, value: Any, param: str) -> Any:
        if value is None and self.nullable:
            return None
        if isinstance(value, str) and value in self.also:
            return value
        ok = isinstance(value, int) if self.integer else isinstance(value, int | float)
        if not ok or isinstance(value, bool):
            return _raise(_invalid_type(param, "an integer" if self.integer else "a number", value))
        kind = "integer" if self.integer else "decimal"
        if self.lo is not None and value < self.lo:
            return _raise(
                _Reject(
                    f"Invalid '{param}': {kind} below minimum value. Expected a value >= "
                    f"{_fmt_num(self.lo)}, but got {value} instead.",
                    f"{kind}_below_min_value",
                    param,
                )
            )
        if self.hi is not None and value > self.hi:
            return _raise(
                _Reject(
                    f"Invalid '{param}': {kind} above maximum value. Expected a value <= "
                    f"{_fmt_num(self.hi)}, but got {value} instead.",
                    f"{kind}_above_max_value",
                    param,
                )
            )
        return value


@dataclass(frozen=True)
class _Enum:
    values: tuple[Any, ...]
    nullable: bool = False

    def check(self, value: Any, param: str) -> Any:
        if value is None and self.nullable:
            return None
        if isinstance(value, list | dict) or value not in self.values:
            return _raise(_invalid_value(param, value, self.values))
        return value


@dataclass(frozen=True)
class _List:
    item: _Spec
    nullable: bool = False
    max_len: int | None = None

    def check(self, value: Any, param: str) -> Any:
        if value is None and self.nullable:
            return None
        if not isinstance(value, list):
            return _raise(_invalid_type(param, "an array", value))
        if self.max_len is not None and len(value) > self.max_len:
            return _raise(
                _Reject(
                    f"Invalid '{param}': array too long. Expected an array with maximum length "
                    f"{self.max_len}, but got an array with length {len(value)} instead.",
                    "array_above_max_length",
                    param,
                )
            )
        return [self.item.check(v, f"{param}[{i}]") for i, v in enumerate(value)]


@dataclass(frozen=True)
class _Free:
    """Any JSON value of the given python types, kept as sent (schemas, metadata)."""

    types: tuple[type, ...] = (dict,)
    nullable: bool = False

    def check(self, value: Any, param: str) -> Any:
        if value is None and self.nullable:
            return None
        if not isinstance(value, self.types):
            return _raise(_invalid_type(param, "an object", value))
        return copy.deepcopy(value)


@dataclass(frozen=True)
class _Obj:
    """An object with known keys.

    ``merge``: a patch merges key by key into the current object (``audio``, ``audio.input``);
    otherwise the sent object replaces it whole. ``required`` keys must be present in a
    replacing object; ``defaults`` fills missing keys of a replacing object.
    """

    fields: Mapping[str, _Spec]
    nullable: bool = False
    merge: bool = False
    required: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def check(self, value: Any, param: str, current: Any = None) -> Any:
        if value is None and self.nullable:
            return None
        if not isinstance(value, dict):
            return _raise(_invalid_type(param, "an object", value))
        base: dict[str, Any]
        if self.merge and isinstance(current, dict):
            base = copy.deepcopy(current)
        else:
            base = copy.deepcopy(dict(self.defaults))
            for key in self.required:
                if key not in value:
                    raise _Reject(
                        f"Missing required parameter: '{param}.{key}'.",
                        "missing_required_parameter",
                        f"{param}.{key}",
                    )
        return _merge(self.fields, base, value, param)


@dataclass(frozen=True)
class _Tagged:
    """A union discriminated by ``type`` (formats, turn detection, tool choice objects)."""

    options: Mapping[str, _Obj]
    nullable: bool = False
    literals: tuple[str, ...] = ()  # bare strings accepted instead of an object

    def check(self, value: Any, param: str, current: Any = None) -> Any:
        if value is None and self.nullable:
            return None
        if isinstance(value, str) and value in self.literals:
            return value
        if not isinstance(value, dict):
            if self.literals:
                return _raise(_invalid_value(param, value, self.literals))
            return _raise(_invalid_type(param, "an object", value))
        tag = value.get("type")
        if tag is None and isinstance(current, dict) and current.get("type") in self.options:
            # A partial object without ``type`` updates the current variant in place.
            opt = self.options[current["type"]]
            return _merge(opt.fields, copy.deepcopy(current), value, param)
        if tag is None:
            raise _Reject(
                f"Missing required parameter: '{param}.type'.",
                "missing_required_parameter",
                f"{param}.type",
            )
        if tag not in self.options:
            return _raise(_invalid_value(f"{param}.type", tag, tuple(self.options)))
        opt = self.options[tag]
        if isinstance(current, dict) and current.get("type") == tag:
            return _merge(opt.fields, copy.deepcopy(current), value, param)
        return opt.check(value, param)


@dataclass(frozen=True)
class _LiteralOr:
    """One of some bare strings, or an untagged object (voice ``{id}``, tracing config)."""

    literals: tuple[str, ...]
    obj: _Obj
    nullable: bool = False

    def check(self, value: Any, param: str) -> Any:
        if value is None and self.nullable:
            return None
        if isinstance(value, dict):
            return self.obj.check(value, param)
        if isinstance(value, str) and value in self.literals:
            return value
        return _raise(_invalid_value(param, value, self.literals))


_Spec = _Str | _Bool | _Num | _Enum | _List | _Free | _Obj | _Tagged | _LiteralOr


def _raise(exc: _Reject) -> Any:
    raise exc


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _merge(
    fields: Mapping[str, _Spec], base: dict[str, Any], patch: Mapping[str, Any], param: str
) -> dict[str, Any]:
    """Apply ``patch`` onto ``base`` (mutated and returned) by ``fields``; raises ``_Reject``."""
    for key, value in patch.items():
        path = f"{param}.{key}"
        spec = fields.get(key)
        if spec is None:
            raise _Reject(f"Unknown parameter: '{path}'.", "unknown_parameter", path)
        if isinstance(spec, _Obj | _Tagged):
            base[key] = spec.check(value, path, base.get(key))
        else:
            base[key] = spec.check(value, path)
    return base


# --------------------------------------------------------------------------------------------
# The schema table


_FORMAT = _Tagged(
    {
        "audio/pcm": _Obj(
            {"type": _Enum(("audio/pcm",)), "rate": _Num(lo=24000, hi=24000, integer=True)},
            defaults={"rate": PCM_RATE_HZ},
        ),
        "audio/pcmu": _Obj({"type": _Enum(("audio/pcmu",))}),
        "audio/pcma": _Obj({"type": _Enum(("audio/pcma",))}),
    }
)
_TURN_DETECTION = _Tagged(
    {
        "server_vad": _Obj(
            {
                "type": _Enum(("server_vad",)),
                "threshold": _Num(lo=0.0, hi=1.0),
                "prefix_padding_ms": _Num(lo=0, integer=True),
                "silence_duration_ms": _Num(lo=0, integer=True),
                "idle_timeout_ms": _Num(lo=5000, hi=30000, integer=True, nullable=True),
                "create_response": _Bool(),
                "interrupt_response": _Bool(),
            },
            defaults=server_vad_defaults(),
        ),
        "semantic_vad": _Obj(
            {
                "type": _Enum(("semantic_vad",)),
                "eagerness": _Enum(("low", "medium", "high", "auto")),
                "create_response": _Bool(),
                "interrupt_response": _Bool(),
            },
            defaults=semantic_vad_defaults(),
        ),
    },
    nullable=True,
)
_TRANSCRIPTION = _Obj(
    {
        "model": _Str(),
        "language": _Str(nullable=True),
        "prompt": _Str(nullable=True),
        "languages": _List(_Str(), nullable=True),
        "keywords": _List(_Str(), nullable=True),
        "delay": _Enum(("minimal", "low", "medium", "high", "xhigh"), nullable=True),
    },
    nullable=True,
)
_NOISE_REDUCTION = _Obj(
    {"type": _Enum(("near_field", "far_field")), "strength": _Num(lo=0.0, hi=1.0)},
    nullable=True,
)
_INCLUDE = _List(_Enum(("item.input_audio_transcription.logprobs",)), nullable=True)
_AUDIO_INPUT_FIELDS: dict[str, _Spec] = {
    "format": _FORMAT,
    "transcription": _TRANSCRIPTION,
    "noise_reduction": _NOISE_REDUCTION,
    "turn_detection": _TURN_DETECTION,
}
_VOICE = _LiteralOr(VOICES, _Obj({"id": _Str()}, required=("id",)))
_FUNCTION_TOOL = _Obj(
    {
        "type": _Enum(("function",)),
        "name": _Str(),
        "description": _Str(nullable=True),
        "parameters": _Free(),
    },
    required=("name",),
)
_MCP_TOOL = _Obj(
    {
        "type": _Enum(("mcp",)),
        "server_label": _Str(),
        "server_url": _Str(nullable=True),
        "server_description": _Str(nullable=True),
        "connector_id": _Str(nullable=True),
        "authorization": _Str(nullable=True),
        "headers": _Free(nullable=True),
        "allowed_tools": _Free((dict, list), nullable=True),
        "require_approval": _Free((dict, str), nullable=True),
    },
    required=("server_label",),
)
_TOOLS = _List(_Tagged({"function": _FUNCTION_TOOL, "mcp": _MCP_TOOL}), max_len=128)
_TOOL_CHOICE = _Tagged(
    {
        "function": _Obj({"type": _Enum(("function",)), "name": _Str()}, required=("name",)),
        "mcp": _Obj(
            {"type": _Enum(("mcp",)), "server_label": _Str(), "name": _Str(nullable=True)},
            required=("server_label",),
        ),
    },
    literals=("auto", "none", "required"),
)
_TRACING = _LiteralOr(
    ("auto",),
    _Obj({"workflow_name": _Str(), "group_id": _Str(), "metadata": _Free()}),
    nullable=True,
)
_TRUNCATION = _Tagged(
    {
        "retention_ratio": _Obj(
            {
                "type": _Enum(("retention_ratio",)),
                "retention_ratio": _Num(lo=0.0, hi=1.0),
                "token_limits": _Free(),
            },
            required=("retention_ratio",),
        )
    },
    literals=("auto", "disabled"),
)
_PROMPT = _Obj(
    {"id": _Str(), "version": _Str(nullable=True), "variables": _Free(nullable=True)},
    nullable=True,
    required=("id",),
)
_MODALITIES = _List(_Enum(("text", "audio")), max_len=1)


_REALTIME_SCHEMA: dict[str, _Spec] = {
    "type": _Enum(("realtime", "transcription")),
    "model": _Str(),
    "instructions": _Str(),
    "output_modalities": _MODALITIES,
    "audio": _Obj(
        {
            "input": _Obj(_AUDIO_INPUT_FIELDS, merge=True),
            "output": _Obj(
                {"format": _FORMAT, "voice": _VOICE, "speed": _Num(lo=0.25, hi=1.5)},
                merge=True,
            ),
        },
        merge=True,
    ),
    "tools": _TOOLS,
    "tool_choice": _TOOL_CHOICE,
    "max_output_tokens": _Num(lo=1, hi=4096, integer=True, also=("inf",)),
    "tracing": _TRACING,
    "truncation": _TRUNCATION,
    "include": _INCLUDE,
    "prompt": _PROMPT,
    "reasoning": _Obj(
        {"effort": _Enum(("minimal", "low", "medium", "high", "xhigh"), nullable=True)},
        nullable=True,
    ),
    "parallel_tool_calls": _Bool(nullable=True),
}
_TRANSCRIPTION_SCHEMA: dict[str, _Spec] = {
    "type": _Enum(("realtime", "transcription")),
    "audio": _Obj({"input": _Obj(_AUDIO_INPUT_FIELDS, merge=True)}, merge=True),
    "include": _INCLUDE,
}
_SCHEMAS: Final[Mapping[str, Mapping[str, _Spec]]] = {
    "realtime": _REALTIME_SCHEMA,
    "transcription": _TRANSCRIPTION_SCHEMA,
}


# --------------------------------------------------------------------------------------------
# Public entry points


def apply_session_update(
    current: Mapping[str, Any], patch: Any, *, event_id: str | None
) -> dict[str, Any]:
    """Merge a ``session.update`` ``session`` object into the effective config (§3).

    Args:
        current: the effective session (as sent in ``session.created``); not modified.
        patch: the client's ``session`` object.
        event_id: the client event's id, echoed in the error.

    Returns:
        A new effective session. ``model`` in the patch is tolerated and ignored (§11).

    Raises:
        ClientEventError: with the real server's ``code`` and dotted ``param``; the caller
            must keep ``current`` unchanged (a rejected update is discarded whole).
    """
    if not isinstance(patch, dict):
        raise ClientEventError(
            f"Invalid type for 'session': expected an object, but got {_type_name(patch)} instead.",
            code="invalid_type",
            param="session",
            event_id=event_id,
        )
    session_type = str(current.get("type", "realtime"))
    try:
        _check_type(patch, session_type)
        return _apply(current, patch, session_type, keep_model=True)
    except _Reject as exc:
        raise ClientEventError(
            exc.message, code=exc.code, param=exc.param, event_id=event_id
        ) from None


def validate_session_config(cfg: Any, *, param: str = "session") -> dict[str, Any]:
    """Validate a session config embedded in an ephemeral key (``client_secrets``, §2.1).

    Args:
        cfg: the request's ``session`` object; ``type`` is required.
        param: the parameter prefix used in error ``param`` paths.

    Returns:
        The full effective config (defaults + ``cfg``), without server-only fields
        (``object``, ``id``, ``expires_at``); ``model`` here is applied, not ignored.

    Raises:
        ClientEventError: on any invalid or unknown field (``event_id`` is None).
    """
    if not isinstance(cfg, dict):
        raise ClientEventError(
            f"Invalid type for '{param}': expected an object, but got {_type_name(cfg)} instead.",
            code="invalid_type",
            param=param,
        )
    try:
        _check_type(cfg, None, prefix=param)
        session_type = str(cfg["type"])
        base = default_session(
            "transcription" if session_type == "transcription" else "realtime", session_id=""
        )
        for key in SERVER_ONLY_FIELDS:
            base.pop(key, None)
        return _apply(base, cfg, session_type, keep_model=False, prefix=param)
    except _Reject as exc:
        raise ClientEventError(exc.message, code=exc.code, param=exc.param) from None


def _check_type(
    patch: Mapping[str, Any], session_type: str | None, prefix: str = "session"
) -> None:
    if "type" not in patch:
        raise _Reject(
            f"Missing required parameter: '{prefix}.type'.",
            "missing_required_parameter",
            f"{prefix}.type",
        )
    _Enum(("realtime", "transcription")).check(patch["type"], f"{prefix}.type")
    if session_type is not None and patch["type"] != session_type:
        raise _Reject(
            f"Invalid value: '{patch['type']}'. A {session_type} session cannot be updated "
            f"to a {patch['type']} session.",
            "invalid_value",
            f"{prefix}.type",
        )


def _apply(
    current: Mapping[str, Any],
    patch: Mapping[str, Any],
    session_type: str,
    *,
    keep_model: bool,
    prefix: str = "session",
) -> dict[str, Any]:
    schema = _SCHEMAS[session_type]
    merged = _merge(schema, copy.deepcopy(dict(current)), patch, prefix)
    if keep_model and "model" in current:
        merged["model"] = current["model"]
    merged["type"] = session_type
    return merged
