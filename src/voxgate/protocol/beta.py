"""Translation between the retired beta Realtime protocol and GA, event by event. Pure.

A beta client (``OpenAI-Beta: realtime=v1`` or the ``openai-beta.realtime-v1`` subprotocol)
speaks to a session whose upstream speaks GA (realtime-protocol.md §9). One
:class:`BetaTranslator` per connection turns each client frame into its GA form
(:meth:`~BetaTranslator.client_to_ga`) and each GA server frame into zero, one or two beta
frames (:meth:`~BetaTranslator.server_to_beta`). Both directions are tables keyed by event
type: a pure rename, an unchanged pass, or a body mapper from :mod:`.beta_shapes`.

Hot path (DESIGN.md principle 1): audio events are never parsed. A client
``input_audio_buffer.append`` is the same in both shapes and passes untouched; a server
``response.output_audio.delta`` (and every other pure rename) becomes its beta name by
replacing the type at the head of the frame, the rest of the text copied as is.

The reverse directions (:meth:`~BetaTranslator.client_to_beta`,
:meth:`~BetaTranslator.server_to_ga`) exist so every event type has a round-trip test, and for
tools that want to show a GA frame as a beta client would have sent it.

State per connection (all of it): the ``temperature`` the client set (GA has none; it is
echoed in beta sessions and responses), whether the session is a transcription session, and
whether ``conversation.created`` was sent. Must not: do I/O, read a clock, or log.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from voxgate.protocol import beta_shapes as shapes
from voxgate.protocol.ids import event_id, new_id
from voxgate.protocol.sniff import NotAnEvent, parse_event

#: The handshake marks of a beta client (§1.2, §1.3).
BETA_HEADER_VALUE: Final = "realtime=v1"
BETA_SUBPROTOCOL: Final = "openai-beta.realtime-v1"

#: GA server event types whose beta form differs only in name (body unchanged).
SERVER_RENAMES: Final[dict[str, str]] = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}
_SERVER_RENAMES_BACK: Final = {v: k for k, v in SERVER_RENAMES.items()}
#: GA server events a beta client never saw: the item it got in ``conversation.item.created``.
SERVER_DROPPED: Final = frozenset({"conversation.item.done"})
#: Beta client event types the GA upstream does not know, and the GA type each becomes.
CLIENT_RENAMES: Final[dict[str, str]] = {"transcription_session.update": "session.update"}
#: The beta server's "Supported values" for an unknown client ``type``.
BETA_CLIENT_TYPES: Final = (
    "session.update",
    "transcription_session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.clear",
    "input_audio_buffer.commit",
    "conversation.item.create",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "response.cancel",
    "response.create",
)
_RENAME_HEADS: Final = tuple(
    (f'{{"type":{sep}"{ga}"', f'{{"type":{sep}"{beta}"')
    for ga, beta in SERVER_RENAMES.items()
    for sep in ("", " ")
)
#: Client frames that are identical in both shapes start with one of these (fast pass).
_CLIENT_PASS_HEADS: Final = tuple(
    f'{{"type":{sep}"{t}"'
    for t in (
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "input_audio_buffer.clear",
        "response.cancel",
        "conversation.item.truncate",
        "conversation.item.retrieve",
        "conversation.item.delete",
    )
    for sep in ("", " ")
)

Event = dict[str, Any]
_Mapper = Callable[["BetaTranslator", Event], list[Event]]
_ClientMapper = Callable[["BetaTranslator", Event], Event]


def _dumps(event: Event) -> str:
    return orjson.dumps(event).decode()


class BetaTranslator:
    """One beta connection's translation state. See the module docstring."""

    def __init__(self) -> None:
        self.temperature: float = shapes.BETA_DEFAULT_TEMPERATURE
        self.transcription = False
        self.conversation_sent = False

    # ------------------------------------------------------------------ client → GA

    def client_to_ga(self, text: str) -> str:
        """The GA frame for a beta client frame (the frame itself when nothing changes).

        A frame that is not a JSON event is returned unchanged: the session answers it with
        the usual ``error`` (which :meth:`server_to_beta` then words for a beta client).
        """
        if text.startswith(_CLIENT_PASS_HEADS):
            return text
        try:
            etype, event = parse_event(text)
        except NotAnEvent:
            return text
        mapper = _CLIENT_TO_GA.get(etype)
        if mapper is None:
            return text
        out = mapper(self, event)
        return text if out == event else _dumps(out)  # never re-serialise an unchanged event

    def client_to_beta(self, text: str) -> str:
        """The beta form of a GA client frame (the inverse of :meth:`client_to_ga`)."""
        try:
            etype, event = parse_event(text)
        except NotAnEvent:
            return text
        mapper = _CLIENT_TO_BETA.get(etype)
        return text if mapper is None else _dumps(mapper(self, event))

    # ------------------------------------------------------------------ GA → beta

    def server_to_beta(self, text: str) -> list[str]:
        """The beta frames for one GA server frame: usually one, none for an event beta
        clients never saw, two for ``session.created`` (then ``conversation.created``)."""
        for ga_head, beta_head in _RENAME_HEADS:
            if text.startswith(ga_head):
                return [beta_head + text[len(ga_head) :]]
        try:
            etype, event = parse_event(text)
        except NotAnEvent:
            return [text]
        if etype in SERVER_DROPPED:
            return []
        mapper = _SERVER_TO_BETA.get(etype)
        if mapper is None:
            return [text]
        return [text if e == event else _dumps(e) for e in mapper(self, event)]

    def server_to_ga(self, text: str) -> list[str]:
        """The GA frames for one beta server frame (the inverse of :meth:`server_to_beta`;
        ``conversation.created`` has no GA form)."""
        try:
            etype, event = parse_event(text)
        except NotAnEvent:
            return [text]
        if etype == "conversation.created":
            return []
        mapper = _SERVER_TO_GA.get(etype)
        return [text] if mapper is None else [_dumps(e) for e in mapper(self, event)]

    # ------------------------------------------------------------------ client mappers

    def _session_update_to_ga(self, event: Event) -> Event:
        session = event.get("session")
        out = dict(event)
        if isinstance(session, dict):
            temperature = session.get("temperature")
            if isinstance(temperature, int | float) and not isinstance(temperature, bool):
                self.temperature = float(temperature)
            if event.get("type") == "transcription_session.update":
                ga = shapes.to_ga(session, shapes.TRANSCRIPTION_SESSION)
                ga.pop("modalities", None)  # a transcription session has no output
                out["session"] = {"type": "transcription", **ga}
            else:
                out["session"] = {
                    "type": "realtime",
                    **shapes.to_ga(session, shapes.REALTIME_SESSION),
                }
        out["type"] = "session.update"
        return out

    def _session_update_to_beta(self, event: Event) -> Event:
        session = event.get("session")
        out = dict(event)
        if isinstance(session, dict):
            if session.get("type") == "transcription":
                out["type"] = "transcription_session.update"
                out["session"] = shapes.to_beta(session, shapes.TRANSCRIPTION_SESSION)
            else:
                out["session"] = shapes.to_beta(session, shapes.REALTIME_SESSION)
        return out

    def _response_create_to_ga(self, event: Event) -> Event:
        response = event.get("response")
        if not isinstance(response, dict):
            return event
        return {**event, "response": shapes.to_ga(response, shapes.RESPONSE_PARAMS)}

    def _response_create_to_beta(self, event: Event) -> Event:
        response = event.get("response")
        if not isinstance(response, dict):
            return event
        beta = shapes.to_beta(response, shapes.RESPONSE_PARAMS)
        if isinstance(response.get("input"), list):
            beta["input"] = [shapes.item_to_beta(i) for i in response["input"]]
        return {**event, "response": beta}

    # ------------------------------------------------------------------ server mappers

    def _session_to_beta(self, event: Event) -> list[Event]:
        session = event.get("session")
        if not isinstance(session, dict):
            return [event]
        created = event.get("type") == "session.created"
        self.transcription = session.get("type") == "transcription"
        if self.transcription:
            flat = shapes.to_beta(session, shapes.TRANSCRIPTION_SESSION)
            flat.setdefault("object", "realtime.transcription_session")
            flat["modalities"] = ["text"]
            flat["client_secret"] = None
            name = "transcription_session.created" if created else "transcription_session.updated"
            return [{**event, "type": name, "session": flat}]
        flat = shapes.to_beta(session, shapes.REALTIME_SESSION)
        flat["temperature"] = self.temperature
        out = [{**event, "session": flat}]
        if created and not self.conversation_sent:
            self.conversation_sent = True
            out.append(
                {
                    "type": "conversation.created",
                    "event_id": event_id(),
                    "conversation": {"id": new_id("conv"), "object": "realtime.conversation"},
                }
            )
        return out

    def _session_to_ga(self, event: Event) -> list[Event]:
        session = event.get("session")
        etype = str(event.get("type"))
        transcription = etype.startswith("transcription_session.")
        out = dict(event)
        out["type"] = "session." + etype.rsplit(".", 1)[1]
        if isinstance(session, dict):
            table = shapes.TRANSCRIPTION_SESSION if transcription else shapes.REALTIME_SESSION
            ga = shapes.to_ga(session, table)
            if transcription:
                ga.pop("modalities", None)
            out["session"] = {"type": "transcription" if transcription else "realtime", **ga}
        return [out]

    def _item_to_beta(self, event: Event) -> list[Event]:
        out = {**event, "item": shapes.item_to_beta(event.get("item"))}
        if out["type"] == "conversation.item.added":
            out["type"] = "conversation.item.created"
        return [out]

    def _item_to_ga(self, event: Event) -> list[Event]:
        out = {**event, "item": shapes.item_to_ga(event.get("item"))}
        if out["type"] == "conversation.item.created":
            out["type"] = "conversation.item.added"
        return [out]

    def _response_to_beta(self, event: Event) -> list[Event]:
        return [
            {**event, "response": shapes.response_to_beta(event.get("response"), self.temperature)}
        ]

    def _response_to_ga(self, event: Event) -> list[Event]:
        return [{**event, "response": shapes.response_to_ga(event.get("response"))}]

    def _error_to_beta(self, event: Event) -> list[Event]:
        """Errors name beta fields; an unknown ``type`` lists the beta client events."""
        error = event.get("error")
        if not isinstance(error, dict):
            return [event]
        param = error.get("param")
        beta_param = shapes.param_to_beta(param) if isinstance(param, str) else param
        message = error.get("message")
        if error.get("code") == "invalid_value" and param == "type" and isinstance(message, str):
            head = message.split(" Supported values are:", 1)[0]
            supported = ", ".join(f"'{t}'" for t in BETA_CLIENT_TYPES)
            message = f"{head} Supported values are: {supported}."
        elif isinstance(message, str) and isinstance(param, str) and beta_param != param:
            message = message.replace(param, str(beta_param))
        return [{**event, "error": {**error, "param": beta_param, "message": message}}]

    def _rename_to_ga(self, event: Event) -> list[Event]:
        return [{**event, "type": _SERVER_RENAMES_BACK[str(event["type"])]}]

    def _rename_to_beta(self, event: Event) -> list[Event]:
        return [{**event, "type": SERVER_RENAMES[str(event["type"])]}]


