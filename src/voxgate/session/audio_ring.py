"""ByteRing: a FIFO of bytes in its own private anonymous memory mapping. Pure (no I/O).

The session mirror keeps the input audio appended since the last commit in one (issue 11), and
the replay log the frames a resumable client may ask for again. Both are long-lived and grow
a frame at a time while other, short-lived allocations come and go around them. Kept in the C
heap (one growing ``bytearray``, or fixed 16 KiB blocks as before), every block pinned the
small holes the transient allocations left between blocks: with 200 push-to-talk sessions
the heap's free-but-unusable space grew with the buffers (~7 % of them, 16 MB after 20 s,
measured with ``mallinfo2``) and resident memory per session rose with the length of the
session, not with what it holds.

So each ring owns one ``MAP_PRIVATE | MAP_ANONYMOUS`` mapping, outside the heap, used as a
circle:

* bytes are written at the back and consumed at the front (integer positions, no object per
  frame, one mapping object per ring for the collector); the back wraps to the mapping's start,
  so bytes are written once and never moved;
* the mapping is sized once, for the caller's bound (``reserve_bytes``: the contents it may
  hold, plus a frame): untouched pages cost nothing, resident memory is the pages between the
  front and the back. It is remapped only when more than that arrives at once (a bound raised
  by a format change, one frame larger than the slack), copying the contents once;
* consumed pages go back to the kernel (``MADV_DONTNEED``) once ``release_bytes`` of them
  gathered at the front, all of them when the ring empties (a replay log emptied by an ack, a
  commit that took the pending audio), and always before the back wraps onto them, so at most
  about ``release_bytes`` plus two pages are resident beyond the contents.

Why a circle and not a buffer that grows: every session in a gateway streams at the same rate,
so buffers that double when full double *together*. With 200 push-to-talk sessions the move of
each mirror's contents into a mapping twice as large (256 KiB copied, fresh pages faulted, the
old mapping unmapped) came due within one second for all of them and stalled the event loop
for 30-85 ms (``bench/relay.py``: every session's round trip late at the same instants). A
circle's only steady cost is the page faults of the back entering pages given back, spread
evenly over time like the frames themselves.

Bounds are the caller's (the mirror's seconds of audio, the replay log's bytes). A ring maps
nothing until its first byte and unmaps in :meth:`clear` or when it is collected; a session
has at most two (mirror, replay log), so 10,000 sessions are 20,000 mappings, well inside
Linux's default ``vm.max_map_count`` (65,530), and about 5 MiB of address space each.
"""

from __future__ import annotations

import mmap

PAGE = mmap.PAGESIZE
#: Contents a ring is sized for when its caller states no bound.
RESERVE_BYTES = 256 * 1024
#: Consumed bytes gathered at the front before they are given back to the kernel.
RELEASE_BYTES = 16 * 1024
#: Room beyond the reserve, so that the frame that is about to be cut off the front fits.
SLACK_BYTES = 64 * 1024

_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)
_NOHUGEPAGE = getattr(mmap, "MADV_NOHUGEPAGE", None)


def _page_down(n: int) -> int:
    return n - n % PAGE


