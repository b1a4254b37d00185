"""Client pacing (voxgate.session.ratelimit): token buckets that say how long to wait, never
drop. Rates and bursts are powers of two so every expected wait is exact."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from voxgate.session.ratelimit import ClientPacer, TokenBucket


def test_bucket_lets_a_full_burst_through_without_waiting() -> None:
    bucket = TokenBucket(rate=4.0, burst=2.0, now=0.0)
    assert bucket.take(1.0, 0.0) == 0.0
    assert bucket.take(1.0, 0.0) == 0.0
    assert bucket.level == 0.0


def test_bucket_past_its_burst_returns_the_time_until_level_zero() -> None:
    bucket = TokenBucket(rate=4.0, burst=2.0, now=0.0)
    bucket.take(2.0, 0.0)
    assert bucket.take(1.0, 0.0) == 0.25
    assert bucket.take(1.0, 0.25) == 0.25  # refilled 1, spent 1: still one in debt
    assert bucket.take(1.0, 0.75) == 0.0  # refilled 2, spent 1: level 0


def test_bucket_refill_is_capped_at_the_burst() -> None:
    bucket = TokenBucket(rate=4.0, burst=2.0, now=0.0)
    bucket.take(2.0, 0.0)
    assert bucket.take(0.0, 100.0) == 0.0
    assert bucket.level == 2.0
    assert bucket.take(4.0, 100.0) == 0.5


def test_pacer_without_debt_returns_zero_and_counts_nothing() -> None:
    pacer = ClientPacer(rate_hz=4.0, burst=4.0, realtime_multiple=2.0, burst_s=1.0, now=0.0)
    assert pacer.charge(0.5, 0.0) == 0.0
    assert (pacer.paced, pacer.paced_s) == (0, 0.0)


def test_pacer_waits_for_the_slower_of_its_two_buckets() -> None:
    pacer = ClientPacer(rate_hz=4.0, burst=1.0, realtime_multiple=2.0, burst_s=1.0, now=0.0)
    assert pacer.charge(2.0, 0.0) == 0.5  # audio: 1 s over at 2x real time
    assert pacer.charge(0.0, 0.0) == 0.25  # events: one frame over at 4 Hz
    assert (pacer.paced, pacer.paced_s) == (2, 0.75)


def test_pacer_with_zero_rates_never_waits() -> None:
    pacer = ClientPacer(rate_hz=0.0, burst=1.0, realtime_multiple=0.0, burst_s=1.0, now=0.0)
    for _ in range(1000):
        assert pacer.charge(60.0, 0.0) == 0.0
    assert pacer.paced == 0


def test_pacer_frames_without_audio_do_not_touch_the_audio_budget() -> None:
    pacer = ClientPacer(rate_hz=0.0, burst=1.0, realtime_multiple=1.0, burst_s=1.0, now=0.0)
    for _ in range(100):
        assert pacer.charge(0.0, 0.0) == 0.0
    assert pacer.charge(1.0, 0.0) == 0.0
    assert pacer.charge(0.5, 0.0) == 0.5


amounts = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)
gaps = st.floats(min_value=0.0, max_value=5.0, allow_nan=False)


@given(
    st.floats(min_value=0.1, max_value=100.0),
    st.floats(min_value=0.0, max_value=50.0),
    st.lists(st.tuples(amounts, gaps), min_size=1, max_size=60),
)
def test_bucket_never_lets_more_than_burst_plus_rate_times_t_through(
    rate: float, burst: float, steps: list[tuple[float, float]]
) -> None:
    """A sender that honours every wait gets at most burst + rate * t through in any window:
    from one take to the moment the wait after a later take ends."""
    bucket = TokenBucket(rate, burst, now=0.0)
    now = 0.0
    log: list[tuple[float, float, float]] = []  # (time, amount, wait)
    for amount, extra in steps:
        wait = bucket.take(amount, now)
        assert wait >= 0.0
        log.append((now, amount, wait))
        now += wait + extra
    for i in range(len(log)):
        through = 0.0
        for j in range(i, len(log)):
            through += log[j][1]
            t = log[j][0] + log[j][2] - log[i][0]
            assert through <= burst + rate * t + 1e-6 * (1 + through)
