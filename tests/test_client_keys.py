from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxgate.auth import client_keys
from voxgate.auth.grants import Authenticator
from voxgate.auth.server_keys import ServerKeys
from voxgate.protocol.errors import AuthError

SECRET = b"s" * 32
NOW = 1_800_000_000.0


def test_round_trip_carries_config_subject_and_limits() -> None:
    session = {"type": "realtime", "instructions": "Be brief. " * 200}
    key, claims = client_keys.mint(
        SECRET, now=NOW, ttl_s=60, session=session, subject="user-1", max_session_s=900
    )
    assert key.startswith("ek_")
    got = client_keys.verify(SECRET, key, now=NOW + 59)
    assert got.session == session
    assert got.subject == "user-1"
    assert got.max_session_s == 900
    assert got.expires_at == claims.expires_at == int(NOW) + 60
    # long instructions compress: the key fits in one HTTP header field
    assert len(key) < 8000


def test_expired_key_is_refused() -> None:
    key, _ = client_keys.mint(SECRET, now=NOW, ttl_s=10)
    with pytest.raises(client_keys.ClientKeyError) as info:
        client_keys.verify(SECRET, key, now=NOW + 10)
    assert info.value.reason == "expired"


def test_key_signed_with_another_secret_is_forged() -> None:
    key, _ = client_keys.mint(b"other" * 8, now=NOW)
    with pytest.raises(client_keys.ClientKeyError) as info:
        client_keys.verify(SECRET, key, now=NOW)
    assert info.value.reason == "bad_signature"


@pytest.mark.parametrize("ttl", [9, 7201])
def test_ttl_outside_10s_to_2h_is_rejected(ttl: int) -> None:
    with pytest.raises(ValueError, match="ttl"):
        client_keys.mint(SECRET, now=NOW, ttl_s=ttl)


FIXED_KEY, _ = client_keys.mint(SECRET, now=NOW, session={"type": "realtime"}, subject="u")


@settings(max_examples=300)
@given(data=st.data())
def test_any_single_character_change_is_rejected(data: st.DataObject) -> None:
    key = FIXED_KEY
    index = data.draw(st.integers(min_value=0, max_value=len(key) - 1))
    replacement = data.draw(st.characters(codec="utf-8").filter(lambda c: c != key[index]))
    tampered = key[:index] + replacement + key[index + 1 :]
    with pytest.raises(client_keys.ClientKeyError):
        client_keys.verify(SECRET, tampered, now=NOW)


@given(st.text(max_size=200))
def test_garbage_never_verifies(text: str) -> None:
    with pytest.raises(client_keys.ClientKeyError):
        client_keys.verify(SECRET, "ek_" + text, now=NOW)


def test_authenticator_grants_and_refusals() -> None:
    auth = Authenticator(ServerKeys(["vk-server-key-1"]), SECRET, default_max_session_s=3600)
    assert auth.authenticate("vk-server-key-1", now=NOW).kind == "server_key"
    key, _ = client_keys.mint(SECRET, now=NOW, subject="alice", max_session_s=60)
    grant = auth.authenticate(key, now=NOW)
    assert (grant.kind, grant.subject, grant.max_session_s) == ("client_key", "alice", 60)
    with pytest.raises(AuthError) as missing:
        auth.authenticate(None, now=NOW)
    assert missing.value.code is None
    assert missing.value.close_code == 3000
    assert missing.value.reason == "invalid_request_error"
    for bad in ("vk-server-key-2", "ek_nope.nope", key + "x"):
        with pytest.raises(AuthError) as info:
            auth.authenticate(bad, now=NOW)
        assert info.value.reason == "invalid_request_error.invalid_api_key"
    with pytest.raises(AuthError, match="expired"):
        auth.authenticate(key, now=NOW + 601)


def test_server_key_check_is_exact() -> None:
    keys = ServerKeys(["abc", "defg"])
    assert keys.check("abc")
    assert keys.check("defg")
    assert not keys.check("ab")
    assert not keys.check("abcd")
    assert not keys.check("")
