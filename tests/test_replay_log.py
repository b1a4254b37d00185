"""The replay log of a resumable session (voxgate.session.replay): numbered frames, bounded,
handed back from any point that is still complete."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voxgate.session.replay import ReplayLog, counts_toward_seq


def test_frames_are_numbered_from_one_in_send_order() -> None:
    log = ReplayLog(1000)
    for frame in ("a", "bb", "ccc"):
        assert log.append(frame) is True
    assert (log.first_seq, log.last_seq, len(log), log.size_bytes) == (1, 3, 3, 6)
    assert [log.frame(seq) for seq in (1, 2, 3)] == ["a", "bb", "ccc"]


def test_encoded_frames_are_logged_like_text() -> None:
    """A frame forwarded still encoded (the relay's audio deltas) is the same log entry."""
    log = ReplayLog(1000)
    assert log.append("a") is True
    assert log.append_encoded("\u00e9t\u00e9".encode()) is True
    assert log.append("ccc") is True
    assert (log.last_seq, log.size_bytes) == (3, 9)
    assert [log.frame(seq) for seq in (1, 2, 3)] == ["a", "\u00e9t\u00e9", "ccc"]


def test_frame_outside_the_log_raises_index_error() -> None:
    log = ReplayLog(1000)
    log.append("a")
    for seq in (0, 2):
        with pytest.raises(IndexError):
            log.frame(seq)


def test_empty_log_can_resume_from_zero_only() -> None:
    log = ReplayLog(1000)
    assert log.can_resume_from(0)
    assert not log.can_resume_from(1)
    assert not log.can_resume_from(-1)


def test_past_the_bound_the_oldest_frames_are_dropped() -> None:
    log = ReplayLog(10)
    for frame in ("aaaa", "bbbb", "cccc", "ddd"):
        assert log.append(frame) is True
    assert (log.first_seq, log.last_seq, log.size_bytes, log.dropped_frames) == (3, 4, 7, 2)
    assert [log.frame(3), log.frame(4)] == ["cccc", "ddd"]
    assert not log.can_resume_from(1)  # frame 2 is gone
    assert log.can_resume_from(2)
    assert log.can_resume_from(4)
    assert not log.can_resume_from(5)  # the client cannot have more than was sent


def test_single_frame_larger_than_the_bound_is_kept_alone() -> None:
    log = ReplayLog(10)
    log.append("a")
    log.append("x" * 50)
    assert (len(log), log.first_seq, log.size_bytes) == (1, 2, 50)
    assert log.can_resume_from(1)


def test_dropping_a_frame_logged_after_detach_makes_the_session_unresumable() -> None:
    log = ReplayLog(10)
    log.append("aaaa")
    log.append("bbbb")
    log.detach()
    assert log.detached_after == 2
    assert log.append("cccc") is True  # drops frame 1: the client had it
    assert log.append("dddd") is True  # drops frame 2: the client had it
    assert log.append("eeee") is False  # drops frame 3, which the client never got
    assert log.lost_while_detached
    assert not log.can_resume_from(2)
    assert not log.can_resume_from(4)


def test_detach_twice_keeps_the_first_detach_point_and_attach_resets() -> None:
    log = ReplayLog(10)
    log.append("a")
    log.detach()
    log.append("b")
    log.detach()
    assert log.detached_after == 1
    log.attach()
    assert log.detached_after is None
    assert log.lost_while_detached is False


def test_resume_control_events_are_not_numbered() -> None:
    assert counts_toward_seq("response.done")
    assert counts_toward_seq("voxgate.upstream.reconnected")
    assert not counts_toward_seq("voxgate.session.resumable")
    assert not counts_toward_seq("voxgate.session.resumed")


# ---------------------------------------------------------------------------- properties

ops = st.lists(
    st.one_of(
        st.integers(1, 50).map(lambda n: ("append", n)),
        st.just(("detach", 0)),
        st.just(("attach", 0)),
    ),
    max_size=60,
)


@given(ops, st.integers(50, 400))
def test_log_matches_a_model_of_every_frame_sent(
    operations: list[tuple[str, int]], limit: int
) -> None:
    log = ReplayLog(limit)
    sent: list[str] = []  # every numbered frame, seq = index + 1
    detached_after: int | None = None
    lost = False
    for op, size in operations:
        if op == "append":
            frame = chr(ord("a") + len(sent) % 26) * size
            sent.append(frame)
            ok = log.append(frame)
            first = len(sent) - len(log) + 1  # frames 1 .. first-1 were dropped
            assert log.first_seq == first
            if detached_after is not None and first - 1 > detached_after:
                lost = True  # a frame the client never got is gone
            assert ok is (not lost)
            assert log.size_bytes <= limit
        elif op == "detach":
            if detached_after is None:
                detached_after = len(sent)
            log.detach()
        else:
            detached_after, lost = None, False
            log.attach()
        # frames come back in order, exactly as sent
        assert [log.frame(s) for s in range(log.first_seq, log.last_seq + 1)] == sent[
            log.first_seq - 1 :
        ]
        assert log.size_bytes == sum(len(f) for f in sent[log.first_seq - 1 :])
        assert log.last_seq == len(sent)
        assert log.dropped_frames == log.first_seq - 1
        # can_resume_from is exactly "every frame after n is still here"
        for n in range(-1, len(sent) + 2):
            complete = 0 <= n <= len(sent) and all(
                log.first_seq <= s <= log.last_seq for s in range(n + 1, len(sent) + 1)
            )
            assert log.can_resume_from(n) is (complete and not lost)


@given(st.lists(st.integers(1, 100), max_size=80), st.integers(100, 1000))
def test_attached_log_never_exceeds_its_bound(sizes: list[int], limit: int) -> None:
    log = ReplayLog(limit)
    for size in sizes:
        assert log.append("x" * size) is True
        assert log.size_bytes <= limit
        assert log.can_resume_from(log.last_seq)


@given(
    st.lists(
        st.one_of(
            st.text(min_size=1, max_size=300).map(lambda t: ("append", t)),
            st.integers(min_value=0, max_value=60).map(lambda n: ("ack", n)),
        ),
        max_size=60,
    ),
    st.integers(min_value=64, max_value=4000),
)
def test_frames_come_back_exactly_as_logged_in_any_order_of_reads(
    ops: list[tuple[str, object]], limit: int
) -> None:
    log = ReplayLog(limit)
    sent: list[str] = []
    for op, arg in ops:
        if op == "append":
            log.append(str(arg))
            sent.append(str(arg))
        else:
            log.ack(int(arg))  # type: ignore[call-overload]
        assert log.size_bytes <= max(limit, len(sent[-1].encode()) if sent else 0)
        kept = range(log.first_seq, log.last_seq + 1)
        assert [log.frame(seq) for seq in kept] == sent[log.first_seq - 1 :]
        assert [log.frame(seq) for seq in reversed(kept)] == sent[log.first_seq - 1 :][::-1]
