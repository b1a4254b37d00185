"""Conversion of the retired beta session shape to the GA shape (realtime-protocol.md §9). Pure.

Used by ``POST /v1/realtime/sessions``, which still mints keys for old clients: the key always
carries a GA config, since every upstream speaks GA. The request is validated first
(:class:`voxgate.auth.requests.BetaSessionRequest`), so values here have the beta's types;
the GA session validator then checks the result, and :func:`beta_param` turns the GA parameter
path of its error back into the beta field the client sent.
"""

from __future__ import annotations

from typing import Any

_FORMATS: dict[str, dict[str, Any]] = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "g711_ulaw": {"type": "audio/pcmu"},
    "g711_alaw": {"type": "audio/pcma"},
}
#: Beta fields GA has no place for; dropped rather than rejected (the request is beta-valid).
_DROPPED = frozenset({"temperature", "client_secret", "input_audio_transcription_model"})


class BetaShapeError(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def beta_to_ga(beta: dict[str, Any]) -> dict[str, Any]:
    """Map a flat beta session request to a GA ``session`` object (``type: realtime``)."""
    ga: dict[str, Any] = {"type": "realtime"}
    audio_in: dict[str, Any] = {}
    audio_out: dict[str, Any] = {}
    for key, value in beta.items():
        if key in _DROPPED:
            continue
        if key == "modalities":
            ga["output_modalities"] = ["text"] if list(value or []) == ["text"] else ["audio"]
        elif key in ("input_audio_format", "output_audio_format"):
            if value not in _FORMATS:
                raise BetaShapeError(f"Invalid value: '{value}'.", key)
            (audio_in if key.startswith("input") else audio_out)["format"] = dict(_FORMATS[value])
        elif key == "voice":
            audio_out["voice"] = value
        elif key == "speed":
            audio_out["speed"] = value
        elif key == "input_audio_transcription":
            audio_in["transcription"] = value
        elif key == "turn_detection":
            audio_in["turn_detection"] = value
        elif key == "input_audio_noise_reduction":
            audio_in["noise_reduction"] = value
        elif key == "max_response_output_tokens":
            ga["max_output_tokens"] = value
        elif key in ("model", "instructions", "tools", "tool_choice", "tracing"):
            ga[key] = value
        else:
            raise BetaShapeError(f"Unknown parameter: '{key}'.", key)
    if audio_in or audio_out:
        ga["audio"] = {}
        if audio_in:
            ga["audio"]["input"] = audio_in
        if audio_out:
            ga["audio"]["output"] = audio_out
    return ga


#: GA parameter paths (under ``session.``) and the beta field each came from, longest first.
_GA_TO_BETA: tuple[tuple[str, str], ...] = (
    ("audio.input.transcription", "input_audio_transcription"),
    ("audio.input.turn_detection", "turn_detection"),
    ("audio.input.noise_reduction", "input_audio_noise_reduction"),
    ("audio.input.format", "input_audio_format"),
    ("audio.output.format", "output_audio_format"),
    ("audio.output.voice", "voice"),
    ("audio.output.speed", "speed"),
    ("output_modalities", "modalities"),
    ("max_output_tokens", "max_response_output_tokens"),
)


def beta_param(ga_param: str | None, prefix: str = "session") -> str | None:
    """The beta field behind a GA parameter path (``session.audio.output.voice`` → ``voice``)."""
    if ga_param is None:
        return None
    path = ga_param.removeprefix(prefix + ".") if ga_param != prefix else ""
    for ga, beta in _GA_TO_BETA:
        if path == ga or path.startswith((ga + ".", ga + "[")):
            return beta + path[len(ga) :]
    return path or None


def beta_message(message: str, ga_param: str | None, prefix: str = "session") -> str:
    """A GA validator message with the parameter named as the beta request named it."""
    beta = beta_param(ga_param, prefix)
    if ga_param and beta and ga_param in message:
        return message.replace(ga_param, beta)
    return message


def ga_to_beta(ga: dict[str, Any]) -> dict[str, Any]:
    """The flat beta view of a full GA session, for the beta endpoint's response."""
    audio = ga.get("audio") or {}
    audio_in = audio.get("input") or {}
    audio_out = audio.get("output") or {}
    back = {v["type"]: k for k, v in _FORMATS.items()}
    modalities = ["text"] if ga.get("output_modalities") == ["text"] else ["audio", "text"]
    return {
        "model": ga.get("model"),
        "modalities": modalities,
        "instructions": ga.get("instructions"),
        "voice": audio_out.get("voice"),
        "input_audio_format": back.get((audio_in.get("format") or {}).get("type"), "pcm16"),
        "output_audio_format": back.get((audio_out.get("format") or {}).get("type"), "pcm16"),
        "input_audio_transcription": audio_in.get("transcription"),
        "turn_detection": audio_in.get("turn_detection"),
        "input_audio_noise_reduction": audio_in.get("noise_reduction"),
        "tools": ga.get("tools", []),
        "tool_choice": ga.get("tool_choice", "auto"),
        "max_response_output_tokens": ga.get("max_output_tokens", "inf"),
        "speed": audio_out.get("speed", 1.0),
        "tracing": ga.get("tracing"),
    }
