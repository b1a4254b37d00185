"""Resume tokens (voxgate.auth.resume), the per-session rules for taking one back
(voxgate.auth.resume.ResumeState) and the resume request frame (protocol.extensions)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from voxgate.auth import resume as tokens
from voxgate.auth.resume import (
    MAX_TOKEN_CHARS,
    ResumeClaims,
    ResumeState,
    ResumeTokenError,
    mint,
    verify,
)
from voxgate.protocol.extensions import ResumeRequestError, parse_resume_request
from voxgate.protocol.tokens import seal
from voxgate.store.memory import MemoryStore

SECRET = b"test-secret-0123456789abcdef"


def token_for(
    session_id: str = "sess_1", subject: str | None = "user_1", generation: int = 1
) -> tuple[str, ResumeClaims]:
    return mint(SECRET, session_id=session_id, subject=subject, generation=generation)


# ---------------------------------------------------------------------------- tokens


def test_token_round_trips_its_claims() -> None:
    token, claims = token_for()
    assert token.startswith("vgr_")
    assert verify(SECRET, token) == claims
    assert claims.session_id == "sess_1"
    assert claims.subject == "user_1"
    assert claims.generation == 1
    assert len(claims.nonce) == 16


def test_each_mint_has_a_fresh_nonce() -> None:
    first, a = token_for()
    second, b = token_for()
    assert first != second
    assert a.nonce != b.nonce


def test_token_signed_with_another_secret_is_rejected() -> None:
    token, _ = mint(b"another secret", session_id="sess_1", subject=None, generation=1)
    with pytest.raises(ResumeTokenError) as info:
        verify(SECRET, token)
    assert info.value.reason == "bad_signature"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "ek_abc.def",
        "vgr_",
        "vgr_payload",
        "vgr_.sig",
        "vgr_payload.",
        "vgr_" + "a" * MAX_TOKEN_CHARS + ".sig",
        "vgr_pay\u00e9load.sig",
    ],
)
def test_malformed_tokens_are_rejected_as_malformed(token: str) -> None:
    with pytest.raises(ResumeTokenError) as info:
        verify(SECRET, token)
    assert info.value.reason == "malformed"


def test_signed_payload_of_the_wrong_shape_is_rejected_as_malformed() -> None:
    for body in (
        [1, 2],
        {"s": "sess_1", "u": None, "g": "1", "n": "x"},
        {"s": "sess_1", "u": 5, "g": 1, "n": "x"},
        {"s": "sess_1", "u": None, "g": 1},
    ):
        token = seal(SECRET, prefix="vgr_", domain=tokens._DOMAIN, payload=orjson.dumps(body))
        with pytest.raises(ResumeTokenError) as info:
            verify(SECRET, token)
        assert info.value.reason == "malformed"


def test_same_nonce_compares_exactly() -> None:
    assert tokens.same_nonce("abc", "abc")
    assert not tokens.same_nonce("abc", "abd")
    assert not tokens.same_nonce("abc", "ab")


@given(
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.none() | st.text(st.characters(codec="utf-8"), max_size=40),
    st.integers(0, 2**53),
)
def test_any_token_round_trips(session_id: str, subject: str | None, generation: int) -> None:
    token, claims = mint(SECRET, session_id=session_id, subject=subject, generation=generation)
    assert (
        verify(SECRET, token)
        == claims
        == ResumeClaims(session_id, subject, generation, claims.nonce)
    )


@given(st.data())
def test_any_single_character_change_is_rejected(data: st.DataObject) -> None:
    token, _ = token_for(subject=data.draw(st.none() | st.text(max_size=10)))
    i = data.draw(st.integers(0, len(token) - 1))
    char = data.draw(st.characters().filter(lambda c: c != token[i]))
    with pytest.raises(ResumeTokenError):
        verify(SECRET, token[:i] + char + token[i + 1 :])


# ---------------------------------------------------------------------------- the session side


def state(subject: str | None = "user_1") -> ResumeState:
    return ResumeState(SECRET, MemoryStore(), session_id="sess_1", subject=subject)


async def test_issued_token_is_accepted_by_its_session() -> None:
    s = state()
    claims = verify(SECRET, await s.issue())
    assert s.generation == 1
    assert s.check(claims, presented_subject=None) is None
    assert await s.accepts(claims, presented_subject="user_1") is None


async def test_a_token_is_single_use_because_accepting_it_voids_it() -> None:
    s = state()
    used = verify(SECRET, await s.issue())
    assert await s.accepts(used, presented_subject=None) is None
    fresh = verify(SECRET, await s.consume())
    assert s.resumes == 1
    assert s.generation == 2
    assert await s.accepts(used, presented_subject=None) == "token_used"
    assert await s.accepts(fresh, presented_subject=None) is None


async def test_the_same_token_cannot_be_accepted_twice() -> None:
    s = state()
    claims = verify(SECRET, await s.issue())
    assert await s.accepts(claims, presented_subject=None) is None
    assert await s.accepts(claims, presented_subject=None) == "token_used"


async def test_issue_makes_every_earlier_token_stop_working() -> None:
    s = state()
    first = verify(SECRET, await s.issue())
    second = verify(SECRET, await s.issue())
    assert await s.accepts(first, presented_subject=None) == "token_used"
    assert await s.accepts(second, presented_subject=None) is None


async def test_copied_token_of_the_same_generation_with_another_nonce_is_refused() -> None:
    s = state()
    await s.issue()
    _, forged = token_for(generation=1)  # same session, subject and generation
    assert await s.accepts(forged, presented_subject=None) == "token_used"


async def test_nothing_is_accepted_before_the_first_issue() -> None:
    s = state()
    _, claims = token_for(generation=0)
    assert await s.accepts(claims, presented_subject=None) == "token_used"


async def test_token_of_another_session_or_subject_is_refused() -> None:
    s = state()
    await s.issue()
    _, other_session = token_for(session_id="sess_2")
    _, other_subject = token_for(subject="user_2")
    _, no_subject = token_for(subject=None)
    assert await s.accepts(other_session, presented_subject=None) == "other_session"
    assert await s.accepts(other_subject, presented_subject=None) == "other_subject"
    assert await s.accepts(no_subject, presented_subject=None) == "other_subject"


async def test_key_presented_with_a_resume_must_be_of_the_same_subject() -> None:
    s = state()
    claims = verify(SECRET, await s.issue())
    assert await s.accepts(claims, presented_subject="user_2") == "other_subject"
    anonymous = state(subject=None)
    claims = verify(SECRET, await anonymous.issue())
    assert anonymous.check(claims, presented_subject="user_1") == "other_subject"
    assert await anonymous.accepts(claims, presented_subject=None) is None


# ---------------------------------------------------------------------------- resume request


def test_resume_request_is_parsed_from_text_or_bytes() -> None:
    frame = '{"type":"voxgate.session.resume","resume_token":"vgr_x.y","received_events":7}'
    assert parse_resume_request(frame) == ("vgr_x.y", 7)
    assert parse_resume_request(frame.encode()) == ("vgr_x.y", 7)
    zero = '{"type":"voxgate.session.resume","resume_token":"t","received_events":0}'
    assert parse_resume_request(zero) == ("t", 0)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("nope", "not JSON"),
        ("[]", "expected voxgate.session.resume"),
        ('{"type":"session.update"}', "expected voxgate.session.resume"),
        (
            '{"type":"voxgate.session.resume","resume_token":"","received_events":1}',
            "resume_token must be a string",
        ),
        (
            '{"type":"voxgate.session.resume","resume_token":5,"received_events":1}',
            "resume_token must be a string",
        ),
        (
            '{"type":"voxgate.session.resume","resume_token":"t"}',
            "received_events must be a non-negative integer",
        ),
        (
            '{"type":"voxgate.session.resume","resume_token":"t","received_events":-1}',
            "received_events must be a non-negative integer",
        ),
        (
            '{"type":"voxgate.session.resume","resume_token":"t","received_events":true}',
            "received_events must be a non-negative integer",
        ),
        (
            '{"type":"voxgate.session.resume","resume_token":"t","received_events":1.0}',
            "received_events must be a non-negative integer",
        ),
        (
            '{"type":"voxgate.session.resume","resume_token":"t","received_events":"1"}',
            "received_events must be a non-negative integer",
        ),
    ],
)
def test_bad_resume_request_is_refused(frame: str, message: str) -> None:
    with pytest.raises(ResumeRequestError) as info:
        parse_resume_request(frame)
    assert str(info.value) == message