def _item_create(to: Callable[[Any], Any]) -> _ClientMapper:
    def mapper(self: BetaTranslator, event: Event) -> Event:
        return {**event, "item": to(event.get("item"))}

    return mapper


_T = BetaTranslator
_CLIENT_TO_GA: Final[dict[str, _ClientMapper]] = {
    "session.update": _T._session_update_to_ga,
    "transcription_session.update": _T._session_update_to_ga,
    "conversation.item.create": _item_create(shapes.item_to_ga),
    "response.create": _T._response_create_to_ga,
}
_CLIENT_TO_BETA: Final[dict[str, _ClientMapper]] = {
    "session.update": _T._session_update_to_beta,
    "conversation.item.create": _item_create(shapes.item_to_beta),
    "response.create": _T._response_create_to_beta,
}
_SERVER_TO_BETA: Final[dict[str, _Mapper]] = {
    "session.created": _T._session_to_beta,
    "session.updated": _T._session_to_beta,
    "conversation.item.added": _T._item_to_beta,
    "conversation.item.retrieved": _T._item_to_beta,
    "response.output_item.added": _T._item_to_beta,
    "response.output_item.done": _T._item_to_beta,
    "response.created": _T._response_to_beta,
    "response.done": _T._response_to_beta,
    "error": _T._error_to_beta,
    **{ga: _T._rename_to_beta for ga in SERVER_RENAMES},
}
_SERVER_TO_GA: Final[dict[str, _Mapper]] = {
    "session.created": _T._session_to_ga,
    "session.updated": _T._session_to_ga,
    "transcription_session.created": _T._session_to_ga,
    "transcription_session.updated": _T._session_to_ga,
    "conversation.item.created": _T._item_to_ga,
    "conversation.item.retrieved": _T._item_to_ga,
    "response.output_item.added": _T._item_to_ga,
    "response.output_item.done": _T._item_to_ga,
    "response.created": _T._response_to_ga,
    "response.done": _T._response_to_ga,
    **{beta: _T._rename_to_ga for beta in _SERVER_RENAMES_BACK},
}


def is_beta_handshake(beta_header: str | None, offered: tuple[str, ...] | list[str]) -> bool:
    """Whether a connecting client asked for the beta shape (§1.2, §1.3)."""
    header = (beta_header or "").replace(" ", "")
    return BETA_HEADER_VALUE in header.split(",") or BETA_SUBPROTOCOL in offered
