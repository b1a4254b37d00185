"""What a client asked for when it connected: credential, model, intent, subprotocols. Pure.

Auth comes from ``Authorization: Bearer <key>`` or, for browsers, the subprotocol
``openai-insecure-api-key.<key>`` next to ``realtime`` (realtime-protocol.md §1.3). The
subprotocol voxgate selects is ``voxgate.v1`` when offered (the client opted in to
extensions), else ``realtime`` when offered, else none. A key-bearing subprotocol is never
selected, echoed, or logged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from voxgate.auth.bearer import bearer_token
from voxgate.protocol.extensions import (
    KEY_SUBPROTOCOL_PREFIX,
    REALTIME_SUBPROTOCOL,
    RESUME_SUBPROTOCOL,
    SUBPROTOCOL,
)


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """A client's connection parameters, with the credential kept out of ``repr``."""

    credential: str | None
    model: str | None
    intent: str | None
    call_id: str | None
    selected_subprotocol: str | None
    extensions: bool
    beta_header: bool
    resume: bool = False

    def __repr__(self) -> str:  # never show the credential
        return (
            f"ConnectRequest(model={self.model!r}, intent={self.intent!r}, "
            f"extensions={self.extensions}, credential={'yes' if self.credential else 'no'})"
        )


def offered_subprotocols(header_value: str | None) -> list[str]:
    """Split a ``Sec-WebSocket-Protocol`` header into its tokens."""
    if not header_value:
        return []
    return [p.strip() for p in header_value.split(",") if p.strip()]


def select_subprotocol(offered: Sequence[str]) -> str | None:
    if SUBPROTOCOL in offered:
        return SUBPROTOCOL
    if REALTIME_SUBPROTOCOL in offered:
        return REALTIME_SUBPROTOCOL
    return None


def negotiate(
    query: Mapping[str, str], headers: Mapping[str, str], offered: Sequence[str]
) -> ConnectRequest:
    """Build a :class:`ConnectRequest` from the upgrade request's query, headers and offers."""
    credential = bearer_token(headers.get("Authorization"))
    if credential is None:
        for proto in offered:
            if proto.startswith(KEY_SUBPROTOCOL_PREFIX):
                credential = proto[len(KEY_SUBPROTOCOL_PREFIX) :] or None
                break
    beta = "realtime=v1" in headers.get("OpenAI-Beta", "").replace(" ", "") or (
        "openai-beta.realtime-v1" in offered
    )
    return ConnectRequest(
        credential=credential,
        model=query.get("model") or None,
        intent=query.get("intent") or None,
        call_id=query.get("call_id") or None,
        selected_subprotocol=select_subprotocol(offered),
        extensions=SUBPROTOCOL in offered,
        beta_header=beta,
        resume=SUBPROTOCOL in offered and RESUME_SUBPROTOCOL in offered,
    )
