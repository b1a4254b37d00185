"""ByteRing: a FIFO of bytes in its own private anonymous memory mapping. Pure (no I/O).

The session mirror keeps the input audio appended since the last commit in one (issue 11), and
the replay log the frames a resumable client may ask for again. Both are long-lived and grow
a frame at a time while other, short-lived allocations come and go around them. Kept in the C
heap (one growing ``bytearray``, or fixed 16 KiB blocks as before), every block pinned the
small holes the transient allocations left between blocks: with 200 push-to-talk sessions
the heap's free-but-unusable space grew with the buffers (~7 % of them, 16 MB after 20 s,
measured with ``mallinfo2``) and resident memory per session rose with the length of the
session, not with what it holds.

So each ring owns one ``MAP_PRIVATE | MAP_ANONYMOUS`` mapping, outside the heap:

* bytes are written at the back and consumed at the front (integer positions, no object per
  frame, one mapping object per ring for the collector);
* untouched pages cost nothing: resident memory is the pages between the front and the back;
* consumed pages go back to the kernel (``MADV_DONTNEED``) once ``release_bytes`` of them
  gathered at the front, and all but the first ``release_bytes`` when the ring empties (a
  replay log emptied by an ack, a commit that took the pending audio), so at most about
  ``2 * release_bytes`` plus a page is resident beyond the contents;
* when the back reaches the end of the mapping the contents move to its start (when they
  fill at most half of it) or to a mapping twice as large: each byte is copied O(1) times
  amortised, and the mapping is at most about twice the largest contents (virtual memory).

Bounds are the caller's (the mirror's seconds of audio, the replay log's bytes). A ring maps
nothing until its first byte and unmaps in :meth:`clear` or when it is collected; a session
has at most two (mirror, replay log), so 10,000 sessions are 20,000 mappings, well inside
Linux's default ``vm.max_map_count`` (65,530).
"""

from __future__ import annotations

import mmap

PAGE = mmap.PAGESIZE
#: First mapping size (virtual; only the pages written become resident).
INITIAL_BYTES = 256 * 1024
#: Consumed bytes gathered at the front before they are given back to the kernel.
RELEASE_BYTES = 16 * 1024

_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)
_NOHUGEPAGE = getattr(mmap, "MADV_NOHUGEPAGE", None)


def _page_down(n: int) -> int:
    return n - n % PAGE


def _page_up(n: int) -> int:
    return -(-n // PAGE) * PAGE


class ByteRing:
    """Bytes in arrival order; :meth:`drop_front` and :meth:`take_front` consume the oldest."""

    __slots__ = ("_cap", "_head", "_initial", "_mm", "_release", "_released", "_tail", "_top")

    def __init__(
        self, initial_bytes: int = INITIAL_BYTES, release_bytes: int = RELEASE_BYTES
    ) -> None:
        self._initial = max(1, initial_bytes)
        self._release = max(PAGE, release_bytes)
        self._mm: mmap.mmap | None = None  # mapped at the first append
        self._cap = 0
        self._head = 0  # offset of the oldest byte
        self._tail = 0  # offset after the newest byte
        self._released = 0  # pages below this offset were given back (page-aligned)
        self._top = 0  # highest offset written since the pages above it were given back

    def __len__(self) -> int:
        return self._tail - self._head

    @property
    def allocated_bytes(self) -> int:
        """Resident memory at most: the pages from the first kept to the highest written."""
        return max(0, _page_up(self._top) - self._released)

    def append(self, data: bytes | bytearray | memoryview) -> int:
        """Add ``data`` at the back (one copy); return the new size."""
        n = len(data)
        tail = self._tail
        if not n:
            return tail - self._head
        if tail + n > self._cap:
            self._make_room(n)
            tail = self._tail
        end = tail + n
        self._mm[tail:end] = data  # type: ignore[index]
        self._tail = end
        if end > self._top:
            self._top = end
        return end - self._head

    def drop_front(self, n: int) -> None:
        """Forget the oldest ``n`` bytes (at most all of them)."""
        head = self._head + max(0, min(n, self._tail - self._head))
        if head == self._tail:  # empty: start over at offset 0 and keep the first pages warm
            self._head = self._tail = 0
            self._give_back(self._release, self._top)
            self._released = 0
            self._top = min(self._top, self._release)
            return
        self._head = head
        if head - self._released >= self._release + PAGE:
            upto = _page_down(head)
            self._give_back(self._released, upto)
            self._released = upto

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
        if stop <= start or self._mm is None:
            return b""
        return self._mm[self._head + start : self._head + stop]

    def clear(self) -> None:
        """Empty, and unmap: nothing stays resident."""
        mm, self._mm = self._mm, None
        if mm is not None:
            mm.close()
        self._cap = self._head = self._tail = self._released = self._top = 0

    # ------------------------------------------------------------------ internals

    def _make_room(self, n: int) -> None:
        """The back reached the end of the mapping: move the contents to its start, or to a
        mapping twice as large, so that ``n`` more bytes fit."""
        size = self._tail - self._head
        mm = self._mm
        if mm is not None and (size + n) * 2 <= self._cap:
            if size:
                mm.move(0, self._head, size)
            self._give_back(_page_up(size), self._top)  # what lay above the moved contents
            self._head, self._tail = 0, size
            self._released, self._top = 0, size
            return
        cap = max(self._initial, self._cap * 2)
        while (size + n) * 2 > cap:
            cap *= 2
        new = mmap.mmap(-1, cap, flags=mmap.MAP_PRIVATE)
        if _NOHUGEPAGE is not None:
            new.madvise(_NOHUGEPAGE)  # a 2 MiB huge page would make a small ring resident
        if mm is not None:
            if size:
                new[0:size] = mm[self._head : self._tail]
            mm.close()
        self._mm, self._cap = new, cap
        self._head, self._tail = 0, size
        self._released, self._top = 0, size

    def _give_back(self, start: int, stop: int) -> None:
        """Return the whole pages in ``[start, stop)`` to the kernel (they read as zeros)."""
        start, stop = _page_up(start), min(_page_up(stop), self._cap - self._cap % PAGE)
        if stop > start and self._mm is not None and _DONTNEED is not None:
            self._mm.madvise(_DONTNEED, start, stop - start)


#: The mirror's name for it: pending input audio.
AudioRing = ByteRing
