"""The replay log: server events sent to a resumable client, numbered, so it can come back. Pure.

Every frame voxgate sends to a ``voxgate.v1`` client is numbered 1, 2, 3 … in send order,
except the resume control events themselves (``voxgate.session.*``, see
:func:`counts_toward_seq`). A client that reconnects says how many numbered frames it received;
the log hands back the rest, in order, so none is lost and none arrives twice.

Clients may send ``voxgate.session.ack {received_events}`` (unnumbered, never forwarded); the
log then lets go of everything up to there at once, so an attached client that acks every
second holds about a second of events, not the whole bound. A resume may not ask for less
than it acknowledged.

Bound and policy: the log keeps the newest frames up to ``limit_bytes`` (sum of frame
lengths) and drops the oldest past it. That is safe while a client is attached and reading:
what it has not received yet is the tail. Once the client is *detached*, every frame logged
after the detach is one it certainly never got; if the bound would drop one of those, the
session can no longer be resumed without loss, and :meth:`append` says so (the session then
ends instead of pretending). A resume asking for frames that were dropped is refused.
"""

from __future__ import annotations

from collections import deque

#: Gateway events about the resume machinery itself; they are not numbered.
UNNUMBERED_PREFIX = "voxgate.session."


def counts_toward_seq(event_type: str) -> bool:
    """Whether a client counts a frame of this type in ``received_events``."""
    return not event_type.startswith(UNNUMBERED_PREFIX)


class ReplayLog:
    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._frames: deque[str] = deque()
        self._bytes = 0
        self.first_seq = 1  # the seq of _frames[0] (or of the next frame when empty)
        self.last_seq = 0  # seq of the newest frame logged
        self.dropped_frames = 0
        self.detached_after: int | None = None  # last_seq when the client was detached
        self.lost_while_detached = False
        self.acked = 0  # the client said it has every frame up to here

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def append(self, frame: str) -> bool:
        """Log the next numbered frame. False: a frame sent after a detach had to be dropped."""
        self._frames.append(frame)
        self._bytes += len(frame)
        self.last_seq += 1
        while self._bytes > self.limit_bytes and len(self._frames) > 1:
            old = self._frames.popleft()
            self._bytes -= len(old)
            self.dropped_frames += 1
            if self.detached_after is not None and self.first_seq > self.detached_after:
                self.lost_while_detached = True
            self.first_seq += 1
        return not self.lost_while_detached

    def ack(self, received: int) -> None:
        """The client has every frame up to ``received``: they can never be asked for again."""
        received = min(received, self.last_seq)
        while self._frames and self.first_seq <= received:
            self._bytes -= len(self._frames.popleft())
            self.first_seq += 1
        self.acked = max(self.acked, received)

    def detach(self) -> None:
        """The client is gone: from now on nothing logged may be dropped."""
        if self.detached_after is None:
            self.detached_after = self.last_seq

    def attach(self) -> None:
        self.detached_after = None
        self.lost_while_detached = False

    def can_resume_from(self, received: int) -> bool:
        """Whether every frame after ``received`` is still here (and ``received`` is sane)."""
        return (
            not self.lost_while_detached
            and self.acked <= received <= self.last_seq
            and received + 1 >= self.first_seq
        )

    def frame(self, seq: int) -> str:
        """The frame numbered ``seq``. Raises IndexError if it is not in the log."""
        if not self.first_seq <= seq <= self.last_seq:
            raise IndexError(seq)
        return self._frames[seq - self.first_seq]
