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

from array import array

from voxgate.session.audio_ring import ByteRing

#: Gateway events about the resume machinery itself; they are not numbered.
UNNUMBERED_PREFIX = "voxgate.session."


def counts_toward_seq(event_type: str) -> bool:
    """Whether a client counts a frame of this type in ``received_events``."""
    return not event_type.startswith(UNNUMBERED_PREFIX)


class ReplayLog:
    """Numbered frames in one :class:`~voxgate.session.audio_ring.ByteRing` (UTF-8 text,
    back to back) with their lengths in an integer array: nothing per frame for the garbage
    collector, no allocator holes. ``size_bytes`` counts the frames' UTF-8 bytes."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._ring = ByteRing(limit_bytes)  # sized for the bound: never grows in a call
        self._lens = array("I")  # byte length of each frame still logged, from _lens[_head]
        self._head = 0
        self._cursor = (0, 0)  # (seq, byte offset) of the last frame read: sequential reads
        self.first_seq = 1  # the seq of the oldest logged frame (or of the next one when empty)
        self.last_seq = 0  # seq of the newest frame logged
        self.dropped_frames = 0
        self.detached_after: int | None = None  # last_seq when the client was detached
        self.lost_while_detached = False
        self.acked = 0  # the client said it has every frame up to here

    def __len__(self) -> int:
        return len(self._lens) - self._head

    def set_limit(self, limit_bytes: int) -> None:
        """A new bound (the output format changed); frames over it go at the next append."""
        self.limit_bytes = limit_bytes
        self._ring.reserve(limit_bytes)

    @property
    def size_bytes(self) -> int:
        return len(self._ring)

    def append(self, frame: str) -> bool:
        """Log the next numbered frame. False: a frame sent after a detach had to be dropped."""
        return self.append_encoded(frame.encode())

    def append_encoded(self, data: bytes) -> bool:
        """:meth:`append` for a frame already in UTF-8 (as it arrived: no encode)."""
        size = self._ring.append(data)
        self._lens.append(len(data))
        self.last_seq += 1
        if size <= self.limit_bytes:
            return not self.lost_while_detached
        while len(self._ring) > self.limit_bytes and len(self) > 1:
            self._drop_oldest()
            self.dropped_frames += 1
            if self.detached_after is not None and self.first_seq > self.detached_after + 1:
                self.lost_while_detached = True
        return not self.lost_while_detached

    def _drop_oldest(self) -> None:
        self._ring.drop_front(self._lens[self._head])
        self._head += 1
        self.first_seq += 1
        if self._head > 1024 and self._head * 2 > len(self._lens):
            del self._lens[: self._head]  # compact now and then: O(1) amortised
            self._head = 0
        self._cursor = (0, 0)

    def ack(self, received: int) -> None:
        """The client has every frame up to ``received``: they can never be asked for again."""
        received = min(received, self.last_seq)
        while len(self) and self.first_seq <= received:
            self._drop_oldest()
        if not len(self):
            self.first_seq = self.last_seq + 1
        self.acked = max(self.acked, received)

    def detach(self) -> None:
        """The client is gone: from now on nothing logged may be dropped."""
        if self.detached_after is None:
            self.detached_after = self.last_seq

    def attach(self) -> None:
        self.detached_after = None
        self.lost_while_detached = False

    def continue_from(self, received: int) -> None:
        """An empty log takes over another node's numbering (issue 17): the client has every
        frame up to ``received``; the next frame logged is ``received + 1``."""
        if len(self):
            raise ValueError("continue_from on a log that holds frames")
        self.first_seq = received + 1
        self.last_seq = received
        self.acked = received
        self._cursor = (0, 0)

    def newest(self, max_bytes: int) -> list[tuple[int, str]]:
        """The newest frames whose sizes add up to at most ``max_bytes``, oldest first, with
        their numbers (for a snapshot; one read of the ring, O(frames returned))."""
        lens = self._lens
        index = len(lens)
        size = 0
        while index > self._head and size + lens[index - 1] <= max_bytes:
            index -= 1
            size += lens[index]
        if index == len(lens):
            return []
        start = sum(lens[self._head : index])
        data = self._ring.peek(start, start + size)
        out: list[tuple[int, str]] = []
        seq = self.first_seq + index - self._head
        at = 0
        for n in lens[index:]:
            out.append((seq, data[at : at + n].decode()))
            seq += 1
            at += n
        return out

    def can_resume_from(self, received: int) -> bool:
        """Whether every frame after ``received`` is still here (and ``received`` is sane)."""
        return (
            not self.lost_while_detached
            and self.acked <= received <= self.last_seq
            and received + 1 >= self.first_seq
        )

    def frame(self, seq: int) -> str:
        """The frame numbered ``seq``. Raises IndexError if it is not in the log.

        Reading frames in order (a resume's replay) costs O(1) per frame.
        """
        if not self.first_seq <= seq <= self.last_seq:
            raise IndexError(seq)
        index = self._head + seq - self.first_seq
        cursor_seq, offset = self._cursor
        if cursor_seq and cursor_seq <= seq:
            first = self._head + cursor_seq - self.first_seq
            offset += sum(self._lens[first:index])
        else:
            offset = sum(self._lens[self._head : index])
        self._cursor = (seq, offset)
        return self._ring.peek(offset, offset + self._lens[index]).decode()
