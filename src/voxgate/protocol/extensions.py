"""voxgate's protocol extensions for clients that opt in with the ``voxgate.v1`` subprotocol.

Opted-in clients may receive ``voxgate.*`` gateway events and send binary frames of raw audio
in the session's input format. Stock clients never see either (openai-agents reports unknown
event types as errors, realtime-protocol.md §11). Pure.
"""

from __future__ import annotations

from typing import Any

import orjson

from voxgate.protocol.ids import event_id

SUBPROTOCOL = "voxgate.v1"
#: Offered next to ``voxgate.v1`` by a connection whose first frame is a resume request
#: (``voxgate.session.resume``); never selected, it carries no secret.
RESUME_SUBPROTOCOL = "voxgate.resume"
#: The subprotocol every OpenAI browser client offers, selected when offered (§1.3).
REALTIME_SUBPROTOCOL = "realtime"
KEY_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."


def gateway_event(event_type: str, **fields: Any) -> str:
    """Serialise a ``voxgate.*`` event. Callers must only send it to opted-in clients."""
    if not event_type.startswith("voxgate."):
        raise ValueError("gateway events are namespaced voxgate.*")
    return orjson.dumps({"type": event_type, "event_id": event_id(), **fields}).decode()


def append_b64(audio_b64: str) -> str:
    """``input_audio_buffer.append`` carrying this base64 audio."""
    return '{"type":"input_audio_buffer.append","audio":"' + audio_b64 + '"}'


class ResumeRequestError(ValueError):
    """The first frame of a resuming connection is not a valid resume request."""


def parse_resume_request(text: str | bytes) -> tuple[str, int]:
    """``voxgate.session.resume {resume_token, received_events}`` → ``(token, received)``.

    Raises:
        ResumeRequestError: not JSON, another type, or fields of the wrong type.
    """
    try:
        event = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ResumeRequestError("not JSON") from None
    if not isinstance(event, dict) or event.get("type") != "voxgate.session.resume":
        raise ResumeRequestError("expected voxgate.session.resume")
    token, received = event.get("resume_token"), event.get("received_events")
    if not isinstance(token, str) or not token:
        raise ResumeRequestError("resume_token must be a string")
    if isinstance(received, bool) or not isinstance(received, int) or received < 0:
        raise ResumeRequestError("received_events must be a non-negative integer")
    return token, received