def _page_up(n: int) -> int:
    return -(-n // PAGE) * PAGE


class ByteRing:
    """Bytes in arrival order; :meth:`drop_front` and :meth:`take_front` consume the oldest.

    Positions (``_head``, ``_tail``, ``_released``) count bytes since the mapping was made;
    byte ``p`` lives at offset ``p % _cap``. Invariant: ``_tail <= _released + _cap``, so the
    pages between ``_released`` and the back never alias one another and giving back a
    consumed page never touches a live byte.
    """

    __slots__ = (
        "_cap",
        "_head",
        "_mm",
        "_release",
        "_released",
        "_reserve",
        "_slack",
        "_tail",
        "mappings",
    )

    def __init__(
        self,
        reserve_bytes: int = RESERVE_BYTES,
        release_bytes: int = RELEASE_BYTES,
        slack_bytes: int = SLACK_BYTES,
    ) -> None:
        self._reserve = max(1, reserve_bytes)
        self._release = max(PAGE, release_bytes)
        self._slack = max(0, slack_bytes)
        self.mappings = 0  # mappings made: 1 for a ring that stayed within its reserve
        self._mm: mmap.mmap | None = None  # mapped at the first append
        self._cap = 0
        self._head = 0  # position of the oldest byte
        self._tail = 0  # position after the newest byte
        self._released = 0  # pages below this position were given back (page-aligned)

    def __len__(self) -> int:
        return self._tail - self._head

    @property
    def allocated_bytes(self) -> int:
        """Resident memory at most: the pages from the first kept to the back."""
        return _page_up(self._tail) - self._released if self._mm is not None else 0

    def reserve(self, reserve_bytes: int) -> None:
        """The caller's bound changed: size the next mapping for it (the current one is kept
        until it is too small)."""
        self._reserve = max(1, reserve_bytes)

    def append(self, data: bytes | bytearray | memoryview) -> int:
        """Add ``data`` at the back (one copy); return the new size."""
        n = len(data)
        tail = self._tail
        end = tail + n
        if end > self._released + self._cap:  # the back would reach pages not given back yet
            self._make_room(n)
            tail = self._tail
            end = tail + n
        elif not n:
            return end - self._head
        cap = self._cap
        at = tail % cap
        if at + n <= cap:
            self._mm[at : at + n] = data  # type: ignore[index]
        else:  # wraps: the rest goes to the mapping's start
            first = cap - at
            view = memoryview(data)
            mm = self._mm
            mm[at:cap] = view[:first]  # type: ignore[index]
            mm[0 : n - first] = view[first:]  # type: ignore[index]
        self._tail = end
        return end - self._head

    def drop_front(self, n: int) -> None:
        """Forget the oldest ``n`` bytes (at most all of them)."""
        head = self._head + max(0, min(n, self._tail - self._head))
        self._head = head
        if head == self._tail or head - self._released >= self._release + PAGE:
            self._give_back_consumed()

    def take_front(self, n: int) -> bytes:
        """Remove and return the oldest ``n`` bytes (at most all of them)."""
        out = self.peek(0, n)
        self.drop_front(len(out))
        return out

    def peek(self, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` counted from the oldest, without removing them."""
        size = self._tail - self._head
        start = max(0, start)
        stop = min(stop, size)
        mm = self._mm
        if stop <= start or mm is None:
            return b""
        cap = self._cap
        at = (self._head + start) % cap
        end = at + stop - start
        if end <= cap:
            return mm[at:end]
        return mm[at:cap] + mm[0 : end - cap]

    def clear(self) -> None:
        """Empty, and unmap: nothing stays resident."""
        mm, self._mm = self._mm, None
        if mm is not None:
            mm.close()
        self._cap = self._head = self._tail = self._released = 0

    # ------------------------------------------------------------------ internals

    def _make_room(self, n: int) -> None:
        """``n`` more bytes would reach pages still held at the front: give the consumed ones
        back, or, if the live bytes and ``n`` do not fit the mapping, move them to a larger one."""
        if self._mm is not None and self._tail + n <= _page_down(self._head) + self._cap:
            self._give_back_consumed()
            return
        size = self._tail - self._head
        cap = _page_up(max(self._reserve + self._slack, 2 * (size + n)))
        new = mmap.mmap(-1, cap, flags=mmap.MAP_PRIVATE)
        self.mappings += 1
        if _NOHUGEPAGE is not None:
            new.madvise(_NOHUGEPAGE)  # a 2 MiB huge page would make a small ring resident
        if size:
            new[0:size] = self.peek(0, size)
        if self._mm is not None:
            self._mm.close()
        self._mm, self._cap = new, cap
        self._head, self._tail, self._released = 0, size, 0

    def _give_back_consumed(self) -> None:
        """Return the whole pages before the front to the kernel (they read as zeros)."""
        upto = _page_down(self._head)
        start = self._released
        if upto <= start:
            return
        self._released = upto
        mm = self._mm
        if mm is None or _DONTNEED is None:
            return
        cap = self._cap
        a, b = start % cap, upto - start
        if a + b <= cap:
            mm.madvise(_DONTNEED, a, b)
        else:  # the range wraps
            mm.madvise(_DONTNEED, a, cap - a)
            mm.madvise(_DONTNEED, 0, a + b - cap)


#: The mirror's name for it: pending input audio.
AudioRing = ByteRing
