from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from voxgate.transports.negotiate import (
    bearer_token,
    negotiate,
    offered_subprotocols,
    select_subprotocol,
)


def test_browser_subprotocols_carry_the_key_and_select_realtime() -> None:
    offered = offered_subprotocols("realtime, openai-insecure-api-key.ek_abc.def")
    req = negotiate({"model": "gpt-realtime"}, {}, offered)
    assert req.credential == "ek_abc.def"
    assert req.selected_subprotocol == "realtime"
    assert not req.extensions
    assert "ek_abc" not in repr(req)


def test_voxgate_extension_is_selected_when_offered() -> None:
    req = negotiate({}, {}, ["realtime", "voxgate.v1", "openai-insecure-api-key.k"])
    assert req.selected_subprotocol == "voxgate.v1"
    assert req.extensions


def test_bearer_header_wins_over_subprotocol() -> None:
    req = negotiate({}, {"Authorization": "Bearer sk-header"}, ["openai-insecure-api-key.k2"])
    assert req.credential == "sk-header"


def test_query_and_beta_header() -> None:
    req = negotiate({"intent": "transcription"}, {"OpenAI-Beta": "realtime=v1"}, [])
    assert req.intent == "transcription"
    assert req.model is None
    assert req.beta_header


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer") is None
    assert bearer_token(None) is None


@given(
    st.text(max_size=300), st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=4)
)
def test_negotiate_never_raises(header: str, query: dict[str, str]) -> None:
    offered = offered_subprotocols(header)
    req = negotiate(query, {"Authorization": header}, offered)
    assert req.selected_subprotocol in (None, "realtime", "voxgate.v1")
    assert select_subprotocol(offered) == req.selected_subprotocol
