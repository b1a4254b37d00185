"""Upstream reconnect policy (voxgate.session.reconnect): which closes are retried, and the
equal-jitter backoff."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voxgate.session.reconnect import ReconnectPolicy, is_retryable_close


@pytest.mark.parametrize("code", [None, 1001, 1005, 1006, 1011, 1012, 1013, 1015])
def test_network_losses_and_openai_python_retry_codes_are_retryable(code: int | None) -> None:
    assert is_retryable_close(code)


@pytest.mark.parametrize("code", [1000, 1002, 1008, 1009, 3000, 4000])
def test_normal_auth_and_bad_request_closes_are_not_retryable(code: int) -> None:
    assert not is_retryable_close(code)


def test_first_attempt_is_immediate() -> None:
    policy = ReconnectPolicy()
    assert policy.delay_s(0, 0.99) == 0.0
    assert policy.delay_s(-3, 0.5) == 0.0


def test_delay_doubles_from_the_base_up_to_the_cap() -> None:
    policy = ReconnectPolicy(base_delay_s=0.25, max_delay_s=2.0)
    assert [policy.delay_s(n, 0.0) for n in range(1, 7)] == [0.125, 0.25, 0.5, 1.0, 1.0, 1.0]
    assert policy.delay_s(3, 0.5) == 0.75


def test_worst_case_adds_every_full_delay_and_connect_timeout() -> None:
    policy = ReconnectPolicy(attempts=4, base_delay_s=0.25, max_delay_s=0.5, connect_timeout_s=1.0)
    assert policy.worst_case_s() == 0.25 + 0.5 + 0.5 + 4 * 1.0
    assert ReconnectPolicy(attempts=0).worst_case_s() == 0.0


@given(
    st.integers(1, 1000),
    st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    st.floats(min_value=0.001, max_value=10.0),
    st.floats(min_value=0.001, max_value=60.0),
)
def test_delay_is_within_half_and_all_of_its_ceiling(
    attempt: int, rand: float, base: float, cap: float
) -> None:
    policy = ReconnectPolicy(base_delay_s=base, max_delay_s=cap)
    ceiling = min(cap, base * 2.0 ** (attempt - 1))
    delay = policy.delay_s(attempt, rand)
    assert ceiling / 2 <= delay <= ceiling
    assert delay <= cap


def test_delay_of_a_very_late_attempt_is_capped_not_an_overflow() -> None:
    policy = ReconnectPolicy(base_delay_s=0.2, max_delay_s=5.0)
    assert 2.5 <= policy.delay_s(1025, 0.5) <= 5.0
